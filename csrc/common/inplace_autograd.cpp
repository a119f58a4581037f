// Autograd and ADInplaceOrView kernels of the ops that write their arguments (add_penalty_grad_ writes
// grads, decay_ writes params), so that they behave as torch's own in-place ops do:
//  - ADInplaceOrView: every written tensor's version counter is bumped, so a backward that needs a
//    value saved before the write raises "modified by an inplace operation" instead of using the new one;
//  - Autograd, with grad mode on: writing a leaf that requires grad (or a view of one) raises torch's
//    error; when some argument requires grad, the written tensors and the returned value get a grad_fn
//    whose backward raises "derivative for l2fast::... is not implemented" (the ops have no derivative).
// Under torch.no_grad(), as optimizers call them, only the version counters change.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <vector>

namespace l2fast {
namespace {

// The tensors of the arguments on the stack (the written ones only, or all).
std::vector<at::Tensor> argument_tensors(const c10::OperatorHandle& op, const torch::jit::Stack& stack,
                                         bool written_only) {
  const auto& arguments = op.schema().arguments();
  const size_t first = stack.size() - arguments.size();
  std::vector<at::Tensor> tensors;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::AliasInfo* alias = arguments[i].alias_info();
    if (written_only && (alias == nullptr || !alias->isWrite())) continue;
    const c10::IValue& value = stack[first + i];
    if (value.isTensor()) {
      tensors.push_back(value.toTensor());
    } else if (value.isTensorList()) {
      for (const c10::IValue& t : value.toListRef()) tensors.push_back(t.toTensor());
    }
  }
  return tensors;
}

void bump_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const std::vector<at::Tensor> written = argument_tensors(op, *stack, /*written_only=*/true);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const at::Tensor& t : written) torch::autograd::increment_version(t);
}

void not_differentiable(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  std::vector<at::Tensor> requiring_grad;
  if (at::GradMode::is_enabled())
    for (const at::Tensor& t : argument_tensors(op, *stack, /*written_only=*/false))
      if (t.requires_grad()) requiring_grad.push_back(t);
  const bool any_requires_grad = !requiring_grad.empty();
  const std::vector<at::Tensor> written = argument_tensors(op, *stack, /*written_only=*/true);
  for (const at::Tensor& t : written) torch::autograd::check_inplace(t, any_requires_grad);
  {
    at::AutoDispatchBelowAutograd guard;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  }
  if (!any_requires_grad) return;
  auto grad_fn = c10::make_intrusive<torch::autograd::NotImplemented>(op.schema().name());
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(requiring_grad));
  torch::autograd::rebase_history(written, grad_fn);
  torch::autograd::set_history(stack->back().toTensor(), grad_fn);  // the returned penalty value
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, ADInplaceOrView, m) {
  m.impl("add_penalty_grad_", torch::CppFunction::makeFromBoxedFunction<&bump_versions>());
  m.impl("decay_", torch::CppFunction::makeFromBoxedFunction<&bump_versions>());
}

TORCH_LIBRARY_IMPL(l2fast, Autograd, m) {
  m.impl("add_penalty_grad_", torch::CppFunction::makeFromBoxedFunction<&not_differentiable>());
  m.impl("decay_", torch::CppFunction::makeFromBoxedFunction<&not_differentiable>());
}

}  // namespace l2fast
