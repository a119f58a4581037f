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

// Tensor i of an op's list, as the host holds it (its Meta and its anchor record, for every call): x
// (read), y (written, or null), what the op computes from x, whether x takes part, and whether it reads
// its anchor (anchors[i], with fisher[i] when fisher is given); `also`: the further tensors a step walks
// with x, in x's dtype. A tensor that reads no anchor gets an anchor record of zeros (its weights' sp is
// zero then: every caller reads the anchor where sp is not), which a plain call's tables leave out.
template <class Meta = TensorMeta>
Row<Meta, true> make_row(const at::Tensor& x, void* y, const Weights& weights, bool takes_part, const Anchors& anchors,
                         size_t i, bool anchored, std::initializer_list<const void*> also = {}) {
  Row<Meta, true> r{};
  TensorMeta& m = r.meta;
  AnchorMeta& a = r.anchor;
  m.x = x.const_data_ptr();
  m.y = y;
  m.length = takes_part ? x.numel() : 0;
  m.l2 = weights.l2;
  m.l1 = weights.l1;
  m.multiplier = 1.0;
  m.dtype = dtype_code(x.scalar_type());
  a.sp = weights.sp;
  a.anchor_dtype = m.dtype;
  size_t anchor_size = 0;
  if (anchored) {
    const at::Tensor& anchor = anchors.anchors[i];
    a.anchor = anchor.const_data_ptr();
    if (!anchors.fisher.empty()) a.fisher = anchors.fisher[i].const_data_ptr();
    a.anchor_dtype = dtype_code(anchor.scalar_type());
    anchor_size = anchor.element_size();
  }
  const size_t size = x.element_size();
  c10::SmallVector<Walked, 8> walked = {{m.x, size}, {y, size}, {a.anchor, anchor_size}, {a.fisher, anchor_size}};
  for (const void* p : also) walked.push_back({p, size});
  m.pack_head = pack_head(walked);
  return r;
}

// A host row as a table of rows R holds it: whole, or (plain) its Meta alone, when it reads no anchor.
template <class R, class Meta>
R table_row(const Row<Meta, true>& r) {
  if constexpr (R::kAnchored) {
    return r;
  } else {
    TORCH_INTERNAL_ASSERT(r.anchor.anchor == nullptr && r.anchor.sp == 0.0, "l2fast: an anchored tensor in a plain table");
    return {r.meta};
  }
}

// The op's tensors cut into launch tables of at most kPerLaunch<R> consecutive tensors each.
template <class R>
std::vector<LaunchTable<R>> plan_launches(const std::vector<Row<typename R::Meta, true>>& rows) {
  std::vector<LaunchTable<R>> tables;
  int64_t partials = 0;
  for (size_t first = 0; first < rows.size(); first += kPerLaunch<R>) {
    LaunchTable<R>& table = tables.emplace_back();
    table.first_tensor = static_cast<int64_t>(first);
    table.first_partial = partials;
    table.count = std::min<int64_t>(kPerLaunch<R>, static_cast<int64_t>(rows.size() - first));
    int64_t chunks = 0;
    for (int64_t t = 0; t < table.count; ++t) {
      table.rows[t] = table_row<R>(rows[first + t]);
      chunks += chunk_count(table.rows[t].meta.length, kChunk);
      table.chunk_end[t] = chunks;
    }
    partials += chunks;
  }
  return tables;
}

// Whether a tensor of these rows reads its anchor.
template <class R>
bool reads_anchors(const R* rows, int64_t count) {
  return std::any_of(rows, rows + count, [](const R& r) { return r.anchor_meta().anchor != nullptr; });
}

// Calls f(tables): the call's tensors planned into launch tables whose rows carry the anchor records when
// some tensor reads its anchor, else (a plain call) without them, so that a plain table holds as many
// tensors as its rows alone allow. Every launch of a call takes the tables of one layout.
template <class Meta, class F>
void with_launch_tables(const std::vector<Row<Meta, true>>& rows, F&& f) {
  if (reads_anchors(rows.data(), static_cast<int64_t>(rows.size()))) f(plan_launches<Row<Meta, true>>(rows));
  else f(plan_launches<Row<Meta, false>>(rows));
}

template <class R>
int64_t chunks_in(const LaunchTable<R>& table) {
  return table.count == 0 ? 0 : table.chunk_end[table.count - 1];
}

