#include "checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace l2fast {

bool holds_data(const at::Tensor& t) { return t.has_storage() && t.storage().device_type() != c10::kMeta; }

namespace {

// Layouts as Python users write them (torch.sparse_csr), and numbers as Python's format(x, "g") writes
// them, so these messages read as those of torch and of the reference's checks do.
std::string layout_name(at::Layout layout) {
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
  TORCH_CHECK(numel_of(scale) == 1, "l2fast: scale must hold one value, got shape ", scale.sym_sizes());
  TORCH_CHECK(params.empty() || scale.device() == params[0].device(), "l2fast: scale is on ", scale.device(),
              " but params are on ", params[0].device());
}

// The bytes a dense tensor occupies. Tensors with data are placed by address (so tensors of different
// storages over the same memory are caught too); tensors without data (meta, fake) within their storage.
struct ByteRange {
  uintptr_t base;  // 0 when start/end are addresses, else the storage's identity
  uintptr_t start;
  uintptr_t end;
  bool read;     // false: written
  size_t list;   // which list of the call (written lists in order, then the read one)
  size_t index;  // within that list
};

bool symbolic(const at::Tensor& t) { return t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); }

// A meta tensor of symbolic shape (under torch.compile) is placed by its sizes' current values, which
// guards the compiled graph on them, as any comparison of them would.
int64_t concrete(const c10::SymInt& value) { return value.guard_int(__FILE__, __LINE__); }

ByteRange range_of(const at::Tensor& t, bool read, size_t list, size_t index) {
  const auto bytes = static_cast<uintptr_t>(numel_of(t)) * t.element_size();
  const auto offset =
      static_cast<uintptr_t>(symbolic(t) ? concrete(t.sym_storage_offset()) : t.storage_offset()) * t.element_size();
  const c10::Storage& storage = t.storage();
  if (holds_data(t)) {
    const auto start = reinterpret_cast<uintptr_t>(storage.data()) + offset;
    return {0, start, start + bytes, read, list, index};
  }
  return {reinterpret_cast<uintptr_t>(storage.unsafeGetStorageImpl()), offset, offset + bytes, read, list, index};
}

// The order of the sweep below: by place in memory, then written before read, then by list and index.
bool before(const ByteRange& a, const ByteRange& b) {
  if (a.base != b.base) return a.base < b.base;
  if (a.start != b.start) return a.start < b.start;
  if (a.read != b.read) return b.read;
  if (a.list != b.list) return a.list < b.list;
  return a.index < b.index;
}

// Sorts ranges made in (read, list, index) order into `before` order. Long lists take a stable LSD
// radix sort on (base, start) relative to their smallest value, 11 bits per pass (about three passes for
// tensors spread over a gigabyte): several times faster than a comparison sort over 10^5 ranges, which
// made this check the largest per-tensor cost of an optimizer step over many small tensors.
void sort_ranges(std::vector<ByteRange>& ranges) {
  constexpr size_t kRadixFrom = 2048;
  if (ranges.size() < kRadixFrom) {
    std::sort(ranges.begin(), ranges.end(), before);
    return;
  }
  constexpr int kBits = 11;
  constexpr size_t kBuckets = size_t{1} << kBits;
  std::vector<ByteRange> sorted(ranges.size());
  std::vector<size_t> offsets(kBuckets);
  for (uintptr_t ByteRange::*key : {&ByteRange::start, &ByteRange::base}) {  // least significant key first
    const auto [lo, hi] = std::minmax_element(
        ranges.begin(), ranges.end(), [key](const ByteRange& a, const ByteRange& b) { return a.*key < b.*key; });
    const uintptr_t min = (*lo).*key, range = (*hi).*key - min;
    for (int shift = 0; shift < 64 && (range >> shift) != 0; shift += kBits) {
      const auto digit = [&](const ByteRange& r) { return ((r.*key - min) >> shift) & (kBuckets - 1); };
      std::fill(offsets.begin(), offsets.end(), 0);
      for (const ByteRange& r : ranges) ++offsets[digit(r)];
      size_t next = 0;
      for (size_t& offset : offsets) next += std::exchange(offset, next);
      for (const ByteRange& r : ranges) sorted[offsets[digit(r)]++] = r;
      ranges.swap(sorted);
    }
  }
}

