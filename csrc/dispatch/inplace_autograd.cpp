// Autograd and ADInplaceOrView kernels of the ops that write their arguments (add_penalty_grad_ writes
// grads, decay_ params, adam_step_ and sgd_step_ params and optimizer state), so that they behave as
// torch's own in-place ops do:
//  - ADInplaceOrView: every written tensor's version counter is bumped, so a backward that needs a
//    value saved before the write raises "modified by an inplace operation" instead of using the new one;
//  - Autograd, with grad mode on: writing a leaf that requires grad (or a view of one) raises torch's
//    error; when some argument requires grad, the written tensors and the returned value get a grad_fn
//    whose backward raises "derivative for l2fast::... is not implemented" (the ops have no derivative).
// Under torch.no_grad(), as optimizers call them, only the version counters change. One mechanism for
// all of them: each is named with its entry point's signature (entry_points.h, optim_step.h); which
// arguments it writes is read from its schema's alias annotations (Tensor(a!)), every other tensor
// argument is read. The Autograd kernels are registered boxed (boxed.h): a Python call arrives boxed,
// and they drop its lists under one hold of the GIL; the ADInplaceOrView and backend kernels are
// reached unboxed from them.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include "../entry/entry_points.h"
#include "../entry/optim_step.h"
#include "boxed.h"
#include "op_handle.h"

#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace l2fast {
namespace {

// The function type of an entry point (given as the type of a pointer to it): the op's signature as
// registered.
template <typename EntryPointer>
using SignatureOf = std::remove_pointer_t<EntryPointer>;
struct AnyKernels;  // the entry points' signatures do not depend on their kernels

struct AddPenaltyGradOp {
  static constexpr const char* kName = "l2fast::add_penalty_grad_";
  using Signature = SignatureOf<decltype(&EntryPoints<AnyKernels>::add_penalty_grad_)>;
};

struct DecayOp {
  static constexpr const char* kName = "l2fast::decay_";
  using Signature = SignatureOf<decltype(&EntryPoints<AnyKernels>::decay_)>;
};

// One per fused optimizer step of L2FAST_STEP_OPS (optim_step.h): adam_step_Op, sgd_step_Op, ...
#define L2FAST_STEP_OP(op, Step)                                                     \
  struct op##Op {                                                                    \
    static constexpr const char* kName = "l2fast::" #op;                             \
    using Signature = SignatureOf<decltype(&StepEntryPoints<AnyKernels>::op)>;       \
  };
L2FAST_STEP_OPS(L2FAST_STEP_OP)
#undef L2FAST_STEP_OP
#define L2FAST_STEP_OP_TYPE(op, Step) , op##Op

// written[i]: the schema marks argument i as written in place (Tensor(a!) or Tensor(a!)[]).
std::vector<bool> written_arguments(const c10::FunctionSchema& schema) {
  std::vector<bool> written;
  for (const c10::Argument& argument : schema.arguments())
    written.push_back(argument.alias_info() != nullptr && argument.alias_info()->isWrite());
  return written;
}

template <typename Fn>
void for_each_tensor(at::TensorList tensors, const Fn& fn) {
  for (const at::Tensor& t : tensors) fn(t);
}

template <typename Fn>
void for_each_tensor(const std::optional<at::Tensor>& tensor, const Fn& fn) {
  if (tensor && tensor->defined()) fn(*tensor);
}

template <typename Fn>
void for_each_tensor(const std::optional<at::TensorList>& tensors, const Fn& fn) {
  if (tensors) for_each_tensor(*tensors, fn);
}

template <typename NotTensors, typename Fn>
void for_each_tensor(const NotTensors&, const Fn&) {}

// fn(tensor) for every tensor of the arguments whose `written` flag is `want`, in order.
template <typename Args, typename Fn, size_t... kIndex>
void for_each_tensor_where(const std::vector<bool>& written, bool want, const Args& args, const Fn& fn,
                           std::index_sequence<kIndex...>) {
  ((written[kIndex] == want ? for_each_tensor(std::get<kIndex>(args), fn) : void()), ...);
}

