// The per-pack work of every CUDA op, run by chunk_kernel (device.cuh). Like device.cuh, compiled
// by nvcc and, unchanged, by the host SIMT harness.
//
// An op provides: Meta (what it knows per tensor: TensorMeta or a type derived from it), kReduces
// (whether its chunks write partial sums), bind(row) (per-thread set-up, run once before the first
// pack), Item<T, N> (what one pack's loads hold), load(meta, i) and apply(row, ...). A row (device.cuh's
// Row) is the tensor's Meta and its anchor record (anchor_meta(): all zeros in a plain call's table;
// weights_of(row): the weights). walk loads the tensor's anchor stream beside load()'s packs and hands
// apply() its packs (`anchor`: NoAnchor's or AnchorOf's Packs, device.cuh): the pull of element j is
// anchor.pull(j, w), zero and compiled away for a tensor without an anchor, whose code is the plain op's.
#pragma once
#include <type_traits>

#include "../math/optim_math.h"
#include "device.cuh"

namespace l2fast::cuda {

// The loads of an op that reads x alone.
struct ReadsX {
  using Meta = TensorMeta;
  template <typename T, int N>
  struct Item {
    Pack<T, N> x;
  };
  template <class R>
  __device__ void bind(const R&) {}
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    return {load_pack<T, N>(m.x, i)};
  }
};

// Reads x; sums x^2, |x| and the deviations from the anchor as the weights ask.
struct ReduceOp : ReadsX {
  static constexpr bool kReduces = true;
  template <typename T, int N, class R, class AnchorPacks>
  __device__ void apply(const R& r, int64_t, const Item<T, N>& item, const AnchorPacks& anchor, Sums& sums) const {
    const Weights w = weights_of(r);
#pragma unroll
    for (int j = 0; j < N; ++j) sums.add(w, to_op(item.x.v[j]), anchor, j);
  }
};

// y = base + scale * (l2 * x + l1 * sign(x) + sp * pull), base = y (kAccumulate) or 0. Accumulating (the
// optimizer's add_penalty_grad_) also sums x for the penalty value; the autograd backward does not.
template <bool kAccumulate>
struct PenaltyGradOp {
  using Meta = TensorMeta;
  static constexpr bool kReduces = kAccumulate;
  const double* scale_ptr = nullptr;  // device scalar, read once per thread when !kAccumulate
  double scale = 1.0;
  template <typename T, int N>
  struct Item {
    Pack<T, N> x, y;
  };
  template <class R>
  __device__ void bind(const R&) {
    if (!kAccumulate) scale = *scale_ptr;
  }
  template <typename T, int N>
  __device__ Item<T, N> load(const TensorMeta& m, int64_t i) const {
    Item<T, N> item;
    item.x = load_pack<T, N>(m.x, i);
    if (kAccumulate) item.y = load_pack<T, N>(m.y, i);
    return item;
  }
  template <typename T, int N, class R, class AnchorPacks>
  __device__ void apply(const R& r, int64_t i, const Item<T, N>& item, const AnchorPacks& anchor, Sums& sums) const {
    using Op = at::opmath_type<T>;
    const Weights weights = weights_of(r);
    const Op l2 = static_cast<Op>(weights.l2), l1 = static_cast<Op>(weights.l1);
    const Op sp = static_cast<Op>(weights.sp), s = static_cast<Op>(scale);
    Pack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const Op w = to_op(item.x.v[j]);
      const Op pull = anchor.pull(j, w).pull;
      const Op step = penalty_step(w, l2, l1, weights.l2 != 0.0, weights.l1 != 0.0, sp, pull, AnchorPacks::kAnchored);
      out.v[j] = static_cast<T>(kAccumulate ? to_op(item.y.v[j]) + step : s * step);
      if (kAccumulate) sums.add(weights, w, anchor, j);
    }
    store_pack<T, N>(r.meta.y, i, out);
  }
};

// x = x * multiplier + neg_spf * pull, in the op-math type (x is also y; neg_spf: the anchor record's);
// sums x^2 and the deviations before the update as the weights ask.
struct ScaleOp : ReadsX {
  static constexpr bool kReduces = true;
  template <typename T, int N, class R, class AnchorPacks>
  __device__ void apply(const R& r, int64_t i, const Item<T, N>& item, const AnchorPacks& anchor, Sums& sums) const {
    using Op = at::opmath_type<T>;
    const Weights weights = weights_of(r);
    const Op factor = static_cast<Op>(r.meta.multiplier), neg_spf = static_cast<Op>(r.anchor_meta().neg_spf);
    Pack<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const Op x = to_op(item.x.v[j]);
      sums.add(weights, x, anchor, j);
      Op y = x * factor;
      if (AnchorPacks::kAnchored) y = std::fma(neg_spf, anchor.pull(j, x).pull, y);
      out.v[j] = static_cast<T>(y);
    }
    store_pack<T, N>(r.meta.y, i, out);
  }
};

