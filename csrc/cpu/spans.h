// Inner loops over one contiguous span of one tensor, compiled several times (function
// multi-versioning, picked at load time). Sums over several streams (reduce_span) have two clones,
// x86-64 and x86-64-v3 (AVX2, FMA), which AVX-512 machines run too: in an x86-64-v4 clone GCC packs
// two streams into one 512-bit register with scalar loads and inserts, which was slower. Loops over
// one stream (penalty gradient, decay, the optimizer steps) also get an x86-64-v4 clone: there 16
// lanes are 16 consecutive elements, one 512-bit load of float32 (docs/cpu.md, "ISA levels"; the
// measurements are in docs/cpu-experiments.md).
//
// Sums run in a fixed number of independent float64 lanes folded in a fixed order: the compiler maps
// lanes to SIMD registers of any width, and the result is the same bits on every machine and thread
// count (the build turns off multiply-add contraction, so the clones also round alike).
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <array>
#include <cmath>
#include <cstdint>

#include "../math/elementwise.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define L2FAST_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
// One-stream loops only (see above).
#define L2FAST_CPU_CLONES_V4 __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define L2FAST_CPU_CLONES
#define L2FAST_CPU_CLONES_V4
#endif

namespace l2fast::cpu {

constexpr int kLanes = 16;
constexpr int64_t kMinSplit = 1 << 13;  // elements

// Sums of squares, of absolute values and of anchored deviations (AnchorPull::deviation) of one span, in float64.
struct Partial {
  double sq = 0.0;
  double abs = 0.0;
  double dev = 0.0;
};

template <typename T>
inline double widen(T v) {
  return static_cast<double>(static_cast<at::opmath_type<T>>(v));
}

template <int kN>
class LaneSumsOf {
 public:
  template <bool kSq, bool kAbs>
  void add(int lane, double v) {
    if (kSq) sq_[lane] += v * v;
    if (kAbs) abs_[lane] += std::fabs(v);
  }
  void add_deviation(int lane, double d) { dev_[lane] += d; }
  Partial fold() const {
    Partial p;
    for (int j = 0; j < kN; ++j) {
      p.sq += sq_[j];
      p.abs += abs_[j];
      p.dev += dev_[j];
    }
    return p;
  }

 private:
  double sq_[kN] = {};
  double abs_[kN] = {};
  double dev_[kN] = {};
};
using LaneSums = LaneSumsOf<kLanes>;

// Calls body(i, lane) for every i in [0, n). The span is cut into kStreams equal parts walked side
// by side, kN / kStreams lanes each: one core then keeps several DRAM streams in flight, and the
// lane loop vectorizes. The fewer than kN elements left after the parts go to lanes 0, 1, ...
// ahead(i, part) runs before every step of the parts, at offset i of each (a prefetch hook). Every
// step, without a branch: calling it once per 64-byte line, through a test in the loop or a loop over
// blocks of steps, kept GCC from vectorizing the sums (bfloat16, float32).
template <int kStreams, int kN = kLanes, typename Body, typename Ahead>
inline __attribute__((always_inline)) void for_lanes(int64_t n, Body body, Ahead ahead) {
  constexpr int kWidth = kN / kStreams;
  const int64_t part = n / (kStreams * kWidth) * kWidth;
  for (int64_t i = 0; i < part; i += kWidth) {
    ahead(i, part);
    for (int s = 0; s < kStreams; ++s)
      for (int j = 0; j < kWidth; ++j) body(s * part + i + j, s * kWidth + j);
  }
  for (int64_t i = kStreams * part; i < n; ++i) body(i, static_cast<int>(i - kStreams * part));
}

// Lanes of a sum over four streams: each stream's group of lanes fills one 256-bit register of the
// 32-bit values its elements widen through (8 for 16-bit types), so the loads stay vector loads.
// With 4 lanes per stream, GCC filled 8-wide registers from two streams with scalar loads and
// inserts, which was slower (docs/cpu.md, "ISA levels").
template <typename T>
constexpr int kSumLanes = sizeof(T) == 2 ? 32 : kLanes;

// A for_lanes hook: software prefetch kAheadBytes ahead of each part of some arrays, every line of
// the step's bytes (a step under 64 bytes prefetches its line more than once, which costs less than a
// branch; see for_lanes). With 4 KB pages the hardware prefetcher alone left the loops short of a
// loop that only loads; 2 KB ahead closed most of the gap (docs/cpu.md, "Software prefetch").
// always_inline: GCC finds a function whose only statements are prefetches free of side effects and
// deletes its calls.
constexpr int64_t kAheadBytes = 2048;
constexpr int64_t kLineBytes = 64;

template <typename T, int kStreams, int kN, int kArrays>
struct PrefetchAhead {
  static constexpr int64_t kStepBytes = int64_t{kN / kStreams} * sizeof(T);
  std::array<const T*, kArrays> arrays;  // null: not there (an optional stream)

