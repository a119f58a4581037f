// The CPU backend's parallel walk over a chunk plan, shared by every CPU kernel: fixed-size chunks,
// one float64 Partial per chunk, folded in a fixed order, so results never depend on thread count.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/plan.h"
#include "spans.h"

namespace l2fast::cpu {

// 32K elements: large enough to amortise the per-chunk call, small enough to balance two threads
// over a Transformer's mix of large matrices and small vectors.
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

// Per-tensor values sq * sum(x^2) + abs * sum|x|, partials added in chunk order; then their sum.
inline void finish(const std::vector<Chunk>& chunks, const std::vector<Partial>& partials,
                   const std::vector<Weights>& weights, at::Tensor& result) {
  std::vector<Partial> sums(weights.size());
  for (size_t k = 0; k < chunks.size(); ++k) {
    sums[chunks[k].tensor].sq += partials[k].sq;
    sums[chunks[k].tensor].abs += partials[k].abs;
  }
  std::vector<double> values(weights.size(), 0.0);
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i].sq != 0.0) values[i] += weights[i].sq * sums[i].sq;
    if (weights[i].abs != 0.0) values[i] += weights[i].abs * sums[i].abs;
  }
  if (result.dim() == 0) {
    double total = 0.0;
    for (double v : values) total += v;
    values.assign(1, total);
  }
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "l2fast_finish", [&] {
    std::copy(values.begin(), values.end(), result.data_ptr<scalar_t>());
  });
}

}  // namespace l2fast::cpu
