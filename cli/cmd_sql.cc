// shardctl sql: run statements through the router.

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "cli/commands.h"
#include "shardkit/cluster.h"

namespace shardkit::cli {
namespace {

enum class SqlFormat { kTable, kCsv, kJson };

struct SqlArgs {
  std::string config;
  std::string sql;
  bool stdin_mode = false;
  std::vector<std::string> params;
  SqlFormat format = SqlFormat::kTable;
};

std::vector<std::string> Header(const Result& result) {
  std::vector<std::string> header;
  for (const Column& c : result.columns) header.push_back(c.name);
  return header;
}

// Rows for a query; the command tag otherwise, as psql prints them.
void PrintResult(const Result& result, SqlFormat format, std::ostream& out) {
  const bool query = !result.columns.empty();
  switch (format) {
    case SqlFormat::kCsv:
      if (query) {
        PrintCsv(out, Header(result), result.rows);
      } else {
        out << result.command_tag << "\n";
      }
      return;
    case SqlFormat::kJson: {
      JsonWriter json;
      json.BeginObject().Key("command").String(result.command_tag);
      json.Key("rows_affected").Int(result.rows_affected);
      if (query) {
        json.Key("columns").BeginArray();
        for (const Column& c : result.columns) {
          json.BeginObject().Key("name").String(c.name).Key("type_oid").Int(
              c.type_oid);
          json.EndObject();
        }
        json.EndArray().Key("rows").BeginArray();
        for (const Row& row : result.rows) {
          json.BeginArray();
          for (const auto& v : row) v ? json.String(*v) : json.Null();
          json.EndArray();
        }
        json.EndArray();
      }
      json.EndObject();
      out << json.str() << "\n";
      return;
    }
    case SqlFormat::kTable:
      if (!query) {
        out << result.command_tag << "\n";
        return;
      }
      std::vector<std::vector<std::string>> rows;
      for (const Row& row : result.rows) {
        std::vector<std::string> cells;
        for (const auto& v : row) cells.push_back(TableCell(v));
        rows.push_back(std::move(cells));
      }
      PrintTable(out, Header(result), rows);
      out << "(" << result.rows.size()
          << (result.rows.size() == 1 ? " row)\n" : " rows)\n");
      return;
  }
}

// The SQLSTATE of a failure: the server's, else the closest class.
std::string SqlStateFor(const absl::Status& status) {
  if (std::optional<std::string> state = SqlStateOf(status)) return *state;
  switch (status.code()) {
    case absl::StatusCode::kUnavailable: return "08006";
    case absl::StatusCode::kDeadlineExceeded: return "57014";
    case absl::StatusCode::kInvalidArgument: return "22023";
    case absl::StatusCode::kResourceExhausted: return "53300";
    default: return "XX000";
  }
}

std::string OneLine(absl::string_view message) {
  return absl::StrReplaceAll(message, {{"\n", " "}, {"\r", " "}});
}

std::vector<Param> ParamsOf(const SqlArgs& args) {
  return std::vector<Param>(args.params.begin(), args.params.end());
}

void RunOne(const Cluster& cluster, const SqlArgs& args, CommandContext& ctx) {
  absl::StatusOr<Result> result = cluster.Execute(args.sql, ParamsOf(args));
  if (!result.ok()) {
    Fail(ctx, absl::StrCat("ERROR ", SqlStateFor(result.status()), ": ",
                     OneLine(result.status().message())));
    return;
  }
  PrintResult(*result, args.format, *ctx.out);
}

// One statement per line; after each, its rows and a status line, flushed.
void RunStdin(const Cluster& cluster, const SqlArgs& args, CommandContext& ctx) {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r;") == std::string::npos) continue;
    absl::StatusOr<Result> result = cluster.Execute(line, {});
    if (result.ok()) {
      if (!result->columns.empty()) PrintResult(*result, args.format, *ctx.out);
      *ctx.out << "OK "
               << (result->columns.empty()
                       ? result->rows_affected
                       : static_cast<int64_t>(result->rows.size()))
               << "\n";
    } else {
      *ctx.out << "ERROR " << SqlStateFor(result.status()) << " "
               << OneLine(result.status().message()) << "\n";
    }
    ctx.out->flush();
  }
}

}  // namespace

void RegisterSql(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<SqlArgs>();
  CLI::App* cmd = app.add_subcommand(
      "sql",
      "Run SQL through the router: each statement goes to the shards that "
      "own the keys it names, and their results come back as one.");
  AddConfigOption(cmd, &args->config);
  CLI::Option* e = cmd->add_option("-e,--execute", args->sql,
                                   "One statement to run")
                       ->option_text("SQL");
  CLI::Option* in = cmd->add_flag(
      "--stdin", args->stdin_mode,
      "Read statements from standard input, one per line; after each print "
      "its rows (for a query) and a status line 'OK <rows>' or 'ERROR "
      "<sqlstate> <message>', flushed at once, and go on. One cluster serves "
      "the whole run");
  e->excludes(in);
  cmd->add_option("-p,--param", args->params,
                  "Value of $1, $2, ... in order, with -e (sent as "
                  "parameters, never spliced into the SQL)")
      ->option_text("VALUE");
  static const std::map<std::string, SqlFormat> kFormats = {
      {"table", SqlFormat::kTable},
      {"csv", SqlFormat::kCsv},
      {"json", SqlFormat::kJson}};
  cmd->add_option("--format", args->format,
                  "table, csv (byte for byte as psql --csv) or json")
      ->transform(CLI::CheckedTransformer(kFormats, CLI::ignore_case))
      ->option_text("table|csv|json")
      ->default_str("table");
  cmd->footer(
      "Exit status: 0 when the statement ran (with --stdin: when input "
      "ended), 1 with 'shardctl: ERROR <sqlstate>: <message>' on stderr when "
      "it failed.\n"
      "Examples:\n"
      "  shardctl sql -c shards.toml -e \"SELECT * FROM users WHERE id = $1\" "
      "-p 42\n"
      "  shardctl sql -c shards.toml -e \"SELECT * FROM users\" --format csv\n"
      "  printf 'INSERT INTO users (id) VALUES (1)\\nSELECT count(*) FROM "
      "users WHERE id = 1\\n' | shardctl sql -c shards.toml --stdin");
  cmd->callback([args, &ctx] {
    if (args->sql.empty() && !args->stdin_mode) {
      Fail(ctx, "give a statement with -e SQL, or --stdin to read them");
      return;
    }
    absl::StatusOr<std::unique_ptr<Cluster>> cluster;
    {
      std::optional<Config> config = LoadConfigOrFail(ctx, args->config);
      if (!config) return;
      cluster = Cluster::Open(*std::move(config));
    }
    if (!cluster.ok()) {
      Fail(ctx, cluster.status());
      return;
    }
    if (args->stdin_mode) {
      RunStdin(**cluster, *args, ctx);
    } else {
      RunOne(**cluster, *args, ctx);
    }
  });
}

}  // namespace shardkit::cli
