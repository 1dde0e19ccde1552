// Internal to shardctl: one Register function per subcommand.
//
// Each adds its subcommand to `app` with its options and a callback that
// does the work and stores the process exit status in `ctx.exit_code`:
// 0 on success, 1 when the command ran and failed (after printing a
// one-line reason to stderr). Usage errors are handled by main (exit 2).

#ifndef SHARDKIT_CLI_COMMANDS_H_
#define SHARDKIT_CLI_COMMANDS_H_

#include <iostream>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "cli/output.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"

namespace shardkit::cli {

struct CommandContext {
  int exit_code = 0;
  std::ostream* out = &std::cout;
  std::ostream* err = &std::cerr;
};

// Prints "shardctl: <message>" to ctx.err and sets exit status 1.
void Fail(CommandContext& ctx, const std::string& message);
void Fail(CommandContext& ctx, const absl::Status& status);

// Loads and validates the configuration at `path`. On failure prints one
// line (the first problem, how many more, and how to see them all), sets
// exit status 1 and returns nullopt.
std::optional<Config> LoadConfigOrFail(CommandContext& ctx,
                                       const std::string& path);

// Opens a Cluster on `config` (Cluster::Open). On failure prints the
// error, sets exit status 1 and returns nullptr.
std::unique_ptr<Cluster> OpenClusterOrFail(CommandContext& ctx, Config config);

// `-c,--config FILE` (required).
CLI::Option* AddConfigOption(CLI::App* cmd, std::string* path);
// `--format table|json` (default table).
CLI::Option* AddFormatOption(CLI::App* cmd, Format* format);

void RegisterValidate(CLI::App& app, CommandContext& ctx);
void RegisterMap(CLI::App& app, CommandContext& ctx);
void RegisterRoute(CLI::App& app, CommandContext& ctx);
void RegisterDev(CLI::App& app, CommandContext& ctx);
void RegisterExec(CLI::App& app, CommandContext& ctx);
void RegisterHealth(CLI::App& app, CommandContext& ctx);
void RegisterLoad(CLI::App& app, CommandContext& ctx);
void RegisterSql(CLI::App& app, CommandContext& ctx);
void RegisterRecover(CLI::App& app, CommandContext& ctx);
void RegisterFailover(CLI::App& app, CommandContext& ctx);
void RegisterMove(CLI::App& app, CommandContext& ctx);
void RegisterRebalance(CLI::App& app, CommandContext& ctx);
void RegisterHash(CLI::App& app, CommandContext& ctx);

}  // namespace shardkit::cli

#endif  // SHARDKIT_CLI_COMMANDS_H_
