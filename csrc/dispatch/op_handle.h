// A typed handle of one of l2fast's registered ops, for kernels that call or redispatch to another
// op. Callers keep it in a function-local static: the lookup is by name, once.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

namespace l2fast {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace l2fast
