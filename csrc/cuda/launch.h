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
#include <c10/util/SmallVector.h>

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

// One tensor a chunk walks: where its data starts (null: none) and its element size.
struct Walked {
  const void* data;
  size_t element_size;
};

// TensorMeta::pack_head of tensors walked together, the first one's 16 bytes (N elements) to a pack: a
// tensor of e-byte elements loads N * e bytes at a time, aligned to N * e. The elements before the
// first element where every one's pack is aligned, when they all reach one at the same element; else -1.
inline int32_t pack_head(c10::ArrayRef<Walked> walked) {
  const size_t per_pack = 16 / walked[0].element_size;
  int32_t head = -1;
  for (const Walked& t : walked) {
    if (t.data == nullptr) continue;
    const uintptr_t bytes = per_pack * t.element_size, offset = reinterpret_cast<uintptr_t>(t.data) % bytes;
    if (offset % t.element_size != 0) return -1;
    const auto mine = static_cast<int32_t>((bytes - offset) % bytes / t.element_size);
    if (head != -1 && mine != head) return -1;
    head = mine;
  }
  return head;
}

// Tensor i of an op's list: x (read), y (written, or null), what the op computes from x, whether x takes
// part, and whether it reads its anchor (anchors[i], with fisher[i] when fisher is given); `also`: the
// further tensors a step walks with x, in x's dtype.
inline TensorMeta make_meta(const at::Tensor& x, void* y, const Weights& weights, bool takes_part,
                            const Anchors& anchors, size_t i, bool anchored,
                            std::initializer_list<const void*> also = {}) {
  TensorMeta m{};
  m.x = x.const_data_ptr();
  m.y = y;
  m.length = takes_part ? x.numel() : 0;
  m.weights = weights;
  m.multiplier = 1.0;
  m.dtype = dtype_code(x.scalar_type());
  m.anchor_dtype = m.dtype;
  size_t anchor_size = 0;
  if (anchored) {
    const at::Tensor& anchor = anchors.anchors[i];
    m.anchor = anchor.const_data_ptr();
    if (!anchors.fisher.empty()) m.fisher = anchors.fisher[i].const_data_ptr();
    m.anchor_dtype = dtype_code(anchor.scalar_type());
    anchor_size = anchor.element_size();
  }
  const size_t size = x.element_size();
  c10::SmallVector<Walked, 8> walked = {{m.x, size}, {y, size}, {m.anchor, anchor_size}, {m.fisher, anchor_size}};
  for (const void* p : also) walked.push_back({p, size});
  m.pack_head = pack_head(walked);
  return m;
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

// Whether a tensor of the table reads its anchor: its launch runs the anchored chunk kernel; a table
// without one runs the plain kernel, with none of the anchor streams' code.
template <class Meta>
bool reads_anchors(const LaunchTable<Meta>& table) {
  return std::any_of(table.metas, table.metas + table.count, [](const Meta& m) { return m.anchor != nullptr; });
}

// Runs op over every chunk of every tensor of the tables (n tensors in all). When the op reduces,
// also fills `result`: one value per tensor (per_tensor) or their sum. A list with nothing to visit
// launches no chunk kernel (CUDA refuses a grid of zero blocks) and still writes its zeros.
template <class Device, class Op>
void run_tables(const Device& device, const Op& op, const std::vector<LaunchTable<typename Op::Meta>>& tables,
                int64_t n, at::Tensor* result, bool per_tensor) {
  using Table = LaunchTable<typename Op::Meta>;
  static_assert(sizeof(Op) + sizeof(Table) + sizeof(Sums*) <= kParameterBytes,
                "chunk_kernel's parameters exceed CUDA's limit");
  static_assert(sizeof(Sums) == 3 * sizeof(double), "partials are allocated as three doubles each");
  TORCH_INTERNAL_ASSERT(Op::kReduces == (result != nullptr));
  const int64_t chunks = tables.empty() ? 0 : tables.back().first_partial + chunks_in(tables.back());
  TORCH_CHECK(chunks <= std::numeric_limits<int32_t>::max(), "l2fast: ", chunks, " chunks exceed one CUDA grid");
  at::Tensor partials;
  Sums* partial_ptr = nullptr;
  if (Op::kReduces && chunks > 0) {
    partials = device.empty(3 * chunks, at::kDouble);
    partial_ptr = reinterpret_cast<Sums*>(partials.template data_ptr<double>());
  }
  for (const Table& table : tables) {
    if (chunks_in(table) == 0) continue;
    const auto kernel = reads_anchors(table) ? &chunk_kernel<Op, true> : &chunk_kernel<Op, false>;
    device.launch(kernel, chunks_in(table), op, table, partial_ptr);
  }
  if (!Op::kReduces) return;

  at::Tensor values = per_tensor ? at::Tensor() : device.empty(std::max<int64_t>(n, 1), at::kDouble);
  double* value_ptr = per_tensor ? nullptr : values.template data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(result->scalar_type(), "l2fast_finish", [&] {
    scalar_t* out = result->template data_ptr<scalar_t>();
    for (const Table& table : tables)
      device.launch(&tensor_values_kernel<scalar_t, typename Op::Meta>, (table.count + kWarps - 1) / kWarps, table,
                    static_cast<const Sums*>(partial_ptr), per_tensor ? out : nullptr, value_ptr);
    if (!per_tensor) device.launch(&total_kernel<scalar_t>, 1, static_cast<const double*>(value_ptr), n, out);
  });
}

template <class Device, class Op>
void run(const Device& device, const Op& op, const std::vector<TensorMeta>& metas, at::Tensor* result,
         bool per_tensor) {
  run_tables(device, op, plan_launches(metas), static_cast<int64_t>(metas.size()), result, per_tensor);
}

// Metadata of params[i] (read) with outs[i] (written; none when outs is empty), the weights of tensor i
// and its anchor, read when the weights weigh its pull; a tensor whose weights are all zero takes no part.
inline std::vector<TensorMeta> metas_of(at::TensorList params, at::TensorList outs, const std::vector<Weights>& weights,
                                        const Anchors& anchors) {
  std::vector<TensorMeta> metas;
  for (size_t i = 0; i < params.size(); ++i)
    metas.push_back(make_meta(params[i], outs.empty() ? nullptr : outs[i].data_ptr(), weights[i], weights[i].any(),
                              anchors, i, weights[i].sp != 0.0));
  return metas;
}

// The Kernels of csrc/entry/entry_points.h for any Device.
template <class Device>
struct DeviceKernels {
  static void reduce(at::TensorList tensors, const std::vector<Weights>& weights, const Anchors& anchors,
                     bool per_tensor, at::Tensor& result) {
    run(Device(result.device()), ReduceOp{}, metas_of(tensors, {}, weights, anchors), &result, per_tensor);
  }

  static void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>& weights,
                               const Anchors& anchors, at::Tensor& result) {
    run(Device(result.device()), PenaltyGradOp<true>{}, metas_of(params, grads, weights, anchors), &result, false);
  }

  static void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale,
                           const std::vector<Weights>& weights, const Anchors& anchors) {
    if (params.empty()) return;
    const at::Tensor scale64 = scale.to(at::kDouble).contiguous();  // stays on the device: no sync
    PenaltyGradOp<false> op;
    op.scale_ptr = scale64.const_data_ptr<double>();
    run(Device(params[0].device()), op, metas_of(params, outs, weights, anchors), nullptr, false);
  }

  static void decay(at::TensorList params, const DecayFactors& factors, const std::vector<Weights>& weights,
                    const Anchors& anchors, at::Tensor& result) {
    std::vector<TensorMeta> metas;
    for (size_t i = 0; i < params.size(); ++i) {
      const bool anchored = factors.anchor[i] != 0.0 || weights[i].sp != 0.0;
      TensorMeta m = make_meta(params[i], params[i].data_ptr(), weights[i],
                               factors.zero[i] != 0.0 || anchored || weights[i].any(), anchors, i, anchored);
      // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
      m.multiplier = 1.0 - factors.zero[i];
      m.neg_spf = -factors.anchor[i];
      metas.push_back(m);
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

// Metadata of tensor i of a step: packs only where w, g, every state tensor and the anchor streams share
// their boundaries. The anchor is read when the tensor's value or its pull (coupled or decoupled) weighs it.
inline StepMeta step_meta(const StepArgs& args, size_t i) {
  const at::Tensor& w = args.params[i];
  const StepHyper& h = args.hyper[i];
  StepMeta m{};
  m.grad = args.grads[i].data_ptr();
  for (size_t k = 0; k < args.states.size(); ++k) m.state[k] = args.states[k][i].data_ptr();
  const bool anchored = args.value[i].sp != 0.0 || h.sp != 0.0 || h.spf != 0.0;
  static_cast<TensorMeta&>(m) = make_meta(w, w.data_ptr(), args.value[i], /*takes_part=*/true, args.anchors, i,
                                          anchored, {m.grad, m.state[0], m.state[1], m.state[2]});
  m.hyper = h;
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

// The Kernels of StepEntryPoints (csrc/entry/optim_step.h) for any Device: the step's rule, picked by
// StepRules (op_functors.cuh), run by run_step.
template <class Device>
struct DeviceStepKernels {
  template <class Step>
  static void step(const StepArgs& args, at::Tensor& result) {
    StepRules<Step>::pick(args.states.size(), args.nesterov,
                          [&](auto rule) { run_step<Device, decltype(rule)>(args, result); });
  }
};

}  // namespace l2fast::cuda
