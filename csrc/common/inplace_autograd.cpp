// Autograd and ADInplaceOrView kernels of the ops that write their arguments (add_penalty_grad_ writes
// grads, decay_ params, adam_step_ and sgd_step_ params and optimizer state), so that they behave as
// torch's own in-place ops do:
//  - ADInplaceOrView: every written tensor's version counter is bumped, so a backward that needs a
//    value saved before the write raises "modified by an inplace operation" instead of using the new one;
//  - Autograd, with grad mode on: writing a leaf that requires grad (or a view of one) raises torch's
//    error; when some argument requires grad, the written tensors and the returned value get a grad_fn
//    whose backward raises "derivative for l2fast::... is not implemented" (the ops have no derivative).
// Under torch.no_grad(), as optimizers call them, only the version counters change. One mechanism for
// all four ops: each is described by its signature and which arguments it writes and reads. The
// Autograd kernels are registered boxed (boxed.h): a Python call arrives boxed, and they drop its lists
// under one hold of the GIL; the ADInplaceOrView and backend kernels are reached unboxed from them.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

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

using Coeffs = c10::ArrayRef<double>;
using OptionalTensor = const std::optional<at::Tensor>&;

// Each op: its name, its signature as registered, and the positions of the tensor arguments it
// writes and of those it only reads.
struct AddPenaltyGradOp {
  static constexpr const char* kName = "l2fast::add_penalty_grad_";
  using Signature = at::Tensor(at::TensorList, at::TensorList, Coeffs, Coeffs);
  using Written = std::index_sequence<1>;
  using Read = std::index_sequence<0>;
};

struct DecayOp {
  static constexpr const char* kName = "l2fast::decay_";
  using Signature = at::Tensor(at::TensorList, Coeffs, Coeffs);
  using Written = std::index_sequence<0>;
  using Read = std::index_sequence<>;
};

struct AdamStepOp {
  static constexpr const char* kName = "l2fast::adam_step_";
  using Signature = at::Tensor(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                               at::TensorList, Coeffs, Coeffs, Coeffs, Coeffs, Coeffs, Coeffs, Coeffs, Coeffs, bool,
                               OptionalTensor, OptionalTensor, OptionalTensor);
  using Written = std::index_sequence<0, 1, 2, 3, 4, 5>;  // params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
  using Read = std::index_sequence<15, 16, 17>;             // grad_scale, found_inf, clip
};

struct SgdStepOp {
  static constexpr const char* kName = "l2fast::sgd_step_";
  using Signature = at::Tensor(at::TensorList, at::TensorList, at::TensorList, Coeffs, Coeffs, Coeffs,
                               c10::ArrayRef<int64_t>, Coeffs, Coeffs, Coeffs, Coeffs, bool, bool, OptionalTensor,
                               OptionalTensor, OptionalTensor);
  using Written = std::index_sequence<0, 1, 2>;  // params, grads, momentum_buffers
  using Read = std::index_sequence<13, 14, 15>;   // grad_scale, found_inf, clip
};

template <typename Fn>
void for_each_tensor(at::TensorList tensors, const Fn& fn) {
  for (const at::Tensor& t : tensors) fn(t);
}

template <typename Fn>
void for_each_tensor(const std::optional<at::Tensor>& tensor, const Fn& fn) {
  if (tensor && tensor->defined()) fn(*tensor);
}

// fn(tensor) for every tensor of the arguments at kIndex..., in order.
template <size_t... kIndex, typename Args, typename Fn>
void for_each_tensor_at(std::index_sequence<kIndex...>, const Args& args, const Fn& fn) {
  (for_each_tensor(std::get<kIndex>(args), fn), ...);
}

template <typename Positions, typename Args>
std::vector<at::Tensor> tensors_at(Positions positions, const Args& args) {
  std::vector<at::Tensor> out;
  for_each_tensor_at(positions, args, [&](const at::Tensor& t) { out.push_back(t); });
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

  static at::Tensor autograd(c10::DispatchKeySet keys, Args... args) {
    const auto all = std::forward_as_tuple(args...);
    std::vector<at::Tensor> written;
    NodePtr grad_fn;
    if (at::GradMode::is_enabled()) {  // under no_grad nothing is recorded: skip gathering the tensors
      written = tensors_at(typename Op::Written{}, all);
      grad_fn = before_write(Op::kName, written, tensors_at(typename Op::Read{}, all));
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
    for_each_tensor_at(typename Op::Written{}, std::forward_as_tuple(args...),
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

TORCH_LIBRARY_IMPL(l2fast, ADInplaceOrView, m) { register_inplace<AddPenaltyGradOp, DecayOp, AdamStepOp, SgdStepOp>(m); }

TORCH_LIBRARY_IMPL(l2fast, Autograd, m) { register_autograd<AddPenaltyGradOp, DecayOp, AdamStepOp, SgdStepOp>(m); }

}  // namespace l2fast
