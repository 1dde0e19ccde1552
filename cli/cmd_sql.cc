// shardctl sql: run statements through the router.

#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "cli/commands.h"
#include "router/transaction_control.h"
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
    case absl::StatusCode::kAborted: return "40000";
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
  absl::StatusOr<internal::TransactionControl> control =
      internal::ClassifyTransactionControl(args.sql);
  if (!control.ok() ||
      control->kind != internal::TransactionControl::Kind::kOther) {
    Fail(ctx, absl::StrCat("ERROR 0A000: ",
                           control.ok() ? "BEGIN, COMMIT and ROLLBACK need "
                                          "the statements around them: run "
                                          "them with --stdin, one per line"
                                        : OneLine(control.status().message())));
    return;
  }
  absl::StatusOr<Result> result = cluster.Execute(args.sql, ParamsOf(args));
  if (!result.ok()) {
    Fail(ctx, absl::StrCat("ERROR ", SqlStateFor(result.status()), ": ",
                     OneLine(result.status().message())));
    return;
  }
  PrintResult(*result, args.format, *ctx.out);
}

// The status line of a statement that ran: 'OK <rows>', after its rows.
void PrintOk(const Result& result, const SqlArgs& args, CommandContext& ctx) {
  if (!result.columns.empty()) PrintResult(result, args.format, *ctx.out);
  *ctx.out << "OK "
           << (result.columns.empty()
                   ? result.rows_affected
                   : static_cast<int64_t>(result.rows.size()))
           << "\n";
}

// A failure's status line: 'ERROR <sqlstate> <message>'.
struct Failure {
  std::string sqlstate;
  std::string message;
};

Failure FailureOf(const absl::Status& status) {
  return Failure{SqlStateFor(status), OneLine(status.message())};
}

void PrintError(const Failure& failure, CommandContext& ctx) {
  *ctx.out << "ERROR " << failure.sqlstate << " " << failure.message << "\n";
}

void PrintError(const absl::Status& status, CommandContext& ctx) {
  PrintError(FailureOf(status), ctx);
}

// What PostgreSQL says as a WARNING, on stderr (psql prints them there too).
void Warn(CommandContext& ctx, std::string_view sqlstate,
          std::string_view message) {
  *ctx.err << "shardctl: WARNING " << sqlstate << " " << message << "\n";
}

// The statements of --stdin, and the transaction block they may be in,
// with PostgreSQL's rules: BEGIN opens a block whose statements run in one
// shardkit::Transaction; COMMIT / ROLLBACK end it; an error inside it
// aborts it (later statements fail with 25P02 until it ends); BEGIN inside
// a block and COMMIT / ROLLBACK outside one are warnings.
class StdinSession {
 public:
  StdinSession(const Cluster& cluster, const SqlArgs& args, CommandContext& ctx)
      : cluster_(cluster), args_(args), ctx_(ctx) {}

  void Line(const std::string& line) {
    absl::StatusOr<internal::TransactionControl> control =
        internal::ClassifyTransactionControl(line);
    if (!control.ok()) {
      Abort(control.status());
      PrintError(control.status(), ctx_);
      return;
    }
    switch (control->kind) {
      case Kind::kBegin:
        Begin();
        return;
      case Kind::kCommit:
      case Kind::kRollback:
        End(control->kind == Kind::kCommit, control->chain);
        return;
      case Kind::kOther:
        Statement(line);
        return;
    }
  }

  // At the end of input: a block still open is rolled back, as PostgreSQL
  // does when a session ends inside one.
  void Finish() {
    if (state_ == State::kNone) return;
    if (txn_ != nullptr) txn_->Rollback().IgnoreError();
    txn_.reset();
    state_ = State::kNone;
    *ctx_.err << "shardctl: input ended inside a transaction block (BEGIN "
                 "without COMMIT): rolled it back\n";
  }

 private:
  using Kind = internal::TransactionControl::Kind;
  enum class State { kNone, kOpen, kAborted };

  void Begin() {
    if (state_ == State::kAborted) {
      PrintError(Aborted(), ctx_);
      return;
    }
    if (state_ == State::kOpen) {
      Warn(ctx_, "25001", "there is already a transaction in progress");
      *ctx_.out << "OK 0\n";
      return;
    }
    absl::Status begun = Open();
    if (!begun.ok()) {
      PrintError(begun, ctx_);
      return;
    }
    *ctx_.out << "OK 0\n";
  }

