// Internal: RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status.
//
// Abseil 20220623 as packaged by Debian ships no status macros, so shardkit
// keeps these two. They are internal: nothing under include/ uses them.
#ifndef SHARDKIT_COMMON_STATUS_MACROS_H_
#define SHARDKIT_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHARDKIT_CONCAT_INNER_(a, b) a##b
#define SHARDKIT_CONCAT_(a, b) SHARDKIT_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function if it is not OK.
#define RETURN_IF_ERROR(expr)                                  \
  do {                                                         \
    ::absl::Status shardkit_status_ = (expr);                  \
    if (!shardkit_status_.ok()) return shardkit_status_;       \
  } while (false)

// `ASSIGN_OR_RETURN(auto x, MakeX());` evaluates an absl::StatusOr<T>,
// returns its status if not OK, else moves its value into `lhs`.
#define ASSIGN_OR_RETURN(lhs, expr)                                          \
  SHARDKIT_ASSIGN_OR_RETURN_IMPL_(SHARDKIT_CONCAT_(shardkit_so_, __LINE__), \
                                  lhs, expr)
#define SHARDKIT_ASSIGN_OR_RETURN_IMPL_(so, lhs, expr) \
  auto so = (expr);                                    \
  if (!so.ok()) return std::move(so).status();         \
  lhs = std::move(so).value()

#endif  // SHARDKIT_COMMON_STATUS_MACROS_H_
