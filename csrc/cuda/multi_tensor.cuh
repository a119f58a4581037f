// The one launch machinery behind every CUDA op: any number of tensors of any of the four dtypes in
// a single launch. Per-tensor metadata and the chunk list live in device memory (one async copy from
// pinned host memory), so there is no kernel-argument size limit and no host synchronisation.
// Each block owns one chunk and writes one partial; a one-block pass folds partials in a fixed order.
// No floating-point atomics: results are bitwise reproducible.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstring>
#include <vector>

#include "../common/plan.h"

namespace l2fast::cuda {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 14;  // elements per block: ~3,700 blocks for a 60M-parameter model
constexpr int kUnroll = 4;           // 16-byte loads each thread keeps in flight

enum DType : int32_t { kF32, kF64, kF16, kBF16 };

struct TensorMeta {
  const void* x;      // the tensor read (params)
  void* y;            // the tensor written, when there is one (grads, outputs)
  Weights weights;    // penalty weights of x
  double multiplier;  // decay: x *= multiplier
  int32_t dtype;
  int32_t vectorized;  // x and y are 16-byte aligned: whole chunks move in 16-byte packs
};

// Device copies of the metadata, the chunks, and where each tensor's chunks start (n + 1 entries).
struct Tables {
  at::Tensor storage;
  const TensorMeta* metas;
  const Chunk* chunks;
  const int64_t* first_chunk;
  int64_t num_chunks;
};

inline DType dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    default: return kBF16;  // check_tensors admits no other dtype
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline TensorMeta make_meta(const at::Tensor& x, void* y, Weights weights, double multiplier) {
  const bool vectorized = aligned16(x.data_ptr()) && (y == nullptr || aligned16(y));
  return {x.data_ptr(), y, weights, multiplier, dtype_code(x.scalar_type()), vectorized ? 1 : 0};
}

template <typename T>
size_t padded_bytes(size_t count) {
  return (count * sizeof(T) + 15) / 16 * 16;
}

inline Tables upload(const std::vector<TensorMeta>& metas, const std::vector<Chunk>& chunks, c10::Device device) {
  std::vector<int64_t> first_chunk(metas.size() + 1, 0);
  for (const Chunk& c : chunks) ++first_chunk[c.tensor + 1];
  for (size_t i = 0; i < metas.size(); ++i) first_chunk[i + 1] += first_chunk[i];

  const size_t meta_bytes = padded_bytes<TensorMeta>(metas.size());
  const size_t chunk_bytes = padded_bytes<Chunk>(chunks.size());
  const size_t total = meta_bytes + chunk_bytes + padded_bytes<int64_t>(first_chunk.size());
  at::Tensor host = at::empty({static_cast<int64_t>(total)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* base = static_cast<char*>(host.data_ptr());
  std::memcpy(base, metas.data(), metas.size() * sizeof(TensorMeta));
  std::memcpy(base + meta_bytes, chunks.data(), chunks.size() * sizeof(Chunk));
  std::memcpy(base + meta_bytes + chunk_bytes, first_chunk.data(), first_chunk.size() * sizeof(int64_t));
  // A non-blocking copy from pinned memory; the host allocator keeps `host` alive until it completes.
  at::Tensor dev = host.to(device, /*non_blocking=*/true);
  auto* dbase = static_cast<const char*>(dev.data_ptr());
  return {dev, reinterpret_cast<const TensorMeta*>(dbase), reinterpret_cast<const Chunk*>(dbase + meta_bytes),
          reinterpret_cast<const int64_t*>(dbase + meta_bytes + chunk_bytes), static_cast<int64_t>(chunks.size())};
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const void* base, int64_t i) {
  return reinterpret_cast<const Pack<T, N>*>(static_cast<const T*>(base) + i)[0];
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(void* base, int64_t i, const Pack<T, N>& p) {
  reinterpret_cast<Pack<T, N>*>(static_cast<T*>(base) + i)[0] = p;
}

// Running sums of x^2 and |x| of the elements one thread has seen, as the weights ask.
struct Sums {
  double sq = 0.0;
  double abs = 0.0;
  __device__ __forceinline__ void add(const Weights& w, double v) {
    if (w.sq != 0.0) sq += v * v;
    if (w.abs != 0.0) abs += fabs(v);
  }
};

// This thread's share of elements [begin, begin + len) of one tensor, N elements per pack. All loads
// of kUnroll packs are issued before any is used, so memory requests overlap even when the op writes.
template <typename T, int N, class Op>
__device__ __forceinline__ void walk(const Op& op, const TensorMeta& m, int64_t begin, int len, Sums& sums) {
  using Item = typename Op::template Item<T, N>;
  const int packs = len / N;
  for (int p0 = threadIdx.x; p0 < packs; p0 += kThreads * kUnroll) {
    Item items[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = p0 + u * kThreads;
      if (p < packs) items[u] = op.template load<T, N>(m, begin + int64_t(p) * N);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = p0 + u * kThreads;
      if (p < packs) op.template apply<T, N>(m, begin + int64_t(p) * N, items[u], sums);
    }
  }
}

template <typename T, class Op>
__device__ __forceinline__ void run_chunk(const Op& op, const TensorMeta& m, const Chunk& c, Sums& sums) {
  constexpr int N = 16 / sizeof(T);
  // Chunk starts are multiples of kChunk, so an aligned tensor gives aligned packs.
  const int vector_len = m.vectorized ? c.len / N * N : 0;
  walk<T, N>(op, m, c.begin, vector_len, sums);
  walk<T, 1>(op, m, c.begin + vector_len, c.len - vector_len, sums);
}

// Sum over the block in a fixed tree; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = 0.0;
  if (warp == 0) {
    if (lane < kThreads / 32) v = scratch[lane];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <class Op>
__global__ void __launch_bounds__(kThreads) chunk_kernel(Op op, const TensorMeta* metas, const Chunk* chunks,
                                                         double2* partials) {
  const Chunk c = chunks[blockIdx.x];
  const TensorMeta m = metas[c.tensor];
  Sums sums;
  switch (m.dtype) {
    case kF32: run_chunk<float>(op, m, c, sums); break;
    case kF64: run_chunk<double>(op, m, c, sums); break;
    case kF16: run_chunk<c10::Half>(op, m, c, sums); break;
    default: run_chunk<c10::BFloat16>(op, m, c, sums); break;
  }
  if (partials == nullptr) return;
  __shared__ double scratch[kThreads / 32];
  const double sq = block_sum(sums.sq, scratch);
  const double abs = block_sum(sums.abs, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = make_double2(sq, abs);
}

// Value of tensor t: its chunk partials added in chunk order, then weighted. Written per tensor, or
// summed over tensors (each thread a fixed stride of tensors, then a fixed tree) into out[0].
template <typename Out>
__global__ void __launch_bounds__(kThreads) finish_kernel(const TensorMeta* metas, const int64_t* first_chunk,
                                                          const double2* partials, int64_t n, bool per_tensor,
                                                          Out* out) {
  double local = 0.0;
  for (int64_t t = threadIdx.x; t < n; t += kThreads) {
    double sq = 0.0, abs = 0.0;
    for (int64_t k = first_chunk[t]; k < first_chunk[t + 1]; ++k) {
      sq += partials[k].x;
      abs += partials[k].y;
    }
    const Weights w = metas[t].weights;
    const double value = (w.sq != 0.0 ? w.sq * sq : 0.0) + (w.abs != 0.0 ? w.abs * abs : 0.0);
    if (per_tensor) out[t] = static_cast<Out>(value);
    local += value;
  }
  if (per_tensor) return;
  __shared__ double scratch[kThreads / 32];
  const double total = block_sum(local, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<Out>(total);
}

// Runs op over every chunk. With `result` defined, also reduces into it (a scalar, or one value per
// tensor when per_tensor); the reduction happens on the device, nothing waits for it.
template <class Op>
void launch(const Op& op, const std::vector<TensorMeta>& metas, const std::vector<Chunk>& chunks,
            c10::Device device, const at::Tensor& result = {}, bool per_tensor = false) {
  const c10::cuda::CUDAGuard guard(device);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const Tables tables = upload(metas, chunks, device);
  at::Tensor partials;
  if (result.defined())
    partials = at::empty({std::max<int64_t>(tables.num_chunks, 1), 2}, at::TensorOptions().dtype(at::kDouble).device(device));
  auto* partial_ptr = result.defined() ? reinterpret_cast<double2*>(partials.data_ptr<double>()) : nullptr;
  if (tables.num_chunks > 0) {
    chunk_kernel<<<tables.num_chunks, kThreads, 0, stream>>>(op, tables.metas, tables.chunks, partial_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!result.defined()) return;
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "l2fast_finish", [&] {
    finish_kernel<scalar_t><<<1, kThreads, 0, stream>>>(tables.metas, tables.first_chunk, partial_ptr,
                                                        static_cast<int64_t>(metas.size()), per_tensor,
                                                        result.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace l2fast::cuda
