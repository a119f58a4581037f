// The CPU backend's parallel walk over a chunk plan, shared by every CPU kernel: fixed-size chunks,
// one float64 Partial per chunk, folded in a fixed order, so results never depend on thread count.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "../math/fold.h"
#include "../entry/checks.h"
#include "../math/plan.h"
#include "schedule.h"
#include "spans.h"

namespace l2fast::cpu {

// 256K elements (1 MB of float32): a span's four streams (spans.h) then run 64K elements each, long
// enough for the hardware prefetcher to reach streaming speed (docs/cpu.md, "Chunk size"). Small
// enough that a 63M-parameter model is ~250 grabs, so the last grabs still even out threads of unequal
// speed. (The CUDA chunk is 16K: there a chunk is one block's work, and smaller chunks fill more SMs;
// see csrc/cuda/device.cuh.)
constexpr int64_t kChunk = 1 << 18;

template <typename T>
T* data_of(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

#define L2FAST_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "l2fast_cpu", __VA_ARGS__)

// Calls f(anchor) with the anchor stream (spans.h) of chunk c of a tensor of dtype T: NoAnchor unless
// `anchored`, else AnchorOf for the anchor's dtype (T's, or bfloat16) and whether fisher is given.
template <typename T, typename F>
decltype(auto) with_anchor(const Anchors& anchors, bool anchored, const Chunk& c, F f) {
  if (!anchored) return f(NoAnchor{});
  const auto stream = [&](auto tag) -> decltype(auto) {
    using A = decltype(tag);
    const A* a = data_of<A>(anchors.anchors[c.tensor]) + c.begin;
    if (anchors.fisher.empty()) return f(AnchorOf<A, false>{a, nullptr});
    return f(AnchorOf<A, true>{a, data_of<A>(anchors.fisher[c.tensor]) + c.begin});
  };
  if (!std::is_same_v<T, c10::BFloat16> && anchors.anchors[c.tensor].scalar_type() == at::kBFloat16)
    return stream(c10::BFloat16{});
  return stream(T{});
}

// Consecutive chunks handed out together: at least kChunk elements per grab, so a list of many small
// tensors costs one shared-counter update per kChunk elements rather than one per tensor.
inline std::vector<size_t> grab_bounds(const std::vector<Chunk>& chunks) {
  std::vector<size_t> bounds{0};
  int64_t filled = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    filled += chunks[k].len;
    if (filled >= kChunk || k + 1 == chunks.size()) {
      bounds.push_back(k + 1);
      filled = 0;
    }
  }
  return bounds;
}

// L2FAST_CPU_GRAB_ORDER=reverse (read once, at load) hands grabs out last first: a test hook that
// changes which thread takes which chunk, to show results do not depend on the schedule.
inline bool grabs_reversed() {
  static const bool reversed = [] {
    const char* order = std::getenv("L2FAST_CPU_GRAB_ORDER");
    return order != nullptr && std::string(order) == "reverse";
  }();
  return reversed;
}

// Runs chunk_fn on every chunk, in parallel, and returns one Partial per chunk, stored at the
// chunk's index. Threads take grabs of chunks from a shared counter until none are left, so a thread
// slowed by another process on its core does less of the work instead of holding up the others
// (schedule.h: which threads those are).
template <typename ChunkFn>
std::vector<Partial> for_each_chunk(const std::vector<Chunk>& chunks, ChunkFn chunk_fn) {
  std::vector<Partial> partials(chunks.size());
  const std::vector<size_t> bounds = grab_bounds(chunks);
  const auto grabs = static_cast<int64_t>(bounds.size()) - 1;
  const bool reversed = grabs_reversed();
  // torch's intra-op thread count (torch.set_num_threads) sets how many threads share the work.
  run_grabs(grabs, at::get_num_threads(), [&](int64_t g) {
    const int64_t grab = reversed ? grabs - 1 - g : g;
    for (size_t k = bounds[grab]; k < bounds[grab + 1]; ++k) partials[k] = chunk_fn(chunks[k]);
  });
  return partials;
}

// fold_block_order of count partials' `field`. One partial (a tensor of one chunk, the common case in
// long lists of small tensors) skips the 256 threads: the fold adds it to 0.0 and then only zeros, and
// adding 0.0 to 0.0 + v changes no bits, so 0.0 + v is the same result.
inline double fold_partials(const Partial* partials, int64_t count, double Partial::*field) {
  if (count == 1) return 0.0 + partials[0].*field;
  return fold_block_order(count, [&](int64_t j) { return partials[j].*field; });
}

// Per-tensor values from their chunk partials, then (unless per_tensor) their sum: both folds in
// the order fold.h fixes for the CPU and CUDA backends alike.
inline void finish(const std::vector<Chunk>& chunks, const std::vector<Partial>& partials,
                   const std::vector<Weights>& weights, bool per_tensor, at::Tensor& result) {
  std::vector<double> values(weights.size(), 0.0);
  for (size_t k = 0; k < chunks.size();) {
    size_t end = k;
    while (end < chunks.size() && chunks[end].tensor == chunks[k].tensor) ++end;
    const Partial* first = partials.data() + k;
    const auto count = static_cast<int64_t>(end - k);
    const Weights& w = weights[chunks[k].tensor];
    const double sq = fold_partials(first, count, &Partial::sq);
    const double abs = fold_partials(first, count, &Partial::abs);
    const double dev = w.sp != 0.0 ? fold_partials(first, count, &Partial::dev) : 0.0;
    values[chunks[k].tensor] = w.value(sq, abs, dev);
    k = end;
  }
  if (!per_tensor) {
    const double total = fold_block_order(static_cast<int64_t>(values.size()), [&](int64_t k) { return values[k]; });
    values.assign(1, total);
  }
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "l2fast_finish", [&] {
    std::copy(values.begin(), values.end(), result.data_ptr<scalar_t>());
  });
}

}  // namespace l2fast::cpu
