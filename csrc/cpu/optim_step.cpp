// CPU kernels of the penalized optimizer steps: one read of (w, g, state) and one write per element
// (of g too, when it is left unscaled and clipped),
// parallel over the chunk plan of every CPU kernel, the penalty value of the weights before the update
// summed per chunk in the same pass.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>

#include "../entry/optim_step.h"
#include "../math/static_flags.h"
#include "chunks.h"
#include "spans.h"

namespace l2fast::cpu {
namespace {

// What every chunk of one step shares: the GradScaler and clip scalars, read once on the host (they
// are CPU tensors here, so reading them costs no synchronisation).
struct HostScalars {
  bool skip = false;  // found_inf: the step leaves everything as it is
  double inv_scale = 1.0, clip = 1.0;
};

HostScalars read_scalars(const StepScalars& s) {
  HostScalars h;
  if (s.found_inf) h.skip = s.found_inf->item<double>() != 0.0;
  // As GradScaler.unscale_ forms it: 1 / scale in float64, rounded to float32.
  if (s.grad_scale) h.inv_scale = static_cast<float>(1.0 / s.grad_scale->item<double>());
  if (s.clip) h.clip = s.clip->item<double>();
  return h;
}

// torch's step_t += 1 on one counter (a one-value float32 or float64 CPU tensor, check_step_args),
// in the counter's own dtype; returns the count the step uses. Written through the pointer: an ATen
// add_ and item() per counter cost microseconds each, more than the update of a small tensor.
double count_step(const at::Tensor& step, bool skip) {
  return AT_DISPATCH_FLOATING_TYPES(step.scalar_type(), "count_step", [&] {
    scalar_t* count = step.mutable_data_ptr<scalar_t>();
    if (!skip) *count += scalar_t(1);
    return static_cast<double>(*count);
  });
}

// The span loops take the terms' flags as compile-time constants (Flags: AdamFlags or SgdFlags of
// std::bool_constant, from with_flags), so each is one branch-free loop that vectorizes. Their
// bodies capture the pointers by value: by reference, GCC left the five-stream amsgrad loop scalar.
// kWriteGrad: the gradient is written back unscaled and clipped, from the register it was read into
// (a separate loop over each chunk after the step cost about twice as much: the chunk's four
// streams no longer fit in the core's cache). Anchor: the tensor's anchor stream (spans.h), read in the
// same pass.
template <typename T, bool kAmsgrad, bool kWriteGrad, bool kSums, class Flags, class Anchor>
L2FAST_CPU_CLONES_V4 Partial adam_span(T* w, T* g, T* m, T* v, T* v_max, int64_t n,
                                    const AdamTerms<at::opmath_type<T>>& t, Flags f, Anchor anchor) {
  using Op = at::opmath_type<T>;
  LaneSumsOf<Anchor::kLanes> sums;
  for_lanes<1, Anchor::kLanes>(n, [=, &sums](int64_t i, int lane) __attribute__((always_inline)) {
    Op wi = static_cast<Op>(w[i]), mi = static_cast<Op>(m[i]), vi = static_cast<Op>(v[i]);
    const Op gi = static_cast<Op>(g[i]);
    Op max_i = kAmsgrad ? static_cast<Op>(v_max[i]) : Op(0);
    sums.template add<kSums, kSums>(lane, static_cast<double>(wi));
    const AnchorPull<Op> p = anchor.pull(i, wi);
    if (Anchor::kAnchored) sums.add_deviation(lane, p.deviation());
    adam_element<Op, kAmsgrad>(wi, gi, mi, vi, max_i, t, f, p.pull);
    if (kWriteGrad) g[i] = static_cast<T>(t.g.unscaled(gi));
    w[i] = static_cast<T>(wi);
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    if (kAmsgrad) v_max[i] = static_cast<T>(max_i);
  }, ahead_with(anchor, prefetch_each<T, Anchor::kLanes>(w, g, m, v, kAmsgrad ? v_max : nullptr)));
  return sums.fold();
}

template <typename T, bool kMomentum, bool kNesterov, bool kWriteGrad, bool kSums, class Flags, class Anchor>
L2FAST_CPU_CLONES_V4 Partial sgd_span(T* w, T* g, T* buf, int64_t n, const SgdTerms<at::opmath_type<T>>& t, Flags f,
                                      Anchor anchor) {
  using Op = at::opmath_type<T>;
  LaneSumsOf<Anchor::kLanes> sums;
  for_lanes<1, Anchor::kLanes>(n, [=, &sums](int64_t i, int lane) __attribute__((always_inline)) {
    Op wi = static_cast<Op>(w[i]);
    const Op gi = static_cast<Op>(g[i]);
    Op bi = kMomentum ? static_cast<Op>(buf[i]) : Op(0);
    sums.template add<kSums, kSums>(lane, static_cast<double>(wi));
    const AnchorPull<Op> p = anchor.pull(i, wi);
    if (Anchor::kAnchored) sums.add_deviation(lane, p.deviation());
    sgd_element<Op, kMomentum, kNesterov>(wi, gi, bi, t, f, p.pull);
    if (kWriteGrad) g[i] = static_cast<T>(t.g.unscaled(gi));
    w[i] = static_cast<T>(wi);
    if (kMomentum) buf[i] = static_cast<T>(bi);
  }, ahead_with(anchor, prefetch_each<T, Anchor::kLanes>(w, g, kMomentum ? buf : nullptr)));
  return sums.fold();
}

// Walks every chunk of every tensor: the penalty sums only when the step is skipped, else span(c, anchor)
// with the chunk's anchor stream (anchored when the tensor's pull or value weighs its anchor).
template <typename Span>
void run_step(const StepArgs& args, const HostScalars& host, at::Tensor& result, Span span) {
  const auto chunks = plan_chunks(args.params, [](size_t) { return true; }, kChunk);
  const auto partials = for_each_chunk(chunks, [&](const Chunk& c) {
    const at::Tensor& w = args.params[c.tensor];
    const StepHyper& h = args.hyper[c.tensor];
    const bool anchored = h.sp != 0.0 || h.spf != 0.0 || args.value[c.tensor].sp != 0.0;
    return L2FAST_DISPATCH(w.scalar_type(), [&] {
      return with_anchor<scalar_t>(args.anchors, anchored, c, [&](auto anchor) {
        if (host.skip) return penalty_sums_span(data_of<scalar_t>(w) + c.begin, c.len, anchor);
        return span(c, scalar_t{}, anchor);
      });
    });
  });
  finish(chunks, partials, args.value, /*per_tensor=*/false, result);
}

// Whether the step's value needs the sums of w (it has an l2 or l1 term) for chunk c's tensor. The plain
// loops always take them; an anchored loop, whose anchor stream costs compute too, leaves them out when
// the value has only its anchored term (L2-SP or EWC alone, the usual fine-tuning setting).
inline bool value_sums(const StepArgs& args, const Chunk& c) {
  const Weights& value = args.value[c.tensor];
  return value.l2 != 0.0 || value.l1 != 0.0;
}

template <typename T>
T* state_of(const StepArgs& args, size_t kind, const Chunk& c) {
  return kind < args.states.size() ? data_of<T>(args.states[kind][c.tensor]) + c.begin : nullptr;
}

// The Kernels of StepEntryPoints: one step<Step> per op of L2FAST_STEP_OPS, below.
struct CpuStepKernels {
  template <class Step>
  static void step(const StepArgs& args, at::Tensor& result);
};

template <>
void CpuStepKernels::step<AdamStep>(const StepArgs& args, at::Tensor& result) {
  const HostScalars host = read_scalars(args.scalars);
  std::vector<double> steps(args.params.size());
  for (size_t i = 0; i < steps.size(); ++i) steps[i] = count_step(args.steps[i], host.skip);
  const bool amsgrad = args.states.size() == 3;
  run_step(args, host, result, [&](const Chunk& c, auto tag, auto anchor) {
    using T = decltype(tag);
    using Op = at::opmath_type<T>;
    using Anchored = std::bool_constant<decltype(anchor)::kAnchored>;
    const auto terms = adam_terms<Op>(args.hyper[c.tensor], steps[c.tensor], args.maximize,
                                      static_cast<Op>(host.inv_scale), static_cast<Op>(host.clip));
    T* w = data_of<T>(args.params[c.tensor]) + c.begin;
    T* g = data_of<T>(args.grads[c.tensor]) + c.begin;
    T *m = state_of<T>(args, 0, c), *v = state_of<T>(args, 1, c), *v_max = state_of<T>(args, 2, c);
    const auto run = [&](auto ams, auto write, auto sums, auto l2, auto l1, auto from_start) {
      const AdamFlags<decltype(l2), decltype(l1), decltype(from_start), Anchored> f{l2, l1, from_start, {}};
      return adam_span<T, ams, write, sums>(w, g, m, v, v_max, c.len, terms, f, anchor);
    };
    // An anchored tensor takes both terms (see AdamFlags): fewer loops to compile. It sums w for the
    // value only when the value has an l2 or l1 term (value_sums).
    if constexpr (Anchored::value)
      return with_flags([&](auto ams, auto write, auto sums, auto from_start) {
        return run(ams, write, sums, std::true_type{}, std::true_type{}, from_start);
      }, amsgrad, args.write_grads, value_sums(args, c), terms.flags.lerp_from_start);
    else
      return with_flags([&](auto ams, auto write, auto... flags) { return run(ams, write, std::true_type{}, flags...); },
                        amsgrad, args.write_grads, terms.flags.l2, terms.flags.l1, terms.flags.lerp_from_start);
  });
}

template <>
void CpuStepKernels::step<SgdStep>(const StepArgs& args, at::Tensor& result) {
  const HostScalars host = read_scalars(args.scalars);
  const bool momentum = !args.states.empty();
  run_step(args, host, result, [&](const Chunk& c, auto tag, auto anchor) {
    using T = decltype(tag);
    using Op = at::opmath_type<T>;
    using Anchored = std::bool_constant<decltype(anchor)::kAnchored>;
    const auto terms = sgd_terms<Op>(args.hyper[c.tensor], args.maximize, static_cast<Op>(host.inv_scale),
                                     static_cast<Op>(host.clip));
    T* w = data_of<T>(args.params[c.tensor]) + c.begin;
    T* g = data_of<T>(args.grads[c.tensor]) + c.begin;
    T* buf = state_of<T>(args, 0, c);
    const auto run = [&](auto write, auto sums, auto l2, auto l1, auto fresh) {
      const SgdFlags<decltype(l2), decltype(l1), decltype(fresh), Anchored> f{l2, l1, fresh, {}};
      if (!momentum) return sgd_span<T, false, false, write, sums>(w, g, buf, c.len, terms, f, anchor);
      return args.nesterov ? sgd_span<T, true, true, write, sums>(w, g, buf, c.len, terms, f, anchor)
                           : sgd_span<T, true, false, write, sums>(w, g, buf, c.len, terms, f, anchor);
    };
    // An anchored tensor takes both terms (see SgdFlags): fewer loops to compile. It sums w for the
    // value only when the value has an l2 or l1 term (value_sums).
    if constexpr (Anchored::value)
      return with_flags([&](auto write, auto sums, auto fresh) {
        return run(write, sums, std::true_type{}, std::true_type{}, fresh);
      }, args.write_grads, value_sums(args, c), terms.flags.fresh);
    else
      return with_flags([&](auto write, auto... flags) { return run(write, std::true_type{}, flags...); },
                        args.write_grads, terms.flags.l2, terms.flags.l1, terms.flags.fresh);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CPU, m) { StepEntryPoints<CpuStepKernels>::register_all(m); }

}  // namespace l2fast::cpu
