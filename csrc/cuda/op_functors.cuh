// The per-pack work of every CUDA op, run by chunk_kernel (device.cuh). Like device.cuh, compiled
// by nvcc and, unchanged, by the host SIMT harness.
//
// An op provides: kReduces (whether its chunks write partial sums), bind() (per-thread set-up, run
// once before the first pack), Item<T, N> (what one pack's loads hold), load() and apply().
#pragma once
#include "device.cuh"

namespace l2fast::cuda {

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
  __device__ void bind() {}
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    return {load_pack<T, N>(m.x, i)};
  }
};

// Reads x; sums x^2 and |x| as the weights ask.
struct ReduceOp : ReadsX {
  static constexpr bool kReduces = true;
  template <typename T, int N>
  __device__ void apply(const TensorMeta& m, int64_t, const Item<T, N>& item, Sums& sums) const {
#pragma unroll
    for (int j = 0; j < N; ++j) sums.add(m.weights, static_cast<double>(to_op(item.x.v[j])));
  }
};

// y = base + scale * (l2 * x + l1 * sign(x)), base = y (kAccumulate) or 0. Accumulating (the
// optimizer's add_penalty_grad_) also sums x for the penalty value; the autograd backward does not.
template <bool kAccumulate>
struct PenaltyGradOp {
  static constexpr bool kReduces = kAccumulate;
  const double* scale_ptr = nullptr;  // device scalar, read once per thread when !kAccumulate
  double scale = 1.0;
  template <typename T, int N>
  struct Item {
    Pack<T, N> x, y;
  };
  __device__ void bind() {
    if (!kAccumulate) scale = *scale_ptr;
  }
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
    const Op l2 = static_cast<Op>(m.weights.l2), l1 = static_cast<Op>(m.weights.l1);
    const Op s = static_cast<Op>(scale);
    Pack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const Op w = to_op(item.x.v[j]);
      const Op step = penalty_step(w, l2, l1, m.weights.l2 != 0.0, m.weights.l1 != 0.0);
      out.v[j] = static_cast<T>(kAccumulate ? to_op(item.y.v[j]) + step : s * step);
      if (kAccumulate) sums.add(m.weights, static_cast<double>(w));
    }
    store_pack<T, N>(m.y, i, out);
  }
};

// x *= multiplier, in the op-math type (x is also y); sums x^2 before the update as the weights ask.
struct ScaleOp : ReadsX {
  static constexpr bool kReduces = true;
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

}  // namespace l2fast::cuda
