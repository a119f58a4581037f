// CUDA kernels of every l2fast op: each op is a per-pack functor run by multi_tensor.cuh.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/elementwise.h"
#include "../common/entry_points.h"
#include "../common/plan.h"
#include "multi_tensor.cuh"

namespace l2fast::cuda {
namespace {

template <typename T>
__device__ __forceinline__ at::opmath_type<T> to_op(T v) {
  return static_cast<at::opmath_type<T>>(v);
}

// The loads of an op that reads x alone.
struct ReadsX {
  template <typename T, int N>
  struct Item {
    Pack<T, N> x;
  };
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    return {load_pack<T, N>(m.x, i)};
  }
};

// Reads x; sums x^2 and |x| as the weights ask.
struct ReduceOp : ReadsX {
  template <typename T, int N>
  __device__ void apply(const TensorMeta& m, int64_t, const Item<T, N>& item, Sums& sums) const {
#pragma unroll
    for (int j = 0; j < N; ++j) sums.add(m.weights, static_cast<double>(to_op(item.x.v[j])));
  }
};

// y = base + scale * (l2 * x + l1 * sign(x)), base = y (kAccumulate) or 0; sums x for the value.
template <bool kAccumulate>
struct PenaltyGradOp {
  const double* scale;  // device scalar, read only when !kAccumulate
  template <typename T, int N>
  struct Item {
    Pack<T, N> x, y;
  };
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    Item<T, N> item;
    item.x = load_pack<T, N>(m.x, i);
    if (kAccumulate) item.y = load_pack<T, N>(m.y, i);
    return item;
  }
  template <typename T, int N>
  __device__ void apply(const TensorMeta& m, int64_t i, const Item<T, N>& item, Sums& sums) const {
    using Op = at::opmath_type<T>;
    const Op l2 = static_cast<Op>(2.0 * m.weights.sq), l1 = static_cast<Op>(m.weights.abs);
    const Op s = kAccumulate ? Op(1) : static_cast<Op>(*scale);
    Pack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const Op w = to_op(item.x.v[j]);
      const Op step = penalty_step(w, l2, l1, m.weights.sq != 0.0, m.weights.abs != 0.0);
      out.v[j] = static_cast<T>(kAccumulate ? to_op(item.y.v[j]) + step : s * step);
      sums.add(m.weights, static_cast<double>(w));
    }
    store_pack<T, N>(m.y, i, out);
  }
};

// x *= multiplier, in the op-math type (x is also y); sums x^2 before the update as the weights ask.
struct ScaleOp : ReadsX {
  template <typename T, int N>
  __device__ void apply(const TensorMeta& m, int64_t i, const Item<T, N>& item, Sums& sums) const {
    using Op = at::opmath_type<T>;
    const Op factor = static_cast<Op>(m.multiplier);
    Pack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const Op x = to_op(item.x.v[j]);
      sums.add(m.weights, static_cast<double>(x));
      out.v[j] = static_cast<T>(x * factor);
    }
    store_pack<T, N>(m.y, i, out);
  }
};

std::vector<Chunk> chunks_of(at::TensorList tensors, const std::vector<TensorMeta>& metas) {
  return plan_chunks(tensors, [&](size_t i) { return metas[i].weights.any(); }, kChunk);
}

// Metadata of params[i] (read) with outs[i] (written, may be null) and the weights of tensor i.
std::vector<TensorMeta> metas_of(at::TensorList params, at::TensorList outs, const std::vector<Weights>& weights) {
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < params.size(); ++i)
    metas.push_back(make_meta(params[i], outs.empty() ? nullptr : outs[i].data_ptr(), weights[i], 1.0));
  return metas;
}

struct CudaKernels {
  static void reduce(at::TensorList tensors, const std::vector<Weights>& weights, at::Tensor& result) {
    const auto metas = metas_of(tensors, {}, weights);
    launch(ReduceOp{}, metas, chunks_of(tensors, metas), tensors[0].device(), result, result.dim() == 1);
  }

  static void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>& weights,
                               at::Tensor& result) {
    const auto metas = metas_of(params, grads, weights);
    launch(PenaltyGradOp<true>{nullptr}, metas, chunks_of(params, metas), params[0].device(), result);
  }

  static void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale,
                           const std::vector<Weights>& weights) {
    const auto metas = metas_of(params, outs, weights);
    const at::Tensor scale64 = scale.to(at::kDouble).contiguous();  // stays on the device: no sync
    launch(PenaltyGradOp<false>{scale64.data_ptr<double>()}, metas, chunks_of(params, metas), params[0].device());
  }

  static void decay(at::TensorList params, const std::vector<double>& factors, const std::vector<Weights>& weights,
                    at::Tensor& result) {
    std::vector<TensorMeta> metas;
    for (size_t i = 0; i < params.size(); ++i) {
      // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
      metas.push_back(make_meta(params[i], params[i].data_ptr(), weights[i], 1.0 - factors[i]));
    }
    const auto chunks = plan_chunks(params, [&](size_t i) { return factors[i] != 0.0 || weights[i].any(); }, kChunk);
    launch(ScaleOp{}, metas, chunks, params[0].device(), result);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CUDA, m) { EntryPoints<CudaKernels>::register_all(m); }
// Sparse inputs reach the entry points only to be refused by check_tensors with a clear message.
TORCH_LIBRARY_IMPL(l2fast, SparseCUDA, m) { EntryPoints<CudaKernels>::register_all(m); }

}  // namespace l2fast::cuda
