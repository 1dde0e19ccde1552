#include "router/failpoint.h"

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/strings.h"

namespace shardkit::internal {
namespace {

const std::vector<std::string>& EnabledFailpoints() {
  static const std::vector<std::string>* enabled = [] {
    auto* names = new std::vector<std::string>();
    if (const char* env = std::getenv("SHARDKIT_FAILPOINTS")) {
      for (absl::string_view name :
           absl::StrSplit(env, ',', absl::SkipWhitespace())) {
        names->emplace_back(name);
      }
    }
    return names;
  }();
  return *enabled;
}

}  // namespace

bool FailpointOn(std::string_view name) {
  for (const std::string& on : EnabledFailpoints()) {
    if (on == name) return true;
  }
  return false;
}

void Failpoint(std::string_view name) {
  if (!FailpointOn(name)) return;
  const std::string message =
      StrCat("shardkit: failpoint ", name, ": crashing\n");
  [[maybe_unused]] ssize_t ignored =
      write(STDERR_FILENO, message.data(), message.size());
  _exit(kFailpointExitCode);
}

}  // namespace shardkit::internal
