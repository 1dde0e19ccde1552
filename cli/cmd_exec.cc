// shardctl exec: run one SQL string on every shard and report per shard.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "shardkit/cluster.h"

namespace shardkit::cli {
namespace {

struct ExecArgs {
  std::string config_path;
  bool all = false;
  std::string sql;
  Format format = Format::kTable;
};

// A short word for the status column; the full error goes beside it.
std::string StatusWord(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return "ok";
    case absl::StatusCode::kUnavailable:
      return "unreachable";
    case absl::StatusCode::kDeadlineExceeded:
      return "timeout";
    default:
      return "error";
  }
}


std::vector<std::string> ColumnNames(const Result& result) {
  std::vector<std::string> names;
  for (const Column& column : result.columns) names.push_back(column.name);
  return names;
}

// Rows of every shard that returned any, shard name first. Shards whose
// columns differ (e.g. a table altered on one shard only) get their own
// table rather than being forced under another shard's header.
void PrintRowTables(std::ostream& out,
                    const std::vector<ShardOutcome>& outcomes) {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  auto flush = [&] {
    if (header.empty()) return;
    PrintTable(out, header, rows);
    out << "\n";
    header.clear();
    rows.clear();
  };
  for (const ShardOutcome& o : outcomes) {
    if (!o.status.ok() || o.result.columns.empty()) continue;
    std::vector<std::string> names = ColumnNames(o.result);
    names.insert(names.begin(), "shard");
    if (names != header) {
      flush();
      header = std::move(names);
    }
    for (const Row& row : o.result.rows) {
      std::vector<std::string> cells = {o.shard_name};
      for (const auto& value : row) cells.push_back(TableCell(value));
      rows.push_back(std::move(cells));
    }
  }
  flush();
}

void PrintExecTable(std::ostream& out,
                    const std::vector<ShardOutcome>& outcomes) {
  PrintRowTables(out, outcomes);
  std::vector<std::vector<std::string>> rows;
  for (const ShardOutcome& o : outcomes) {
    rows.push_back({o.shard_name, StatusWord(o.status),
                    TableCell(std::string_view(
                        o.status.ok() ? o.result.command_tag
                                      : std::string(o.status.message())))});
  }
  PrintTable(out, {"shard", "status", "result"}, rows);
}

void PrintExecJson(std::ostream& out,
                   const std::vector<ShardOutcome>& outcomes) {
  JsonWriter json;
  json.BeginObject().Key("shards").BeginArray();
  for (const ShardOutcome& o : outcomes) {
    json.BeginObject().Key("shard").String(o.shard_name);
    json.Key("ok").Bool(o.status.ok());
    if (!o.status.ok()) {
      json.Key("code").String(absl::StatusCodeToString(o.status.code()));
      json.Key("error").String(std::string(o.status.message()));
      json.EndObject();
      continue;
    }
    json.Key("command").String(o.result.command_tag);
    json.Key("rows_affected").Int(o.result.rows_affected);
    json.Key("columns").BeginArray();
    for (const Column& column : o.result.columns) {
      json.BeginObject()
          .Key("name")
          .String(column.name)
          .Key("type_oid")
          .Int(column.type_oid)
          .EndObject();
    }
    json.EndArray();
    json.Key("rows").BeginArray();
    for (const Row& row : o.result.rows) {
      json.BeginArray();
      for (const auto& value : row) {
        if (value.has_value()) {
          json.String(*value);
        } else {
          json.Null();
        }
      }
      json.EndArray();
    }
    json.EndArray();
    json.EndObject();
  }
  json.EndArray().EndObject();
  out << json.str() << "\n";
}

void RunExec(const ExecArgs& args, CommandContext& ctx) {
  if (args.sql.find_first_not_of(" \t\r\n;") == std::string::npos) {
    Fail(ctx,
         "the SQL statement is empty; pass the statement to run, e.g. "
         "shardctl exec -c shards.toml --all 'CREATE TABLE t (id int8)'");
    return;
  }
  std::optional<Config> config = LoadConfigOrFail(ctx, args.config_path);
  if (!config.has_value()) return;
  std::unique_ptr<Cluster> cluster = OpenClusterOrFail(ctx, *std::move(config));
  if (cluster == nullptr) return;
  const std::vector<ShardOutcome> outcomes =
      cluster->ExecuteOnAllShards(args.sql);

  if (args.format == Format::kJson) {
    PrintExecJson(*ctx.out, outcomes);
  } else {
    PrintExecTable(*ctx.out, outcomes);
  }
  ctx.out->flush();

  std::vector<std::string> failed;
  for (const ShardOutcome& o : outcomes) {
    if (!o.status.ok()) failed.push_back(o.shard_name);
  }
  if (!failed.empty()) {
    Fail(ctx,
         absl::StrCat("exec failed on ", failed.size(), " of ", outcomes.size(),
                      " shards: ", absl::StrJoin(failed, ", ")));
  }
}

}  // namespace

void RegisterExec(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<ExecArgs>();
  CLI::App* cmd = app.add_subcommand(
      "exec",
      "Run a SQL string on every shard in parallel and report each shard's "
      "outcome.\n"
      "Not atomic: each shard commits or fails on its own, and the report "
      "says which. Exits 0 only if every shard succeeded, 1 otherwise. An "
      "empty SQL string is refused (exit 1) before any shard is contacted.");
  AddConfigOption(cmd, &args->config_path);
  cmd->add_flag("--all", args->all,
                "Run on every shard of the map. Required, so that a "
                "statement meant for one shard is never run everywhere by "
                "mistake")
      ->required();
  AddFormatOption(cmd, &args->format);
  cmd->add_option("sql", args->sql,
                  "The SQL to run; several statements separated by ';' run "
                  "as one implicit transaction per shard. Statements that "
                  "return rows print them per shard.")
      ->required()
      ->option_text("SQL");
  cmd->callback([args, &ctx] { RunExec(*args, ctx); });
}

}  // namespace shardkit::cli
