#include "checks.h"

#include <string>

namespace l2fast {
namespace {

// Dtypes as Python users write them: torch.int64, not Long.
std::string py_name(at::ScalarType dtype) { return "torch." + std::string(c10::getDtypeNames(dtype).first); }

}  // namespace

void check_tensors(at::TensorList tensors, const char* name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), "l2fast: ", name, "[", i, "] is undefined (None)");
    TORCH_CHECK(t.layout() == at::kStrided, "l2fast: ", name, "[", i, "] has layout ", t.layout(),
                "; only dense (strided) tensors are supported, not sparse ones");
    const auto dtype = t.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                "l2fast: ", name, "[", i, "] has dtype ", py_name(dtype),
                "; supported dtypes are float32, float64, float16 and bfloat16");
    TORCH_CHECK(t.device() == tensors[0].device(), "l2fast: ", name, "[", i, "] is on ", t.device(),
                " but ", name, "[0] is on ", tensors[0].device(), "; all tensors must be on one device");
    TORCH_CHECK(t.is_non_overlapping_and_dense(), "l2fast: ", name, "[", i, "] with shape ", t.sizes(),
                " and strides ", t.strides(), " is not dense in memory; pass .contiguous() tensors");
  }
}

void check_pairs(at::TensorList params, at::TensorList grads) {
  TORCH_CHECK(params.size() == grads.size(), "l2fast: got ", params.size(), " params but ", grads.size(),
              " grads; they must pair up one to one");
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& w = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.defined(), "l2fast: grads[", i, "] is undefined (None)");
    TORCH_CHECK(g.scalar_type() == w.scalar_type(), "l2fast: grads[", i, "] has dtype ", py_name(g.scalar_type()),
                " but params[", i, "] has dtype ", py_name(w.scalar_type()));
    TORCH_CHECK(g.sizes() == w.sizes(), "l2fast: grads[", i, "] has shape ", g.sizes(), " but params[", i,
                "] has shape ", w.sizes());
    TORCH_CHECK(g.strides() == w.strides() || (g.is_contiguous() && w.is_contiguous()), "l2fast: grads[", i,
                "] has strides ", g.strides(), " but params[", i, "] has strides ", w.strides(),
                "; they must share one memory layout");
  }
}

std::vector<double> expand_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name) {
  TORCH_CHECK(coeffs.size() == 1 || coeffs.size() == n, "l2fast: ", name, " has ", coeffs.size(),
              " values for ", n, " tensors; give one value, or one per tensor");
  if (coeffs.size() == n) return coeffs.vec();
  return std::vector<double>(n, coeffs[0]);
}

at::ScalarType result_dtype(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

}  // namespace l2fast
