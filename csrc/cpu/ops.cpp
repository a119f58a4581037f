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

// Calls f(kSq, kAbs, anchor) with the terms tensor c.tensor's weights ask for and its anchor stream.
// An anchored tensor takes both terms (a zero coefficient adds a zero term), so anchors multiply the
// loops compiled by their dtypes and fisher alone.
template <typename T, typename F>
Partial with_terms_and_anchor(const Weights& weights, const Anchors& anchors, const Chunk& c, F f) {
  const bool anchored = weights.sp != 0.0;
  return with_anchor<T>(anchors, anchored, c, [&](auto anchor) {
    if constexpr (decltype(anchor)::kAnchored) return f(std::true_type{}, std::true_type{}, anchor);
    else return with_terms(weights, [&](auto sq, auto abs) { return f(sq, abs, anchor); });
  });
}

// out_i = base_i + scale * grad of the penalty, for every chunk; base is grads (kAccumulate) or 0.
template <bool kAccumulate>
std::vector<Partial> write_penalty_grads(at::TensorList params, at::TensorList grads, at::TensorList outs,
                                         const std::vector<Weights>& weights, const Anchors& anchors, double scale,
                                         const std::vector<Chunk>& chunks) {
  return for_each_chunk(chunks, [&](const Chunk& c) {
    const at::Tensor& w = params[c.tensor];
    const Weights& weight = weights[c.tensor];
    return L2FAST_DISPATCH(w.scalar_type(), [&] {
      using Op = at::opmath_type<scalar_t>;
      return with_terms_and_anchor<scalar_t>(weight, anchors, c, [&](auto sq, auto abs, auto anchor) {
        const scalar_t* g = kAccumulate ? data_of<scalar_t>(grads[c.tensor]) + c.begin : nullptr;
        return grad_span<scalar_t, decltype(sq)::value, decltype(abs)::value, kAccumulate>(
            data_of<scalar_t>(w) + c.begin, g, data_of<scalar_t>(outs[c.tensor]) + c.begin, c.len,
            static_cast<Op>(weight.l2), static_cast<Op>(weight.l1), static_cast<Op>(weight.sp),
            static_cast<Op>(scale), anchor);
      });
    });
  });
}

struct CpuKernels {
  static void reduce(at::TensorList tensors, const std::vector<Weights>& weights, const Anchors& anchors,
                     bool per_tensor, at::Tensor& result) {
    const auto chunks = chunks_of(tensors, weights);
    const auto partials = for_each_chunk(chunks, [&](const Chunk& c) {
      const at::Tensor& t = tensors[c.tensor];
      return L2FAST_DISPATCH(t.scalar_type(), [&] {
        const scalar_t* x = data_of<scalar_t>(t) + c.begin;
        if (weights[c.tensor].sp != 0.0)
          return with_anchor<scalar_t>(anchors, true, c, [&](auto anchor) { return penalty_sums_span(x, c.len, anchor); });
        return with_terms(weights[c.tensor], [&](auto sq, auto abs) {
          return reduce_span<scalar_t, decltype(sq)::value, decltype(abs)::value>(x, c.len);
        });
      });
    });
    finish(chunks, partials, weights, per_tensor, result);
  }

  static void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>& weights,
                               const Anchors& anchors, at::Tensor& result) {
    const auto chunks = chunks_of(params, weights);
    finish(chunks, write_penalty_grads<true>(params, grads, grads, weights, anchors, 1.0, chunks), weights, false,
           result);
  }

  static void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale,
                           const std::vector<Weights>& weights, const Anchors& anchors) {
    write_penalty_grads<false>(params, {}, outs, weights, anchors, scale.item<double>(), chunks_of(params, weights));
  }

  static void decay(at::TensorList params, const DecayFactors& factors, const std::vector<Weights>& weights,
                    const Anchors& anchors, at::Tensor& result) {
    const auto chunks = plan_chunks(
        params, [&](size_t i) { return factors.zero[i] != 0.0 || factors.anchor[i] != 0.0 || weights[i].any(); },
        kChunk);
    const auto partials = for_each_chunk(chunks, [&](const Chunk& c) {
      const at::Tensor& w = params[c.tensor];
      const bool anchored = factors.anchor[c.tensor] != 0.0 || weights[c.tensor].sp != 0.0;
      return L2FAST_DISPATCH(w.scalar_type(), [&] {
        using Op = at::opmath_type<scalar_t>;
        // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
        const auto multiplier = static_cast<Op>(1.0 - factors.zero[c.tensor]);
        const auto neg_spf = static_cast<Op>(-factors.anchor[c.tensor]);
        scalar_t* x = data_of<scalar_t>(w) + c.begin;
        return with_anchor<scalar_t>(anchors, anchored, c, [&](auto anchor) {
          return weights[c.tensor].l2 != 0.0 ? scale_span<scalar_t, true>(x, c.len, multiplier, neg_spf, anchor)
                                              : scale_span<scalar_t, false>(x, c.len, multiplier, neg_spf, anchor);
        });
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
