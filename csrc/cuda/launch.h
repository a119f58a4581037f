// The host half of every CUDA op, written once: metadata, launch tables, partial buffers and the
// order of launches. It is parameterized by a Device that says how memory is allocated and how a
// kernel is launched: ops.cu's CudaDevice on a GPU, the host SIMT harness's EmuDevice (csrc/emu/)
// with CPU tensors standing in for device memory. Nothing here reads device memory or waits for it.
//
// A Device provides:
//   explicit Device(c10::Device)                 where the op's tensors live
//   at::Tensor empty(int64_t n, at::ScalarType)  n elements of scratch on that device
//   void launch(kernel, int64_t blocks, args...) kernel<<<blocks, kThreads>>>(args...), blocks >= 1
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <memory>
#include <vector>

#include "../entry/optim_step.h"
#include "../math/plan.h"
#include "device.cuh"
#include "op_functors.cuh"

namespace l2fast::cuda {

inline DType dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_INTERNAL_ASSERT(false, "l2fast: no CUDA kernel for dtype ", t, " (check_tensors should refuse it)");
  }
}

inline uintptr_t misalignment(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16; }

// TensorMeta::pack_head of a tensor at x with `element_size`-byte elements, walked together with the
// tensors at `with` (null entries: none): the elements before x's first 16-byte boundary, when every
// one of them is as far from a boundary as x; else -1.
inline int32_t pack_head(const void* x, size_t element_size, std::initializer_list<const void*> with) {
  const uintptr_t offset = misalignment(x);
  for (const void* p : with)
    if (p != nullptr && misalignment(p) != offset) return -1;
  if (offset % element_size != 0) return -1;
  return static_cast<int32_t>((16 - offset) % 16 / element_size);
}

// Tensor x (read), y (written, or null), what the op computes from x, and whether x takes part.
inline TensorMeta make_meta(const at::Tensor& x, void* y, Weights weights, double multiplier, bool takes_part) {
  const void* xp = x.const_data_ptr();
  return {xp, y, takes_part ? x.numel() : 0, weights, multiplier, dtype_code(x.scalar_type()),
          pack_head(xp, x.element_size(), {y})};
}

// The op's tensors cut into launch tables of at most kPerLaunch<Meta> consecutive tensors each.
template <class Meta>
std::vector<LaunchTable<Meta>> plan_launches(const std::vector<Meta>& metas) {
  std::vector<LaunchTable<Meta>> tables;
  int64_t partials = 0;
  for (size_t first = 0; first < metas.size(); first += kPerLaunch<Meta>) {
    LaunchTable<Meta>& table = tables.emplace_back();
    table.first_tensor = static_cast<int64_t>(first);
    table.first_partial = partials;
    table.count = std::min<int64_t>(kPerLaunch<Meta>, static_cast<int64_t>(metas.size() - first));
    int64_t chunks = 0;
    for (int64_t t = 0; t < table.count; ++t) {
      table.metas[t] = metas[first + t];
      chunks += chunk_count(table.metas[t].length, kChunk);
      table.chunk_end[t] = chunks;
    }
    partials += chunks;
  }
  return tables;
}

template <class Meta>
int64_t chunks_in(const LaunchTable<Meta>& table) {
  return table.count == 0 ? 0 : table.chunk_end[table.count - 1];
}

// Runs op over every chunk of every tensor of the tables (n tensors in all). When the op reduces,
// also fills `result`: one value per tensor (per_tensor) or their sum. A list with nothing to visit
// launches no chunk kernel (CUDA refuses a grid of zero blocks) and still writes its zeros.
template <class Device, class Op>
void run_tables(const Device& device, const Op& op, const std::vector<LaunchTable<typename Op::Meta>>& tables,
                int64_t n, at::Tensor* result, bool per_tensor) {
  using Table = LaunchTable<typename Op::Meta>;
  static_assert(sizeof(Op) + sizeof(Table) + sizeof(double2*) <= kParameterBytes,
                "chunk_kernel's parameters exceed CUDA's limit");
  TORCH_INTERNAL_ASSERT(Op::kReduces == (result != nullptr));
  const int64_t chunks = tables.empty() ? 0 : tables.back().first_partial + chunks_in(tables.back());
  TORCH_CHECK(chunks <= std::numeric_limits<int32_t>::max(), "l2fast: ", chunks, " chunks exceed one CUDA grid");
  at::Tensor partials;
  double2* partial_ptr = nullptr;
  if (Op::kReduces && chunks > 0) {
    partials = device.empty(2 * chunks, at::kDouble);
    partial_ptr = reinterpret_cast<double2*>(partials.template data_ptr<double>());
  }
  for (const Table& table : tables)
    if (chunks_in(table) > 0) device.launch(&chunk_kernel<Op>, chunks_in(table), op, table, partial_ptr);
  if (!Op::kReduces) return;

  at::Tensor values = per_tensor ? at::Tensor() : device.empty(std::max<int64_t>(n, 1), at::kDouble);
  double* value_ptr = per_tensor ? nullptr : values.template data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(result->scalar_type(), "l2fast_finish", [&] {
    scalar_t* out = result->template data_ptr<scalar_t>();
    for (const Table& table : tables)
      device.launch(&tensor_values_kernel<scalar_t, typename Op::Meta>, (table.count + kWarps - 1) / kWarps, table,
                    static_cast<const double2*>(partial_ptr), per_tensor ? out : nullptr, value_ptr);
    if (!per_tensor) device.launch(&total_kernel<scalar_t>, 1, static_cast<const double*>(value_ptr), n, out);
  });
}

template <class Device, class Op>
void run(const Device& device, const Op& op, const std::vector<TensorMeta>& metas, at::Tensor* result,
         bool per_tensor) {
  run_tables(device, op, plan_launches(metas), static_cast<int64_t>(metas.size()), result, per_tensor);
}

