// Internal: libpq connection strings, parsed by libpq itself.
//
// The one place that parses a connection string; every caller goes through
// it so that no error message ever echoes a password.

#ifndef SHARDKIT_CONFIG_DSN_H_
#define SHARDKIT_CONFIG_DSN_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace shardkit::internal {

// Keyword/value pairs as libpq resolved them (only keywords with a value).
using ConnInfo = std::vector<std::pair<std::string, std::string>>;

// True for the postgresql:// (or postgres://) URI form.
bool IsUriDsn(std::string_view dsn);

// Whether `dsn` may hold a secret: a password or sslpassword keyword, or a
// URI with user information.
bool MayHoldPassword(std::string_view dsn);

// Parses `dsn` with PQconninfoParse. Fails with kInvalidArgument "not a
// valid libpq connection string: <libpq's reason>"; libpq's reason quotes
// the string, so it is withheld when MayHoldPassword(dsn).
[[nodiscard]] absl::StatusOr<ConnInfo> ParseConnInfo(std::string_view dsn);

// `value` made safe to insert into a connection string: percent-encoded in
// a URI; backslash-escaped inside a single-quoted keyword value; otherwise
// single-quoted when it holds a space, quote, backslash or is empty.
std::string EscapeConnValue(std::string_view value, bool uri, bool in_quotes);

}  // namespace shardkit::internal

#endif  // SHARDKIT_CONFIG_DSN_H_
