// The CUDA execution model on the host, enough to run csrc/cuda/device.cuh unchanged: a block's
// kThreads threads run concurrently as real threads (a persistent pool, reused block after block),
// __syncthreads is a barrier of the block, __shfl_down_sync exchanges values within a warp of 32
// through a per-warp barrier, and blockIdx/threadIdx/blockDim/gridDim are per thread. Blocks run one
// after another, so `__shared__` variables are function-local statics: one copy per kernel, which
// every thread of the running block sees.
//
// Include after all torch headers: it defines the CUDA keywords as macros.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

extern thread_local dim3 threadIdx;
extern thread_local dim3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

namespace l2fast::emu {

constexpr int kBlockThreads = 256;  // every kernel of l2fast is launched with this many
constexpr int kWarpSize = 32;

// Waits until every thread of the block that has not returned from the kernel gets here.
void sync_threads();

// v of lane (this lane + delta) of this warp, or this lane's own v when that is past the warp's end.
// Every lane of `mask` must make the same call; a lane that has returned or is at another shuffle
// is reported and aborts the process, as is a mask other than the full warp.
double shfl_down_sync(unsigned mask, double v, unsigned delta);

// Aborts, naming the thread, when p is not a multiple of `bytes`.
void check_aligned(const void* p, size_t bytes, const char* what);

// Runs kernel() on every thread of every block in [0, blocks), block after block.
void run_grid(int64_t blocks, const std::function<void()>& kernel);

}  // namespace l2fast::emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static
#define __syncthreads() ::l2fast::emu::sync_threads()
#define __shfl_down_sync(mask, v, delta) ::l2fast::emu::shfl_down_sync(mask, v, delta)
#define L2FAST_GRID_CONST(T) const T&
#define L2FAST_CHECK_ALIGNED(ptr, bytes) ::l2fast::emu::check_aligned(ptr, bytes, #ptr)
