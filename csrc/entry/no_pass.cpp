// The entry points with kernels that make no pass over memory, for the two dispatch keys whose calls
// need only the argument checks and the results:
//  - Meta: meta tensors, and torch's fake tensors (torch.compile, opcheck), so a traced call runs the
//    native checks and allocates its results exactly as an eager one does. Sizes may be symbolic here.
//  - CompositeExplicitAutograd, which the dispatcher picks for calls that reach no backend's kernel:
//    empty lists, which carry no device to dispatch on (valid: the result is an empty sum), and tensors
//    of a layout or device this build has no kernel for (the checks name the offending tensor, and what
//    they let through is refused by device).
#include <torch/library.h>

#include "entry_points.h"
#include "optim_step.h"

namespace l2fast {
namespace {

template <bool kRefuseTensors>
struct NoPass {
  static void pass(at::TensorList tensors) {
    TORCH_CHECK(!kRefuseTensors || tensors.empty(), "l2fast: this build has no kernel for tensors on ",
                tensors[0].device());
  }
  template <class... Rest>
  static void reduce(at::TensorList tensors, const Rest&...) { pass(tensors); }
  template <class... Rest>
  static void add_penalty_grad(at::TensorList params, const Rest&...) { pass(params); }
  template <class... Rest>
  static void penalty_grad(at::TensorList params, const Rest&...) { pass(params); }
  template <class... Rest>
  static void decay(at::TensorList params, const Rest&...) { pass(params); }
  template <class Step>
  static void step(const StepArgs& args, at::Tensor&) { pass(args.params); }
};

template <class Kernels>
void register_all(torch::Library& m) {
  EntryPoints<Kernels>::register_all(m);
  StepEntryPoints<Kernels>::register_all(m);
}

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, Meta, m) { register_all<NoPass<false>>(m); }

TORCH_LIBRARY_IMPL(l2fast, CompositeExplicitAutograd, m) { register_all<NoPass<true>>(m); }

}  // namespace l2fast