[[noreturn]] void overlap_error(ByteRange a, ByteRange b, const std::vector<NamedTensors>& lists) {
  const auto name = [&](const ByteRange& r) { return c10::str(lists[r.list].name, "[", r.index, "]"); };
  if (!a.read && !b.read) {
    if (std::tie(b.list, b.index) < std::tie(a.list, a.index)) std::swap(a, b);  // in argument order
    const bool same = a.start == b.start && a.end == b.end;
    TORCH_CHECK(false, "l2fast: ", name(a), " and ", name(b), " ",
                same ? "are the same memory (a tensor listed twice?)" : "overlap in memory",
                "; an in-place op must write each element once");
  }
  if (a.read) std::swap(a, b);
  TORCH_CHECK(false, "l2fast: ", name(a), " overlaps ", name(b),
              " in memory; the op would read values while it overwrites them");
}

}  // namespace

std::string dtype_name(at::ScalarType dtype) { return "torch." + std::string(c10::getDtypeNames(dtype).first); }

int64_t numel_of(const at::Tensor& t) { return symbolic(t) ? concrete(t.sym_numel()) : t.numel(); }

bool same_sizes(const at::Tensor& a, const at::Tensor& b) {
  return symbolic(a) || symbolic(b) ? a.sym_sizes() == b.sym_sizes() : a.sizes() == b.sizes();
}

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  const bool same = symbolic(a) || symbolic(b) ? a.sym_strides() == b.sym_strides() : a.strides() == b.strides();
  return same || (a.is_contiguous() && b.is_contiguous());
}

void check_tensors(at::TensorList tensors, const char* name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), "l2fast: ", name, "[", i, "] is undefined (None)");
    TORCH_CHECK(t.layout() == at::kStrided, "l2fast: ", name, "[", i, "] has layout ", layout_name(t.layout()),
                "; only dense (strided) tensors are supported, not sparse ones");
    const auto dtype = t.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                "l2fast: ", name, "[", i, "] has dtype ", dtype_name(dtype),
                "; supported dtypes are float32, float64, float16 and bfloat16");
    TORCH_CHECK(t.device() == tensors[0].device(), "l2fast: ", name, "[", i, "] is on ", t.device(),
                " but ", name, "[0] is on ", tensors[0].device(), "; all tensors must be on one device");
    TORCH_CHECK(t.is_non_overlapping_and_dense(), "l2fast: ", name, "[", i, "] with shape ", t.sym_sizes(),
                " and strides ", t.sym_strides(), " is not dense in memory; pass .contiguous() tensors");
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
    TORCH_CHECK(g.scalar_type() == w.scalar_type(), "l2fast: grads[", i, "] has dtype ", dtype_name(g.scalar_type()),
                " but params[", i, "] has dtype ", dtype_name(w.scalar_type()));
    TORCH_CHECK(same_sizes(g, w), "l2fast: grads[", i, "] has shape ", g.sym_sizes(), " but params[",
                i, "] has shape ", w.sym_sizes());
    TORCH_CHECK(same_layout(g, w), "l2fast: grads[", i, "] has strides ", g.sym_strides(), " but params[", i,
                "] has strides ", w.sym_strides(),
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

void check_no_overlap(const std::vector<NamedTensors>& written, NamedTensors read, const Anchors& anchors) {
  std::vector<NamedTensors> lists = written;
  lists.push_back(read);
  lists.push_back({anchors.anchors, "anchors"});
  lists.push_back({anchors.fisher, "fisher"});
  // Written ranges, then read ones, each in list and index order: the order sort_ranges expects.
  std::vector<ByteRange> ranges;
  // first_written[i]: where written[0][i] sits in ranges, or -1 when it is empty (an empty tensor
  // overlaps nothing).
  std::vector<int64_t> first_written;
  for (size_t l = 0; l < written.size(); ++l) {
    const at::TensorList tensors = written[l].tensors;
    if (l == 0) first_written.assign(tensors.size(), -1);
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (numel_of(tensors[i]) == 0) continue;
      if (l == 0) first_written[i] = static_cast<int64_t>(ranges.size());
      ranges.push_back(range_of(tensors[i], false, l, i));
    }
  }
  for (size_t i = 0; i < read.tensors.size(); ++i) {
    if (numel_of(read.tensors[i]) == 0) continue;
    const ByteRange r = range_of(read.tensors[i], true, written.size(), i);
    if (i < first_written.size() && first_written[i] >= 0) {
      const ByteRange& w = ranges[first_written[i]];  // read in place, element by element: covered by `w`
      if (w.base == r.base && w.start == r.start && w.end == r.end) continue;
    }
    ranges.push_back(r);
  }
  // The anchors are read beside the update, never in its place: no exception for them.
  for (size_t l = written.size() + 1; l < lists.size(); ++l)
    for (size_t i = 0; i < lists[l].tensors.size(); ++i)
      if (numel_of(lists[l].tensors[i]) != 0) ranges.push_back(range_of(lists[l].tensors[i], true, l, i));
  sort_ranges(ranges);
  // Sweep in start order: a range overlaps an earlier one exactly when it starts before the furthest
  // end reached so far, so keeping the furthest-reaching written and read range is enough.
  const ByteRange* furthest[2] = {nullptr, nullptr};  // [read]
  for (const ByteRange& r : ranges) {
    for (const ByteRange*& f : furthest)
      if (f != nullptr && f->base != r.base) f = nullptr;
    const ByteRange* w = furthest[0];
    const ByteRange* rd = furthest[1];
    if (w != nullptr && w->end > r.start) overlap_error(*w, r, lists);
    if (!r.read && rd != nullptr && rd->end > r.start) overlap_error(*rd, r, lists);
    if (furthest[r.read] == nullptr || r.end > furthest[r.read]->end) furthest[r.read] = &r;
  }
}

