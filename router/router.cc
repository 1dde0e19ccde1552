#include "router/router.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "router/parser_thread.h"
#include "router/shard_connection.h"
#include "router/sql_parser.h"
#include "router/tree_walk.h"

namespace shardkit::internal {

struct Router::Plan {
  // The map the plan was made for; keeps the tables it points to alive.
  std::shared_ptr<const ShardMap> map;
  // Touched only on the parser thread (INSERT rows are split by rewriting
  // it), which runs one job at a time.
  std::unique_ptr<ParsedSql> tree;
  RoutingPlan routing;
};

namespace {

// "INSERT 0 3" + "INSERT 0 4" -> "INSERT 0 7": the tag with its count
// replaced by the total.
std::string TagWithCount(const std::string& tag, int64_t count) {
  const size_t space = tag.rfind(' ');
  int64_t ignored;
  if (space == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(tag).substr(space + 1), &ignored)) {
    return tag;
  }
  return StrCat(tag.substr(0, space + 1), count);
}

// SQL for the INSERT with only `rows` of its VALUES, its parameters
// renumbered $1.. in order; `used` gets the original numbers, so that the
// shard's parameters are params[used[i] - 1]. The tree is restored after.
absl::StatusOr<std::string> InsertForRows(ParsedSql& tree,
                                          const std::vector<size_t>& rows,
                                          std::vector<int>* used) {
  PgQuery__InsertStmt* insert = tree.mutable_statement(0)->insert_stmt;
  PgQuery__SelectStmt* values = insert->select_stmt->select_stmt;
  PgQuery__Node** all_rows = values->values_lists;
  const size_t n_all_rows = values->n_values_lists;
  std::vector<PgQuery__Node*> chosen;
  chosen.reserve(rows.size());
  for (size_t r : rows) chosen.push_back(all_rows[r]);
  values->values_lists = chosen.data();
  values->n_values_lists = chosen.size();

  std::vector<PgQuery__ParamRef*> refs;
  std::function<void(ProtobufCMessage*)> collect = [&](ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__param_ref__descriptor)) {
      refs.push_back(reinterpret_cast<PgQuery__ParamRef*>(m));
    }
    ForEachChild(m, collect);
  };
  collect(&tree.mutable_statement(0)->base);
  std::set<int> numbers;
  for (const PgQuery__ParamRef* ref : refs) numbers.insert(ref->number);
  used->assign(numbers.begin(), numbers.end());
  std::map<int, int> renumber;
  for (size_t i = 0; i < used->size(); ++i) renumber[(*used)[i]] = i + 1;
  for (PgQuery__ParamRef* ref : refs) ref->number = renumber[ref->number];

  absl::StatusOr<std::string> sql = tree.Deparse();

  std::map<int, int> back;
  for (const auto& [from, to] : renumber) back[to] = from;
  for (PgQuery__ParamRef* ref : refs) ref->number = back[ref->number];
  values->values_lists = all_rows;
  values->n_values_lists = n_all_rows;
  return sql;
}

Result Combine(const RoutingPlan& plan, std::vector<TaskOutcome>& done,
               const std::vector<ShardTask>& tasks) {
  Result out = std::move(done[0].result);
  const bool copies = plan.kind == StatementKind::kDdl ||
                      (plan.distribution == nullptr && plan.writes);
  if (!copies) {
    // Several shards' parts of one answer: rows and counts add up.
    for (size_t i = 1; i < done.size(); ++i) {
      Result& part = done[i].result;
      out.rows_affected += part.rows_affected;
      out.rows.insert(out.rows.end(), std::make_move_iterator(part.rows.begin()),
                      std::make_move_iterator(part.rows.end()));
    }
    out.command_tag = TagWithCount(out.command_tag, out.rows_affected);
  }
  // Else every shard applied the same statement to its copy: the first
  // shard's answer is the answer.
  out.shards.clear();
  for (const ShardTask& t : tasks) out.shards.push_back(t.shard);
  std::sort(out.shards.begin(), out.shards.end());
  out.shards.erase(std::unique(out.shards.begin(), out.shards.end()),
                   out.shards.end());
  return out;
}

}  // namespace

Router::Router() = default;
Router::~Router() = default;

size_t Router::CachedPlansForTest() const {
  absl::MutexLock lock(&mu_);
  return plans_.size();
}

