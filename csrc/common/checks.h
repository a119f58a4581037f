// Argument checks shared by every backend, so a bad call fails the same way on CPU and CUDA.
#pragma once
#include <ATen/ATen.h>
#include <vector>

namespace l2fast {

// Every tensor: strided (not sparse), real floating point (float32/64, float16, bfloat16),
// dense in memory (contiguous or any permutation of it, e.g. channels_last), one device.
void check_tensors(at::TensorList tensors, const char* name);

// grads[i] matches params[i] in length, dtype, shape and memory layout.
void check_pairs(at::TensorList params, at::TensorList grads);

// A coefficient list of one value (for every tensor) or one value per tensor, expanded to n.
std::vector<double> expand_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name);

// float64 if any input is float64, else float32 (half types accumulate and report in float32+).
at::ScalarType result_dtype(at::TensorList tensors);

}  // namespace l2fast
