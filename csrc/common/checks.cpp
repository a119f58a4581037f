#include "checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace l2fast {
namespace {

// Names as Python users write them (torch.int64, torch.sparse_csr), and numbers as Python's
// format(x, "g") writes them, so these messages read the same as those of l2fast/checks.py.
std::string py_name(at::ScalarType dtype) { return "torch." + std::string(c10::getDtypeNames(dtype).first); }

std::string py_name(at::Layout layout) {
  switch (layout) {
    case at::kStrided: return "torch.strided";
    case at::kSparse: return "torch.sparse_coo";
    case at::kSparseCsr: return "torch.sparse_csr";
    case at::kSparseCsc: return "torch.sparse_csc";
    case at::kSparseBsr: return "torch.sparse_bsr";
    case at::kSparseBsc: return "torch.sparse_bsc";
    case at::kMkldnn: return "torch._mkldnn";
    case at::kJagged: return "torch.jagged";
    default: return c10::str(layout);
  }
}

std::string number(double value) {
  if (std::isnan(value)) return "nan";
  std::ostringstream out;
  out << value;  // 6 significant digits, like %g
  return out.str();
}

void check_scale(const at::Tensor& scale, at::TensorList params) {
  TORCH_CHECK(scale.numel() == 1, "l2fast: scale must hold one value, got shape ", scale.sizes());
  TORCH_CHECK(params.empty() || scale.device() == params[0].device(), "l2fast: scale is on ", scale.device(),
              " but params are on ", params[0].device());
}

// The bytes a dense tensor occupies. Tensors with data are placed by address (so tensors of different
// storages over the same memory are caught too); tensors without data (meta) within their storage.
struct Span {
  uintptr_t base;  // 0 when start/end are addresses, else the storage's identity
  uintptr_t start;
  uintptr_t end;
  int list;  // 0: written, 1: read
  size_t index;
};

Span span_of(const at::Tensor& t, int list, size_t index) {
  const auto bytes = static_cast<uintptr_t>(t.numel()) * t.element_size();
  const auto offset = static_cast<uintptr_t>(t.storage_offset()) * t.element_size();
  const c10::Storage& storage = t.storage();
  if (const void* data = storage.data()) {
    const auto start = reinterpret_cast<uintptr_t>(data) + offset;
    return {0, start, start + bytes, list, index};
  }
  return {reinterpret_cast<uintptr_t>(storage.unsafeGetStorageImpl()), offset, offset + bytes, list, index};
}

// The order of the sweep below: by place in memory, then written before read, then by index.
bool before(const Span& a, const Span& b) {
  if (a.base != b.base) return a.base < b.base;
  if (a.start != b.start) return a.start < b.start;
  if (a.list != b.list) return a.list < b.list;
  return a.index < b.index;
}

// Sorts spans made in (list, index) order into `before` order. Long lists take a stable LSD radix sort
// on (base, start) relative to their smallest value, 11 bits per pass (about three passes for tensors
// spread over a gigabyte): several times faster than a comparison sort over 10^5 spans, which made this
// check the largest per-tensor cost of an optimizer step over many small tensors.
void sort_spans(std::vector<Span>& spans) {
  constexpr size_t kRadixFrom = 2048;
  if (spans.size() < kRadixFrom) {
    std::sort(spans.begin(), spans.end(), before);
    return;
  }
  constexpr int kBits = 11;
  constexpr size_t kBuckets = size_t{1} << kBits;
  std::vector<Span> sorted(spans.size());
  std::vector<size_t> offsets(kBuckets);
  for (uintptr_t Span::*key : {&Span::start, &Span::base}) {  // least significant key first
    const auto [lo, hi] = std::minmax_element(spans.begin(), spans.end(),
                                              [key](const Span& a, const Span& b) { return a.*key < b.*key; });
    const uintptr_t min = (*lo).*key, range = (*hi).*key - min;
    for (int shift = 0; shift < 64 && (range >> shift) != 0; shift += kBits) {
      const auto digit = [&](const Span& s) { return ((s.*key - min) >> shift) & (kBuckets - 1); };
      std::fill(offsets.begin(), offsets.end(), 0);
      for (const Span& s : spans) ++offsets[digit(s)];
      size_t next = 0;
      for (size_t& offset : offsets) next += std::exchange(offset, next);
      for (const Span& s : spans) sorted[offsets[digit(s)]++] = s;
      spans.swap(sorted);
    }
  }
}

[[noreturn]] void overlap_error(const Span& a, const Span& b, const char* written_name, const char* read_name) {
  if (a.list == 0 && b.list == 0) {
    const bool same = a.start == b.start && a.end == b.end;
    TORCH_CHECK(false, "l2fast: ", written_name, "[", std::min(a.index, b.index), "] and ", written_name, "[",
                std::max(a.index, b.index), "] ", same ? "are the same memory (a tensor listed twice?)" : "overlap in memory",
                "; an in-place op must write each element once");
  }
  const Span& w = a.list == 0 ? a : b;
  const Span& r = a.list == 0 ? b : a;
  TORCH_CHECK(false, "l2fast: ", written_name, "[", w.index, "] overlaps ", read_name, "[", r.index,
              "] in memory; the op would read values while it overwrites them");
}

}  // namespace

