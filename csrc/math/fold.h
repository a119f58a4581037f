// The fixed order in which partial sums are added, for both backends: the CPU finish calls
// fold_block_order, and the CUDA finish kernels (csrc/cuda/device.cuh) add in exactly its shape, with
// warp_tree_steps' shuffle tree. A tensor's chunk partials, and the per-tensor values, fold this way.
#pragma once
#include <c10/macros/Macros.h>

#include <cstdint>

namespace l2fast {

constexpr int kWarpLanes = 32;
constexpr int kBlockLanes = 256;

// The tree a warp's lanes are added in: step(offset) adds lane i + offset into lane i for every
// i < offset, offsets 16, 8, 4, 2, 1 (on the GPU, one __shfl_down_sync each).
template <class Step>
C10_HOST_DEVICE inline void warp_tree_steps(Step step) {
  for (int offset = kWarpLanes / 2; offset > 0; offset /= 2) step(offset);
}

inline double warp_tree(double* lanes) {
  warp_tree_steps([&](int offset) {
    for (int i = 0; i < offset; ++i) lanes[i] += lanes[i + offset];
  });
  return lanes[0];
}

// sum of get(k), k in [0, n): thread j of a 256-thread block adds k = j, j + 256, ... in order; each
// warp's tree; then warp 0 folds the eight warp sums (lanes 8..31 holding 0.0) with the same tree.
template <class Get>
double fold_block_order(int64_t n, Get get) {
  double threads[kBlockLanes] = {};
  for (int64_t k = 0; k < n; ++k) threads[k % kBlockLanes] += get(k);
  double warps[kWarpLanes] = {};
  for (int w = 0; w < kBlockLanes / kWarpLanes; ++w) warps[w] = warp_tree(threads + w * kWarpLanes);
  return warp_tree(warps);
}

// Whether one warp may fold n values, giving fold_block_order's bits: with n <= 32 only warp 0
// holds values (each 0.0 + v), and adding the other warps' +0.0 sums to its tree changes no bit (a
// sum that starts from +0.0 is never -0.0, and NaN stays NaN). So the CUDA finish spends a whole
// block only on tensors with more partials than a warp has lanes.
C10_HOST_DEVICE constexpr bool one_warp_folds(int64_t n) { return n <= kWarpLanes; }

}  // namespace l2fast