// The anchor record of a step's tensor: StepHyper's anchored part besides.
struct StepAnchorMeta : AnchorMeta {
  double hyper_sp, hyper_spf;  // StepHyper::sp, spf: the coupled pull, the decoupled pull fraction
};

// The optimizer steps (adam_step_, sgd_step_). Per tensor: w (x, written in place as y; l2, l1 and the
// anchor record's sp: the penalty value of the weights the step starts from), its gradient, its state
// tensors and its step counter, with its hyperparameters (the anchored ones in its anchor record).
struct StepMeta : TensorMeta {
  using Anchor = StepAnchorMeta;
  void* grad;  // written back unscaled and clipped when StepOp::write_grads
  void* state[3];  // Adam: exp_avg, exp_avg_sq, max_exp_avg_sq; SGD: momentum_buffer
  void* step;      // Adam's step counter on the device (float32 or float64); null for SGD
  int32_t step_is_double;
  PlainStepHyper hyper;
};

// The three device scalars of a step, as a double[3]: GradScaler's scale (1 without one), found_inf
// (0 without one) and the clip coefficient (1 without one). Read by every thread; never by the host.
enum StepScalar : int { kGradScale, kFoundInf, kClip };

// Adam's step counters: step += 1 unless found_inf is set, before the chunk kernel reads them (one
// thread per tensor of the table; stream order makes the new values visible to the next launch).
template <class R>
__global__ void __launch_bounds__(kThreads) count_steps_kernel(L2FAST_GRID_CONST(LaunchTable<R>) table,
                                                               const double* scalars) {
  const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= table.count || scalars[kFoundInf] != 0.0) return;
  const StepMeta& m = table.rows[t].meta;
  if (m.step_is_double) *static_cast<double*>(m.step) += 1.0;
  else *static_cast<float*>(m.step) += 1.0f;
}

// The terms' flags (AdamFlags or SgdFlags of bools) with `anchored` a compile-time constant, the tensor's
// anchor stream's: a walk without an anchor compiles no pull, and an anchored one takes its pull as the
// CPU loop does.
template <bool kAnchored, template <class, class, class, class> class Flags>
__device__ __forceinline__ Flags<bool, bool, bool, std::bool_constant<kAnchored>> anchored_as(
    const Flags<bool, bool, bool, bool>& flags) {
  [[maybe_unused]] const auto [l2, l1, third, anchored] = flags;
  return {l2, l1, third, {}};
}

// How Adam (amsgrad or not) updates one element: its state tensors and the per-tensor terms; pull: the
// element's pull toward its anchor (AnchorPacks::pull).
template <bool kAmsgrad>
struct AdamRule {
  static constexpr int kStates = kAmsgrad ? 3 : 2;
  template <typename Op>
  using Terms = AdamTerms<Op>;
  template <typename Op>
  __device__ static Terms<Op> terms(const StepHyper& h, double step, bool maximize, Op inv_scale, Op clip) {
    return adam_terms<Op>(h, step, maximize, inv_scale, clip);
  }
  template <bool kAnchored, typename Op>
  __device__ static void element(Op& w, Op g, Op (&s)[3], const Terms<Op>& t, Op pull) {
    adam_element<Op, kAmsgrad>(w, g, s[0], s[1], s[2], t, anchored_as<kAnchored>(t.flags), pull);
  }
};

// How SGD (with momentum or not, Nesterov or not) updates one element.
template <bool kMomentum, bool kNesterov>
struct SgdRule {
  static constexpr int kStates = kMomentum ? 1 : 0;
  template <typename Op>
  using Terms = SgdTerms<Op>;
  template <typename Op>
  __device__ static Terms<Op> terms(const StepHyper& h, double, bool maximize, Op inv_scale, Op clip) {
    return sgd_terms<Op>(h, maximize, inv_scale, clip);
  }
  template <bool kAnchored, typename Op>
  __device__ static void element(Op& w, Op g, Op (&s)[3], const Terms<Op>& t, Op pull) {
    sgd_element<Op, kMomentum, kNesterov>(w, g, s[0], t, anchored_as<kAnchored>(t.flags), pull);
  }
};

// The rule of each fused step for a call's arguments: StepRules<Step>::pick(state_lists, nesterov, f)
// calls f(Rule{}).
template <class Step>
struct StepRules;

