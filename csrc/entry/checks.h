// Argument checks shared by every backend, so a bad call fails the same way on CPU, CUDA and meta
// (they are the fake kernels of torch.compile too: sizes may be symbolic there, hence sym_*).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace l2fast {

// The optional anchors of a penalty op (l2fast.cpp): anchors[i] holds the weights params[i] is pulled
// toward, fisher[i] their importances (F = 1 without). Empty lists: none.
struct Anchors {
  at::TensorList anchors, fisher;
  bool given() const { return !anchors.empty(); }
};

inline Anchors anchors_of(const std::optional<at::TensorList>& anchors, const std::optional<at::TensorList>& fisher) {
  return {anchors.value_or(at::TensorList()), fisher.value_or(at::TensorList())};
}

// A coefficient list with the name error messages give it.
using NamedCoeffs = std::pair<c10::ArrayRef<double>, const char*>;

// Every check one op's arguments must pass, in one fixed order.
void check_norm_args(at::TensorList tensors, c10::ArrayRef<double> coeffs);
void check_penalty_args(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1,
                        const Anchors& anchors, c10::ArrayRef<double> l2_sp);
void check_penalty_grad_args(at::TensorList params, const at::Tensor& scale, c10::ArrayRef<double> l2,
                             c10::ArrayRef<double> l1, const Anchors& anchors, c10::ArrayRef<double> l2_sp);
void check_add_penalty_grad_args(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                                 c10::ArrayRef<double> l1, const Anchors& anchors, c10::ArrayRef<double> l2_sp);
void check_decay_args(at::TensorList params, c10::ArrayRef<double> factors, c10::ArrayRef<double> l2,
                      const Anchors& anchors, c10::ArrayRef<double> sp_factors, c10::ArrayRef<double> l2_sp);

// The anchors of params (anchors[i] in params[i]'s device, shape and layout, in its dtype or bfloat16;
// fisher[i] likewise, in anchors[i]'s dtype; neither in params[i]'s own memory) and the coefficient lists
// that weigh them (each checked as check_coeffs does; a nonzero one needs anchors). Every op that takes
// anchors runs this after its own tensor and coefficient checks.
void check_anchors(at::TensorList params, const Anchors& anchors, const std::vector<NamedCoeffs>& coeffs);

// Every tensor: strided (not sparse), real floating point (float32/64, float16, bfloat16),
// dense in memory (contiguous or any permutation of it, e.g. channels_last), one device.
void check_tensors(at::TensorList tensors, const char* name);

// grads[i] matches params[i] in length, device, dtype, shape and memory layout.
void check_pairs(at::TensorList params, at::TensorList grads);

// One value (for every tensor) or one per tensor; each finite and >= 0.
void check_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name);

// numel and shape comparisons for tensors of concrete sizes (torch's plain accessors, cheaper per tensor)
// or of symbolic ones (meta tensors under torch.compile: the comparison guards the compiled graph).
int64_t numel_of(const at::Tensor& t);
// Whether t's elements are in memory: false for meta tensors and torch's fake tensors (whose storage is a
// meta storage whatever device they stand for).
bool holds_data(const at::Tensor& t);
bool same_sizes(const at::Tensor& a, const at::Tensor& b);

// grads[i] and params[i] (or a state tensor and its param) are walked by the same flat index: equal
// strides, or both contiguous (strides of size-1 dimensions do not matter then).
bool same_layout(const at::Tensor& a, const at::Tensor& b);

// A list of tensors with the name error messages give it.
struct NamedTensors {
  at::TensorList tensors;
  const char* name = "";
};

// No two tensors of the written lists share memory, and no tensor of `read` or of the anchors' lists
// shares memory with a written one, except read[i] being exactly written[0][i] (an elementwise update in
// place reads each element before writing it). Views of one storage that do not overlap are fine.
// O(n log n) in the number of tensors.
void check_no_overlap(const std::vector<NamedTensors>& written, NamedTensors read = {}, const Anchors& anchors = {});

// A dtype as Python users write it: torch.int64.
std::string dtype_name(at::ScalarType dtype);

// float64 if any input is float64, else float32 (half types accumulate and report in float32+).
at::ScalarType result_dtype(at::TensorList tensors);

}  // namespace l2fast
