// CPU kernels of every l2fast op: fixed-size chunks of all tensors, spread over threads by chunks.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "../entry/entry_points.h"
#include "../math/plan.h"
#include "chunks.h"
#include "spans.h"

namespace l2fast::cpu {
namespace {

// Calls f(kSq, kAbs) with the compile-time terms that `weights` needs (at least one is nonzero).
template <typename F>
Partial with_terms(const Weights& weights, F f) {
  if (weights.l2 != 0.0 && weights.l1 != 0.0) return f(std::true_type{}, std::true_type{});
  if (weights.l2 != 0.0) return f(std::true_type{}, std::false_type{});
  return f(std::false_type{}, std::true_type{});
}

std::vector<Chunk> chunks_of(at::TensorList tensors, const std::vector<Weights>& weights) {
  return plan_chunks(tensors, [&](size_t i) { return weights[i].any(); }, kChunk);
}

// out_i = base_i + scale * grad of the penalty, for every chunk; base is grads (kAccumulate) or 0.
template <bool kAccumulate>
std::vector<Partial> write_penalty_grads(at::TensorList params, at::TensorList grads, at::TensorList outs,
                                         const std::vector<Weights>& weights, double scale,
                                         const std::vector<Chunk>& chunks) {
  return for_each_chunk(chunks, [&](const Chunk& c) {
    const at::Tensor& w = params[c.tensor];
    return with_terms(weights[c.tensor], [&](auto sq, auto abs) {
      return L2FAST_DISPATCH(w.scalar_type(), [&] {
        using Op = at::opmath_type<scalar_t>;
        const scalar_t* g = kAccumulate ? data_of<scalar_t>(grads[c.tensor]) + c.begin : nullptr;
        return grad_span<scalar_t, decltype(sq)::value, decltype(abs)::value, kAccumulate>(
            data_of<scalar_t>(w) + c.begin, g, data_of<scalar_t>(outs[c.tensor]) + c.begin, c.len,
            static_cast<Op>(weights[c.tensor].l2), static_cast<Op>(weights[c.tensor].l1),
            static_cast<Op>(scale));
      });
    });
  });
}

struct CpuKernels {
  static void reduce(at::TensorList tensors, const std::vector<Weights>& weights, bool per_tensor, at::Tensor& result) {
    const auto chunks = chunks_of(tensors, weights);
    const auto partials = for_each_chunk(chunks, [&](const Chunk& c) {
      const at::Tensor& t = tensors[c.tensor];
      return with_terms(weights[c.tensor], [&](auto sq, auto abs) {
        return L2FAST_DISPATCH(t.scalar_type(), [&] {
          return reduce_span<scalar_t, decltype(sq)::value, decltype(abs)::value>(data_of<scalar_t>(t) + c.begin,
                                                                                  c.len);
        });
      });
    });
    finish(chunks, partials, weights, per_tensor, result);
  }

  static void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>& weights,
                               at::Tensor& result) {
    const auto chunks = chunks_of(params, weights);
    finish(chunks, write_penalty_grads<true>(params, grads, grads, weights, 1.0, chunks), weights, false, result);
  }

  static void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale,
                           const std::vector<Weights>& weights) {
    write_penalty_grads<false>(params, {}, outs, weights, scale.item<double>(), chunks_of(params, weights));
  }

  static void decay(at::TensorList params, const std::vector<double>& factors, const std::vector<Weights>& weights,
                    at::Tensor& result) {
    const auto chunks = plan_chunks(params, [&](size_t i) { return factors[i] != 0.0 || weights[i].any(); }, kChunk);
    const auto partials = for_each_chunk(chunks, [&](const Chunk& c) {
      const at::Tensor& w = params[c.tensor];
      return L2FAST_DISPATCH(w.scalar_type(), [&] {
        // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
        const auto multiplier = static_cast<at::opmath_type<scalar_t>>(1.0 - factors[c.tensor]);
        scalar_t* x = data_of<scalar_t>(w) + c.begin;
        return weights[c.tensor].l2 != 0.0 ? scale_span<scalar_t, true>(x, c.len, multiplier)
                                            : scale_span<scalar_t, false>(x, c.len, multiplier);
      });
    });
    finish(chunks, partials, weights, false, result);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CPU, m) { EntryPoints<CpuKernels>::register_all(m); }
// Sparse inputs reach the entry points only to be refused by check_tensors with a clear message.
TORCH_LIBRARY_IMPL(l2fast, SparseCPU, m) { EntryPoints<CpuKernels>::register_all(m); }

}  // namespace l2fast::cpu
