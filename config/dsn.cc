// Connection strings: parsing (through libpq), escaping, masking passwords.

#include "config/dsn.h"

#include <libpq-fe.h>

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/strings.h"
#include "shardkit/shard_map.h"

namespace shardkit {
namespace internal {

bool IsUriDsn(std::string_view dsn) {
  return dsn.rfind("postgresql://", 0) == 0 || dsn.rfind("postgres://", 0) == 0;
}

bool MayHoldPassword(std::string_view dsn) {
  const std::string lower = absl::AsciiStrToLower(ToAbsl(dsn));
  return absl::StrContains(lower, "password") ||
         (IsUriDsn(dsn) && absl::StrContains(lower, "@"));
}

absl::StatusOr<ConnInfo> ParseConnInfo(std::string_view dsn) {
  const std::string copy(dsn);
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(copy.c_str(), &error);
  if (options == nullptr) {
    std::string why = error != nullptr ? error : "out of memory";
    if (error != nullptr) PQfreemem(error);
    while (!why.empty() && why.back() == '\n') why.pop_back();
    if (MayHoldPassword(dsn)) {
      why = "libpq's reason is withheld because it would show the password; "
            "check the quoting of values (a value with spaces needs 'single "
            "quotes') and the keywords";
    }
    return absl::InvalidArgumentError(
        StrCat("not a valid libpq connection string: ", why));
  }
  ConnInfo out;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) out.emplace_back(o->keyword, o->val);
  }
  PQconninfoFree(options);
  return out;
}

std::string EscapeConnValue(std::string_view value, bool uri, bool in_quotes) {
  std::string out;
  if (uri) {
    for (unsigned char c : value) {
      if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
        out += static_cast<char>(c);
      } else {
        absl::StrAppendFormat(&out, "%%%02X", c);
      }
    }
    return out;
  }
  bool needs_quotes = value.empty();
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
    needs_quotes |= absl::ascii_isspace(static_cast<unsigned char>(c)) ||
                    c == '\'' || c == '\\';
  }
  if (in_quotes || !needs_quotes) return in_quotes ? out : std::string(value);
  return StrCat("'", out, "'");
}

}  // namespace internal

namespace {

constexpr std::string_view kMask = "********";

bool IsSecretKeyword(std::string_view keyword) {
  return keyword == "password" || keyword == "sslpassword";
}

// URI form: mask the user information after the user name, and any
// password= or sslpassword= parameter.
std::string MaskUri(std::string_view dsn) {
  std::string out(dsn);
  const size_t scheme_end = out.find("://") + 3;
  const size_t query = out.find('?', scheme_end);
  const size_t at = out.rfind('@', query == std::string::npos ? out.size() : query);
  if (at != std::string::npos && at >= scheme_end) {
    const size_t colon = out.find(':', scheme_end);
    if (colon != std::string::npos && colon < at) {
      out.replace(colon + 1, at - colon - 1, kMask);
    }
  }
  for (std::string_view key : {"password=", "sslpassword="}) {
    size_t p = out.find(key);
    while (p != std::string::npos) {
      const size_t start = p + key.size();
      size_t end = out.find('&', start);
      if (end == std::string::npos) end = out.size();
      out.replace(start, end - start, kMask);
      p = out.find(key, start + kMask.size());
    }
  }
  return out;
}

}  // namespace

std::string MaskDsnPassword(std::string_view dsn) {
  if (internal::IsUriDsn(dsn)) return MaskUri(dsn);
  absl::StatusOr<internal::ConnInfo> info = internal::ParseConnInfo(dsn);
  if (!info.ok()) {
    // Unparseable: keep only what comes before the first secret keyword.
    const std::string lower = absl::AsciiStrToLower(ToAbsl(dsn));
    size_t p = std::min(lower.find("sslpassword"), lower.find("password"));
    if (p == std::string::npos) return std::string(dsn);
    return StrCat(dsn.substr(0, p), "password=", kMask);
  }
  bool has_secret = false;
  for (const auto& [keyword, value] : *info) has_secret |= IsSecretKeyword(keyword);
  if (!has_secret) return std::string(dsn);  // as written, in the user's order
  std::vector<std::string> parts;
  for (const auto& [keyword, value] : *info) {
    parts.push_back(StrCat(keyword, "=",
                           IsSecretKeyword(keyword)
                               ? std::string(kMask)
                               : internal::EscapeConnValue(value, false, false)));
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace shardkit
