// The ops' entry points, written once for every backend: argument checks, coefficients turned into
// per-tensor weights, outputs allocated. Then the backend's Kernels make their one pass over memory.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "coeffs.h"

namespace l2fast {

// Kernels receives checked tensors and provides (anchors: empty, or checked by check_anchors):
//   void reduce(at::TensorList xs, const std::vector<Weights>&, const Anchors&, bool per_tensor, at::Tensor& result)
//       result: one value per tensor (per_tensor) filled with each value_i, else a scalar sum_i value_i
//   void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>&, const Anchors&,
//                         at::Tensor& result)
//   void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale, const std::vector<Weights>&,
//                     const Anchors&)
//   void decay(at::TensorList params, const DecayFactors&, const std::vector<Weights>&, const Anchors&, at::Tensor& result)
template <class Kernels>
struct EntryPoints {
  using TensorLists = std::optional<at::TensorList>;

  static at::Tensor new_result(at::TensorList tensors, bool per_tensor) {
    // An empty list is an empty sum: zero, float32 on the CPU (where torch.zeros puts it).
    if (tensors.empty()) return per_tensor ? at::zeros({0}, at::kFloat) : at::zeros({}, at::kFloat);
    const auto options = at::TensorOptions().dtype(result_dtype(tensors)).device(tensors[0].device());
    return per_tensor ? at::empty({static_cast<int64_t>(tensors.size())}, options) : at::empty({}, options);
  }

  static at::Tensor reduce(at::TensorList tensors, const std::vector<Weights>& weights, const Anchors& anchors,
                           bool per_tensor) {
    at::Tensor result = new_result(tensors, per_tensor);
    Kernels::reduce(tensors, weights, anchors, per_tensor, result);
    return result;
  }

  static at::Tensor sq_norm(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
    check_norm_args(tensors, coeffs);
    return reduce(tensors, norm_weights(coeffs, tensors.size(), /*squared=*/true), {}, per_tensor);
  }

  static at::Tensor l1_norm(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
    check_norm_args(tensors, coeffs);
    return reduce(tensors, norm_weights(coeffs, tensors.size(), /*squared=*/false), {}, per_tensor);
  }

  static at::Tensor penalty(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1,
                            const TensorLists& anchor_list, const TensorLists& fisher, c10::ArrayRef<double> l2_sp) {
    const Anchors anchors = anchors_of(anchor_list, fisher);
    check_penalty_args(params, l2, l1, anchors, l2_sp);
    return reduce(params, penalty_weights(l2, l1, params.size(), l2_sp), anchors, /*per_tensor=*/false);
  }

  static at::Tensor add_penalty_grad_(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                                      c10::ArrayRef<double> l1, const TensorLists& anchor_list,
                                      const TensorLists& fisher, c10::ArrayRef<double> l2_sp) {
    const Anchors anchors = anchors_of(anchor_list, fisher);
    check_add_penalty_grad_args(params, grads, l2, l1, anchors, l2_sp);
    at::Tensor result = new_result(params, /*per_tensor=*/false);
    Kernels::add_penalty_grad(params, grads, penalty_weights(l2, l1, params.size(), l2_sp), anchors, result);
    return result;
  }

  static std::vector<at::Tensor> penalty_grad(at::TensorList params, const at::Tensor& scale,
                                              c10::ArrayRef<double> l2, c10::ArrayRef<double> l1,
                                              const TensorLists& anchor_list, const TensorLists& fisher,
                                              c10::ArrayRef<double> l2_sp) {
    const Anchors anchors = anchors_of(anchor_list, fisher);
    check_penalty_grad_args(params, scale, l2, l1, anchors, l2_sp);
    if (params.empty()) return {};  // dispatched here by scale's device; nothing to launch
    const auto weights = penalty_weights(l2, l1, params.size(), l2_sp);
    std::vector<at::Tensor> outs;
    for (size_t i = 0; i < params.size(); ++i)
      outs.push_back(weights[i].any() ? at::empty_like(params[i]) : at::zeros_like(params[i]));
    Kernels::penalty_grad(params, outs, scale, weights, anchors);
    return outs;
  }

  static at::Tensor decay_(at::TensorList params, c10::ArrayRef<double> factors, c10::ArrayRef<double> l2,
                           const TensorLists& anchor_list, const TensorLists& fisher,
                           c10::ArrayRef<double> sp_factors, c10::ArrayRef<double> l2_sp) {
    const Anchors anchors = anchors_of(anchor_list, fisher);
    check_decay_args(params, factors, l2, anchors, sp_factors, l2_sp);
    const double no_l1 = 0.0;
    const size_t n = params.size();
    at::Tensor result = new_result(params, /*per_tensor=*/false);
    Kernels::decay(params, DecayFactors{expand_coeffs(factors, n, "factors"), expand_coeffs(sp_factors, n, "sp_factors")},
                   penalty_weights(l2, c10::ArrayRef<double>(no_l1), n, l2_sp), anchors, result);
    return result;
  }

  static void register_all(torch::Library& m) {
    m.impl("sq_norm", &sq_norm);
    m.impl("l1_norm", &l1_norm);
    m.impl("penalty", &penalty);
    m.impl("penalty_grad", &penalty_grad);
    m.impl("add_penalty_grad_", &add_penalty_grad_);
    m.impl("decay_", &decay_);
  }
};

}  // namespace l2fast