// Launches the chunk kernel over one table. A table of an anchored call in which no tensor reads its
// anchor goes as the same tensors in plain rows, to the plain kernel, with none of the anchor streams'
// code (the anchored kernel holds both walks, and the registers of the larger).
template <class Device, class Op, class R>
void launch_chunks(const Device& device, const Op& op, const LaunchTable<R>& table, Sums* partials) {
  if constexpr (R::kAnchored) {
    if (!reads_anchors(table.rows, table.count)) {
      using Plain = Row<typename R::Meta, false>;
      static_assert(kPerLaunch<R> <= kPerLaunch<Plain>, "a plain table holds an anchored table's tensors");
      const auto plain = std::make_unique<LaunchTable<Plain>>();  // ~32 KB: not on the stack
      plain->first_tensor = table.first_tensor;
      plain->first_partial = table.first_partial;
      plain->count = table.count;
      for (int64_t t = 0; t < table.count; ++t) {
        plain->chunk_end[t] = table.chunk_end[t];
        plain->rows[t] = table_row<Plain>(table.rows[t]);
      }
      device.launch(&chunk_kernel<Op, Plain>, chunks_in(*plain), op, *plain, partials);
      return;
    }
  }
  device.launch(&chunk_kernel<Op, R>, chunks_in(table), op, table, partials);
}