  __attribute__((always_inline)) void operator()(int64_t i, int64_t part) const {
    for (const T* a : arrays)
      if (a != nullptr) fetch(a, i, part);
  }

 private:
  // Integer addresses: a prefetch past the end of the span is harmless, a pointer past it is not.
  __attribute__((always_inline)) static void fetch(const T* a, int64_t i, int64_t part) {
    const auto ahead = reinterpret_cast<uintptr_t>(a + i) + kAheadBytes;
    for (int s = 0; s < kStreams; ++s)
      for (int64_t line = 0; line < kStepBytes; line += kLineBytes)
        __builtin_prefetch(reinterpret_cast<const void*>(ahead + s * part * sizeof(T) + line));
  }
};

// The hook of a one-stream loop of kN lanes over these arrays (for_lanes<1, kN>).
template <typename T, int kN = kLanes, typename... Arrays>
PrefetchAhead<T, 1, kN, sizeof...(Arrays)> prefetch_each(Arrays... arrays) {
  return {{arrays...}};
}

// The anchor stream of a span loop, from the span's first element: a tensor without an anchor
// (NoAnchor: its loops are the plain ones), or its anchor a (dtype A) and, with kFisher, importances f.
struct NoAnchor {
  static constexpr bool kAnchored = false;
  static constexpr int kLanes = cpu::kLanes;
  template <typename Op>
  AnchorPull<Op> pull(int64_t, Op) const { return {}; }
  void ahead(int64_t, int64_t) const {}
};

template <typename A, bool kFisher>
struct AnchorOf {
  static constexpr bool kAnchored = true;
  // The lanes of a loop that reads an anchor, 32 whatever its dtype: with a 16-bit anchor beside 32-bit
  // streams, 16 lanes left GCC's AVX-512 clone in 256-bit vectors (one 16-byte load of the anchor per
  // step); with a 32-bit one, the work each step repeats (alias checks, prefetches) showed in the time
  // of the memory-bound step (docs/cpu-experiments.md, "Anchored loops").
  static constexpr int kLanes = 2 * cpu::kLanes;
  const A* a;
  const A* f;  // null without kFisher

