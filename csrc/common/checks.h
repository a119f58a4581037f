// Argument checks shared by every backend, so a bad call fails the same way on CPU and CUDA.
// l2fast/checks.py runs the same checks in the same order with the same messages (the fake kernels
// and the pure-PyTorch reference use it); tests/test_checks.py holds the two to each other.
#pragma once
#include <ATen/ATen.h>
#include <vector>

namespace l2fast {

// Every check one op's arguments must pass, in one fixed order.
void check_norm_args(at::TensorList tensors, c10::ArrayRef<double> coeffs);
void check_penalty_args(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1);
void check_penalty_grad_args(at::TensorList params, const at::Tensor& scale, c10::ArrayRef<double> l2,
                             c10::ArrayRef<double> l1);
void check_add_penalty_grad_args(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                                 c10::ArrayRef<double> l1);
void check_decay_args(at::TensorList params, c10::ArrayRef<double> factors, c10::ArrayRef<double> l2);

// Every tensor: strided (not sparse), real floating point (float32/64, float16, bfloat16),
// dense in memory (contiguous or any permutation of it, e.g. channels_last), one device.
void check_tensors(at::TensorList tensors, const char* name);

// grads[i] matches params[i] in length, device, dtype, shape and memory layout.
void check_pairs(at::TensorList params, at::TensorList grads);

// One value (for every tensor) or one per tensor; each finite and >= 0.
void check_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name);

// No two tensors of `written` share memory, and no tensor of `read` shares memory with a written one,
// except read[i] being exactly written[i] (an elementwise update in place reads each element before
// writing it). Views of one storage that do not overlap are fine. O(n log n) in the number of tensors.
void check_no_overlap(at::TensorList written, const char* written_name, at::TensorList read, const char* read_name);

// A coefficient list of one value (for every tensor) or one value per tensor, expanded to n.
std::vector<double> expand_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name);

// float64 if any input is float64, else float32 (half types accumulate and report in float32+).
at::ScalarType result_dtype(at::TensorList tensors);

}  // namespace l2fast
