// The penalized optimizer steps (adam_step_, sgd_step_): their argument checks, shared by every
// backend, the meta (fake) one included. Free of op registrations, so the host SIMT harness links it too.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "checks.h"
#include "optim_step.h"

namespace l2fast {
namespace {

// A state list pairs with params one to one, in device, dtype, shape and memory layout (the update
// walks all of them by the same flat index).
void check_state(at::TensorList params, at::TensorList states, const char* name) {
  TORCH_CHECK(states.size() == params.size(), "l2fast: got ", params.size(), " params but ", states.size(), " ", name);
  check_tensors(states, name);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor &w = params[i], &s = states[i];
    TORCH_CHECK(s.device() == w.device(), "l2fast: ", name, "[", i, "] is on ", s.device(), " but params[", i,
                "] is on ", w.device());
    TORCH_CHECK(s.scalar_type() == w.scalar_type(), "l2fast: ", name, "[", i, "] has dtype ", dtype_name(s.scalar_type()),
                " but params[", i, "] has dtype ", dtype_name(w.scalar_type()), "; optimizer state is kept in the parameter dtype");
    TORCH_CHECK(same_sizes(s, w), "l2fast: ", name, "[", i, "] has shape ", s.sym_sizes(),
                " but params[", i, "] has shape ", w.sym_sizes());
    TORCH_CHECK(same_layout(s, w), "l2fast: ", name, "[", i, "] has strides ", s.sym_strides(), " but params[", i,
                "] has strides ", w.sym_strides(),
                "; they must share one memory layout");
  }
}

// "name" or "name[index]" (index >= 0), formed only for an error message.
std::string label(const char* name, int64_t index) { return index < 0 ? name : c10::str(name, "[", index, "]"); }

// A one-value float tensor: a step counter (index: its position in steps), GradScaler's scale or
// found_inf, a clip coefficient (index -1).
void check_scalar(const at::Tensor& t, const char* name, int64_t index, const at::Device& device, bool host_allowed) {
  TORCH_CHECK(numel_of(t) == 1, "l2fast: ", label(name, index), " must hold one value, got shape ", t.sym_sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "l2fast: ", label(name, index),
              " has dtype ", dtype_name(t.scalar_type()), "; expected float32 or float64");
  TORCH_CHECK(t.device() == device || (host_allowed && t.device().is_cpu()), "l2fast: ", label(name, index), " is on ",
              t.device(), " but params are on ", device);
}

}  // namespace

void check_step_args(const StepArgs& args, const std::vector<const char*>& state_names, c10::ArrayRef<double> l2_sp) {
  check_tensors(args.params, "params");
  check_tensors(args.grads, "grads");  // before the pairing, so a sparse grad is named as sparse
  check_pairs(args.params, args.grads);
  for (size_t k = 0; k < args.states.size(); ++k) check_state(args.params, args.states[k], state_names[k]);
  check_anchors(args.params, args.anchors, {{l2_sp, "l2_sp"}});
  if (args.params.empty()) return;
  const at::Device device = args.params[0].device();
  for (size_t i = 0; i < args.steps.size(); ++i)
    check_scalar(args.steps[i], "steps", static_cast<int64_t>(i), device, /*host_allowed=*/true);
  const auto& s = args.scalars;
  if (s.grad_scale) check_scalar(*s.grad_scale, "grad_scale", -1, device, false);
  if (s.found_inf) check_scalar(*s.found_inf, "found_inf", -1, device, false);
  if (s.clip) check_scalar(*s.clip, "clip", -1, device, false);
  // grads are written too (unscaled and clipped), and each step counter is incremented: nothing written
  // may share memory, or an element would be updated twice (a counter listed twice would count 2 on the
  // CPU and 1 on a GPU).
  std::vector<NamedTensors> written{{args.params, "params"}, {args.grads, "grads"}};
  for (size_t k = 0; k < args.states.size(); ++k) written.push_back({args.states[k], state_names[k]});
  written.push_back({args.steps, "steps"});
  check_no_overlap(written, {}, args.anchors);
}

}  // namespace l2fast
