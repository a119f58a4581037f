// The entry points with kernels that make no pass over memory, registered for CompositeExplicitAutograd,
// the key of calls that need only the argument checks and the results:
//  - calls the dispatcher sends there because they reach no backend's kernel: empty lists, which carry
//    no device to dispatch on (valid: the result is an empty sum), and tensors of a device this build
//    has no kernel for (the checks name the offending tensor, and what they let through is refused here);
//  - the fake kernel (l2fast/_ops.py), which calls this kernel directly for meta tensors and for
//    torch's fake tensors (torch.compile, opcheck), so a traced call runs the native checks, on the
//    devices the fake tensors stand for, and allocates its results exactly as an eager one does. Sizes
//    may be symbolic here.
#include <torch/library.h>

#include "entry_points.h"
#include "optim_step.h"

namespace l2fast {
namespace {

struct NoPass {
  static void pass(at::TensorList tensors) {
    TORCH_CHECK(tensors.empty() || !holds_data(tensors[0]), "l2fast: this build has no kernel for tensors on ",
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

}  // namespace

TORCH_LIBRARY_IMPL(l2fast, CompositeExplicitAutograd, m) {
  EntryPoints<NoPass>::register_all(m);
  StepEntryPoints<NoPass>::register_all(m);
}

}  // namespace l2fast