  void End(bool commit, bool chain) {
    if (state_ == State::kNone) {
      if (chain) {
        PrintError(Failure{"25P01", absl::StrCat(commit ? "COMMIT" : "ROLLBACK",
                                                 " AND CHAIN can only be used "
                                                 "in transaction blocks")},
                   ctx_);
        return;
      }
      Warn(ctx_, "25P01", "there is no transaction in progress");
      *ctx_.out << "OK 0\n";
      return;
    }
    std::optional<Failure> failed;
    if (state_ == State::kAborted) {
      if (commit) {
        failed = Failure{"40000",
                         absl::StrCat("the transaction was rolled back, as an "
                                      "earlier statement in it failed: ",
                                      abort_reason_)};
      }
    } else if (commit) {
      absl::Status committed = txn_->Commit();
      if (!committed.ok()) failed = FailureOf(committed);
    } else {
      absl::Status rolled_back = txn_->Rollback();
      if (!rolled_back.ok()) {
        Warn(ctx_, "01000", OneLine(rolled_back.message()));
      }
    }
    txn_.reset();
    state_ = State::kNone;
    if (chain) {
      absl::Status begun = Open();
      if (!begun.ok() && !failed) failed = FailureOf(begun);
    }
    if (failed) {
      PrintError(*failed, ctx_);
    } else {
      *ctx_.out << "OK 0\n";
    }
  }

  void Statement(const std::string& line) {
    if (state_ == State::kAborted) {
      PrintError(Aborted(), ctx_);
      return;
    }
    absl::StatusOr<Result> result = state_ == State::kOpen
                                        ? txn_->Execute(line)
                                        : cluster_.Execute(line, {});
    if (result.ok()) {
      PrintOk(*result, args_, ctx_);
    } else {
      // The Transaction aborted itself; it stays open until COMMIT or
      // ROLLBACK, and says 25P02 meanwhile.
      PrintError(result.status(), ctx_);
    }
  }

  absl::Status Open() {
    absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_.Begin();
    if (!txn.ok()) return txn.status();
    txn_ = *std::move(txn);
    state_ = State::kOpen;
    return absl::OkStatus();
  }

  // A statement refused before it ran, inside a block: as in PostgreSQL,
  // the block is aborted (its work is rolled back now).
  void Abort(const absl::Status& reason) {
    if (state_ != State::kOpen) return;
    txn_->Rollback().IgnoreError();
    txn_.reset();
    state_ = State::kAborted;
    abort_reason_ = OneLine(reason.message());
  }

  Failure Aborted() const {
    return Failure{"25P02",
                   absl::StrCat("current transaction is aborted, commands "
                                "ignored until end of transaction block (it "
                                "failed with: ",
                                abort_reason_, "); roll it back")};
  }

  const Cluster& cluster_;
  const SqlArgs& args_;
  CommandContext& ctx_;
  State state_ = State::kNone;
  std::unique_ptr<Transaction> txn_;  // while kOpen
  std::string abort_reason_;          // while kAborted
};

// One statement per line; after each, its rows and a status line, flushed.
void RunStdin(const Cluster& cluster, const SqlArgs& args,
              CommandContext& ctx) {
  StdinSession session(cluster, args, ctx);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r;") == std::string::npos) continue;
    session.Line(line);
    ctx.out->flush();
  }
  session.Finish();
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
      "the whole run. BEGIN (or START TRANSACTION) ... COMMIT (or END) runs "
      "the statements between in one transaction across shards, atomic "
      "(two-phase commit when several shards wrote); ROLLBACK (or ABORT) "
      "undoes it; each prints 'OK 0', a COMMIT that failed 'ERROR ...'. As "
      "in PostgreSQL, an error inside it aborts it until ROLLBACK or COMMIT "
      "(which then rolls back). Input that ends inside it rolls it back. "
      "SAVEPOINT and PREPARE TRANSACTION are refused");
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
      "users WHERE id = 1\\n' | shardctl sql -c shards.toml --stdin\n"
      "  printf 'BEGIN\\nUPDATE accounts SET balance = balance - 10 WHERE id = "
      "1\\nUPDATE accounts SET balance = balance + 10 WHERE id = 2\\nCOMMIT\\n'"
      " | shardctl sql -c shards.toml --stdin");
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
