// The penalized optimizer steps (adam_step_, sgd_step_): their arguments as every backend receives
// them, and the entry points written once for every backend (argument checks, coefficient lists
// expanded, result allocated). The per-element math is in optim_math.h.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "coeffs.h"
#include "../math/optim_math.h"

namespace l2fast {

// The device scalars of one step: GradScaler's scale and found_inf flag, and the clip coefficient.
struct StepScalars {
  std::optional<at::Tensor> grad_scale, found_inf, clip;
};

// A per-step update over tensor lists. `states` are the optimizer state tensors, one list per kind
// (Adam: exp_avg, exp_avg_sq[, max_exp_avg_sq]; SGD: [momentum_buffer]), each paired with params.
struct StepArgs {
  at::TensorList params, grads;
  std::vector<at::TensorList> states;
  at::TensorList steps;  // Adam: the state's step counters, incremented by the op
  std::vector<StepHyper> hyper;
  std::vector<Weights> value;  // penalty value weights of the weights the step starts from
  Anchors anchors;             // the anchored tensors' anchors (StepHyper::sp, spf weigh their pull)
  bool maximize = false, nesterov = false;
  StepScalars scalars;
  // grads are left unscaled and clipped (GradTerms::unscaled) unless the step is skipped; without a
  // scale or a clip coefficient they are already that, and are not written.
  bool write_grads = false;
};

void check_step_args(const StepArgs& args, const std::vector<const char*>& state_names, c10::ArrayRef<double> l2_sp);

// The fused optimizer steps, each named once: X(op, Step), where op is its entry point (and schema name)
// and Step the tag its kernels are picked by (optim_math.h). The registrations that name the ops (every
// backend, the autograd kernels, the host SIMT harness) expand this list.
#define L2FAST_STEP_OPS(X) X(adam_step_, AdamStep) X(sgd_step_, SgdStep)

// Kernels provides: template <class Step> void step(const StepArgs&, at::Tensor& result), for every Step
// of L2FAST_STEP_OPS; result is the penalty value (a scalar).
template <class Kernels>
struct StepEntryPoints {
  static std::vector<StepHyper> base_hyper(size_t n, c10::ArrayRef<double> lr, c10::ArrayRef<double> l2,
                                           c10::ArrayRef<double> l1, c10::ArrayRef<double> decay) {
    for (auto [list, name] : {std::pair{lr, "lr"}, {l2, "l2"}, {l1, "l1"}, {decay, "decay"}}) check_coeffs(list, n, name);
    const auto lrs = expand_coeffs(lr, n, "lr"), l2s = expand_coeffs(l2, n, "l2");
    const auto l1s = expand_coeffs(l1, n, "l1"), decays = expand_coeffs(decay, n, "decay");
    std::vector<StepHyper> hyper(n);
    for (size_t i = 0; i < n; ++i) {
      hyper[i].lr = lrs[i];
      hyper[i].l2 = l2s[i];
      hyper[i].l1 = l1s[i];
      hyper[i].decay = decays[i];
    }
    return hyper;
  }

  // The anchored tensors' pull: l2_sp into the gradient, or (decoupled) lr * l2_sp into the decayed weight;
  // and into the value weights either way.
  static void add_anchors(StepArgs& args, c10::ArrayRef<double> l2_sp, bool decoupled_sp) {
    const auto sps = expand_coeffs(l2_sp, args.params.size(), "l2_sp");
    for (size_t i = 0; i < sps.size(); ++i) {
      StepHyper& h = args.hyper[i];
      (decoupled_sp ? h.spf : h.sp) = decoupled_sp ? h.lr * sps[i] : sps[i];
      args.value[i].sp = sps[i];
    }
  }

  using TensorLists = std::optional<at::TensorList>;

  static at::Tensor new_result(at::TensorList params) {
    // No params: an empty sum, zero, float32 on the CPU (where torch.zeros puts it).
    if (params.empty()) return at::zeros({}, at::kFloat);
    return at::empty({}, at::TensorOptions().dtype(result_dtype(params)).device(params[0].device()));
  }