void check_tensors(at::TensorList tensors, const char* name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), "l2fast: ", name, "[", i, "] is undefined (None)");
    TORCH_CHECK(t.layout() == at::kStrided, "l2fast: ", name, "[", i, "] has layout ", py_name(t.layout()),
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
    TORCH_CHECK(g.device() == w.device(), "l2fast: grads[", i, "] is on ", g.device(), " but params[", i,
                "] is on ", w.device());
    TORCH_CHECK(g.scalar_type() == w.scalar_type(), "l2fast: grads[", i, "] has dtype ", py_name(g.scalar_type()),
                " but params[", i, "] has dtype ", py_name(w.scalar_type()));
    TORCH_CHECK(g.sizes() == w.sizes(), "l2fast: grads[", i, "] has shape ", g.sizes(), " but params[", i,
                "] has shape ", w.sizes());
    TORCH_CHECK(g.strides() == w.strides() || (g.is_contiguous() && w.is_contiguous()), "l2fast: grads[", i,
                "] has strides ", g.strides(), " but params[", i, "] has strides ", w.strides(),
                "; they must share one memory layout");
  }
}

void check_coeffs(c10::ArrayRef<double> coeffs, size_t n, const char* name) {
  TORCH_CHECK(coeffs.size() == 1 || coeffs.size() == n, "l2fast: ", name, " has ", coeffs.size(),
              " values for ", n, " tensors; give one value, or one per tensor");
  for (size_t i = 0; i < coeffs.size(); ++i)
    TORCH_CHECK(std::isfinite(coeffs[i]) && coeffs[i] >= 0.0, "l2fast: ", name, "[", i, "] = ", number(coeffs[i]),
                " is invalid; coefficients must be finite and >= 0");
}

void check_no_overlap(at::TensorList written, const char* written_name, at::TensorList read, const char* read_name) {
  // Written spans, then read ones, each in index order: the order sort_spans expects.
  std::vector<Span> spans;
  spans.reserve(written.size() + read.size());
  // own[i]: where written[i] sits in spans, or -1 when it is empty (an empty tensor overlaps nothing).
  std::vector<int64_t> own(written.size(), -1);
  for (size_t i = 0; i < written.size(); ++i) {
    if (written[i].numel() == 0) continue;
    own[i] = static_cast<int64_t>(spans.size());
    spans.push_back(span_of(written[i], 0, i));
  }
  for (size_t i = 0; i < read.size(); ++i) {
    if (read[i].numel() == 0) continue;
    const Span span = span_of(read[i], 1, i);
    if (i < written.size() && own[i] >= 0) {
      const Span& w = spans[own[i]];  // read in place, element by element: covered by `w`
      if (w.base == span.base && w.start == span.start && w.end == span.end) continue;
    }
    spans.push_back(span);
  }
  sort_spans(spans);
  // Sweep in start order: a span overlaps an earlier one exactly when it starts before the furthest
  // end reached so far, so keeping the furthest-reaching written and read span is enough.
  const Span* furthest[2] = {nullptr, nullptr};
  for (const Span& s : spans) {
    for (const Span*& f : furthest)
      if (f != nullptr && f->base != s.base) f = nullptr;
    const Span* w = furthest[0];
    const Span* r = furthest[1];
    if (w != nullptr && w->end > s.start) overlap_error(*w, s, written_name, read_name);
    if (s.list == 0 && r != nullptr && r->end > s.start) overlap_error(*r, s, written_name, read_name);
    if (furthest[s.list] == nullptr || s.end > furthest[s.list]->end) furthest[s.list] = &s;
  }
}

void check_norm_args(at::TensorList tensors, c10::ArrayRef<double> coeffs) {
  check_tensors(tensors, "tensors");
  check_coeffs(coeffs, tensors.size(), "coeffs");
}

void check_penalty_args(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1) {
  check_tensors(params, "params");
  check_coeffs(l2, params.size(), "l2");
  check_coeffs(l1, params.size(), "l1");
}

void check_penalty_grad_args(at::TensorList params, const at::Tensor& scale, c10::ArrayRef<double> l2,
                             c10::ArrayRef<double> l1) {
  check_tensors(params, "params");
  check_scale(scale, params);
  check_coeffs(l2, params.size(), "l2");
  check_coeffs(l1, params.size(), "l1");
}

void check_add_penalty_grad_args(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                                 c10::ArrayRef<double> l1) {
  check_tensors(params, "params");
  check_tensors(grads, "grads");  // before the pairing, so a sparse grad is named as sparse
  check_pairs(params, grads);
  check_coeffs(l2, params.size(), "l2");
  check_coeffs(l1, params.size(), "l1");
  check_no_overlap(grads, "grads", params, "params");
}

void check_decay_args(at::TensorList params, c10::ArrayRef<double> factors, c10::ArrayRef<double> l2) {
  check_tensors(params, "params");
  check_coeffs(factors, params.size(), "factors");
  check_coeffs(l2, params.size(), "l2");
  check_no_overlap(params, "params", {}, "");
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
