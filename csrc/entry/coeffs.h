// Coefficient lists, as the ops take them (one value for every tensor, or one per tensor), turned into
// what the kernels take: one value, or one Weights, per tensor. The lists are checked first (checks.h).
#pragma once
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <vector>

#include "../math/weights.h"

namespace l2fast {

// A coefficient list of one value (for every tensor) or one value per tensor, expanded to n.
inline std::vector<double> expand_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name) {
  TORCH_CHECK(coeffs.size() == 1 || coeffs.size() == n, "l2fast: ", name, " has ", coeffs.size(),
              " values for ", n, " tensors; give one value, or one per tensor");
  if (coeffs.size() == n) return coeffs.vec();
  return std::vector<double>(n, coeffs[0]);
}

// Weights per tensor from an L2 list (value l2/2 ||w||^2), an L1 list (value l1 |w|_1) and an l2_sp
// list (value l2_sp/2 sum F (w - a)^2 toward the anchors; zero for every tensor when empty).
inline std::vector<Weights> penalty_weights(c10::ArrayRef<double> l2, c10::ArrayRef<double> l1, size_t n,
                                            c10::ArrayRef<double> l2_sp = {}) {
  const std::vector<double> l2s = expand_coeffs(l2, n, "l2");
  const std::vector<double> l1s = expand_coeffs(l1, n, "l1");
  const std::vector<double> sps = l2_sp.empty() ? std::vector<double>(n, 0.0) : expand_coeffs(l2_sp, n, "l2_sp");
  std::vector<Weights> weights(n);
  for (size_t i = 0; i < n; ++i) weights[i] = {l2s[i], l1s[i], sps[i]};
  return weights;
}

// decay_'s fractions per tensor: w = w * (1 - zero[i]) - anchor[i] * pull (the pull toward the anchor).
struct DecayFactors {
  std::vector<double> zero, anchor;
};

// Weights per tensor for a norm: coeffs_i * ||x_i||^2 (squared: an L2 coefficient of 2 c_i) or
// coeffs_i * |x_i|_1.
inline std::vector<Weights> norm_weights(c10::ArrayRef<double> coeffs, size_t n, bool squared) {
  std::vector<Weights> weights;
  weights.reserve(n);
  for (double c : expand_coeffs(coeffs, n, "coeffs")) weights.push_back(squared ? Weights{2.0 * c, 0.0, 0.0} : Weights{0.0, c, 0.0});
  return weights;
}

}  // namespace l2fast
