// Per-element math shared by the CPU and CUDA kernels, so both compute the same function.
#pragma once
#include <c10/macros/Macros.h>

namespace l2fast {

// sign(x) with sign(0) = 0 and sign(NaN) = NaN, so a NaN weight is never hidden.
template <typename T>
C10_HOST_DEVICE inline T sign_of(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);
}

// Gradient of l2/2 * w^2 + l1 * |w|. A term whose coefficient is zero is left out rather than
// multiplied by zero, so an infinite weight under an L1-only penalty gives +-l1, not NaN.
template <typename T>
C10_HOST_DEVICE inline T penalty_step(T w, T l2, T l1, bool use_l2, bool use_l1) {
  T step = T(0);
  if (use_l2) step = l2 * w;
  if (use_l1) step += l1 * sign_of(w);
  return step;
}

}  // namespace l2fast
