// Runtime choices turned into compile-time ones, once per span: with_flags(f, a, b) calls
// f(std::bool_constant<a>{}, std::bool_constant<b>{}). A loop written against the constants has no
// select on a loop-invariant bool, which GCC does not vectorize.
#pragma once
#include <type_traits>

namespace l2fast {

template <typename F>
inline decltype(auto) with_flags(F&& f) {
  return f();
}

template <typename F, typename... Rest>
inline decltype(auto) with_flags(F&& f, bool first, Rest... rest) {
  if (first) return with_flags([&](auto... flags) { return f(std::true_type{}, flags...); }, rest...);
  return with_flags([&](auto... flags) { return f(std::false_type{}, flags...); }, rest...);
}

}  // namespace l2fast
