// The only place where l2fast's operator schemas are written. Kernels live in cpu/ (TORCH_LIBRARY_IMPL
// CPU), cuda/ (CUDA) and entry/no_pass.cpp (Meta, and calls without a tensor); csrc/README.md has the map.
//
// Coefficient lists hold one value per tensor, or a single value for all of them.
// A tensor whose coefficient(s) are all zero is not read at all.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(l2fast, m) {
  // sum_i c_i * ||x_i||^2, or one value per tensor when per_tensor.
  m.def("sq_norm(Tensor[] tensors, float[] coeffs, bool per_tensor) -> Tensor");
  // sum_i c_i * |x_i|_1, or one value per tensor when per_tensor.
  m.def("l1_norm(Tensor[] tensors, float[] coeffs, bool per_tensor) -> Tensor");
  // sum_i l2_i / 2 * ||w_i||^2 + l1_i * |w_i|_1, in one pass.
  m.def("penalty(Tensor[] params, float[] l2, float[] l1) -> Tensor");
  // New tensors scale * (l2_i * w_i + l1_i * sign(w_i)): the backward of penalty.
  m.def("penalty_grad(Tensor[] params, Tensor scale, float[] l2, float[] l1) -> Tensor[]");
  // grads_i += l2_i * w_i + l1_i * sign(w_i); returns the penalty value, same pass.
  m.def("add_penalty_grad_(Tensor[] params, Tensor(a!)[] grads, float[] l2, float[] l1) -> Tensor");
  // params_i *= (1 - factors_i): decoupled weight decay. Returns sum l2_i / 2 * ||w_i||^2 of the
  // weights before the decay, measured in the same pass.
  m.def("decay_(Tensor(a!)[] params, float[] factors, float[] l2) -> Tensor");
  // One step of torch.optim.Adam / AdamW (adam_step_) or SGD (sgd_step_) with the penalty in the same
  // pass, in torch's for-loop order: g = grad / grad_scale * clip (negated under maximize) + l2_i * w +
  // l1_i * sign(w); w *= 1 - decay_i; then the optimizer's update of w and its state (max_exp_avg_sqs
  // empty: no amsgrad; momentum_buffers empty: no momentum; fresh_i: buffer i starts as g). Adam
  // increments its steps. With grad_scale or clip given, grads_i is left as grad / grad_scale * clip
  // (the gradient torch's unscale_ and clip_grad_norm_ leave). With found_inf nonzero nothing is
  // written. Returns sum value_l2_i / 2 * ||w_i||^2 + l1_i * |w_i|_1 of the weights before the step.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float[] lr, float[] beta1, float[] beta2, float[] eps, "
      "float[] l2, float[] l1, float[] decay, float[] value_l2, bool maximize, Tensor? grad_scale, "
      "Tensor? found_inf, Tensor? clip) -> Tensor");
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor(c!)[] grads, Tensor(b!)[] momentum_buffers, float[] lr, float[] momentum, "
      "float[] dampening, int[] fresh, float[] l2, float[] l1, float[] decay, float[] value_l2, bool nesterov, "
      "bool maximize, Tensor? grad_scale, Tensor? found_inf, Tensor? clip) -> Tensor");
}

// The module stub lets `import l2fast._C` load this library and run the registrations above.
static PyModuleDef l2fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&l2fast_module); }