template <>
struct StepRules<AdamStep> {
  template <class F>
  static void pick(size_t state_lists, bool, F f) {
    if (state_lists == 3) f(AdamRule<true>{});
    else f(AdamRule<false>{});
  }
};

template <>
struct StepRules<SgdStep> {
  template <class F>
  static void pick(size_t state_lists, bool nesterov, F f) {
    if (state_lists == 0) f(SgdRule<false, false>{});
    else if (nesterov) f(SgdRule<true, true>{});
    else f(SgdRule<true, false>{});
  }
};

// One optimizer step over a chunk: reads w, g, the state and the anchor stream once, sums the penalty
// value of w as the weights ask (the anchored term too: walk loads the anchor on a skipped step as well),
// and (unless found_inf is set) writes the updated w and state once.
template <class Rule>
struct StepOp {
  using Meta = StepMeta;
  static constexpr bool kReduces = true;
  const double* scalars = nullptr;  // double[3], see StepScalar
  bool maximize = false;
  bool write_grads = false;  // StepArgs::write_grads
  bool skip = false;
  typename Rule::template Terms<float> terms32{};  // float32, float16, bfloat16 tensors
  typename Rule::template Terms<double> terms64{};

  template <typename T, int N>
  struct Item {
    Pack<T, N> w, g, s[3];
  };

  // The terms of this thread's tensor, from its hyperparameters (the anchored ones from its anchor
  // record: zero in a plain row), its step counter and the scalars.
  template <class R>
  __device__ void bind(const R& r) {
    const StepMeta& m = r.meta;
    StepHyper h;
    static_cast<PlainStepHyper&>(h) = m.hyper;
    h.sp = r.anchor_meta().hyper_sp;
    h.spf = r.anchor_meta().hyper_spf;
    skip = scalars[kFoundInf] != 0.0;
    const double inv_scale = static_cast<float>(1.0 / scalars[kGradScale]);  // as GradScaler.unscale_ rounds it
    const double step = m.step == nullptr ? 0.0
                        : m.step_is_double ? *static_cast<const double*>(m.step)
                                           : static_cast<double>(*static_cast<const float*>(m.step));
    if (m.dtype == kF64) terms64 = Rule::template terms<double>(h, step, maximize, inv_scale, scalars[kClip]);
    else terms32 = Rule::template terms<float>(h, step, maximize, static_cast<float>(inv_scale),
                                               static_cast<float>(scalars[kClip]));
  }

  template <typename Op>
  __device__ const typename Rule::template Terms<Op>& terms() const {
    if constexpr (std::is_same_v<Op, double>) return terms64;
    else return terms32;
  }

  template <typename T, int N>
  __device__ Item<T, N> load(const StepMeta& m, int64_t i) const {
    Item<T, N> item;
    item.w = load_pack<T, N>(m.x, i);
    if (skip) return item;
    item.g = load_pack<T, N>(m.grad, i);
#pragma unroll
    for (int k = 0; k < Rule::kStates; ++k) item.s[k] = load_pack<T, N>(m.state[k], i);
    return item;
  }

  template <typename T, int N, class R, class AnchorPacks>
  __device__ void apply(const R& r, int64_t i, const Item<T, N>& item, const AnchorPacks& anchor, Sums& sums) const {
    using Op = at::opmath_type<T>;
    const StepMeta& m = r.meta;
    const Weights weights = weights_of(r);
#pragma unroll
    for (int j = 0; j < N; ++j) sums.add(weights, to_op(item.w.v[j]), anchor, j);
    if (skip) return;
    const auto& t = terms<Op>();
    Item<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      Op w = to_op(item.w.v[j]);
      Op s[3] = {};
#pragma unroll
      for (int k = 0; k < Rule::kStates; ++k) s[k] = to_op(item.s[k].v[j]);
      const Op g = to_op(item.g.v[j]);
      Rule::template element<AnchorPacks::kAnchored>(w, g, s, t, anchor.pull(j, w).pull);
      out.w.v[j] = static_cast<T>(w);
      out.g.v[j] = static_cast<T>(t.g.unscaled(g));
#pragma unroll
      for (int k = 0; k < Rule::kStates; ++k) out.s[k].v[j] = static_cast<T>(s[k]);
    }
    store_pack<T, N>(m.y, i, out.w);
    if (write_grads) store_pack<T, N>(m.grad, i, out.g);
#pragma unroll
    for (int k = 0; k < Rule::kStates; ++k) store_pack<T, N>(m.state[k], i, out.s[k]);
  }
};

}  // namespace l2fast::cuda
