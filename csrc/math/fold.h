// The fixed order in which partial sums are added: the CUDA finish kernels (csrc/cuda/device.cuh)
// add with warp shuffles in exactly this shape, and the CPU finish calls these functions, so both
// backends fold a tensor's chunk partials, and the per-tensor values, in one order.
#pragma once
#include <cstdint>

namespace l2fast {

constexpr int kWarpLanes = 32;
constexpr int kBlockLanes = 256;

// lanes[0] += lanes[16], ..., lanes[0] += lanes[1]: the tree of __shfl_down_sync over one warp.
inline double warp_tree(double* lanes) {
  for (int offset = kWarpLanes / 2; offset > 0; offset /= 2)
    for (int i = 0; i < offset; ++i) lanes[i] += lanes[i + offset];
  return lanes[0];
}

// sum of get(k), k in [0, n): lane j adds k = j, j + 32, ... in order, then the warp tree.
template <class Get>
double fold_warp_order(int64_t n, Get get) {
  double lanes[kWarpLanes] = {};
  for (int64_t k = 0; k < n; ++k) lanes[k % kWarpLanes] += get(k);
  return warp_tree(lanes);
}

// sum of v[0..n): thread j of a 256-thread block adds v[j], v[j + 256], ... in order; each warp's
// tree; then warp 0 folds the eight warp sums (lanes 8..31 holding 0.0) with the same tree.
inline double fold_block_order(const double* v, int64_t n) {
  double threads[kBlockLanes] = {};
  for (int64_t k = 0; k < n; ++k) threads[k % kBlockLanes] += v[k];
  double warps[kWarpLanes] = {};
  for (int w = 0; w < kBlockLanes / kWarpLanes; ++w) warps[w] = warp_tree(threads + w * kWarpLanes);
  return warp_tree(warps);
}

}  // namespace l2fast
