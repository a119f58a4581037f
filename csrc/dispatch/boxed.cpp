// boxed.h's drop_args: the one place that holds the GIL, kept out of the headers nvcc compiles.
#include <Python.h>

#include "boxed.h"

namespace l2fast {

void drop_args(torch::jit::Stack& stack, size_t count) {
  // Without an interpreter no tensor has a Python object to release (torch makes the same test).
  if (!Py_IsInitialized()) {
    torch::jit::drop(stack, count);
    return;
  }
  const PyGILState_STATE state = PyGILState_Ensure();
  torch::jit::drop(stack, count);
  PyGILState_Release(state);
}

}  // namespace l2fast
