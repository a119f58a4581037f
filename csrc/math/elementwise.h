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

// The pull of weight w toward its anchor a, with importance f (EWC's Fisher; kFisher false: 1): f * (w - a),
// in the op-math type of w. Its gradient term is sp * pull.
template <bool kFisher, typename Op>
C10_HOST_DEVICE C10_ALWAYS_INLINE Op anchor_pull(Op w, Op a, Op f) {
  const Op d = w - a;
  return kFisher ? f * d : d;
}

// f * (w - a)^2 in float64: one element's share of the anchored penalty value (times sp / 2).
template <bool kFisher>
C10_HOST_DEVICE C10_ALWAYS_INLINE double anchor_deviation(double w, double a, double f) {
  const double d = w - a;
  return kFisher ? f * (d * d) : d * d;
}

}  // namespace l2fast
