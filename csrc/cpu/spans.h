// Inner loops over one contiguous span of one tensor. Each is compiled for several x86 levels
// (function multi-versioning, picked at load time) so one binary uses AVX2 or AVX-512 where present.
//
// Sums run in kLanes independent float64 lanes folded in a fixed order: the compiler maps lanes to
// SIMD registers of any width, and the result is the same bits on every machine and thread count.
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cmath>
#include <cstdint>

#include "../common/elementwise.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define L2FAST_CPU_CLONES
#endif

namespace l2fast::cpu {

constexpr int kLanes = 16;
constexpr int kPrefetchBytes = 1024;

// Sums of squares and of absolute values of one span, in float64.
struct Partial {
  double sq = 0.0;
  double abs = 0.0;
};

template <typename T>
inline double widen(T v) {
  return static_cast<double>(static_cast<at::opmath_type<T>>(v));
}

class LaneSums {
 public:
  template <bool kSq, bool kAbs>
  void add(int lane, double v) {
    if (kSq) sq_[lane] += v * v;
    if (kAbs) abs_[lane] += std::fabs(v);
  }
  Partial fold() const {
    Partial p;
    for (int j = 0; j < kLanes; ++j) {
      p.sq += sq_[j];
      p.abs += abs_[j];
    }
    return p;
  }

 private:
  double sq_[kLanes] = {};
  double abs_[kLanes] = {};
};

// Calls body(i, lane) for i in [0, n); lanes rotate in blocks of kLanes so the loop vectorizes.
template <typename Body, typename T>
inline __attribute__((always_inline)) void for_lanes(const T* stream, int64_t n, Body body) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __builtin_prefetch(stream + i + kPrefetchBytes / sizeof(T));
    for (int j = 0; j < kLanes; ++j) body(i + j, j);
  }
  for (int j = 0; i + j < n; ++j) body(i + j, j);
}

template <typename T, bool kSq, bool kAbs>
L2FAST_CPU_CLONES Partial reduce_span(const T* x, int64_t n) {
  LaneSums sums;
  for_lanes(x, n, [&](int64_t i, int lane) { sums.add<kSq, kAbs>(lane, widen(x[i])); });
  return sums.fold();
}

// out = base + scale * (l2 * w + l1 * sign(w)), where base is g (kAccumulate) or 0, computed in the
// op-math type of T like torch.optim does. Also returns the sums of w that the penalty value needs.
template <typename T, bool kSq, bool kAbs, bool kAccumulate>
L2FAST_CPU_CLONES Partial grad_span(const T* w, const T* g, T* out, int64_t n, at::opmath_type<T> l2,
                                    at::opmath_type<T> l1, at::opmath_type<T> scale) {
  using Op = at::opmath_type<T>;
  LaneSums sums;
  for_lanes(w, n, [&](int64_t i, int lane) {
    const Op wi = static_cast<Op>(w[i]);
    const Op step = penalty_step(wi, l2, l1, kSq, kAbs);
    out[i] = static_cast<T>(kAccumulate ? static_cast<Op>(g[i]) + step : scale * step);
    sums.add<kSq, kAbs>(lane, static_cast<double>(wi));
  });
  return sums.fold();
}

template <typename T>
L2FAST_CPU_CLONES void scale_span(T* x, int64_t n, at::opmath_type<T> factor) {
  using Op = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(static_cast<Op>(x[i]) * factor);
}

}  // namespace l2fast::cpu
