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
#include <vector>

namespace l2fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Reduction = at::Tensor(at::TensorList, c10::ArrayRef<double>, bool);  // sq_norm, l1_norm
using Penalty = at::Tensor(at::TensorList, c10::ArrayRef<double>, c10::ArrayRef<double>);
using PenaltyGrad = std::vector<at::Tensor>(at::TensorList, const at::Tensor&, c10::ArrayRef<double>,
                                            c10::ArrayRef<double>);

// The value `compute` returns, with penalty_grad(tensors, l2, l1) as its backward. Non-tensor
// arguments get no gradient.
struct PenaltyFunction : torch::autograd::Function<PenaltyFunction> {
  template <typename Compute>
  static at::Tensor forward(AutogradContext* ctx, at::TensorList tensors, std::vector<double> l2,
                            std::vector<double> l1, bool per_tensor, const Compute& compute) {
    ctx->save_for_backward(tensors.vec());
    ctx->saved_data["l2"] = std::move(l2);
    ctx->saved_data["l1"] = std::move(l1);
    ctx->saved_data["per_tensor"] = per_tensor;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return compute();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto penalty_grad = op_handle<PenaltyGrad>("l2fast::penalty_grad");
    const variable_list tensors = ctx->get_saved_variables();
    const auto l2 = ctx->saved_data["l2"].toDoubleVector();
    const auto l1 = ctx->saved_data["l1"].toDoubleVector();
    const at::Tensor& grad_value = grad_outputs[0];
    variable_list grads;
    if (ctx->saved_data["per_tensor"].toBool()) {
      // One value per tensor: the step at scale 1, times that tensor's incoming gradient.
      grads = at::_foreach_mul(penalty_grad.call(tensors, at::ones({}, grad_value.options()), l2, l1),
                               grad_value.unbind());
    } else {
      grads = penalty_grad.call(tensors, grad_value, l2, l1);
    }
    grads.resize(grads.size() + 4);  // l2, l1, per_tensor, compute
    return grads;
  }
};

// compute(), recorded by autograd with penalty_grad(tensors, l2, l1) as its backward when some tensor
// requires grad. Otherwise the call goes straight to the kernel: Function::apply would copy the lists
// (10,000 tensors: about a millisecond) only to record nothing.
template <typename Compute>
at::Tensor recorded(at::TensorList tensors, std::vector<double> l2, std::vector<double> l1, bool per_tensor,
                    const Compute& compute) {
  const bool record = at::GradMode::is_enabled() &&
                      std::any_of(tensors.begin(), tensors.end(), [](const at::Tensor& t) { return t.requires_grad(); });
  if (record) return PenaltyFunction::apply(tensors, std::move(l2), std::move(l1), per_tensor, compute);
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
  return recorded(tensors, scaled(coeffs, 2.0), std::vector<double>{0.0}, per_tensor,
                                [&] { return op.call(tensors, coeffs, per_tensor); });
}

// d/dx c |x|_1 = c sign(x): an L1 coefficient of c.
at::Tensor l1_norm_autograd(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
  static const auto op = op_handle<Reduction>("l2fast::l1_norm");
  return recorded(tensors, std::vector<double>{0.0}, coeffs.vec(), per_tensor,
                                [&] { return op.call(tensors, coeffs, per_tensor); });
}

at::Tensor penalty_autograd(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1) {
  static const auto op = op_handle<Penalty>("l2fast::penalty");
  return recorded(params, l2.vec(), l1.vec(), false, [&] { return op.call(params, l2, l1); });
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, Autograd, m) {
  m.impl("sq_norm", boxed<&sq_norm_autograd>());
  m.impl("l1_norm", boxed<&l1_norm_autograd>());
  m.impl("penalty", boxed<&penalty_autograd>());
}

}  // namespace l2fast
