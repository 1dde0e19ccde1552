// Internal: string concatenation that accepts std::string_view.
//
// Debian's Abseil 20220623 is built with its own absl::string_view, which
// does not convert from std::string_view, so absl::StrCat rejects
// std::string_view arguments. shardkit::StrCat / StrAppend forward to Abseil
// after converting them.
#ifndef SHARDKIT_COMMON_STRINGS_H_
#define SHARDKIT_COMMON_STRINGS_H_

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace shardkit {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

namespace strings_internal {
template <typename T>
const T& Arg(const T& v) {
  return v;
}
inline absl::string_view Arg(std::string_view v) { return ToAbsl(v); }
}  // namespace strings_internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  return absl::StrCat(strings_internal::Arg(args)...);
}

template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  absl::StrAppend(out, strings_internal::Arg(args)...);
}

}  // namespace shardkit

#endif  // SHARDKIT_COMMON_STRINGS_H_