// Metadata of params[i] (read) with outs[i] (written; none when outs is empty) and the weights of
// tensor i; a tensor whose weights are all zero takes no part.
inline std::vector<TensorMeta> metas_of(at::TensorList params, at::TensorList outs, const std::vector<Weights>& weights) {
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < params.size(); ++i)
    metas.push_back(make_meta(params[i], outs.empty() ? nullptr : outs[i].data_ptr(), weights[i], 1.0, weights[i].any()));
  return metas;
}

// The Kernels of csrc/entry/entry_points.h for any Device.
template <class Device>
struct DeviceKernels {
  static void reduce(at::TensorList tensors, const std::vector<Weights>& weights, bool per_tensor, at::Tensor& result) {
    run(Device(result.device()), ReduceOp{}, metas_of(tensors, {}, weights), &result, per_tensor);
  }

  static void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>& weights,
                               at::Tensor& result) {
    run(Device(result.device()), PenaltyGradOp<true>{}, metas_of(params, grads, weights), &result, false);
  }

  static void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale,
                           const std::vector<Weights>& weights) {
    if (params.empty()) return;
    const at::Tensor scale64 = scale.to(at::kDouble).contiguous();  // stays on the device: no sync
    PenaltyGradOp<false> op;
    op.scale_ptr = scale64.const_data_ptr<double>();
    run(Device(params[0].device()), op, metas_of(params, outs, weights), nullptr, false);
  }

  static void decay(at::TensorList params, const std::vector<double>& factors, const std::vector<Weights>& weights,
                    at::Tensor& result) {
    std::vector<TensorMeta> metas;
    for (size_t i = 0; i < params.size(); ++i) {
      // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
      metas.push_back(make_meta(params[i], params[i].data_ptr(), weights[i], 1.0 - factors[i],
                                factors[i] != 0.0 || weights[i].any()));
    }
    run(Device(result.device()), ScaleOp{}, metas, &result, false);
  }
};

// The device scalars of a step as the double[3] StepOp reads (see StepScalar), formed on the device
// by copies that convert: the host never reads them.
template <class Device>
at::Tensor step_scalars(const Device& device, const StepScalars& s) {
  at::Tensor out = device.empty(3, at::kDouble);
  const auto put = [&](StepScalar k, const std::optional<at::Tensor>& t, double absent) {
    if (t) out.select(0, k).copy_(t->reshape({}));
    else out.select(0, k).fill_(absent);
  };
  put(kGradScale, s.grad_scale, 1.0);
  put(kFoundInf, s.found_inf, 0.0);
  put(kClip, s.clip, 1.0);
  return out;
}

// Metadata of tensor i of a step: packs only where w, g and every state tensor share their boundaries.
inline StepMeta step_meta(const StepArgs& args, size_t i) {
  const at::Tensor& w = args.params[i];
  StepMeta m{};
  static_cast<TensorMeta&>(m) = make_meta(w, w.data_ptr(), args.value[i], 1.0, /*takes_part=*/true);
  m.grad = args.grads[i].data_ptr();
  for (size_t k = 0; k < args.states.size(); ++k) m.state[k] = args.states[k][i].data_ptr();
  m.pack_head = pack_head(m.x, w.element_size(), {m.grad, m.state[0], m.state[1], m.state[2]});
  m.hyper = args.hyper[i];
  if (i < args.steps.size()) {
    const at::Tensor& step = args.steps[i];
    TORCH_CHECK(step.device() == w.device(), "l2fast: steps[", i, "] is on ", step.device(), " but params[", i,
                "] is on ", w.device(), "; on this device the step counters live beside the parameters, as torch's "
                "fused Adam keeps them");
    m.step = step.data_ptr();
    m.step_is_double = step.scalar_type() == at::kDouble ? 1 : 0;
  }
  return m;
}

// Runs one optimizer step: Adam's counters first (when it has them), then one chunk kernel pass that
// updates every tensor and sums the penalty value, then the finish kernels.
template <class Device, class Rule>
void run_step(const StepArgs& args, at::Tensor& result) {
  if (args.params.empty()) {  // reached only through a device scalar: the empty sum, nothing to launch
    result.zero_();
    return;
  }
  const Device device(args.params[0].device());
  const at::Tensor scalars = step_scalars(device, args.scalars);
  StepOp<Rule> op;
  op.scalars = scalars.const_data_ptr<double>();
  op.maximize = args.maximize;
  op.write_grads = args.write_grads;
  std::vector<StepMeta> metas;
  for (size_t i = 0; i < args.params.size(); ++i) metas.push_back(step_meta(args, i));
  const auto tables = plan_launches(metas);
  if (!args.steps.empty())
    for (const auto& table : tables)
      device.launch(&count_steps_kernel, (table.count + kThreads - 1) / kThreads, table, op.scalars);
  run_tables(device, op, tables, static_cast<int64_t>(metas.size()), &result, /*per_tensor=*/false);
}

// The Kernels of StepEntryPoints (csrc/entry/optim_step.h) for any Device.
template <class Device>
struct DeviceStepKernels {
  static void adam_step(const StepArgs& args, at::Tensor& result) {
    if (args.states.size() == 3) run_step<Device, AdamRule<true>>(args, result);
    else run_step<Device, AdamRule<false>>(args, result);
  }

  static void sgd_step(const StepArgs& args, at::Tensor& result) {
    if (args.states.empty()) run_step<Device, SgdRule<false, false>>(args, result);
    else if (args.nesterov) run_step<Device, SgdRule<true, true>>(args, result);
    else run_step<Device, SgdRule<true, false>>(args, result);
  }
};

}  // namespace l2fast::cuda
