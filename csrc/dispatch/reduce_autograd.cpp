// Autograd kernels of the reductions (sq_norm, l1_norm, penalty). Each is l2/2 ||w||^2 + l1 |w|_1
// per tensor for some l2 and l1, so each has the same backward: one fused pass of penalty_grad, times
// the incoming gradient. They are written in C++ (not registered from Python) because a call with
// thousands of tensors would otherwise convert its lists to Python objects and back on every call.
// penalty_grad keeps its Python autograd kernel (l2fast/_ops.py), so second derivatives work.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "boxed.h"
#include "op_handle.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace l2fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Reduction = at::Tensor(at::TensorList, c10::ArrayRef<double>, bool);  // sq_norm, l1_norm
using OptionalTensors = std::optional<at::TensorList>;
using Penalty = at::Tensor(at::TensorList, c10::ArrayRef<double>, c10::ArrayRef<double>, const OptionalTensors&,
                           const OptionalTensors&, c10::ArrayRef<double>);
using PenaltyGrad = std::vector<at::Tensor>(at::TensorList, const at::Tensor&, c10::ArrayRef<double>,
                                            c10::ArrayRef<double>, const OptionalTensors&, const OptionalTensors&,
                                            c10::ArrayRef<double>);

// What a reduction's backward needs beside its tensors: its coefficients as penalty_grad takes them,
// and the anchors (constants: they get no gradient).
struct Backward {
  std::vector<double> l2, l1, sp;
  OptionalTensors anchors, fisher;
};

// The value `compute` returns, with penalty_grad(tensors, l2, l1, anchors, fisher, sp) as its backward.
// Non-tensor arguments and anchors get no gradient.
struct PenaltyFunction : torch::autograd::Function<PenaltyFunction> {
  template <typename Compute>
  static at::Tensor forward(AutogradContext* ctx, at::TensorList tensors, const Backward& b, bool per_tensor,
                            const Compute& compute) {
    std::vector<at::Tensor> saved = tensors.vec();
    for (const auto& list : {b.anchors, b.fisher})
      if (list) saved.insert(saved.end(), list->begin(), list->end());
    ctx->save_for_backward(saved);
    ctx->saved_data["n"] = static_cast<int64_t>(tensors.size());
    ctx->saved_data["anchored"] = b.anchors.has_value();
    ctx->saved_data["fisher"] = b.fisher.has_value();
    ctx->saved_data["l2"] = b.l2;
    ctx->saved_data["l1"] = b.l1;
    ctx->saved_data["sp"] = b.sp;
    ctx->saved_data["per_tensor"] = per_tensor;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return compute();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto penalty_grad = op_handle<PenaltyGrad>("l2fast::penalty_grad");
    const variable_list saved = ctx->get_saved_variables();
    const auto n = static_cast<size_t>(ctx->saved_data["n"].toInt());
    const at::TensorList all(saved);
    const at::TensorList tensors = all.slice(0, n);
    size_t next = n;
    const auto take = [&](const char* key) -> OptionalTensors {
      if (!ctx->saved_data[key].toBool()) return std::nullopt;
      next += n;
      return all.slice(next - n, n);
    };
    const OptionalTensors anchors = take("anchored");
    const OptionalTensors fisher = take("fisher");
    const auto l2 = ctx->saved_data["l2"].toDoubleVector();
    const auto l1 = ctx->saved_data["l1"].toDoubleVector();
    const auto sp = ctx->saved_data["sp"].toDoubleVector();
    const at::Tensor& grad_value = grad_outputs[0];
    variable_list grads;
    if (ctx->saved_data["per_tensor"].toBool()) {
      // One value per tensor: the step at scale 1, times that tensor's incoming gradient.
      grads = at::_foreach_mul(penalty_grad.call(tensors, at::ones({}, grad_value.options()), l2, l1, anchors, fisher, sp),
                               grad_value.unbind());
    } else {
      grads = penalty_grad.call(tensors, grad_value, l2, l1, anchors, fisher, sp);
    }
    grads.resize(grads.size() + 3);  // the coefficients and anchors, per_tensor, compute
    return grads;
  }
};

// compute(), recorded by autograd with penalty_grad as its backward when some tensor requires grad.
// Otherwise the call goes straight to the kernel: Function::apply would copy the lists (10,000 tensors:
// about a millisecond) only to record nothing.
template <typename Compute>
at::Tensor recorded(at::TensorList tensors, const Backward& b, bool per_tensor, const Compute& compute) {
  const auto requires_grad = [](at::TensorList list) {
    return std::any_of(list.begin(), list.end(), [](const at::Tensor& t) { return t.requires_grad(); });
  };
  const bool record = at::GradMode::is_enabled() && requires_grad(tensors);
  if (at::GradMode::is_enabled())
    for (const auto& [list, name] : {std::pair{b.anchors, "anchors"}, {b.fisher, "fisher"}})
      TORCH_CHECK(!list || !requires_grad(*list), "l2fast: ", name, " require grad, but the penalty has no gradient "
                  "with respect to them; pass constants (tensor.detach())");
  if (record) return PenaltyFunction::apply(tensors, b, per_tensor, compute);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return compute();
}

std::vector<double> scaled(c10::ArrayRef<double> coeffs, double factor) {
  std::vector<double> out(coeffs.begin(), coeffs.end());
  for (double& c : out) c *= factor;
  return out;
}

// d/dx c ||x||^2 = 2c x: an L2 coefficient of 2c.
at::Tensor sq_norm_autograd(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
  static const auto op = op_handle<Reduction>("l2fast::sq_norm");
  return recorded(tensors, {scaled(coeffs, 2.0), {0.0}, {0.0}}, per_tensor,
                  [&] { return op.call(tensors, coeffs, per_tensor); });
}

// d/dx c |x|_1 = c sign(x): an L1 coefficient of c.
at::Tensor l1_norm_autograd(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
  static const auto op = op_handle<Reduction>("l2fast::l1_norm");
  return recorded(tensors, {{0.0}, coeffs.vec(), {0.0}}, per_tensor,
                  [&] { return op.call(tensors, coeffs, per_tensor); });
}

at::Tensor penalty_autograd(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1,
                            const OptionalTensors& anchors, const OptionalTensors& fisher,
                            c10::ArrayRef<double> l2_sp) {
  static const auto op = op_handle<Penalty>("l2fast::penalty");
  return recorded(params, {l2.vec(), l1.vec(), l2_sp.vec(), anchors, fisher}, false,
                  [&] { return op.call(params, l2, l1, anchors, fisher, l2_sp); });
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, Autograd, m) {
  m.impl("sq_norm", boxed<&sq_norm_autograd>());
  m.impl("l1_norm", boxed<&l1_norm_autograd>());
  m.impl("penalty", boxed<&penalty_autograd>());
}

}  // namespace l2fast
