// CUDA kernels of every l2fast op: each op is a per-pack functor run by multi_tensor.cuh.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/elementwise.h"
#include "../common/plan.h"
#include "multi_tensor.cuh"

namespace l2fast::cuda {
namespace {

template <typename T>
__device__ __forceinline__ at::opmath_type<T> to_op(T v) {
  return static_cast<at::opmath_type<T>>(v);
}

// Reads x; sums x^2 and |x| as the weights ask.
struct ReduceOp {
  template <typename T, int N>
  struct Item {
    Pack<T, N> x;
  };
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    return {load_pack<T, N>(m.x, i)};
  }
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

// x *= multiplier, in the op-math type (x is also y).
struct ScaleOp {
  template <typename T, int N>
  struct Item {
    Pack<T, N> x;
  };
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    return {load_pack<T, N>(m.x, i)};
  }
  template <typename T, int N>
  __device__ void apply(const TensorMeta& m, int64_t i, const Item<T, N>& item, Sums&) const {
    using Op = at::opmath_type<T>;
    const Op factor = static_cast<Op>(m.multiplier);
    Pack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.v[j] = static_cast<T>(to_op(item.x.v[j]) * factor);
    store_pack<T, N>(m.y, i, out);
  }
};

bool takes_part(const TensorMeta& m) { return m.weights.any(); }

std::vector<Chunk> chunks_of(at::TensorList tensors, const std::vector<TensorMeta>& metas) {
  return plan_chunks(tensors, [&](size_t i) { return takes_part(metas[i]); }, kChunk);
}

at::Tensor new_result(at::TensorList tensors, bool per_tensor) {
  const auto options = at::TensorOptions().dtype(result_dtype(tensors)).device(tensors[0].device());
  return per_tensor ? at::empty({static_cast<int64_t>(tensors.size())}, options) : at::empty({}, options);
}

at::Tensor reduce(at::TensorList tensors, const std::vector<Weights>& weights, bool per_tensor) {
  check_tensors(tensors, "tensors");
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < tensors.size(); ++i) metas.push_back(make_meta(tensors[i], nullptr, weights[i], 1.0));
  at::Tensor result = new_result(tensors, per_tensor);
  launch(ReduceOp{}, metas, chunks_of(tensors, metas), tensors[0].device(), result, per_tensor);
  return result;
}

at::Tensor sq_norm(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
  return reduce(tensors, norm_weights(coeffs, tensors.size(), /*squared=*/true), per_tensor);
}

at::Tensor l1_norm(at::TensorList tensors, c10::ArrayRef<double> coeffs, bool per_tensor) {
  return reduce(tensors, norm_weights(coeffs, tensors.size(), /*squared=*/false), per_tensor);
}

at::Tensor penalty(at::TensorList params, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1) {
  return reduce(params, penalty_weights(l2, l1, params.size()), /*per_tensor=*/false);
}

at::Tensor add_penalty_grad_(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> l2,
                             c10::ArrayRef<double> l1) {
  check_tensors(params, "params");
  check_pairs(params, grads);
  check_tensors(grads, "grads");
  TORCH_CHECK(params.empty() || grads[0].device() == params[0].device(), "l2fast: grads are on ", grads[0].device(),
              " but params are on ", params[0].device());
  const auto weights = penalty_weights(l2, l1, params.size());
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < params.size(); ++i)
    metas.push_back(make_meta(params[i], grads[i].data_ptr(), weights[i], 1.0));
  at::Tensor result = new_result(params, /*per_tensor=*/false);
  launch(PenaltyGradOp<true>{nullptr}, metas, chunks_of(params, metas), params[0].device(), result);
  return result;
}

std::vector<at::Tensor> penalty_grad(at::TensorList params, const at::Tensor& scale, c10::ArrayRef<double> l2,
                                     c10::ArrayRef<double> l1) {
  check_tensors(params, "params");
  TORCH_CHECK(scale.numel() == 1, "l2fast: scale must hold one value, got shape ", scale.sizes());
  TORCH_CHECK(scale.device() == params[0].device(), "l2fast: scale is on ", scale.device(), " but params are on ",
              params[0].device());
  const auto weights = penalty_weights(l2, l1, params.size());
  std::vector<at::Tensor> outs;
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < params.size(); ++i) {
    outs.push_back(weights[i].any() ? at::empty_like(params[i]) : at::zeros_like(params[i]));
    metas.push_back(make_meta(params[i], outs[i].data_ptr(), weights[i], 1.0));
  }
  const at::Tensor scale64 = scale.to(at::kDouble).contiguous();  // keeps the value on the device
  launch(PenaltyGradOp<false>{scale64.data_ptr<double>()}, metas, chunks_of(params, metas), params[0].device());
  return outs;
}

void decay_(at::TensorList params, c10::ArrayRef<double> factors) {
  check_tensors(params, "params");
  const std::vector<double> fs = expand_coeffs(factors, params.size(), "factors");
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < params.size(); ++i) {
    // Only takes_part matters here: a tensor decays when its factor is nonzero.
    const Weights active{fs[i] != 0.0 ? 1.0 : 0.0, 0.0};
    // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
    metas.push_back(make_meta(params[i], params[i].data_ptr(), active, 1.0 - fs[i]));
  }
  launch(ScaleOp{}, metas, chunks_of(params, metas), params[0].device());
}

void register_kernels(torch::Library& m) {
  m.impl("sq_norm", &sq_norm);
  m.impl("l1_norm", &l1_norm);
  m.impl("penalty", &penalty);
  m.impl("penalty_grad", &penalty_grad);
  m.impl("add_penalty_grad_", &add_penalty_grad_);
  m.impl("decay_", &decay_);
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CUDA, m) { register_kernels(m); }
// Sparse inputs reach the same kernels only to be refused by check_tensors with a clear message.
TORCH_LIBRARY_IMPL(l2fast, SparseCUDA, m) { register_kernels(m); }

}  // namespace l2fast::cuda