void check_norm_args(at::TensorList tensors, c10::ArrayRef<double> coeffs) {
  check_tensors(tensors, "tensors");
  check_coeffs(coeffs, tensors.size(), "coeffs");
}

void check_penalty_args(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1,
                        const Anchors& anchors, c10::ArrayRef<double> l2_sp) {
  check_tensors(params, "params");
  check_coeffs(l2, params.size(), "l2");
  check_coeffs(l1, params.size(), "l1");
  check_anchors(params, anchors, {{l2_sp, "l2_sp"}});
}

void check_penalty_grad_args(at::TensorList params, const at::Tensor& scale, c10::ArrayRef<double> l2,
                             c10::ArrayRef<double> l1, const Anchors& anchors, c10::ArrayRef<double> l2_sp) {
  check_tensors(params, "params");
  check_scale(scale, params);
  check_coeffs(l2, params.size(), "l2");
  check_coeffs(l1, params.size(), "l1");
  check_anchors(params, anchors, {{l2_sp, "l2_sp"}});
}

void check_add_penalty_grad_args(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                                 c10::ArrayRef<double> l1, const Anchors& anchors, c10::ArrayRef<double> l2_sp) {
  check_tensors(params, "params");
  check_tensors(grads, "grads");  // before the pairing, so a sparse grad is named as sparse
  check_pairs(params, grads);
  check_coeffs(l2, params.size(), "l2");
  check_coeffs(l1, params.size(), "l1");
  check_anchors(params, anchors, {{l2_sp, "l2_sp"}});
  check_no_overlap({{grads, "grads"}}, {params, "params"}, anchors);
}