  template <typename Op>
  __attribute__((always_inline)) AnchorPull<Op> pull(int64_t i, Op w) const {
    return anchor_pull<kFisher>(w, static_cast<Op>(a[i]), kFisher ? static_cast<Op>(f[i]) : Op(1));
  }
  __attribute__((always_inline)) void ahead(int64_t i, int64_t part) const {
    PrefetchAhead<A, 1, kLanes, 2>{{a, kFisher ? f : nullptr}}(i, part);
  }
};

// A for_lanes hook that prefetches the arrays of `each` and the anchor's.
template <typename Each, typename Anchor>
struct WithAnchorAhead {
  Each each;
  Anchor anchor;
  __attribute__((always_inline)) void operator()(int64_t i, int64_t part) const {
    each(i, part);
    anchor.ahead(i, part);
  }
};

template <typename Anchor, typename Each>
WithAnchorAhead<Each, Anchor> ahead_with(const Anchor& anchor, Each each) {
  return {each, anchor};
}

template <typename T, bool kSq, bool kAbs>
L2FAST_CPU_CLONES Partial reduce_span(const T* x, int64_t n) {
  LaneSumsOf<kSumLanes<T>> sums;
  // One input: four streams, which keep one core's prefetcher ahead of the loop when each runs long
  // enough (kChunk / 4 elements; docs/cpu.md, "Chunk size"). Spans too short for the prefetcher to
  // ramp up stay one stream.
  const auto add = [&](int64_t i, int lane) { sums.template add<kSq, kAbs>(lane, widen(x[i])); };
  if (n >= kMinSplit)
    for_lanes<4, kSumLanes<T>>(n, add, PrefetchAhead<T, 4, kSumLanes<T>, 1>{{x}});
  else
    for_lanes<1, kSumLanes<T>>(n, add, PrefetchAhead<T, 1, kSumLanes<T>, 1>{{x}});
  return sums.fold();
}

// The sums of w (squares and absolute values) and, anchored, of its deviations from the anchor: what
// the anchored penalty's value, and a skipped optimizer step's, needs (the plain penalty takes
// reduce_span's four streams).
template <typename T, class Anchor>
L2FAST_CPU_CLONES_V4 Partial penalty_sums_span(const T* w, int64_t n, Anchor anchor) {
  LaneSumsOf<Anchor::kLanes> sums;
  using Op = at::opmath_type<T>;
  for_lanes<1, Anchor::kLanes>(n, [=, &sums](int64_t i, int lane) __attribute__((always_inline)) {
    const Op wi = static_cast<Op>(w[i]);
    sums.template add<true, true>(lane, static_cast<double>(wi));
    if (Anchor::kAnchored) sums.add_deviation(lane, anchor.pull(i, wi).deviation());
  }, ahead_with(anchor, prefetch_each<T, Anchor::kLanes>(w)));
  return sums.fold();
}

// out = base + scale * (l2 * w + l1 * sign(w) + sp * pull), where base is g (kAccumulate) or 0, computed
// in the op-math type of T like torch.optim does. Also returns the sums of w that the penalty value needs.
template <typename T, bool kSq, bool kAbs, bool kAccumulate, class Anchor>
L2FAST_CPU_CLONES_V4 Partial grad_span(const T* w, const T* g, T* out, int64_t n, at::opmath_type<T> l2,
                                       at::opmath_type<T> l1, at::opmath_type<T> sp, at::opmath_type<T> scale,
                                       Anchor anchor) {
  using Op = at::opmath_type<T>;
  LaneSumsOf<Anchor::kLanes> sums;
  // w and g are already two streams in and one out; splitting them further was slower (docs/cpu.md).
  for_lanes<1, Anchor::kLanes>(n, [&](int64_t i, int lane) {
    const Op wi = static_cast<Op>(w[i]);
    const AnchorPull<Op> p = anchor.pull(i, wi);
    const Op step = penalty_step(wi, l2, l1, kSq, kAbs, sp, p.pull, Anchor::kAnchored);
    out[i] = static_cast<T>(kAccumulate ? static_cast<Op>(g[i]) + step : scale * step);
    sums.template add<kSq, kAbs>(lane, static_cast<double>(wi));
    if (Anchor::kAnchored) sums.add_deviation(lane, p.deviation());
  }, ahead_with(anchor, prefetch_each<T, Anchor::kLanes>(w, kAccumulate ? g : nullptr)));
  return sums.fold();
}

// x = x * factor + neg_spf * pull, in the op-math type of T; returns the sum of squares of x before the
// update (kSq) and, anchored, of its deviations.
template <typename T, bool kSq, class Anchor>
L2FAST_CPU_CLONES_V4 Partial scale_span(T* x, int64_t n, at::opmath_type<T> factor, at::opmath_type<T> neg_spf,
                                        Anchor anchor) {
  using Op = at::opmath_type<T>;
  LaneSumsOf<Anchor::kLanes> sums;
  for_lanes<1, Anchor::kLanes>(n, [&](int64_t i, int lane) {
    const Op xi = static_cast<Op>(x[i]);
    sums.template add<kSq, false>(lane, static_cast<double>(xi));
    Op out = xi * factor;
    if (Anchor::kAnchored) {
      const AnchorPull<Op> p = anchor.pull(i, xi);
      sums.add_deviation(lane, p.deviation());
      out = std::fma(neg_spf, p.pull, out);
    }
    x[i] = static_cast<T>(out);
  }, ahead_with(anchor, prefetch_each<T, Anchor::kLanes>(x)));
  return sums.fold();
}

}  // namespace l2fast::cpu
