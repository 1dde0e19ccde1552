// shardctl load: bulk-load CSV rows into a sharded or reference table.

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "cli/commands.h"
#include "shardkit/cluster.h"
#include "shardkit/load.h"

namespace shardkit::cli {
namespace {

struct LoadArgs {
  std::string config;
  std::string table;
  std::string csv = "-";
  bool header = false;
  bool no_header = false;
  std::vector<std::string> columns;
  std::string delimiter = ",";
  std::string null_string;
  Format format = Format::kTable;
};

std::string OneLine(absl::string_view message) {
  return absl::StrReplaceAll(message, {{"\n", " "}, {"\r", " "}});
}

// "," or "tab" / "\t" for a tab.
std::optional<char> ParseDelimiter(const std::string& text) {
  if (text == "tab" || text == "\\t") return '\t';
  if (text.size() == 1) return text[0];
  return std::nullopt;
}

void PrintReport(const LoadReport& report, Format format, std::ostream& out) {
  if (format == Format::kJson) {
    JsonWriter json;
    json.BeginObject().Key("table").String(report.table);
    json.Key("rows").Int(report.rows);
    json.Key("columns").BeginArray();
    for (const std::string& c : report.columns) json.String(c);
    json.EndArray().Key("shards").BeginArray();
    for (const ShardRows& s : report.shards) {
      json.BeginObject().Key("shard").String(s.shard_name);
      json.Key("rows").Int(s.rows).EndObject();
    }
    json.EndArray().EndObject();
    out << json.str() << "\n";
    return;
  }
  std::vector<std::string> parts;
  for (const ShardRows& s : report.shards) {
    parts.push_back(absl::StrCat(s.shard_name, " ", s.rows));
  }
  out << "loaded " << report.rows << (report.rows == 1 ? " row: " : " rows: ")
      << absl::StrJoin(parts, ", ") << "\n";
}

void RunLoad(const LoadArgs& args, CommandContext& ctx) {
  LoadOptions options;
  options.columns = args.columns;
  // A column list describes a file without a header, unless --header says
  // there is one to skip: a first data row is never dropped by surprise.
  options.header =
      args.header || (!args.no_header && args.columns.empty());
  options.delimiter = ParseDelimiter(args.delimiter).value_or(',');  // checked
  options.null_string = args.null_string;

  std::ifstream file;
  std::istream* in = &std::cin;
  if (args.csv != "-") {
    file.open(args.csv, std::ios::binary);
    if (!file.is_open()) {
      Fail(ctx, absl::StrCat("cannot read ", args.csv, ": ",
                             std::strerror(errno)));
      return;
    }
    in = &file;
  }

  absl::StatusOr<std::unique_ptr<Cluster>> cluster;
  {
    std::optional<Config> config = LoadConfigOrFail(ctx, args.config);
    if (!config) return;
    cluster = Cluster::Open(*std::move(config));
  }
  if (!cluster.ok()) {
    Fail(ctx, cluster.status());
    return;
  }
  absl::StatusOr<LoadReport> report =
      LoadCsv(**cluster, args.table, *in, options);
  if (!report.ok()) {
    Fail(ctx, OneLine(report.status().message()));
    return;
  }
  PrintReport(*report, args.format, *ctx.out);
}

}  // namespace

void RegisterLoad(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<LoadArgs>();
  CLI::App* cmd = app.add_subcommand(
      "load",
      "Bulk-load CSV rows into TABLE: each row goes to the shard that owns "
      "its key (a reference table's rows to every shard), streamed with "
      "COPY, one connection per shard, in parallel.\n"
      "All or nothing: if any row or shard fails, every shard rolls back and "
      "nothing is loaded; the shards then commit together with two-phase "
      "commit (every shard keeps its rows or none does, even if shardctl "
      "dies mid-commit: recovery finishes it).\n"
      "The CSV is read as PostgreSQL's COPY ... (FORMAT csv) reads it, in "
      "UTF-8: quoted fields may hold the delimiter, quotes (doubled) and line "
      "breaks; an unquoted empty field is NULL, \"\" an empty string.");
  AddConfigOption(cmd, &args->config);
  cmd->add_option("TABLE", args->table,
                  "A table of the map (sharded or reference), or any table "
                  "when [router] default_shard is set")
      ->required();
  cmd->add_option("--csv", args->csv,
                  "The CSV file to read; - (the default) reads standard input")
      ->option_text("FILE|-");
  CLI::Option* no_header = cmd->add_flag(
      "--no-header", args->no_header,
      "The first row is data, not a header: the rows hold the --columns, or "
      "else every column of the table in its order. Without this flag (and "
      "without --columns) the first row is a header that names the columns "
      "of the rows: exact column names, in any order, any subset");
  cmd->add_flag("--header", args->header,
                "With --columns: the first row is a header, and is skipped")
      ->excludes(no_header);
  cmd->add_option("--columns", args->columns,
                  "The columns of the CSV's rows, in order, separated by "
                  "commas; the file then has no header row, unless --header")
      ->delimiter(',')
      ->option_text("a,b,c");
  cmd->add_option("--delimiter", args->delimiter,
                  "The field separator: one character, or 'tab'")
      ->check(CLI::Validator(
          [](std::string& text) {
            return ParseDelimiter(text).has_value()
                       ? std::string()
                       : "must be one character, or 'tab', not '" + text + "'";
          },
          "", "delimiter"))
      ->option_text("CHAR")
      ->default_str(",");
  cmd->add_option("--null", args->null_string,
                  "An unquoted field equal to this is NULL (default: the "
                  "empty field)")
      ->option_text("STRING");
  AddFormatOption(cmd, &args->format);
  cmd->footer(
      "Output: 'loaded <rows> rows: <shard> <rows>, ...' (or --format json). "
      "Exit status: 0 when every row was loaded, 1 with a one-line reason on "
      "stderr (naming the shard, the SQLSTATE and the CSV line when there "
      "are any) when nothing was, 2 for a usage error.\n"
      "Examples:\n"
      "  shardctl load -c shards.toml users --csv users.csv\n"
      "  psql -c \"\\copy users TO STDOUT CSV HEADER\" | shardctl load -c "
      "shards.toml users\n"
      "  shardctl load -c shards.toml countries --csv countries.tsv "
      "--delimiter tab --columns code,name");
  cmd->callback([args, &ctx] { RunLoad(*args, ctx); });
}

}  // namespace shardkit::cli
