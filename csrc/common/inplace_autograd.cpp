// Autograd and ADInplaceOrView kernels of the ops that write their arguments (add_penalty_grad_ writes
// grads, decay_ writes params), so that they behave as torch's own in-place ops do:
//  - ADInplaceOrView: every written tensor's version counter is bumped, so a backward that needs a
//    value saved before the write raises "modified by an inplace operation" instead of using the new one;
//  - Autograd, with grad mode on: writing a leaf that requires grad (or a view of one) raises torch's
//    error; when some argument requires grad, the written tensors and the returned value get a grad_fn
//    whose backward raises "derivative for l2fast::... is not implemented" (the ops have no derivative).
// Under torch.no_grad(), as optimizers call them, only the version counters change. The
// Autograd kernels are registered boxed (boxed.h): a Python call arrives boxed, and they drop its lists
// under one hold of the GIL; the ADInplaceOrView kernels are reached unboxed from them.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include "boxed.h"
#include "op_handle.h"

#include <memory>
#include <type_traits>
#include <vector>

namespace l2fast {
namespace {

using AddPenaltyGrad = at::Tensor(at::TensorList, at::TensorList, c10::ArrayRef<double>, c10::ArrayRef<double>);
using Decay = at::Tensor(at::TensorList, c10::ArrayRef<double>, c10::ArrayRef<double>);

const auto& add_penalty_grad_op() {
  static const auto handle = op_handle<AddPenaltyGrad>("l2fast::add_penalty_grad_");
  return handle;
}

const auto& decay_op() {
  static const auto handle = op_handle<Decay>("l2fast::decay_");
  return handle;
}

// Ownership of a new autograd graph node, in the pointer type this torch holds nodes by (Edge::function:
// std::shared_ptr in older releases, c10::intrusive_ptr in newer ones).
template <typename NodePtr>
NodePtr new_node(torch::autograd::Node* node) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return NodePtr(node);
  } else {
    return NodePtr::unsafe_steal_from_new(node);
  }
}

using NodePtr = decltype(torch::autograd::Edge::function);

// Before the write: torch's in-place checks on what is written, and the node the results will hang
// from when autograd records this call (null when it does not: grad mode off, nothing requires grad).
NodePtr before_write(const char* name, at::TensorList written, at::TensorList read) {
  std::vector<at::Tensor> requiring_grad;
  if (at::GradMode::is_enabled())
    for (at::TensorList tensors : {written, read})
      for (const at::Tensor& t : tensors)
        if (t.requires_grad()) requiring_grad.push_back(t);
  if (requiring_grad.empty()) return nullptr;  // torch's in-place checks pass whenever nothing requires grad
  for (const at::Tensor& t : written) torch::autograd::check_inplace(t, /*requires_grad=*/true);
  auto grad_fn = new_node<NodePtr>(new torch::autograd::NotImplemented(name));
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(requiring_grad));
  return grad_fn;
}

void after_write(const NodePtr& grad_fn, at::TensorList written, const at::Tensor& value) {
  if (!grad_fn) return;
  torch::autograd::rebase_history(written.vec(), grad_fn);
  torch::autograd::set_history(value, grad_fn);
}

void bump_versions(at::TensorList written) {
  for (const at::Tensor& t : written) torch::autograd::increment_version(t);
}

at::Tensor add_penalty_grad_autograd(c10::DispatchKeySet keys, at::TensorList params, at::TensorList grads,
                                     c10::ArrayRef<double> l2, c10::ArrayRef<double> l1) {
  const NodePtr grad_fn = before_write("l2fast::add_penalty_grad_", grads, params);
  at::Tensor value;
  {
    at::AutoDispatchBelowAutograd guard;
    value = add_penalty_grad_op().redispatch(keys & c10::after_autograd_keyset, params, grads, l2, l1);
  }
  after_write(grad_fn, grads, value);
  return value;
}

at::Tensor add_penalty_grad_inplace(c10::DispatchKeySet keys, at::TensorList params, at::TensorList grads,
                                    c10::ArrayRef<double> l2, c10::ArrayRef<double> l1) {
  at::Tensor value;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    value = add_penalty_grad_op().redispatch(keys & c10::after_ADInplaceOrView_keyset, params, grads, l2, l1);
  }
  bump_versions(grads);
  return value;
}

at::Tensor decay_autograd(c10::DispatchKeySet keys, at::TensorList params, c10::ArrayRef<double> factors,
                          c10::ArrayRef<double> l2) {
  const NodePtr grad_fn = before_write("l2fast::decay_", params, {});
  at::Tensor value;
  {
    at::AutoDispatchBelowAutograd guard;
    value = decay_op().redispatch(keys & c10::after_autograd_keyset, params, factors, l2);
  }
  after_write(grad_fn, params, value);
  return value;
}

at::Tensor decay_inplace(c10::DispatchKeySet keys, at::TensorList params, c10::ArrayRef<double> factors,
                         c10::ArrayRef<double> l2) {
  at::Tensor value;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    value = decay_op().redispatch(keys & c10::after_ADInplaceOrView_keyset, params, factors, l2);
  }
  bump_versions(params);
  return value;
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, ADInplaceOrView, m) {
  m.impl("add_penalty_grad_", &add_penalty_grad_inplace);
  m.impl("decay_", &decay_inplace);
}

TORCH_LIBRARY_IMPL(l2fast, Autograd, m) {
  m.impl("add_penalty_grad_", boxed<&add_penalty_grad_autograd>());
  m.impl("decay_", boxed<&decay_autograd>());
}

}  // namespace l2fast