template <typename... Args, typename Fn>
void for_each_tensor_where(const std::vector<bool>& written, bool want, const std::tuple<Args...>& args,
                           const Fn& fn) {
  for_each_tensor_where(written, want, args, fn, std::index_sequence_for<Args...>{});
}

template <typename Args>
std::vector<at::Tensor> tensors_where(const std::vector<bool>& written, bool want, const Args& args) {
  std::vector<at::Tensor> out;
  for_each_tensor_where(written, want, args, [&](const at::Tensor& t) { out.push_back(t); });
  return out;
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
// from when autograd records this call (null when nothing requires grad).
NodePtr before_write(const char* name, const std::vector<at::Tensor>& written, const std::vector<at::Tensor>& read) {
  std::vector<at::Tensor> requiring_grad;
  for (const auto* tensors : {&written, &read})
    for (const at::Tensor& t : *tensors)
      if (t.requires_grad()) requiring_grad.push_back(t);
  if (requiring_grad.empty()) return nullptr;  // torch's in-place checks pass whenever nothing requires grad
  for (const at::Tensor& t : written) torch::autograd::check_inplace(t, /*requires_grad=*/true);
  auto grad_fn = new_node<NodePtr>(new torch::autograd::NotImplemented(name));
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(requiring_grad));
  return grad_fn;
}

template <class Op, typename Signature = typename Op::Signature>
struct WritingOpKernels;

template <class Op, typename... Args>
struct WritingOpKernels<Op, at::Tensor(Args...)> {
  static const auto& handle() {
    static const auto op = op_handle<at::Tensor(Args...)>(Op::kName);
    return op;
  }

  static const std::vector<bool>& written() {
    static const std::vector<bool> flags = written_arguments(handle().schema());
    return flags;
  }

  static at::Tensor autograd(c10::DispatchKeySet keys, Args... args) {
    const auto all = std::forward_as_tuple(args...);
    std::vector<at::Tensor> written;
    NodePtr grad_fn;
    if (at::GradMode::is_enabled()) {  // under no_grad nothing is recorded: skip gathering the tensors
      written = tensors_where(WritingOpKernels::written(), true, all);
      grad_fn = before_write(Op::kName, written, tensors_where(WritingOpKernels::written(), false, all));
    }
    at::Tensor value;
    {
      at::AutoDispatchBelowAutograd guard;
      value = handle().redispatch(keys & c10::after_autograd_keyset, args...);
    }
    if (grad_fn) {
      torch::autograd::rebase_history(written, grad_fn);
      torch::autograd::set_history(value, grad_fn);
    }
    return value;
  }

  static at::Tensor bump_versions(c10::DispatchKeySet keys, Args... args) {
    at::Tensor value;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      value = handle().redispatch(keys & c10::after_ADInplaceOrView_keyset, args...);
    }
    for_each_tensor_where(written(), true, std::forward_as_tuple(args...),
                          [](const at::Tensor& t) { torch::autograd::increment_version(t); });
    return value;
  }
};

template <class... Ops>
void register_autograd(torch::Library& m) {
  (m.impl(Ops::kName, boxed<&WritingOpKernels<Ops>::autograd>()), ...);
}

template <class... Ops>
void register_inplace(torch::Library& m) {
  (m.impl(Ops::kName, &WritingOpKernels<Ops>::bump_versions), ...);
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, ADInplaceOrView, m) {
  register_inplace<AddPenaltyGradOp, DecayOp L2FAST_STEP_OPS(L2FAST_STEP_OP_TYPE)>(m);
}

TORCH_LIBRARY_IMPL(l2fast, Autograd, m) {
  register_autograd<AddPenaltyGradOp, DecayOp L2FAST_STEP_OPS(L2FAST_STEP_OP_TYPE)>(m);
}

}  // namespace l2fast
