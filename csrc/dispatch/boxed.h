// The kernel a Python call reaches first, written boxed: it reads its arguments from the dispatcher's
// stack, passes every list of tensors on as borrowed handles, and drops the arguments with the GIL
// held once.
//
// Why: a Python call arrives boxed, its lists held as IValues that took one reference per tensor.
// In torch 2.13 a tensor whose Python object is alive keeps that object alive while C++ holds an
// extra reference, and dropping the last extra reference takes the GIL to release the object. The
// kernels run with the GIL released, so popping the arguments cost one GIL round trip per tensor of
// every list (a kernel registered from a typed function also copies each list into a vector first),
// and with another Python thread busy each round trip can wait for that thread's time slice
// (docs/cpu.md, "Per-call cost").
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

namespace l2fast {

// torch::jit::drop(stack, count), the dropped IValues released under one hold of the GIL (boxed.cpp).
void drop_args(torch::jit::Stack& stack, size_t count);

// at::Tensor handles to the tensors of a list IValue, or of several tensor lists one after another,
// made and dropped without touching their reference counts (c10::MaybeOwned's borrow). Valid while
// the tensors they were made from live.
class BorrowedTensors {
 public:
  explicit BorrowedTensors(const c10::IValue& list) {
    const c10::ArrayRef<c10::IValue> items = list.toListRef();
    tensors_.reserve(items.size());
    for (const c10::IValue& item : items) tensors_.push_back(Borrow::createBorrow(item.toTensor()));
  }
  explicit BorrowedTensors(const std::vector<at::TensorList>& lists) {
    size_t count = 0;
    for (at::TensorList list : lists) count += list.size();
    tensors_.reserve(count);
    for (at::TensorList list : lists)
      for (const at::Tensor& t : list) tensors_.push_back(Borrow::createBorrow(t));
  }
  ~BorrowedTensors() {
    for (at::Tensor& t : tensors_) Borrow::destroyBorrow(t);
  }
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;

  at::TensorList get() const { return tensors_; }

 private:
  using Borrow = c10::MaybeOwnedTraits<at::Tensor>;
  std::vector<at::Tensor> tensors_;
};

// One stack argument in the form the typed kernel takes it; get() is valid while the stack lives.
template <typename T>
struct StackArg {
  explicit StackArg(const c10::IValue& v) : value(v.to<T>()) {}
  T get() const { return value; }
  T value;
};

template <>
struct StackArg<at::TensorList> {
  explicit StackArg(const c10::IValue& v) : tensors(v) {}
  at::TensorList get() const { return tensors.get(); }
  BorrowedTensors tensors;
};

template <typename T>
struct StackArg<c10::ArrayRef<T>> {
  explicit StackArg(const c10::IValue& v) : values(v.to<std::vector<T>>()) {}
  c10::ArrayRef<T> get() const { return values; }
  std::vector<T> values;
};

template <>
struct StackArg<const at::Tensor&> {
  explicit StackArg(const c10::IValue& v) : tensor(v.toTensor()) {}
  const at::Tensor& get() const { return tensor; }
  const at::Tensor& tensor;
};

// An optional list (Tensor[]?): borrowed like a list when given.
template <>
struct StackArg<const std::optional<at::TensorList>&> {
  explicit StackArg(const c10::IValue& v) {
    if (!v.isNone()) tensors.emplace(v);
  }
  std::optional<at::TensorList> get() const {
    return tensors ? std::optional<at::TensorList>(tensors->get()) : std::nullopt;
  }
  std::optional<BorrowedTensors> tensors;
};

template <>
struct StackArg<const std::optional<at::Tensor>&> {
  explicit StackArg(const c10::IValue& v) : tensor(v.toOptional<at::Tensor>()) {}
  const std::optional<at::Tensor>& get() const { return tensor; }
  std::optional<at::Tensor> tensor;
};

// Calls fn with the top sizeof...(Args) stack arguments, each as its Args type, and puts its result
// in their place. Each StackArg is a temporary that lives until fn returns (the full expression).
template <typename... Args, typename Fn, size_t... kIndex>
void replace_args(torch::jit::Stack& stack, const Fn& fn, std::index_sequence<kIndex...>) {
  const c10::ArrayRef<c10::IValue> args = torch::jit::last(stack, sizeof...(Args));
  auto result = fn(StackArg<Args>(args[kIndex]).get()...);
  drop_args(stack, sizeof...(Args));
  torch::jit::push(stack, std::move(result));
}

template <auto kFn>
struct Boxed {
  static void call(const c10::OperatorHandle&, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    run(keys, *stack, kFn);
  }

  // Kernels that redispatch take the call's dispatch key set first (the more specialized overload).
  template <typename Result, typename... Args>
  static void run(c10::DispatchKeySet keys, torch::jit::Stack& stack, Result (*)(c10::DispatchKeySet, Args...)) {
    replace_args<Args...>(stack, [keys](auto&&... args) { return kFn(keys, std::forward<decltype(args)>(args)...); },
                          std::index_sequence_for<Args...>{});
  }

  template <typename Result, typename... Args>
  static void run(c10::DispatchKeySet, torch::jit::Stack& stack, Result (*)(Args...)) {
    replace_args<Args...>(stack, [](auto&&... args) { return kFn(std::forward<decltype(args)>(args)...); },
                          std::index_sequence_for<Args...>{});
  }
};

// The registration of kFn as a boxed kernel: m.impl("name", boxed<&kernel>()).
template <auto kFn>
torch::CppFunction boxed() {
  return torch::CppFunction::makeFromBoxedFunction<&Boxed<kFn>::call>();
}

}  // namespace l2fast
