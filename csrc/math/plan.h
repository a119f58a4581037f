// How a list of tensors is cut into fixed-size chunks. Chunks are the unit of parallel work and of
// partial sums: a result depends on the chunk size and the inputs only, never on thread count.
#pragma once
#include <ATen/ATen.h>
#include <cstdint>
#include <vector>

namespace l2fast {

// Chunks of a tensor of `length` elements: [k * chunk_size, min((k + 1) * chunk_size, length)).
inline int64_t chunk_count(int64_t length, int64_t chunk_size) { return (length + chunk_size - 1) / chunk_size; }

struct Chunk {
  int64_t begin;   // first element, within its tensor
  int32_t tensor;  // index into the tensor list
  int32_t len;     // number of elements, 1..chunk_size
};

// Chunks of every tensor i that takes part (takes_part(i), non-empty), in tensor order.
template <typename TakesPart>
std::vector<Chunk> plan_chunks(at::TensorList tensors, TakesPart takes_part, int64_t chunk_size) {
  std::vector<Chunk> chunks;
  chunks.reserve(tensors.size());  // at least one chunk per tensor, in the usual case
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!takes_part(i)) continue;
    const int64_t numel = tensors[i].numel();
    for (int64_t k = 0; k < chunk_count(numel, chunk_size); ++k) {
      const int64_t begin = k * chunk_size;
      chunks.push_back({begin, static_cast<int32_t>(i), static_cast<int32_t>(std::min(chunk_size, numel - begin))});
    }
  }
  return chunks;
}

}  // namespace l2fast
