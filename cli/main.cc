// shardctl: the operator's command line over the shardkit library.

#include <iostream>
#include <map>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/commands.h"

namespace shardkit::cli {

void Fail(CommandContext& ctx, const std::string& message) {
  *ctx.err << "shardctl: " << message << "\n";
  ctx.exit_code = 1;
}

void Fail(CommandContext& ctx, const absl::Status& status) {
  Fail(ctx, std::string(status.message()));
}

std::optional<Config> LoadConfigOrFail(CommandContext& ctx,
                                       const std::string& path) {
  std::vector<ConfigProblem> problems;
  absl::StatusOr<Config> config = LoadConfig(path, &problems);
  if (config.ok()) return *std::move(config);
  if (problems.empty()) {
    Fail(ctx, config.status());
  } else if (problems.size() == 1) {
    Fail(ctx, problems[0].ToString());
  } else {
    Fail(ctx, problems[0].ToString() + " (and " +
                  std::to_string(problems.size() - 1) +
                  " more problems: run 'shardctl validate -c " + path + "')");
  }
  return std::nullopt;
}

std::unique_ptr<Cluster> OpenClusterOrFail(CommandContext& ctx, Config config) {
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::Open(std::move(config));
  if (cluster.ok()) return *std::move(cluster);
  Fail(ctx, cluster.status());
  return nullptr;
}

CLI::Option* AddConfigOption(CLI::App* cmd, std::string* path) {
  return cmd
      ->add_option("-c,--config", *path,
                   "Shard map configuration (TOML); see docs/configuration.md")
      ->required()
      ->option_text("FILE");
}

CLI::Option* AddFormatOption(CLI::App* cmd, Format* format) {
  static const std::map<std::string, Format> kFormats = {
      {"table", Format::kTable}, {"json", Format::kJson}};
  return cmd->add_option("--format", *format, "Output format: table or json")
      ->transform(CLI::CheckedTransformer(kFormats, CLI::ignore_case))
      ->option_text("table|json")
      ->default_str("table");
}

namespace {

int Run(int argc, char** argv) {
  CLI::App app{
      "shardctl: operate a sharded PostgreSQL deployment described by a "
      "shardkit configuration.\n"
      "Run 'shardctl COMMAND --help' for a command's options."};
  app.name("shardctl");
  app.require_subcommand(1);
  app.set_version_flag("--version", "shardctl 0.1.0");

  CommandContext ctx;
  RegisterValidate(app, ctx);
  RegisterMap(app, ctx);
  RegisterRoute(app, ctx);
  RegisterSql(app, ctx);
  RegisterExec(app, ctx);
  RegisterRecover(app, ctx);
  RegisterLoad(app, ctx);
  RegisterHealth(app, ctx);
  RegisterFailover(app, ctx);
  RegisterMove(app, ctx);
  RegisterRebalance(app, ctx);
  RegisterHash(app, ctx);
  RegisterDev(app, ctx);

  if (argc > 1 && argv[1][0] != '-') {
    std::string known;
    bool found = false;
    for (const CLI::App* sub :
         app.get_subcommands([](CLI::App*) { return true; })) {
      found |= sub->get_name() == argv[1];
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (!found) {
      std::cerr << "shardctl: unknown command '" << argv[1]
                << "' (commands: " << known << "; see 'shardctl --help')\n";
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, and where to look; exit 2 as usage errors do in most tools.
    std::string where = "shardctl";
    for (const CLI::App* sub : app.get_subcommands()) {
      where += " " + sub->get_name();
      for (const CLI::App* subsub : sub->get_subcommands()) {
        where += " " + subsub->get_name();
      }
    }
    std::cerr << "shardctl: " << e.what() << " (see '" << where
              << " --help')\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "shardctl: " << e.what() << "\n";
    return 1;
  }
  return ctx.exit_code;
}

}  // namespace
}  // namespace shardkit::cli

int main(int argc, char** argv) { return shardkit::cli::Run(argc, argv); }
