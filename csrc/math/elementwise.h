// Per-element math shared by the CPU and CUDA kernels, so both compute the same function.
#pragma once
#include <c10/macros/Macros.h>

namespace l2fast {

// sign(x) with sign(0) = 0 and sign(NaN) = NaN, so a NaN weight is never hidden.
template <typename T>
C10_HOST_DEVICE inline T sign_of(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);
}

// Gradient of l2/2 * w^2 + l1 * |w| (+ sp/2 * F * (w - a)^2, given its pull F * (w - a)). A term whose
// coefficient is zero is left out rather than multiplied by zero, so an infinite weight under an
// L1-only penalty gives +-l1, not NaN.
template <typename T>
C10_HOST_DEVICE inline T penalty_step(T w, T l2, T l1, bool use_l2, bool use_l1, T sp = T(0), T pull = T(0),
                                      bool use_sp = false) {
  T step = T(0);
  if (use_l2) step = l2 * w;
  if (use_l1) step += l1 * sign_of(w);
  if (use_sp) step += sp * pull;
  return step;
}

// The pull of weight w toward its anchor a with importance f (EWC's Fisher; kFisher false: 1), in the
// op-math type of w: d = w - a, pull = f * d. Its gradient term is sp * pull; deviation() is its share of
// the value sum(f * (w - a)^2) (times sp / 2), formed in the op-math type and summed in float64 by the
// caller: at most three roundings (d exact when w and a are within a factor of 2), which keeps the
// anchored loops as light as the bytes they move allow.
template <typename Op>
struct AnchorPull {
  Op d = Op(0);
  Op pull = Op(0);
  C10_HOST_DEVICE C10_ALWAYS_INLINE double deviation() const { return static_cast<double>(pull * d); }
};

template <bool kFisher, typename Op>
C10_HOST_DEVICE C10_ALWAYS_INLINE AnchorPull<Op> anchor_pull(Op w, Op a, Op f) {
  const Op d = w - a;
  return {d, kFisher ? f * d : d};
}

}  // namespace l2fast