void check_decay_args(at::TensorList params, c10::ArrayRef<double> factors, c10::ArrayRef<double> l2,
                      const Anchors& anchors, c10::ArrayRef<double> sp_factors, c10::ArrayRef<double> l2_sp) {
  check_tensors(params, "params");
  check_coeffs(factors, params.size(), "factors");
  check_coeffs(l2, params.size(), "l2");
  check_anchors(params, anchors, {{sp_factors, "sp_factors"}, {l2_sp, "l2_sp"}});
  check_no_overlap({{params, "params"}}, {}, anchors);
}

namespace {

// One anchors list (anchors or fisher) against params: length, then per tensor device, dtype (against
// `dtype_of`, with the rule `dtype_rule` names), shape, layout.
template <class DtypeOk>
void check_anchor_list(at::TensorList params, at::TensorList list, const char* name, const DtypeOk& dtype_ok,
                       const char* dtype_peer, at::TensorList peers, const char* dtype_rule) {
  check_tensors(list, name);
  TORCH_CHECK(list.size() == params.size(), "l2fast: got ", params.size(), " params but ", list.size(), " ", name);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor &a = list[i], &w = params[i];
    TORCH_CHECK(a.device() == w.device(), "l2fast: ", name, "[", i, "] is on ", a.device(), " but params[", i,
                "] is on ", w.device());
    TORCH_CHECK(dtype_ok(a.scalar_type(), i), "l2fast: ", name, "[", i, "] has dtype ", dtype_name(a.scalar_type()),
                " but ", dtype_peer, "[", i, "] has dtype ", dtype_name(peers[i].scalar_type()), "; ", dtype_rule);
    TORCH_CHECK(same_sizes(a, w), "l2fast: ", name, "[", i, "] has shape ", a.sym_sizes(), " but params[", i,
                "] has shape ", w.sym_sizes());
    TORCH_CHECK(same_layout(a, w), "l2fast: ", name, "[", i, "] has strides ", a.sym_strides(), " but params[", i,
                "] has strides ", w.sym_strides(), "; they must share one memory layout");
  }
}

bool share_memory(const at::Tensor& a, const at::Tensor& b) {
  if (numel_of(a) == 0 || numel_of(b) == 0) return false;
  const ByteRange x = range_of(a, true, 0, 0), y = range_of(b, true, 0, 0);
  return x.base == y.base && x.start < y.end && y.start < x.end;
}

}  // namespace

void check_anchors(at::TensorList params, const Anchors& anchors, const std::vector<NamedCoeffs>& coeffs) {
  TORCH_CHECK(anchors.given() || anchors.fisher.empty(),
              "l2fast: fisher needs anchors (the importance of each weight's pull toward its anchor)");
  if (anchors.given()) {
    check_anchor_list(
        params, anchors.anchors, "anchors",
        [&](at::ScalarType t, size_t i) { return t == params[i].scalar_type() || t == at::kBFloat16; }, "params",
        params, "an anchor is stored in its parameter's dtype or in bfloat16");
    if (!anchors.fisher.empty())
      check_anchor_list(
          params, anchors.fisher, "fisher",
          [&](at::ScalarType t, size_t i) { return t == anchors.anchors[i].scalar_type(); }, "anchors",
          anchors.anchors, "fisher is stored in its anchor's dtype");
  }
  for (const auto& [list, name] : coeffs) {
    check_coeffs(list, params.size(), name);
    TORCH_CHECK(anchors.given() || std::all_of(list.begin(), list.end(), [](double c) { return c == 0.0; }),
                "l2fast: ", name, " is nonzero but no anchors were given; pass anchors (the weights to pull toward)");
  }
  for (size_t i = 0; i < anchors.anchors.size(); ++i) {
    TORCH_CHECK(!share_memory(anchors.anchors[i], params[i]), "l2fast: anchors[", i, "] shares memory with params[", i,
                "]; the pull toward it would always be zero (anchor a copy: p.detach().clone())");
    TORCH_CHECK(anchors.fisher.empty() || !share_memory(anchors.fisher[i], params[i]), "l2fast: fisher[", i,
                "] shares memory with params[", i, "]; pass a tensor of its own");
  }
}

at::ScalarType result_dtype(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

}  // namespace l2fast