  static at::Tensor adam_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                               c10::ArrayRef<double> lr, c10::ArrayRef<double> beta1, c10::ArrayRef<double> beta2,
                               c10::ArrayRef<double> eps, c10::ArrayRef<double> l2, c10::ArrayRef<double> l1,
                               c10::ArrayRef<double> decay, c10::ArrayRef<double> value_l2, bool maximize,
                               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                               const std::optional<at::Tensor>& clip, const TensorLists& anchors,
                               const TensorLists& fisher, c10::ArrayRef<double> l2_sp, bool decoupled_sp) {
    const size_t n = params.size();
    StepArgs args{params, grads, {exp_avgs, exp_avg_sqs}, steps};
    args.anchors = anchors_of(anchors, fisher);
    if (!max_exp_avg_sqs.empty()) args.states.push_back(max_exp_avg_sqs);
    args.maximize = maximize;
    args.scalars = {grad_scale, found_inf, clip};
    args.write_grads = grad_scale.has_value() || clip.has_value();
    check_step_args(args, {"exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"}, l2_sp);
    TORCH_CHECK(steps.size() == n, "l2fast: got ", n, " params but ", steps.size(), " steps");
    for (auto [list, name] : {std::pair{beta1, "beta1"}, {beta2, "beta2"}, {eps, "eps"}}) check_coeffs(list, n, name);
    args.hyper = base_hyper(n, lr, l2, l1, decay);
    const auto b1 = expand_coeffs(beta1, n, "beta1"), b2 = expand_coeffs(beta2, n, "beta2");
    const auto eps_ = expand_coeffs(eps, n, "eps");
    for (size_t i = 0; i < n; ++i) {
      args.hyper[i].beta1 = b1[i];
      args.hyper[i].beta2 = b2[i];
      args.hyper[i].eps = eps_[i];
    }
    check_coeffs(value_l2, n, "value_l2");
    args.value = penalty_weights(value_l2, l1, n);
    add_anchors(args, l2_sp, decoupled_sp);
    at::Tensor result = new_result(params);
    Kernels::template step<AdamStep>(args, result);
    return result;
  }

  static at::Tensor sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                              c10::ArrayRef<double> lr, c10::ArrayRef<double> momentum,
                              c10::ArrayRef<double> dampening, c10::ArrayRef<int64_t> fresh, c10::ArrayRef<double> l2,
                              c10::ArrayRef<double> l1, c10::ArrayRef<double> decay, c10::ArrayRef<double> value_l2,
                              bool nesterov, bool maximize, const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& clip,
                              const TensorLists& anchors, const TensorLists& fisher, c10::ArrayRef<double> l2_sp,
                              bool decoupled_sp) {
    const size_t n = params.size();
    StepArgs args{params, grads, {}, {}};
    args.anchors = anchors_of(anchors, fisher);
    if (!momentum_buffers.empty()) args.states.push_back(momentum_buffers);
    args.maximize = maximize;
    args.nesterov = nesterov;
    args.scalars = {grad_scale, found_inf, clip};
    args.write_grads = grad_scale.has_value() || clip.has_value();
    check_step_args(args, {"momentum_buffers"}, l2_sp);
    for (auto [list, name] : {std::pair{momentum, "momentum"}, {dampening, "dampening"}}) check_coeffs(list, n, name);
    TORCH_CHECK(fresh.size() == 1 || fresh.size() == n, "l2fast: fresh has ", fresh.size(), " values for ", n,
                " tensors; give one value, or one per tensor");
    args.hyper = base_hyper(n, lr, l2, l1, decay);
    const auto mom = expand_coeffs(momentum, n, "momentum"), damp = expand_coeffs(dampening, n, "dampening");
    for (size_t i = 0; i < n; ++i) {
      args.hyper[i].momentum = mom[i];
      args.hyper[i].dampening = damp[i];
      args.hyper[i].fresh = fresh[fresh.size() == 1 ? 0 : i] != 0;
    }
    check_coeffs(value_l2, n, "value_l2");
    args.value = penalty_weights(value_l2, l1, n);
    add_anchors(args, l2_sp, decoupled_sp);
    at::Tensor result = new_result(params);
    Kernels::template step<SgdStep>(args, result);
    return result;
  }

  static void register_all(torch::Library& m) {
#define L2FAST_IMPL_STEP(op, Step) m.impl(#op, &op);
    L2FAST_STEP_OPS(L2FAST_IMPL_STEP)
#undef L2FAST_IMPL_STEP
  }
};

}  // namespace l2fast
