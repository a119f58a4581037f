// Kernels for calls that reach no backend's own kernel (CompositeExplicitAutograd: the dispatcher
// also picks it when no argument is a tensor). Two kinds of call end up here:
//  - empty tensor lists, which carry no device to dispatch on. They are valid: the result is that of
//    an empty sum, float32 on the CPU (where torch.zeros would put it);
//  - tensors of a layout or device l2fast has no kernel for (sparse CSR, a CUDA tensor in a CPU-only
//    build, ...): the op's argument checks name the offending tensor, and what they let through is
//    refused by device.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "optim_step.h"

namespace l2fast {
namespace {

at::Tensor empty_sum(at::TensorList tensors, bool per_tensor) {
  TORCH_CHECK(tensors.empty(), "l2fast: this build has no kernel for tensors on ", tensors[0].device());
  return per_tensor ? at::zeros({0}, at::kFloat) : at::zeros({}, at::kFloat);
}

at::Tensor sq_norm(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
  check_norm_args(tensors, coeffs);
  return empty_sum(tensors, per_tensor);
}

at::Tensor penalty(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1) {
  check_penalty_args(params, l2, l1);
  return empty_sum(params, /*per_tensor=*/false);
}

std::vector<at::Tensor> penalty_grad(at::TensorList params, const at::Tensor& scale, c10::ArrayRef<double> l2,
                                     c10::ArrayRef<double> l1) {
  check_penalty_grad_args(params, scale, l2, l1);
  empty_sum(params, /*per_tensor=*/false);
  return {};
}

at::Tensor add_penalty_grad_(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                             c10::ArrayRef<double> l1) {
  check_add_penalty_grad_args(params, grads, l2, l1);
  return empty_sum(params, /*per_tensor=*/false);
}

at::Tensor decay_(at::TensorList params, c10::ArrayRef<double> factors, c10::ArrayRef<double> l2) {
  check_decay_args(params, factors, l2);
  return empty_sum(params, /*per_tensor=*/false);
}

// The optimizer steps: their entry points check the arguments, then this Kernels gives the empty sum.
struct NoBackendStepKernels {
  static void none(const StepArgs& args, at::Tensor& result) {
    empty_sum(args.params, /*per_tensor=*/false);  // refuses a device without kernels
    result.zero_();
  }
  static void adam_step(const StepArgs& args, at::Tensor& result) { none(args, result); }
  static void sgd_step(const StepArgs& args, at::Tensor& result) { none(args, result); }
};

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CompositeExplicitAutograd, m) {
  m.impl("sq_norm", &sq_norm);
  m.impl("l1_norm", &sq_norm);  // the empty sums of both norms are the same
  m.impl("penalty", &penalty);
  m.impl("penalty_grad", &penalty_grad);
  m.impl("add_penalty_grad_", &add_penalty_grad_);
  m.impl("decay_", &decay_);
  StepEntryPoints<NoBackendStepKernels>::register_all(m);
}

}  // namespace l2fast
