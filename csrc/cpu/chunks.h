// The CPU backend's parallel walk over a chunk plan, shared by every CPU kernel: fixed-size chunks,
// one float64 Partial per chunk, folded in a fixed order, so results never depend on thread count.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/fold.h"
#include "../common/plan.h"
#include "spans.h"

namespace l2fast::cpu {

// 32K elements: large enough to amortise the per-chunk call, small enough to balance two threads
// over a Transformer's mix of large matrices and small vectors. (The CUDA chunk is 16K: there a
// chunk is one block's work, and smaller chunks fill more SMs; see csrc/cuda/device.cuh.)
constexpr int64_t kChunk = 1 << 15;

template <typename T>
T* data_of(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

#define L2FAST_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "l2fast_cpu", __VA_ARGS__)

// Runs chunk_fn on every chunk, in parallel, and returns one Partial per chunk. Threads split the
// element range evenly; each chunk belongs to the thread whose range holds its first element.
template <typename ChunkFn>
std::vector<Partial> for_each_chunk(const std::vector<Chunk>& chunks, ChunkFn chunk_fn) {
  std::vector<int64_t> starts(chunks.size() + 1, 0);
  for (size_t k = 0; k < chunks.size(); ++k) starts[k + 1] = starts[k] + chunks[k].len;
  std::vector<Partial> partials(chunks.size());
  at::parallel_for(0, starts.back(), kChunk, [&](int64_t begin, int64_t end) {
    auto first = std::lower_bound(starts.begin(), starts.end() - 1, begin) - starts.begin();
    auto last = std::lower_bound(starts.begin(), starts.end() - 1, end) - starts.begin();
    for (auto k = first; k < last; ++k) partials[k] = chunk_fn(chunks[k]);
  });
  return partials;
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
    const double sq = fold_warp_order(count, [&](int64_t j) { return first[j].sq; });
    const double abs = fold_warp_order(count, [&](int64_t j) { return first[j].abs; });
    values[chunks[k].tensor] = weights[chunks[k].tensor].value(sq, abs);
    k = end;
  }
  if (!per_tensor) values.assign(1, fold_block_order(values.data(), static_cast<int64_t>(values.size())));
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "l2fast_finish", [&] {
    std::copy(values.begin(), values.end(), result.data_ptr<scalar_t>());
  });
}

}  // namespace l2fast::cpu
