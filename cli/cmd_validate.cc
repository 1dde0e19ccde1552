// shardctl validate: check a configuration and list every problem.

#include "cli/commands.h"

namespace shardkit::cli {
namespace {

struct ValidateArgs {
  std::string config;
  Format format = Format::kTable;
};

void RunValidate(const ValidateArgs& args, CommandContext& ctx) {
  std::vector<ConfigProblem> problems;
  absl::StatusOr<Config> config = LoadConfig(args.config, &problems);
  if (args.format == Format::kJson) {
    JsonWriter json;
    json.BeginObject().Key("ok").Bool(config.ok()).Key("problems").BeginArray();
    for (const ConfigProblem& p : problems) {
      json.BeginObject()
          .Key("file").String(p.file)
          .Key("line").Int(p.line)
          .Key("column").Int(p.column)
          .Key("message").String(p.message)
          .EndObject();
    }
    json.EndArray().EndObject();
    *ctx.out << json.str() << "\n";
  } else if (config.ok()) {
    *ctx.out << "ok\n";
  } else {
    for (const ConfigProblem& p : problems) *ctx.out << p.ToString() << "\n";
  }
  if (!config.ok()) {
    Fail(ctx, args.config + ": " + std::to_string(problems.size()) +
                  (problems.size() == 1 ? " problem" : " problems"));
  }
}

}  // namespace

void RegisterValidate(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<ValidateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "validate",
      "Check a configuration file: TOML syntax, settings and their types, "
      "shard and distribution names, and that slices cover each keyspace "
      "exactly once. Prints 'ok', or every problem as file:line:col: "
      "message (exit status 1).");
  AddConfigOption(cmd, &args->config);
  AddFormatOption(cmd, &args->format);
  cmd->callback([args, &ctx] { RunValidate(*args, ctx); });
}

}  // namespace shardkit::cli
