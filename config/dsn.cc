// Connection strings: masking passwords for display.

#include <libpq-fe.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "absl/strings/str_join.h"
#include "shardkit/shard_map.h"

namespace shardkit {
namespace {

constexpr std::string_view kMask = "********";

// Quotes a keyword=value value as libpq expects when it needs it.
std::string QuoteValue(std::string_view v) {
  bool needs = v.empty();
  for (char c : v) {
    if (c == ' ' || c == '\'' || c == '\\' || c == '\t' || c == '\n') needs = true;
  }
  if (!needs) return std::string(v);
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  out += "'";
  return out;
}

bool IsUri(std::string_view dsn) {
  return dsn.rfind("postgresql://", 0) == 0 || dsn.rfind("postgres://", 0) == 0;
}

// URI form: mask the password in userinfo and any password= parameter.
std::string MaskUri(std::string_view dsn) {
  std::string out(dsn);
  const size_t scheme_end = out.find("://") + 3;
  const size_t at = out.find('@', scheme_end);
  const size_t slash = out.find('/', scheme_end);
  if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
    const size_t colon = out.find(':', scheme_end);
    if (colon != std::string::npos && colon < at) {
      out.replace(colon + 1, at - colon - 1, kMask);
    }
  }
  size_t p = out.find("password=");
  while (p != std::string::npos) {
    const size_t start = p + 9;
    size_t end = out.find('&', start);
    if (end == std::string::npos) end = out.size();
    out.replace(start, end - start, kMask);
    p = out.find("password=", start + kMask.size());
  }
  return out;
}

}  // namespace

std::string MaskDsnPassword(std::string_view dsn) {
  if (IsUri(dsn)) return MaskUri(dsn);
  std::string copy(dsn);
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(copy.c_str(), &error);
  if (options == nullptr) {
    if (error != nullptr) PQfreemem(error);
    const size_t p = copy.find("password");
    if (p == std::string::npos) return copy;
    return StrCat(copy.substr(0, p), "password=", kMask);
  }
  bool has_password = false;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    has_password |= o->val != nullptr && std::string_view(o->keyword) == "password";
  }
  if (!has_password) {
    PQconninfoFree(options);
    return copy;  // as written, in the user's order
  }
  std::vector<std::string> parts;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string_view keyword = o->keyword;
    parts.push_back(StrCat(
        keyword, "=", keyword == "password" ? std::string(kMask) : QuoteValue(o->val)));
  }
  PQconninfoFree(options);
  return absl::StrJoin(parts, " ");
}

}  // namespace shardkit
