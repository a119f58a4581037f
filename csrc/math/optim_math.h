// The penalized optimizer steps' per-element math, shared by the CPU loop (csrc/cpu/optim_step.cpp)
// and the CUDA functor (csrc/cuda/op_functors.cuh): host and device code without ATen, so the device
// headers and the host SIMT harness include it unchanged.
//
// The math follows torch.optim's single-tensor (for-loop) Adam and SGD operation by operation, in
// the op-math type of the parameters, with a fused multiply-add exactly where torch's CPU kernels use
// one (lerp, add with alpha, addcmul), so float32 results match torch's to rounding: the gradient is
// unscaled (GradScaler), clipped, negated (maximize), then gains l2 * w + l1 * sign(w); the weight is
// decayed (AdamW); then Adam's lerp / mul-addcmul / sqrt-div-add / addcdiv, or SGD's momentum. A tensor
// with an anchor takes its pull (anchor_pull, elementwise.h) into the gradient (g += sp * pull) or, decoupled,
// into the decayed weight (w -= spf * pull), each one fused multiply-add after the terms above.
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>

#include "elementwise.h"

namespace l2fast {

// NaN-propagating maximum, as torch.maximum (amsgrad's running maximum must not hide a NaN).
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T max_nan(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// Which optional parts of the step math one tensor takes. The terms hold them as bools, which the
// CUDA functor passes as they are (a branch every thread of a block takes alike is free); the CPU loops
// pass them as std::bool_constant (with_flags, static_flags.h), so that they vectorize.
// `anchored`: the tensor has an anchor, and the element functions take its pull; each backend's loop sets
// it at compile time from the anchor stream it walks (the terms leave it false). The CPU's anchored loops
// pass l2 and l1 as true (a zero coefficient then adds a zero term), so that anchors multiply the loops
// compiled by their dtypes and fisher alone.
template <typename L2 = bool, typename L1 = bool, typename FromStart = bool, typename Anchored = bool>
struct AdamFlags {
  L2 l2;
  L1 l1;
  FromStart lerp_from_start;  // see lerp_torch
  Anchored anchored;
};

template <typename L2 = bool, typename L1 = bool, typename Fresh = bool, typename Anchored = bool>
struct SgdFlags {
  L2 l2;
  L1 l1;
  Fresh fresh;  // the momentum buffer is new: it starts as the gradient (torch's first step)
  Anchored anchored;
};

// torch's CPU lerp as its vectorized kernel computes it: one fused multiply-add, from start with
// weight for |weight| < 0.5, else from end with weight - 1 (the rounding torch's Adam sees).
template <typename T>
C10_HOST_DEVICE inline bool lerp_from_start(T weight) {
  return (weight < T(0) ? -weight : weight) < T(0.5);
}

template <typename T, typename FromStart>
C10_HOST_DEVICE C10_ALWAYS_INLINE T lerp_torch(T start, T end, T weight, FromStart from_start) {
  return from_start ? std::fma(weight, end - start, start) : std::fma(weight - T(1), end - start, end);
}

// What every step does to the gradient and the weight before the optimizer's own math.
template <typename Op>
struct GradTerms {
  Op inv_scale = Op(1);  // GradScaler's 1 / scale
  Op clip = Op(1);       // min(1, max_norm / (norm + 1e-6))
  Op sign = Op(1);       // -1 under maximize
  Op l2 = Op(0), l1 = Op(0);
  Op keep = Op(1);  // 1 - decoupled decay fraction
  Op sp = Op(0);       // coupled pull toward the anchor: g += sp * pull
  Op neg_spf = Op(0);  // decoupled pull: w += neg_spf * pull (-lr * l2_sp)

  // The gradient as GradScaler.unscale_ then clip_grad_norm_ leave it: (g * inv_scale) * clip.
  C10_HOST_DEVICE C10_ALWAYS_INLINE Op unscaled(Op g) const { return (g * inv_scale) * clip; }

  // unscaled(g), negated under maximize, plus the coupled penalty gradient of w: l2 * w fused into
  // the add as torch's grad.add(param, alpha=weight_decay) rounds it, then l1 * sign(w).
  template <typename L2, typename L1>
  C10_HOST_DEVICE C10_ALWAYS_INLINE Op grad(Op g, Op w, L2 use_l2, L1 use_l1) const {
    g = unscaled(g) * sign;
    if (use_l2) g = std::fma(l2, w, g);
    if (use_l1) g = g + l1 * sign_of(w);
    return g;
  }

  // grad(g, w), then the anchored tensor's coupled pull.
  template <class Flags>
  C10_HOST_DEVICE C10_ALWAYS_INLINE Op step_grad(Op g, Op w, Op pull, Flags f) const {
    g = grad(g, w, f.l2, f.l1);
    if (f.anchored) g = std::fma(sp, pull, g);
    return g;
  }

  // The decoupled decay of w (AdamW's mul_(1 - lr * wd)), then the anchored tensor's decoupled pull.
  template <class Flags>
  C10_HOST_DEVICE C10_ALWAYS_INLINE Op decayed(Op w, Op pull, Flags f) const {
    w = w * keep;
    if (f.anchored) w = std::fma(neg_spf, pull, w);
    return w;
  }
};

template <typename Op>
struct AdamTerms {
  GradTerms<Op> g;
  Op lerp_weight, beta2, one_minus_beta2, bias2_sqrt, eps, neg_step_size;
  AdamFlags<> flags;
};

template <typename Op>
struct SgdTerms {
  GradTerms<Op> g;
  Op momentum, one_minus_dampening, neg_lr;
  SgdFlags<> flags;
};

// One element of torch.optim.Adam's _single_tensor_adam (non-capturable branch); pull: the anchored
// tensor's anchor_pull of w (unused otherwise).
template <typename Op, bool kAmsgrad, class Flags>
C10_HOST_DEVICE C10_ALWAYS_INLINE void adam_element(Op& w, Op g, Op& m, Op& v, Op& v_max, const AdamTerms<Op>& t,
                                                    Flags f, Op pull) {
  g = t.g.step_grad(g, w, pull, f);
  w = t.g.decayed(w, pull, f);
  m = lerp_torch(m, g, t.lerp_weight, f.lerp_from_start);
  v = std::fma(t.one_minus_beta2 * g, g, v * t.beta2);  // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
  Op v_hat = v;
  if (kAmsgrad) {
    v_max = max_nan(v_max, v);
    v_hat = v_max;
  }
  const Op denom = std::sqrt(v_hat) / t.bias2_sqrt + t.eps;
  w = w + t.neg_step_size * m / denom;
}

// One element of torch.optim.SGD's _single_tensor_sgd.
template <typename Op, bool kMomentum, bool kNesterov, class Flags>
C10_HOST_DEVICE C10_ALWAYS_INLINE void sgd_element(Op& w, Op g, Op& buf, const SgdTerms<Op>& t, Flags f, Op pull) {
  g = t.g.step_grad(g, w, pull, f);
  w = t.g.decayed(w, pull, f);
  if (kMomentum) {
    buf = f.fresh ? g : std::fma(t.one_minus_dampening, g, buf * t.momentum);
    g = kNesterov ? std::fma(t.momentum, buf, g) : buf;
  }
  w = std::fma(t.neg_lr, g, w);
}

// The tags of the fused steps (L2FAST_STEP_OPS, entry/optim_step.h), by which each backend picks its kernels.
struct AdamStep {};
struct SgdStep {};

// Per-tensor hyperparameters, as the host holds them (float64, like Python's floats): those of every
// tensor, then the anchored pull's, apart so that a CUDA launch table of a call without anchors holds the
// first part alone (csrc/cuda/op_functors.cuh's StepMeta).
struct PlainStepHyper {
  double lr = 0.0, l2 = 0.0, l1 = 0.0, decay = 0.0;
  double beta1 = 0.0, beta2 = 0.0, eps = 0.0;           // Adam
  double momentum = 0.0, dampening = 0.0;               // SGD
  bool fresh = false;                                   // SGD: a new momentum buffer
};

struct StepHyper : PlainStepHyper {
  double sp = 0.0, spf = 0.0;  // anchored: coupled pull, decoupled pull fraction
};

template <typename Op>
C10_HOST_DEVICE inline GradTerms<Op> grad_terms(const StepHyper& h, bool maximize, Op inv_scale, Op clip) {
  GradTerms<Op> g;
  g.inv_scale = inv_scale;
  g.clip = clip;
  g.sign = maximize ? Op(-1) : Op(1);
  g.l2 = static_cast<Op>(h.l2);
  g.l1 = static_cast<Op>(h.l1);
  g.keep = static_cast<Op>(1.0 - h.decay);  // formed in float64, as AdamW's mul_(1 - lr * wd)
  g.sp = static_cast<Op>(h.sp);
  g.neg_spf = static_cast<Op>(-h.spf);
  return g;
}

// Adam's scalars at `step` (already incremented), in float64 as torch's for-loop Adam forms them.
template <typename Op>
C10_HOST_DEVICE inline AdamTerms<Op> adam_terms(const StepHyper& h, double step, bool maximize, Op inv_scale, Op clip) {
  AdamTerms<Op> t;
  t.g = grad_terms<Op>(h, maximize, inv_scale, clip);
  const double bias1 = 1.0 - std::pow(h.beta1, step);
  const double bias2 = 1.0 - std::pow(h.beta2, step);
  t.lerp_weight = static_cast<Op>(1.0 - h.beta1);
  t.flags = {h.l2 != 0.0, h.l1 != 0.0, lerp_from_start(t.lerp_weight), false};  // anchored: set by the loop
  t.beta2 = static_cast<Op>(h.beta2);
  t.one_minus_beta2 = static_cast<Op>(1.0 - h.beta2);
  t.bias2_sqrt = static_cast<Op>(std::pow(bias2, 0.5));  // Python's bias_correction2**0.5
  t.eps = static_cast<Op>(h.eps);
  t.neg_step_size = static_cast<Op>(-(h.lr / bias1));
  return t;
}

template <typename Op>
C10_HOST_DEVICE inline SgdTerms<Op> sgd_terms(const StepHyper& h, bool maximize, Op inv_scale, Op clip) {
  SgdTerms<Op> t;
  t.g = grad_terms<Op>(h, maximize, inv_scale, clip);
  t.momentum = static_cast<Op>(h.momentum);
  t.one_minus_dampening = static_cast<Op>(1.0 - h.dampening);
  t.neg_lr = static_cast<Op>(-h.lr);
  t.flags = {h.l2 != 0.0, h.l1 != 0.0, h.fresh, false};  // anchored: set by the loop
  return t;
}

}  // namespace l2fast