// Runs op over every chunk of every tensor of the tables (n tensors in all). When the op reduces,
// also fills `result`: one value per tensor (per_tensor) or their sum. A list with nothing to visit
// launches no chunk kernel (CUDA refuses a grid of zero blocks) and still writes its zeros.
template <class Device, class Op, class R>
void run_tables(const Device& device, const Op& op, const std::vector<LaunchTable<R>>& tables, int64_t n,
                at::Tensor* result, bool per_tensor) {
  using Table = LaunchTable<R>;
  static_assert(sizeof(Op) + sizeof(Table) + sizeof(Sums*) <= kParameterBytes,
                "chunk_kernel's parameters exceed CUDA's limit");
  static_assert(sizeof(Op) + sizeof(LaunchTable<Row<typename R::Meta, false>>) + sizeof(Sums*) <= kParameterBytes,
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
  for (const Table& table : tables)
    if (chunks_in(table) > 0) launch_chunks(device, op, table, partial_ptr);
  if (!Op::kReduces) return;

  at::Tensor values = per_tensor ? at::Tensor() : device.empty(std::max<int64_t>(n, 1), at::kDouble);
  double* value_ptr = per_tensor ? nullptr : values.template data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(result->scalar_type(), "l2fast_finish", [&] {
    scalar_t* out = result->template data_ptr<scalar_t>();
    for (const Table& table : tables)
      device.launch(&tensor_values_kernel<scalar_t, R>, (table.count + kWarps - 1) / kWarps, table,
                    static_cast<const Sums*>(partial_ptr), per_tensor ? out : nullptr, value_ptr);
    if (!per_tensor) device.launch(&total_kernel<scalar_t>, 1, static_cast<const double*>(value_ptr), n, out);
  });
}

template <class Device, class Op>
void run(const Device& device, const Op& op, const std::vector<Row<typename Op::Meta, true>>& rows, at::Tensor* result,
         bool per_tensor) {
  with_launch_tables(rows, [&](const auto& tables) {
    run_tables(device, op, tables, static_cast<int64_t>(rows.size()), result, per_tensor);
  });
}

// Rows of params[i] (read) with outs[i] (written; none when outs is empty), the weights of tensor i
// and its anchor, read when the weights weigh its pull; a tensor whose weights are all zero takes no part.
inline std::vector<Row<TensorMeta, true>> rows_of(at::TensorList params, at::TensorList outs,
                                                  const std::vector<Weights>& weights, const Anchors& anchors) {
  std::vector<Row<TensorMeta, true>> rows;
  for (size_t i = 0; i < params.size(); ++i)
    rows.push_back(make_row(params[i], outs.empty() ? nullptr : outs[i].data_ptr(), weights[i], weights[i].any(),
                            anchors, i, weights[i].sp != 0.0));
  return rows;
}

// The Kernels of csrc/entry/entry_points.h for any Device.
template <class Device>
struct DeviceKernels {
  static void reduce(at::TensorList tensors, const std::vector<Weights>& weights, const Anchors& anchors,
                     bool per_tensor, at::Tensor& result) {
    run(Device(result.device()), ReduceOp{}, rows_of(tensors, {}, weights, anchors), &result, per_tensor);
  }

  static void add_penalty_grad(at::TensorList params, at::TensorList grads, const std::vector<Weights>& weights,
                               const Anchors& anchors, at::Tensor& result) {
    run(Device(result.device()), PenaltyGradOp<true>{}, rows_of(params, grads, weights, anchors), &result, false);
  }

  static void penalty_grad(at::TensorList params, at::TensorList outs, const at::Tensor& scale,
                           const std::vector<Weights>& weights, const Anchors& anchors) {
    if (params.empty()) return;
    const at::Tensor scale64 = scale.to(at::kDouble).contiguous();  // stays on the device: no sync
    PenaltyGradOp<false> op;
    op.scale_ptr = scale64.const_data_ptr<double>();
    run(Device(params[0].device()), op, rows_of(params, outs, weights, anchors), nullptr, false);
  }

  static void decay(at::TensorList params, const DecayFactors& factors, const std::vector<Weights>& weights,
                    const Anchors& anchors, at::Tensor& result) {
    std::vector<Row<TensorMeta, true>> rows;
    for (size_t i = 0; i < params.size(); ++i) {
      const bool anchored = factors.anchor[i] != 0.0 || weights[i].sp != 0.0;
      Row<TensorMeta, true> r = make_row(params[i], params[i].data_ptr(), weights[i],
                                         factors.zero[i] != 0.0 || anchored || weights[i].any(), anchors, i, anchored);
      // 1 - f is formed in float64 and then rounded, as torch.optim.AdamW's mul_(1 - lr * wd) does.
      r.meta.multiplier = 1.0 - factors.zero[i];
      if (anchored) r.anchor.neg_spf = -factors.anchor[i];
      rows.push_back(r);
    }
    run(Device(result.device()), ScaleOp{}, rows, &result, false);
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

// Row of tensor i of a step: packs only where w, g, every state tensor and the anchor streams share
// their boundaries. The anchor is read when the tensor's value or its pull (coupled or decoupled) weighs it.
inline Row<StepMeta, true> step_row(const StepArgs& args, size_t i) {
  const at::Tensor& w = args.params[i];
  const StepHyper& h = args.hyper[i];
  void* grad = args.grads[i].data_ptr();
  void* state[3] = {};
  for (size_t k = 0; k < args.states.size(); ++k) state[k] = args.states[k][i].data_ptr();
  const bool anchored = args.value[i].sp != 0.0 || h.sp != 0.0 || h.spf != 0.0;
  Row<StepMeta, true> r = make_row<StepMeta>(w, w.data_ptr(), args.value[i], /*takes_part=*/true, args.anchors, i,
                                             anchored, {grad, state[0], state[1], state[2]});
  StepMeta& m = r.meta;
  m.grad = grad;
  std::copy(state, state + 3, m.state);
  m.hyper = h;  // the plain part; the anchored one goes with the anchor
  r.anchor.hyper_sp = h.sp;
  r.anchor.hyper_spf = h.spf;
  if (i < args.steps.size()) {
    const at::Tensor& step = args.steps[i];
    TORCH_CHECK(step.device() == w.device(), "l2fast: steps[", i, "] is on ", step.device(), " but params[", i,
                "] is on ", w.device(), "; on this device the step counters live beside the parameters, as torch's "
                "fused Adam keeps them");
    m.step = step.data_ptr();
    m.step_is_double = step.scalar_type() == at::kDouble ? 1 : 0;
  }
  return r;
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
  std::vector<Row<StepMeta, true>> rows;
  for (size_t i = 0; i < args.params.size(); ++i) rows.push_back(step_row(args, i));
  with_launch_tables(rows, [&](const auto& tables) {
    using R = typename std::decay_t<decltype(tables)>::value_type::RowType;
    if (!args.steps.empty())
      for (const auto& table : tables)
        device.launch(&count_steps_kernel<R>, (table.count + kThreads - 1) / kThreads, table, op.scalars);
    run_tables(device, op, tables, static_cast<int64_t>(rows.size()), &result, /*per_tensor=*/false);
  });
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
