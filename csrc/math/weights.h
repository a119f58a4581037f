// What an op does to one tensor, as coefficients shared by every op and backend.
#pragma once
#include <c10/macros/Macros.h>

namespace l2fast {

// value = l2 / 2 * ||x||^2 + l1 * |x|_1, and its gradient l2 * x + l1 * sign(x): the L2 coefficient
// means what torch.optim's weight_decay means. A norm c * ||x||^2 is l2 = 2c (0.5 * 2c == c exactly).
// A term whose coefficient is zero is left out rather than multiplied by zero, so an infinite or
// NaN input under the other term alone does not turn the value into NaN. sp weighs the pull toward an
// anchor: value sp / 2 * sum(F * (x - a)^2) (sum_dev), gradient sp * F * (x - a); zero for a tensor
// without an anchor.
struct Weights {
  double l2 = 0.0;
  double l1 = 0.0;
  double sp = 0.0;
  C10_HOST_DEVICE bool any() const { return l2 != 0.0 || l1 != 0.0 || sp != 0.0; }
  C10_HOST_DEVICE double value(double sum_sq, double sum_abs, double sum_dev) const {
    return (l2 != 0.0 ? 0.5 * l2 * sum_sq : 0.0) + (l1 != 0.0 ? l1 * sum_abs : 0.0) +
           (sp != 0.0 ? 0.5 * sp * sum_dev : 0.0);
  }
};

}  // namespace l2fast
