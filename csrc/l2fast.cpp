// The only place where l2fast's operator schemas are written. Kernels live in cpu/ (TORCH_LIBRARY_IMPL
// CPU), cuda/ (CUDA) and entry/no_pass.cpp (calls without a tensor, and the fake kernels that
// l2fast/_ops.py registers for every op); csrc/README.md has the map.
//
// Coefficient lists hold one value per tensor, or a single value for all of them.
// A tensor whose coefficient(s) are all zero is not read at all.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(l2fast, m) {
  m.set_python_module("l2fast._ops");  // where the fake (and meta) kernels are registered
  // sum_i c_i * ||x_i||^2, or one value per tensor when per_tensor.
  m.def("sq_norm(Tensor[] tensors, float[] coeffs, bool per_tensor) -> Tensor");
  // sum_i c_i * |x_i|_1, or one value per tensor when per_tensor.
  m.def("l1_norm(Tensor[] tensors, float[] coeffs, bool per_tensor) -> Tensor");
  // The penalty ops take optional anchors a_i (the weights to pull toward, in the parameter's dtype or
  // bfloat16) with optional importances F_i (EWC's diagonal Fisher, in the anchor's dtype; 1 without):
  // the value gains l2_sp_i / 2 * sum(F_i * (w_i - a_i)^2) and the gradient l2_sp_i * pull_i, where
  // pull_i = F_i * (w_i - a_i). None: no anchors (l2_sp must then be zero).
  //
  // sum_i l2_i / 2 * ||w_i||^2 + l1_i * |w_i|_1 (+ the anchored term), in one pass.
  m.def("penalty(Tensor[] params, float[] l2, float[] l1, Tensor[]? anchors=None, Tensor[]? fisher=None, float[] l2_sp=[0.]) -> Tensor");
  // New tensors scale * (l2_i * w_i + l1_i * sign(w_i) + l2_sp_i * pull_i): the backward of penalty.
  m.def("penalty_grad(Tensor[] params, Tensor scale, float[] l2, float[] l1, Tensor[]? anchors=None, Tensor[]? fisher=None, float[] l2_sp=[0.]) -> Tensor[]");
  // grads_i += l2_i * w_i + l1_i * sign(w_i) + l2_sp_i * pull_i; returns the penalty value, same pass.
  m.def("add_penalty_grad_(Tensor[] params, Tensor(a!)[] grads, float[] l2, float[] l1, Tensor[]? anchors=None, Tensor[]? fisher=None, "
        "float[] l2_sp=[0.]) -> Tensor");
  // params_i = params_i * (1 - factors_i) - sp_factors_i * pull_i: decoupled weight decay (toward zero,
  // and toward the anchors). Returns the penalty value (l2 and l2_sp) of the weights before the update,
  // measured in the same pass.
  m.def("decay_(Tensor(a!)[] params, float[] factors, float[] l2, Tensor[]? anchors=None, Tensor[]? fisher=None, float[] sp_factors=[0.], "
        "float[] l2_sp=[0.]) -> Tensor");
  // One step of torch.optim.Adam / AdamW (adam_step_) or SGD (sgd_step_) with the penalty in the same
  // pass, in torch's for-loop order: g = grad / grad_scale * clip (negated under maximize) + l2_i * w +
  // l1_i * sign(w); w *= 1 - decay_i; then the optimizer's update of w and its state (max_exp_avg_sqs
  // empty: no amsgrad; momentum_buffers empty: no momentum; fresh_i: buffer i starts as g). Adam
  // increments its steps. With grad_scale or clip given, grads_i is left as grad / grad_scale * clip
  // (the gradient torch's unscale_ and clip_grad_norm_ leave). With found_inf nonzero nothing is
  // written. Returns sum value_l2_i / 2 * ||w_i||^2 + l1_i * |w_i|_1 of the weights before the step.
  // Anchored: g gains l2_sp_i * pull_i, or (decoupled_sp) w -= lr_i * l2_sp_i * pull_i after the decay,
  // and the value gains the anchored term.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float[] lr, float[] beta1, float[] beta2, float[] eps, "
      "float[] l2, float[] l1, float[] decay, float[] value_l2, bool maximize, Tensor? grad_scale, "
      "Tensor? found_inf, Tensor? clip, Tensor[]? anchors=None, Tensor[]? fisher=None, float[] l2_sp=[0.], bool decoupled_sp=False) -> Tensor");
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor(c!)[] grads, Tensor(b!)[] momentum_buffers, float[] lr, float[] momentum, "
      "float[] dampening, int[] fresh, float[] l2, float[] l1, float[] decay, float[] value_l2, bool nesterov, "
      "bool maximize, Tensor? grad_scale, Tensor? found_inf, Tensor? clip, Tensor[]? anchors=None, Tensor[]? fisher=None, float[] l2_sp=[0.], "
      "bool decoupled_sp=False) -> Tensor");
}

// The module stub lets `import l2fast._C` load this library and run the registrations above.
static PyModuleDef l2fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&l2fast_module); }
