// l2fast_emu: the CUDA ops of l2fast, run by the host SIMT harness. The entry points, the host launch
// path (csrc/cuda/launch.h) and the device code (csrc/cuda/device.cuh, op_functors.cuh) are the ones
// the GPU build compiles; only the Device differs: CPU tensors stand in for device memory and
// run_grid (simt.h) stands in for <<<blocks, threads>>>. Built under ASan and UBSan (build.py).
#include <torch/extension.h>

#include <sanitizer/asan_interface.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "simt.h"
// simt.h first: it defines the CUDA keywords the device code below is written in.
#include "../entry/entry_points.h"
#include "../entry/optim_step.h"
#include "../cuda/launch.h"

namespace l2fast::emu {
namespace {

static_assert(cuda::kThreads == kBlockThreads, "the pool runs blocks of kThreads threads");

// Launches recorded instead of run, with the scratch memory they use: the harness's CUDA graph.
struct Graph {
  std::vector<std::function<void()>> launches;
  std::vector<at::Tensor> memory;  // kept alive for replays, as a graph's private memory pool is
};
std::optional<Graph> capturing;
Graph captured;

class EmuDevice {
 public:
  explicit EmuDevice(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "l2fast_emu: the harness takes CPU tensors, got ", device);
  }

  // Scratch filled with NaN, so that a value read before any kernel wrote it shows in the result.
  at::Tensor empty(int64_t n, at::ScalarType dtype) const {
    at::Tensor t = at::full({n}, std::numeric_limits<double>::quiet_NaN(), at::TensorOptions().dtype(dtype));
    if (capturing) capturing->memory.push_back(t);
    return t;
  }

  // The arguments are copied into the launch, as a CUDA launch (and a graph capturing it) copies them.
  template <class... Params, class... Args>
  void launch(void (*kernel)(Params...), int64_t blocks, const Args&... args) const {
    std::function<void()> grid = [kernel, blocks, stored = std::make_tuple(args...)] {
      run_grid(blocks, [&] { std::apply(kernel, stored); });
    };
    if (capturing) capturing->launches.push_back(std::move(grid));
    else grid();
  }
};

using Kernels = cuda::DeviceKernels<EmuDevice>;
using Entry = EntryPoints<Kernels>;
using StepEntry = StepEntryPoints<cuda::DeviceStepKernels<EmuDevice>>;

// ASan poison on the bytes of each tensor: any read or write of them aborts with a report.
void set_poisoned(const std::vector<at::Tensor>& tensors, bool poisoned) {
  for (const at::Tensor& t : tensors) {
    void* p = t.data_ptr();
    const size_t bytes = t.numel() * t.element_size();
    if (poisoned) ASAN_POISON_MEMORY_REGION(p, bytes);
    else ASAN_UNPOISON_MEMORY_REGION(p, bytes);
  }
}

// Every block of every launch an op over tensors of these lengths makes: rows of (launch, block,
// tensor, first element, elements), found by the same locate_chunk the chunk kernel calls. anchored: the
// tensors read anchors, so the tables take the anchored layout (launch.h's with_launch_tables).
at::Tensor plan_blocks(const std::vector<int64_t>& lengths, bool anchored) {
  static const char anchor_stand_in = 0;  // an anchor pointer that is never read: no kernel runs
  std::vector<cuda::Row<cuda::TensorMeta, true>> tensors(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    tensors[i].meta.length = lengths[i];
    if (anchored) tensors[i].anchor.anchor = &anchor_stand_in;
  }
  std::vector<int64_t> rows;
  cuda::with_launch_tables(tensors, [&](const auto& tables) {
    for (size_t l = 0; l < tables.size(); ++l) {
      for (int64_t b = 0; b < cuda::chunks_in(tables[l]); ++b) {
        const cuda::ChunkSpan c = cuda::locate_chunk(tables[l], b);
        rows.insert(rows.end(), {static_cast<int64_t>(l), b, tables[l].first_tensor + c.tensor, c.begin, c.len});
      }
    }
  });
  const auto n = static_cast<int64_t>(rows.size() / 5);
  return at::tensor(rows, at::kLong).reshape({n, 5});
}

// An entry point as pybind11 binds it: each list argument (at::TensorList, c10::ArrayRef<double>)
// taken as the std::vector pybind11 converts a Python list to, and passed on as the view of it; an
// optional list (std::optional<at::TensorList>) as an optional std::vector (None: std::nullopt).
template <typename T>
struct PythonArgOf {
  using type = T;
};

template <typename T>
struct PythonArgOf<c10::ArrayRef<T>> {
  using type = std::vector<T>;
};

template <typename T>
struct PythonArgOf<std::optional<T>> {
  using type = std::optional<typename PythonArgOf<T>::type>;
};

template <typename T>
using PythonArg = typename PythonArgOf<std::decay_t<T>>::type;

template <auto kEntry, typename Result, typename... Args>
auto python_callable(Result (*)(Args...)) {
  return [](const PythonArg<Args>&... args) { return kEntry(args...); };
}

template <auto kEntry>
auto python_callable() {
  return python_callable<kEntry>(kEntry);
}

}  // namespace
}  // namespace l2fast::emu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace l2fast;
  using namespace l2fast::emu;
  using Tensors = std::vector<at::Tensor>;
  using Doubles = std::vector<double>;
  m.doc() = "l2fast's CUDA ops run by the host SIMT harness on CPU tensors";
  // The ops, through the same entry points as torch.ops.l2fast.
  m.def("sq_norm", python_callable<&Entry::sq_norm>());
  m.def("l1_norm", python_callable<&Entry::l1_norm>());
  m.def("penalty", python_callable<&Entry::penalty>());
  m.def("penalty_grad", python_callable<&Entry::penalty_grad>());
  m.def("add_penalty_grad_", python_callable<&Entry::add_penalty_grad_>());
  m.def("decay_", python_callable<&Entry::decay_>());
