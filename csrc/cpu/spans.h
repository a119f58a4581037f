// Inner loops over one contiguous span of one tensor. Each is compiled twice (function
// multi-versioning, picked at load time): for x86-64 and for x86-64-v3 (AVX2, FMA), which AVX-512
// machines run too. An x86-64-v4 (AVX-512) clone was measured slower on every loop here, 24% to 60%
// on the sums: GCC packed two streams' four-lane groups into one 512-bit register with scalar loads
// and inserts (docs/cpu.md).
//
// Sums run in kLanes independent float64 lanes folded in a fixed order: the compiler maps lanes to
// SIMD registers of any width, and the result is the same bits on every machine and thread count
// (the build turns off multiply-add contraction, so the clones also round alike).
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cmath>
#include <cstdint>

#include "../common/elementwise.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define L2FAST_CPU_CLONES
#endif

namespace l2fast::cpu {

constexpr int kLanes = 16;
constexpr int64_t kMinSplit = 1 << 13;  // elements

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

// Calls body(i, lane) for every i in [0, n). The span is cut into kStreams equal parts walked side
// by side, kLanes / kStreams lanes each: one core then keeps several DRAM streams in flight, and the
// lane loop vectorizes. The fewer than kLanes elements left after the parts go to lanes 0, 1, ...
template <int kStreams, typename Body>
inline __attribute__((always_inline)) void for_lanes(int64_t n, Body body) {
  constexpr int kWidth = kLanes / kStreams;
  const int64_t part = n / (kStreams * kWidth) * kWidth;
  for (int64_t i = 0; i < part; i += kWidth)
    for (int s = 0; s < kStreams; ++s)
      for (int j = 0; j < kWidth; ++j) body(s * part + i + j, s * kWidth + j);
  for (int64_t i = kStreams * part; i < n; ++i) body(i, static_cast<int>(i - kStreams * part));
}

template <typename T, bool kSq, bool kAbs>
L2FAST_CPU_CLONES Partial reduce_span(const T* x, int64_t n) {
  LaneSums sums;
  // One input: four streams (measured on a 2-core AMD EPYC, one thread: 1 stream 11-13 GB/s, 4 streams
  // 19-22). Spans too short for the prefetcher to ramp up stay one stream.
  const auto add = [&](int64_t i, int lane) { sums.add<kSq, kAbs>(lane, widen(x[i])); };
  if (n >= kMinSplit)
    for_lanes<4>(n, add);
  else
    for_lanes<1>(n, add);
  return sums.fold();
}

// out = base + scale * (l2 * w + l1 * sign(w)), where base is g (kAccumulate) or 0, computed in the
// op-math type of T like torch.optim does. Also returns the sums of w that the penalty value needs.
template <typename T, bool kSq, bool kAbs, bool kAccumulate>
L2FAST_CPU_CLONES Partial grad_span(const T* w, const T* g, T* out, int64_t n, at::opmath_type<T> l2,
                                    at::opmath_type<T> l1, at::opmath_type<T> scale) {
  using Op = at::opmath_type<T>;
  LaneSums sums;
  // w and g are already two streams in and one out; splitting them further was slower (measured as
  // above: 82% of an in-place add_ with one part, 58% with two).
  for_lanes<1>(n, [&](int64_t i, int lane) {
    const Op wi = static_cast<Op>(w[i]);
    const Op step = penalty_step(wi, l2, l1, kSq, kAbs);
    out[i] = static_cast<T>(kAccumulate ? static_cast<Op>(g[i]) + step : scale * step);
    sums.add<kSq, kAbs>(lane, static_cast<double>(wi));
  });
  return sums.fold();
}

// x *= factor, in the op-math type of T; returns the sum of squares of x before the update (kSq).
template <typename T, bool kSq>
L2FAST_CPU_CLONES Partial scale_span(T* x, int64_t n, at::opmath_type<T> factor) {
  using Op = at::opmath_type<T>;
  LaneSums sums;
  for_lanes<1>(n, [&](int64_t i, int lane) {
    const Op xi = static_cast<Op>(x[i]);
    sums.add<kSq, false>(lane, static_cast<double>(xi));
    x[i] = static_cast<T>(xi * factor);
  });
  return sums.fold();
}

}  // namespace l2fast::cpu