absl::StatusOr<std::shared_ptr<Router::Plan>> Router::PlanFor(
    const std::shared_ptr<const ShardMap>& map, std::string_view sql) {
  {
    absl::MutexLock lock(&mu_);
    auto it = plans_.find(ToAbsl(sql));
    if (it != plans_.end() && it->second->map == map) return it->second;
  }
  auto plan = std::make_shared<Plan>();
  plan->map = map;
  absl::Status status;
  ParserThread::Default().Run([&] {
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    if (!parsed.ok()) {
      status = parsed.status();
      return;
    }
    if (parsed->size() != 1) {
      status = absl::InvalidArgumentError(
          parsed->size() == 0
              ? std::string("empty SQL: give a statement to run")
              : StrCat("the router runs one statement at a time; this SQL "
                       "holds ",
                       parsed->size(),
                       ": send them one by one (a script of DDL can go to "
                       "every shard with ExecuteOnAllShards)"));
      return;
    }
    absl::StatusOr<RoutingPlan> routing =
        AnalyzeStatement(*parsed->statement(0), *map);
    if (!routing.ok()) {
      status = routing.status();
      return;
    }
    plan->routing = *std::move(routing);
    plan->tree = std::make_unique<ParsedSql>(*std::move(parsed));
  });
  RETURN_IF_ERROR(status);
  absl::MutexLock lock(&mu_);
  if (plans_.size() >= kMaxCachedPlans) plans_.clear();
  plans_[std::string(sql)] = plan;
  return plan;
}

absl::StatusOr<std::vector<ShardTask>> Router::InsertTasks(
    Plan& plan, const ShardMap& map, std::string_view sql,
    const Params& params) {
  ASSIGN_OR_RETURN(std::vector<ShardId> row_shards,
                   InsertRowShards(plan.routing, params));
  std::map<ShardId, std::vector<size_t>> rows_of;
  for (size_t row = 0; row < row_shards.size(); ++row) {
    rows_of[row_shards[row]].push_back(row);
  }
  std::vector<ShardTask> tasks;
  for (const auto& [shard, rows] : rows_of) {
    ShardTask task;
    task.shard = shard;
    task.shard_name = map.shard(shard).name;
    task.dsn = map.shard(shard).dsn;
    tasks.push_back(std::move(task));
  }
  if (tasks.size() == 1) {  // every row on one shard: the statement as is
    tasks[0].sql = std::string(sql);
    tasks[0].params = params;
    return tasks;
  }
  absl::Status status;
  ParserThread::Default().Run([&] {
    size_t i = 0;
    for (const auto& [shard, rows] : rows_of) {
      std::vector<int> used;
      absl::StatusOr<std::string> rewritten =
          InsertForRows(*plan.tree, rows, &used);
      if (!rewritten.ok()) {
        status = rewritten.status();
        return;
      }
      tasks[i].sql = *std::move(rewritten);
      for (int n : used) tasks[i].params.push_back(params[n - 1]);
      ++i;
    }
  });
  RETURN_IF_ERROR(status);
  return tasks;
}

absl::StatusOr<Result> Router::Execute(const std::shared_ptr<const ShardMap>& map,
                                       std::string_view sql,
                                       const Params& params,
                                       const ExecOptions& options) {
  ASSIGN_OR_RETURN(std::shared_ptr<Plan> plan, PlanFor(map, sql));
  const RoutingPlan& routing = plan->routing;
  std::vector<ShardTask> tasks;
  if (routing.kind == StatementKind::kInsert && routing.distribution != nullptr) {
    ASSIGN_OR_RETURN(tasks, InsertTasks(*plan, *map, sql, params));
  } else {
    ASSIGN_OR_RETURN(std::vector<ShardId> targets,
                     TargetShards(routing, *map, params));
    if (targets.size() > 1 && !routing.needs_merge.empty()) {
      absl::Status refused = absl::InvalidArgumentError(StrCat(
          routing.needs_merge, " over ", targets.size(),
          " shards needs the shards' rows merged, which the router does not "
          "do yet; narrow the statement to one shard with a condition on "
          "the shard key (",
          routing.distribution->name(), ")"));
      refused.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("0A000"));
      return refused;
    }
    for (ShardId id : targets) {
      ShardTask task;
      task.shard = id;
      task.shard_name = map->shard(id).name;
      task.dsn = map->shard(id).dsn;
      task.sql = std::string(sql);
      task.params = params;
      tasks.push_back(std::move(task));
    }
  }
  std::vector<TaskOutcome> done = RunOnShards(tasks, options);
  for (TaskOutcome& outcome : done) {
    if (!outcome.status.ok()) return outcome.status;
  }
  return Combine(routing, done, tasks);
}

}  // namespace shardkit::internal