#define L2FAST_EMU_STEP(op, Step) m.def(#op, python_callable<&StepEntry::op>());
  L2FAST_STEP_OPS(L2FAST_EMU_STEP)
#undef L2FAST_EMU_STEP
  // The Kernels alone (without anchors), into results the caller allocates: the launch path for lists of
  // any length, empty ones included, whatever the entry points do before it.
  m.def("kernels_reduce", [](const Tensors& xs, const Doubles& l2, const Doubles& l1, bool per_tensor, at::Tensor result) {
    Kernels::reduce(xs, penalty_weights(l2, l1, xs.size()), {}, per_tensor, result);
  });
  m.def("kernels_add_penalty_grad", [](const Tensors& ps, const Tensors& gs, const Doubles& l2, const Doubles& l1,
                                       at::Tensor result) {
    Kernels::add_penalty_grad(ps, gs, penalty_weights(l2, l1, ps.size()), {}, result);
  });
  m.def("kernels_penalty_grad", [](const Tensors& ps, const Tensors& outs, const at::Tensor& scale, const Doubles& l2,
                                   const Doubles& l1) {
    Kernels::penalty_grad(ps, outs, scale, penalty_weights(l2, l1, ps.size()), {});
  });
  m.def("kernels_decay", [](const Tensors& ps, const Doubles& factors, const Doubles& l2, at::Tensor result) {
    const double no_l1 = 0.0;
    const DecayFactors fractions{expand_coeffs(factors, ps.size(), "factors"), std::vector<double>(ps.size(), 0.0)};
    Kernels::decay(ps, fractions, penalty_weights(l2, c10::ArrayRef<double>(no_l1), ps.size()), {}, result);
  });
  // Graph capture: launches are recorded with copies of their arguments, then replayed.
  m.def("capture_begin", [] {
    TORCH_CHECK(!capturing, "l2fast_emu: already capturing");
    capturing.emplace();
  });
  m.def("capture_end", [] {
    TORCH_CHECK(capturing, "l2fast_emu: not capturing");
    captured = std::move(*capturing);
    capturing.reset();
    return captured.launches.size();
  });
  m.def("replay", [] {
    for (const auto& launch : captured.launches) launch();
  });
  m.def("poison", [](const Tensors& ts) { set_poisoned(ts, true); });
  m.def("unpoison", [](const Tensors& ts) { set_poisoned(ts, false); });
  m.def("plan_blocks", &plan_blocks, pybind11::arg("lengths"), pybind11::arg("anchored") = false);
  // TensorMeta::pack_head of tensors walked together, in packs of the first one's 16 bytes (launch.h).
  m.def("pack_head", [](const Tensors& ts) {
    std::vector<cuda::Walked> walked;
    for (const at::Tensor& t : ts) walked.push_back({t.const_data_ptr(), static_cast<size_t>(t.element_size())});
    return cuda::pack_head(walked);
  });
  m.attr("CHUNK") = l2fast::cuda::kChunk;
  // Tensors per launch table, derived from the rows' sizes (device.cuh's kPerLaunch): the ops over
  // TensorMeta and the steps, each in a plain call's layout and an anchored call's.
  m.attr("TENSORS_PER_LAUNCH") = cuda::kTensorsPerLaunch;
  m.attr("ANCHORED_TENSORS_PER_LAUNCH") = cuda::kAnchoredTensorsPerLaunch;
  m.attr("STEP_TENSORS_PER_LAUNCH") = cuda::kPerLaunch<cuda::Row<cuda::StepMeta, false>>;
  m.attr("ANCHORED_STEP_TENSORS_PER_LAUNCH") = cuda::kPerLaunch<cuda::Row<cuda::StepMeta, true>>;
}
