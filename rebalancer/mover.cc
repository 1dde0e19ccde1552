#include "rebalancer/mover.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/backfill.h"
#include "rebalancer/move_session.h"
#include "rebalancer/move_table.h"
#include "rebalancer/pending_copies.h"
#include "rebalancer/server_hash.h"
#include "rebalancer/shard_objects.h"
#include "rebalancer/verify.h"
#include "router/failpoint.h"
#include "shardkit/cluster.h"

namespace shardkit::internal {

namespace {

constexpr absl::Duration kLeaseTtl = absl::Seconds(30);
constexpr int64_t kCleanupBatch = 5000;

ExecOptions CatalogOptions(const MoverOptions& options) {
  ExecOptions exec;
  exec.connect_timeout = options.connect_timeout;
  exec.statement_timeout = options.statement_timeout;
  return exec;
}

std::vector<TableToMove> TablesOf(const ShardMap& map,
                                  std::string_view distribution) {
  std::vector<TableToMove> tables;
  for (const Table& t : map.tables()) {
    if (!t.reference &&
        map.distributions()[t.distribution].name() == distribution) {
      tables.push_back({t.name, t.key_column});
    }
  }
  return tables;
}

ShardEndpoint EndpointOf(const ShardMap& map, const std::string& shard,
                         const MoverOptions& options) {
  return {shard, map.shard(*map.FindShard(shard)).dsn, options.connect_timeout};
}

LiveState::Move* FindMove(LiveState& state, uint64_t id) {
  for (LiveState::Move& m : state.moves) {
    if (m.id == id) return &m;
  }
  return nullptr;
}

void DropMove(LiveState& state, uint64_t id) {
  state.moves.erase(std::remove_if(state.moves.begin(), state.moves.end(),
                                   [&](const LiveState::Move& m) {
                                     return m.id == id;
                                   }),
                    state.moves.end());
}

// About how many rows a backfill of `table` scans on `source` (for the
// progress display): the table's rows for a hash slice filtered
// client-side, the slice's for one filtered by its SQL condition; 0 if
// unknown.
int64_t RowsToScan(const ShardEndpoint& source, const TableToMove& table,
                   const MoveSlice& slice) {
  absl::StatusOr<std::unique_ptr<MoveSession>> session =
      MoveSession::Open(source, absl::Seconds(30));
  if (!session.ok()) return 0;
  std::string sql;
  if (slice.strategy == Strategy::kHash) {
    // The planner's estimate, when the table was analyzed; else a count;
    // filtered by the shards, the slice's share of it (XXH3 spreads keys
    // evenly).
    const double share =
        slice.server_hash
            ? ((slice.hash_hi ? static_cast<double>(*slice.hash_hi)
                              : 18446744073709551616.0) -
               static_cast<double>(slice.hash_lo)) /
                  18446744073709551616.0
            : 1.0;
    sql = StrCat(
        "SELECT (CASE WHEN c.reltuples > 0 THEN c.reltuples::int8 ELSE "
        "(SELECT count(*) FROM ", QuoteQualifiedName(table.name),
        ") END * ", share, ")::int8 FROM pg_class c WHERE c.oid = ",
        (*session)->Literal(QuoteQualifiedName(table.name)), "::regclass");
  } else {
    absl::StatusOr<TableShape> shape =
        DescribeTableForMove(**session, **session, table.name,
                             table.key_column);
    if (!shape.ok()) return 0;
    sql = StrCat("SELECT count(*) FROM ", shape->quoted, " WHERE ",
                 SliceCondition(*shape, slice));
  }
  return (*session)->QueryInt(sql, {}, "estimating the rows to backfill")
      .value_or(0);
}

// For a move whose shards tell its slice apart by their hash functions
// (MoveRecord::server_hash): OK while `session`'s shard still hashes as
// the library does. Replaced or dropped since the move was prepared, the
// slice's condition would copy, hide or delete the wrong rows: the phase
// stops before it changes anything.
absl::Status CheckStillHashing(const MoveRecord& move, KeyType type,
                               MoveSession& session) {
  if (!move.server_hash) return absl::OkStatus();
  absl::Status usable = CheckServerHash(session, type);
  if (usable.ok()) return usable;
  return absl::FailedPreconditionError(StrCat(
      "move ", move.id, " tells its slice apart by the shards' hash "
      "functions, which no longer hash as this shardkit does (",
      usable.message(), "); nothing was changed: run `shardctl hash "
      "install`, then `shardctl moves resume ", move.id, "` (or abort)"));
}

// What keeps the mover's user from preparing a move of `tables` on
// `session`'s shard (MissingPrivilegesSql), as a clause for the operator
// ("on s2 (user app), as a superuser: `GRANT ...;`"); "" when nothing.
absl::StatusOr<std::string> MissingPrivileges(
    MoveSession& session, const std::vector<TableToMove>& tables) {
  std::vector<std::string> names;
  for (const TableToMove& t : tables) names.push_back(t.name);
  ASSIGN_OR_RETURN(std::vector<MoveSession::Row> rows,
                   session.Query(MissingPrivilegesSql(names), {},
                                 "checking the mover's privileges"));
  const MoveSession::Row& row = rows.at(0);
  std::vector<std::string> lacks;
  if (row[2]) {
    lacks.push_back(StrCat("it does not own ", *row[2],
                           ", which get the fence's trigger: run the move as "
                           "their owner"));
  }
  if (!row[1].value_or("").empty()) {
    lacks.push_back(StrCat("as a superuser: `", *row[1], "`"));
  }
  if (lacks.empty()) return std::string();
  return StrCat("on ", session.shard_name(), " (user ", row[0].value_or(""),
                "), ", absl::StrJoin(lacks, ", and "));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Mover>> Mover::Open(Config config,
                                                   MoverOptions options) {
  if (!config.catalog) {
    return absl::FailedPreconditionError(StrCat(
        "moving data needs a [catalog] in ", config.source,
        ": the live map and the move journal are kept there, so that every "
        "process routes by the same map; add [catalog] dsn = \"...\" (a "
        "database that is not a shard's, e.g. `shardctl dev up` writes one)"));
  }
  auto mover = absl::WrapUnique(new Mover(std::move(config), std::move(options)));
  RETURN_IF_ERROR(mover->journal_.EnsureSchema());
  return mover;
}

Mover::Mover(Config config, MoverOptions options)
    : config_(std::move(config)),
      options_(std::move(options)),
      catalog_(*config_.catalog, CatalogOptions(options_)),
      journal_(catalog_),
      identity_(ProcessIdentity()) {}

void Mover::Log(std::string_view line) {
  if (options_.log) options_.log(line);
}

absl::StatusOr<Mover::Live> Mover::Current() {
  ASSIGN_OR_RETURN(std::optional<LiveState> latest, catalog_.Latest());
  LiveState state = latest ? *std::move(latest) : LiveStateOf(config_.map);
  ASSIGN_OR_RETURN(ShardMap map, ApplyLiveState(config_.map, state));
  return Live{std::move(state), std::move(map)};
}

absl::StatusOr<uint64_t> Mover::PublishEdit(
    const std::function<absl::Status(LiveState&)>& edit,
    std::string_view reason) {
  for (int attempt = 0;; ++attempt) {
    ASSIGN_OR_RETURN(Live live, Current());
    LiveState next = live.state;
    RETURN_IF_ERROR(edit(next));
    next.epoch = live.state.epoch + 1;
    // Check that the result is a valid map before anyone routes by it.
    RETURN_IF_ERROR(ApplyLiveState(config_.map, next).status());
    absl::Status published = catalog_.Publish(next, reason);
    if (published.ok()) return next.epoch;
    if (published.code() != absl::StatusCode::kAborted || attempt >= 20) {
      return published;
    }
  }
}

absl::Status Mover::Phase(const MoveRecord& move, JournalPhase phase) {
  Log(StrCat("move ", move.id, ": ", JournalPhaseName(phase)));
  return journal_.SetPhase(move.id, phase);
}

absl::StatusOr<MoveRecord> Mover::Start(const MoveRequest& request) {
  ASSIGN_OR_RETURN(Live live, Current());
  ASSIGN_OR_RETURN(PlannedMove plan, PlanMove(live.map, request));
  // A move planned but not yet in the map overlaps nothing in PlanMove's
  // eyes; the journal knows.
  ASSIGN_OR_RETURN(std::vector<MoveRecord> active, journal_.Active());
  for (const MoveRecord& other : active) {
    if (other.distribution == plan.distribution) {
      return absl::FailedPreconditionError(StrCat(
          "move ", other.id, " of distribution '", other.distribution,
          "' is not finished (phase ", JournalPhaseName(other.phase),
          "); one move per distribution at a time: resume it "
          "(`shardctl moves resume ", other.id, "`) or abort it"));
    }
  }
  const ShardEndpoint source = EndpointOf(live.map, plan.source, options_);
  const ShardEndpoint destination =
      EndpointOf(live.map, plan.destination, options_);
  for (const TableToMove& table : TablesOf(live.map, plan.distribution)) {
    RETURN_IF_ERROR(CheckTableForMove(source, destination, table).status());
  }
  MoveRecord record;
  record.distribution = plan.distribution;
  record.from = plan.from;
  record.to = plan.to;
  record.region = plan.region;
  record.source = plan.source;
  record.destination = plan.destination;
  ASSIGN_OR_RETURN(record, journal_.Create(record));
  Log(StrCat("move ", record.id, ": planned ", plan.distribution, " ",
             plan.region.empty() ? StrCat(plan.from, ":", plan.to) : plan.region,
             " from ", plan.source, " to ", plan.destination));
  Failpoint("move-after-plan");
  return record;
}

absl::StatusOr<Mover::Sides> Mover::SidesOf(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Live live, Current());
  Sides sides;
  sides.source = EndpointOf(live.map, move.source, options_);
  sides.destination = EndpointOf(live.map, move.destination, options_);
  sides.tables = TablesOf(live.map, move.distribution);
  const Distribution& distribution =
      *live.map.FindDistribution(move.distribution);
  sides.key_type = distribution.key_type();
  sides.strategy = distribution.strategy();
  sides.live = std::move(live);
  return sides;
}

absl::StatusOr<PlannedMove> Mover::Replan(const MoveRecord& move,
                                          const Live& live) {
  LiveState without = live.state;
  DropMove(without, move.id);
  ASSIGN_OR_RETURN(ShardMap map, ApplyLiveState(config_.map, without));
  MoveRequest request;
  request.distribution = move.distribution;
  if (move.region.empty()) request.slice = StrCat(move.from, ":", move.to);
  request.region = move.region;
  request.destination = move.destination;
  ASSIGN_OR_RETURN(PlannedMove plan, PlanMove(map, request));
  plan.slice.move_id = move.id;
  plan.slice.server_hash = move.server_hash;
  return plan;
}

MoveSlice Mover::SliceOf(const Sides& sides, const PlannedMove& plan) const {
  return MoveSlice::FromMovingSlice(
      sides.live.map.distributions()[plan.slice.distribution], plan.slice);
}

absl::StatusOr<std::unique_ptr<MoveSession>> Mover::OpenSession(
    const ShardEndpoint& shard) const {
  return MoveSession::Open(shard, options_.statement_timeout);
}

absl::Status Mover::TakeLease(uint64_t id, std::string_view doing) {
  ASSIGN_OR_RETURN(bool leased,
                   catalog_.TryLease(StrCat("move/", id), identity_, kLeaseTtl));
  if (leased) return absl::OkStatus();
  return absl::FailedPreconditionError(StrCat(
      "move ", id, " is being run by another process (catalog lease move/",
      id, "); ", doing, ", or for the lease to expire (",
      absl::FormatDuration(kLeaseTtl), ") if that process died"));
}

absl::StatusOr<uint64_t> Mover::PublishWithoutMove(uint64_t id,
                                                   std::string_view reason) {
  return PublishEdit(
      [&](LiveState& state) {
        DropMove(state, id);
        return absl::OkStatus();
      },
      reason);
}

absl::Status Mover::Run(uint64_t id) {
  ASSIGN_OR_RETURN(MoveRecord move, journal_.Get(id));
  RETURN_IF_ERROR(TakeLease(id, "wait for it"));
  while (true) {
    ASSIGN_OR_RETURN(move, journal_.Get(id));
    absl::Status step;
    switch (move.phase) {
      case JournalPhase::kPlanned:
        step = Prepare(move);
        break;
      case JournalPhase::kDualWrite:
        step = StartDualWrite(move);
        break;
      case JournalPhase::kBackfill:
        step = Backfill(move);
        break;
      case JournalPhase::kVerify:
        step = Verify(move);
        break;
      case JournalPhase::kCutover:
        step = Cutover(move);
        break;
      case JournalPhase::kCleanup:
        step = Cleanup(move);
        break;
      case JournalPhase::kDone:
        catalog_.ReleaseLease(StrCat("move/", id), identity_).IgnoreError();
        return absl::OkStatus();
      case JournalPhase::kAborting:
      case JournalPhase::kAborted:
        return absl::FailedPreconditionError(StrCat(
            "move ", id, " was aborted",
            move.phase == JournalPhase::kAborting
                ? "; finish the abort with `shardctl moves abort` again"
                : ""));
    }
    if (!step.ok()) {
      journal_.Event(id, StrCat("stopped: ", step.message())).IgnoreError();
      return step;
    }
    catalog_.TryLease(StrCat("move/", id), identity_, kLeaseTtl).IgnoreError();
  }
}

absl::Status Mover::Prepare(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  ASSIGN_OR_RETURN(PlannedMove plan, Replan(move, sides.live));
  const MoveSlice slice = SliceOf(sides, plan);
  // A hash slice keeps key lists unless both shards hash keys themselves.
  const bool hash = sides.strategy == Strategy::kHash;
  bool server_hash = hash && options_.use_server_hash;
  std::string without = "turned off (MoverOptions::use_server_hash)";
  // Both shards checked before anything is installed on either: a write
  // guard left on the source by a move that cannot be prepared would
  // refuse writes until the move is aborted.
  const ShardEndpoint* const shards[] = {&sides.source, &sides.destination};
  std::unique_ptr<MoveSession> sessions[2];
  std::vector<std::string> missing;
  for (int i = 0; i < 2; ++i) {
    ASSIGN_OR_RETURN(sessions[i], OpenSession(*shards[i]));
    ASSIGN_OR_RETURN(std::string lacks,
                     MissingPrivileges(*sessions[i], sides.tables));
    if (!lacks.empty()) missing.push_back(std::move(lacks));
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(StrCat(
        "move ", move.id, " cannot install its fence and write guard: the "
        "mover's user lacks privileges on the shards (nothing was "
        "installed); ", absl::StrJoin(missing, "; "),
        "; then `shardctl moves resume ", move.id, "`"));
  }
  for (int i = 0; i < 2; ++i) {
    const ShardEndpoint* shard = shards[i];
    MoveSession* session = sessions[i].get();
    if (server_hash) {
      absl::Status usable = CheckServerHash(*session, sides.key_type);
      if (!usable.ok()) {
        server_hash = false;
        without = std::string(usable.message());
      }
    }
    RETURN_IF_ERROR(session->Run(InstallFenceFunctionSql(),
                                 "installing the epoch fence").status());
    if (session->superuser()) {
      RETURN_IF_ERROR(
          session->Run(InstallDdlGuardSql(), "installing the DDL guard")
              .status());
    } else {
      const std::string unguarded = StrCat(
          "DDL on ", shard->name,
          " is not refused during the move (its "
          "event triggers need a superuser, and the mover's user is not "
          "one): change no moving table's schema there until the cutover");
      Log(StrCat("move ", move.id, ": ", unguarded));
      journal_.Event(move.id, unguarded).IgnoreError();
    }
    for (const TableToMove& table : sides.tables) {
      RETURN_IF_ERROR(
          session
              ->Run(
                  StrCat(
                      InstallFenceTriggerSql(QuoteQualifiedName(table.name)),
                      "; ",
                      AddWriteGuardSql(session->Literal(table.name), move.id)),
                  StrCat("installing the epoch fence and the write "
                         "guard on ",
                         table.name))
              .status());
    }
    // Every strategy: a single statement's dual-write records its copies
    // in the pending table (a range or region slice leaves the keys table
    // empty).
    RETURN_IF_ERROR(EnsureMoveKeysTable(*session, slice));
  }
  // Their replicas too: reads of the moving slice sent to one run the
  // condition there, and a replica has the functions (from the WAL) but
  // perhaps not the module's file. One that cannot be asked counts as
  // without.
  for (const std::string* name : {&move.source, &move.destination}) {
    const std::optional<ShardId> id = sides.live.map.FindShard(*name);
    if (!server_hash || !id) break;
    for (const Backend& replica : sides.live.map.shard(*id).replicas) {
      const ShardEndpoint endpoint{StrCat(*name, "/", replica.name),
                                   replica.dsn, sides.source.connect_timeout};
      absl::StatusOr<std::unique_ptr<MoveSession>> session =
          OpenSession(endpoint);
      absl::Status usable = session.ok()
                                ? CheckServerHash(**session, sides.key_type)
                                : session.status();
      if (!usable.ok()) {
        server_hash = false;
        without = std::string(usable.message());
        break;
      }
    }
  }
  if (hash) {
    RETURN_IF_ERROR(journal_.SetServerHash(move.id, server_hash));
    const std::string decided =
        server_hash
            ? std::string("the shards hash keys themselves: the slice keeps "
                          "no key lists")
            : StrCat("the slice keeps key lists (slower): ", without);
    Log(StrCat("move ", move.id, ": ", decided));
    journal_.Event(move.id, decided).IgnoreError();
  }
  return Phase(move, JournalPhase::kDualWrite);
}

absl::Status Mover::StartDualWrite(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  uint64_t epoch = sides.live.state.epoch;
  if (FindMove(sides.live.state, move.id) == nullptr) {
    ASSIGN_OR_RETURN(epoch, PublishEdit(
                                [&](LiveState& state) {
                                  LiveState::Move m;
                                  m.id = move.id;
                                  m.distribution = move.distribution;
                                  m.from = move.from;
                                  m.to = move.to;
                                  m.region = move.region;
                                  m.source = move.source;
                                  m.destination = move.destination;
                                  m.phase = MovePhase::kDualWrite;
                                  m.server_hash = move.server_hash;
                                  DropMove(state, move.id);
                                  state.moves.push_back(std::move(m));
                                  return absl::OkStatus();
                                },
                                StrCat("move ", move.id, ": dual-write")));
  }
  // From this fence on, a write to the source routed by a map without the
  // move is refused; the routers that know the move dual-write.
  RETURN_IF_ERROR(PatientFence(sides, sides.source, epoch));
  Failpoint("move-after-dual-write");
  return Phase(move, JournalPhase::kBackfill);
}

absl::Status Mover::Fence(const Sides& sides, const ShardEndpoint& shard,
                          uint64_t epoch, absl::Duration lock_timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session, OpenSession(shard));
  return FenceOn(sides, *session, shard, epoch, lock_timeout);
}

absl::Status Mover::FenceOn(const Sides& sides, MoveSession& session,
                            const ShardEndpoint& shard, uint64_t epoch,
                            absl::Duration lock_timeout) {
  std::string raises;
  for (const TableToMove& t : sides.tables) {
    StrAppend(&raises, "SELECT shardkit.raise_fence(",
              session.Literal(t.name), ", ", epoch, "); ");
  }
  // The session then writes at that epoch (the cutover's repairs).
  const std::string sql =
      StrCat("SET ", kEpochSetting, " = '", epoch, "'; ",
             LockTablesSql(sides, lock_timeout), "; ", raises, "COMMIT");
  absl::Status fenced =
      session.Run(sql, StrCat("fencing ", shard.name, " at epoch ", epoch))
          .status();
  if (!fenced.ok()) session.RollbackQuietly();
  return fenced;
}

absl::StatusOr<std::vector<TableShape>> Mover::ShapesOf(const Sides& sides,
                                                         MoveSession& source,
                                                         MoveSession& destination) {
  std::vector<TableShape> shapes;
  for (const TableToMove& table : sides.tables) {
    ASSIGN_OR_RETURN(TableShape shape,
                     DescribeTableForMove(source, destination, table.name,
                                          table.key_column));
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

absl::Status Mover::RepairRolledBackCopies(const MoveRecord& move,
                                           const Sides& sides) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> source,
                   OpenSession(sides.source));
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> destination,
                   OpenSession(sides.destination));
  ASSIGN_OR_RETURN(PendingCopies pending,
                   FindPendingCopies(*source, *destination, move.id,
                                     sides.key_type));
  if (pending.rolled_back.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<TableShape> shapes,
                   ShapesOf(sides, *source, *destination));
  RETURN_IF_ERROR(destination
                      ->Run(StrCat("SET ", kEpochSetting, " = '",
                                   sides.live.state.epoch, "'"),
                            "setting the mover's map epoch")
                      .status());
  // The source's tables locked against writes (a short pause, only when a
  // copy needs repair), so that what is read there stays the truth until
  // the destination has it. Bounded like the fence, and retried.
  return Patiently(StrCat("move ", move.id, ": repairing copies"), [&] {
    absl::Status repaired = [&]() -> absl::Status {
      RETURN_IF_ERROR(
          source->Run(LockTablesSql(sides, options_.cutover_lock_timeout),
                      "locking the source's tables to repair copies")
              .status());
      // Again under the lock: transactions in progress before have ended.
      ASSIGN_OR_RETURN(PendingCopies now,
                       FindPendingCopies(*source, *destination, move.id,
                                         sides.key_type));
      RETURN_IF_ERROR(RepairPendingCopies(*source, *destination, shapes, now));
      RETURN_IF_ERROR(source->Run("COMMIT").status());
      return journal_.Event(
          move.id,
          StrCat("repaired ", now.keys.size(), " keys on ", move.destination,
                 " whose dual-write the source rolled back (",
                 now.rolled_back.size(), " transactions)"));
    }();
    if (!repaired.ok()) source->RollbackQuietly();
    return repaired;
  });
}

absl::StatusOr<std::vector<std::string>> Mover::SequencesOf(
    const Sides& sides, MoveSession& destination) {
  std::vector<std::string> out;
  for (const TableToMove& t : sides.tables) {
    ASSIGN_OR_RETURN(
        std::vector<MoveSession::Row> rows,
        destination.Query(
            "SELECT pg_get_serial_sequence($1, attname) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT "
            "attisdropped AND pg_get_serial_sequence($1, attname) IS NOT NULL",
            {QuoteQualifiedName(t.name)},
            StrCat("listing the sequences of ", t.name)));
    for (const MoveSession::Row& row : rows) {
      if (row[0]) out.push_back(*row[0]);
    }
  }
  return out;
}

absl::Status Mover::AdvanceSequences(const std::vector<std::string>& sequences,
                                     MoveSession& source,
                                     MoveSession& destination) {
  if (sequences.empty()) return absl::OkStatus();
  std::vector<std::string> quoted;
  for (const std::string& name : sequences) {
    std::string element = "\"";
    for (char c : name) {
      if (c == '"' || c == '\\') element += '\\';
      element += c;
    }
    quoted.push_back(element + "\"");
  }
  const std::string array = StrCat("{", absl::StrJoin(quoted, ","), "}");
  ASSIGN_OR_RETURN(
      std::vector<MoveSession::Row> last,
      source.Query("SELECT pg_sequence_last_value(s::regclass) FROM "
                   "unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n",
                   {array}, "reading the source's sequences"));
  std::vector<std::string> values;
  for (const MoveSession::Row& row : last) {
    values.push_back(row[0] ? *row[0] : "NULL");
  }
  return destination
      .Query("SELECT setval(s::regclass, v) FROM unnest($1::text[], "
             "$2::int8[]) AS u(s, v) WHERE v IS NOT NULL AND v > "
             "coalesce(pg_sequence_last_value(s::regclass), 0)",
             {array, StrCat("{", absl::StrJoin(values, ","), "}")},
             "advancing the destination's sequences past the source's")
      .status();
}

absl::Status Mover::PatientFence(const Sides& sides,
                                  const ShardEndpoint& shard, uint64_t epoch) {
  // LOCK TABLE takes the tables one after the other, so a transaction that
  // writes them in another order deadlocks with it; and while the lock
  // waits, every later write to those tables queues behind it. So each
  // attempt waits at most the cutover's bound (below the server's
  // deadlock_timeout, 1 s by default: the fence gives way, not the
  // application's transaction), and backs off before the next.
  return Patiently(StrCat("fencing ", shard.name, " at epoch ", epoch), [&] {
    return Fence(sides, shard, epoch, options_.cutover_lock_timeout);
  });
}

absl::Status Mover::Patiently(std::string_view what,
                              absl::FunctionRef<absl::Status()> attempt) {
  const absl::Time deadline = absl::Now() + options_.statement_timeout;
  for (int n = 1;; ++n) {
    absl::Status done = attempt();
    if (done.ok() || absl::Now() >= deadline) return done;
    Log(StrCat(what, ", attempt ", n, ": ", done.message()));
    absl::SleepFor(
        std::min(absl::Milliseconds(50) * n, absl::Milliseconds(500)));
  }
}

std::string Mover::LockTablesSql(const Sides& sides,
                                 absl::Duration lock_timeout) {
  std::vector<std::string> quoted;
  for (const TableToMove& t : sides.tables) {
    quoted.push_back(QuoteQualifiedName(t.name));
  }
  return StrCat("SET lock_timeout = ", absl::ToInt64Milliseconds(lock_timeout),
                "; BEGIN; LOCK TABLE ", absl::StrJoin(quoted, ", "),
                " IN SHARE ROW EXCLUSIVE MODE");
}

absl::Status Mover::Backfill(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  ASSIGN_OR_RETURN(PlannedMove plan, Replan(move, sides.live));
  const MoveSlice slice = SliceOf(sides, plan);
  RETURN_IF_ERROR(CheckBothStillHashing(move, sides));
  ASSIGN_OR_RETURN(std::vector<TableProgress> progress,
                   journal_.Progress(move.id));
  for (const TableToMove& table : sides.tables) {
    TableProgress p;
    p.table = table.name;
    for (const TableProgress& earlier : progress) {
      if (earlier.table == table.name) p = earlier;
    }
    if (p.done) continue;
    const int64_t rows_to_scan = RowsToScan(sides.source, table, slice);
    BackfillOptions options;
    options.chunk_rows = options_.chunk_rows;
    options.max_rows_per_second = options_.max_rows_per_second;
    options.statement_timeout = options_.statement_timeout;
    options.epoch = sides.live.map.epoch();
    if (!p.bound.empty()) options.resume_after = p.bound;
    options.on_chunk = [&](const BackfillChunk& chunk) -> absl::Status {
      p.bound = chunk.bound;
      p.rows_scanned += chunk.chunk.rows_scanned;
      p.rows_copied += chunk.chunk.rows_copied;
      RETURN_IF_ERROR(journal_.SaveProgress(move.id, p));
      if (options_.progress) {
        options_.progress({move.id, "backfill", table.name,
                           chunk.total.rows_copied, chunk.total.rows_scanned,
                           chunk.total.bytes, rows_to_scan});
      }
      catalog_.TryLease(StrCat("move/", move.id), identity_, kLeaseTtl)
          .IgnoreError();
      return absl::OkStatus();
    };
    ASSIGN_OR_RETURN(BackfillStats stats,
                     BackfillTable(sides.source, sides.destination, table,
                                   slice, options));
    p.done = true;
    RETURN_IF_ERROR(journal_.SaveProgress(move.id, p));
    RETURN_IF_ERROR(journal_.Event(
        move.id, StrCat("backfilled ", table.name, ": ", stats.rows_copied,
                        " rows copied of ", stats.rows_in_slice,
                        " in the slice (", stats.rows_scanned, " scanned, ",
                        stats.chunks, " chunks)")));
  }
  Failpoint("move-after-backfill");
  return Phase(move, JournalPhase::kVerify);
}

absl::Status Mover::Verify(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  ASSIGN_OR_RETURN(PlannedMove plan, Replan(move, sides.live));
  const MoveSlice slice = SliceOf(sides, plan);
  RETURN_IF_ERROR(CheckBothStillHashing(move, sides));
  std::vector<std::string> failures;
  // A single statement's dual-write whose source rolled back after its
  // destination committed left a copy there (pending_copies.h): put the
  // source's rows back first. Should differences show up beside such a
  // copy made while verify ran, repair and verify once more.
  for (int round = 0; round < 2; ++round) {
    RETURN_IF_ERROR(RepairRolledBackCopies(move, sides));
    failures.clear();
    for (const TableToMove& table : sides.tables) {
      VerifyOptions options;
      options.chunk_rows = options_.chunk_rows;
      options.max_rows_per_second = options_.max_rows_per_second;
      options.statement_timeout = options_.statement_timeout;
      ASSIGN_OR_RETURN(VerifyReport report,
                       VerifyTable(sides.source, sides.destination, table,
                                   slice, options));
      RETURN_IF_ERROR(journal_.Event(move.id, report.Summary()));
      if (!report.ok()) failures.push_back(report.Summary());
    }
    if (failures.empty()) break;
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> source,
                     OpenSession(sides.source));
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> destination,
                     OpenSession(sides.destination));
    ASSIGN_OR_RETURN(PendingCopies pending,
                     FindPendingCopies(*source, *destination, move.id,
                                       sides.key_type));
    if (pending.rolled_back.empty()) break;
  }
  if (!failures.empty()) {
    const std::string error = StrCat(
        "verify found differences between ", move.source, " and ",
        move.destination, "; the move did not cut over (writes are still "
        "dual-written). `shardctl moves resume ", move.id,
        "` verifies again, `shardctl moves abort ", move.id,
        "` rolls it back. ", absl::StrJoin(failures, " "));
    RETURN_IF_ERROR(journal_.SetPhase(move.id, JournalPhase::kVerify, error));
    return absl::DataLossError(error);
  }
  Failpoint("move-after-verify");
  return Phase(move, JournalPhase::kCutover);
}

absl::Status Mover::Cutover(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  // Opened before the pause, with what it needs read: the tables'
  // sequences, the pending copies whose source committed forgotten. (A
  // resumed cutover may find the source fenced already: writes wait from
  // here, so this is kept short.)
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> source,
                   OpenSession(sides.source));
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> destination,
                   OpenSession(sides.destination));
  for (MoveSession* session : {source.get(), destination.get()}) {
    RETURN_IF_ERROR(CheckStillHashing(move, sides.key_type, *session));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> sequences,
                   SequencesOf(sides, *destination));
  RETURN_IF_ERROR(FindPendingCopies(*source, *destination, move.id,
                                    sides.key_type)
                      .status());
  absl::Status last;
  bool cut_over = false;
  for (int attempt = 0; attempt < options_.cutover_attempts; ++attempt) {
    // The first attempt goes by the map just read; a later one reads the
    // map again, since another process published meanwhile.
    if (attempt > 0) {
      ASSIGN_OR_RETURN(sides.live, Current());
    }
    LiveState::Move* in_map = FindMove(sides.live.state, move.id);
    if (in_map != nullptr && in_map->phase == MovePhase::kCutOver) {
      cut_over = true;
      break;
    }
    // Planned only once the map is known not to be cut over: a cut-over
    // map has the destination owning the slice, which the planner refuses
    // (a mover killed between its publish and its journal could not be
    // resumed).
    ASSIGN_OR_RETURN(PlannedMove plan, Replan(move, sides.live));
    const uint64_t epoch = sides.live.state.epoch + 1;
    // The pause starts: writes to the source's tables wait for the lock,
    // then find the fence above their map's epoch.
    last = FenceOn(sides, *source, sides.source, epoch,
                   options_.cutover_lock_timeout);
    // Then the destination, waiting for its writers as the source's fence
    // does, so that a dual-write's copy already under way there commits
    // (or rolls back) before the check below, and one sent later is
    // refused. Not at the same time: the source's fence waits for the
    // transactions that wrote the source, whose copies go to the
    // destination with their commit; fenced first, the destination would
    // refuse those commits. A transaction refused by the source's fence
    // rolls back its parts on every shard before it waits for the map
    // this cutover publishes (DistributedTransaction), so it does not
    // hold this wait up.
    if (last.ok()) {
      last = FenceOn(sides, *destination, sides.destination, epoch,
                     options_.cutover_lock_timeout);
    }
    if (last.ok()) {
      // No write to the slice can commit on either side now: repair what
      // a dual-write whose source rolled back left on the destination, and
      // move the destination's sequences past the source's.
      last = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(PendingCopies pending,
                         FindPendingCopies(*source, *destination, move.id,
                                           sides.key_type,
                                           /*forget_committed=*/false));
        if (pending.in_progress > 0) {
          return absl::UnavailableError(StrCat(
              pending.in_progress, " dual-writes to ", move.source,
              " are still in progress behind the fence"));
        }
        if (!pending.rolled_back.empty()) {
          ASSIGN_OR_RETURN(std::vector<TableShape> shapes,
                           ShapesOf(sides, *source, *destination));
          RETURN_IF_ERROR(
              RepairPendingCopies(*source, *destination, shapes, pending));
        }
        return AdvanceSequences(sequences, *source, *destination);
      }();
    }
    if (!last.ok()) {
      Log(StrCat("move ", move.id, ": cutover attempt ", attempt + 1,
                 " could not fence ", move.source, " and ", move.destination,
                 ": ", last.message()));
      absl::SleepFor(absl::Milliseconds(100) * (attempt + 1));
      continue;
    }
    Failpoint("move-cutover-after-fence");
    LiveState next = sides.live.state;
    next.epoch = epoch;
    next.distributions[move.distribution] = plan.after;
    LiveState::Move* m = FindMove(next, move.id);
    if (m == nullptr) {
      return absl::InternalError(
          StrCat("move ", move.id, " is not in the live map at its cutover"));
    }
    m->phase = MovePhase::kCutOver;
    last = catalog_.Publish(next, StrCat("move ", move.id, ": cutover"));
    if (last.ok()) {
      cut_over = true;
      break;
    }
    if (last.code() != absl::StatusCode::kAborted) return last;
    // Another process published meanwhile (a failover): fence again above
    // its epoch.
  }
  if (!cut_over) {
    return absl::UnavailableError(StrCat(
        "move ", move.id, ": the cutover did not complete after ",
        options_.cutover_attempts, " attempts (last: ", last.message(),
        "); writes to ", move.source,
        " resume once the map catches up; `shardctl moves resume ", move.id,
        "` tries again"));
  }
  RETURN_IF_ERROR(journal_.MarkPointOfNoReturn(move.id));
  // The destination owns the slice: nothing is dual-written any more, so
  // writes the router did not route may go to either side again. (If this
  // fails, the cleanup's end removes the guards.)
  for (MoveSession* session : {source.get(), destination.get()}) {
    absl::Status released =
        session->Run(RemoveWriteGuardsSql(move.id), "removing the write guard")
            .status();
    if (!released.ok()) {
      Log(StrCat("move ", move.id, ": ", released.message(),
                 " (removed again at the end of the cleanup)"));
    }
  }
  Failpoint("move-after-cutover");
  return Phase(move, JournalPhase::kCleanup);
}

absl::Status Mover::CheckBothStillHashing(const MoveRecord& move,
                                          const Sides& sides) {
  if (!move.server_hash) return absl::OkStatus();
  for (const ShardEndpoint* shard : {&sides.source, &sides.destination}) {
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session,
                     OpenSession(*shard));
    RETURN_IF_ERROR(CheckStillHashing(move, sides.key_type, *session));
  }
  return absl::OkStatus();
}

absl::Status Mover::DeleteSliceRows(const MoveRecord& move,
                                    const Sides& sides,
                                    const ShardEndpoint& shard,
                                    uint64_t epoch) {
  return MoveListsKeys(sides.strategy, move.server_hash)
             ? DeleteListedRows(move, sides, shard, epoch)
             : DeleteRowsInCondition(move, sides, shard, epoch);
}

absl::Status Mover::DeleteRowsInCondition(const MoveRecord& move,
                                          const Sides& sides,
                                          const ShardEndpoint& shard,
                                          uint64_t epoch) {
  MoveSlice slice;
  slice.move_id = move.id;
  slice.strategy = sides.strategy;
  slice.key_type = sides.key_type;
  slice.region = move.region;
  slice.server_hash = move.server_hash;
  if (sides.strategy == Strategy::kHash) {
    ASSIGN_OR_RETURN(std::optional<uint64_t> lo, ParseHashBound(move.from));
    ASSIGN_OR_RETURN(slice.hash_hi, ParseHashBound(move.to));
    slice.hash_lo = lo.value_or(0);
  } else {
    ASSIGN_OR_RETURN(slice.from, ParseKeyBound(sides.key_type, move.from));
    ASSIGN_OR_RETURN(slice.to, ParseKeyBound(sides.key_type, move.to));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session, OpenSession(shard));
  RETURN_IF_ERROR(CheckStillHashing(move, sides.key_type, *session));
  RETURN_IF_ERROR(
      session->Run(StrCat("SET shardkit.epoch = ", epoch)).status());
  int64_t deleted = 0;
  for (const TableToMove& table : sides.tables) {
    ASSIGN_OR_RETURN(TableShape shape,
                     DescribeTableForMove(*session, *session, table.name,
                                          table.key_column));
    const std::string condition = SliceCondition(shape, slice);
    const std::string pk = shape.PrimaryKeyList();
    std::vector<std::string> as_text, descending;
    for (size_t i : shape.primary_key) {
      as_text.push_back(StrCat(shape.columns[i].quoted, "::text"));
      descending.push_back(StrCat(shape.columns[i].quoted, " DESC"));
    }
    // Each batch after the last one's primary key, so that no batch walks
    // the dead rows of the ones before.
    std::optional<std::vector<std::string>> bound;
    while (true) {
      const std::string sql = StrCat(
          "WITH batch AS (SELECT ", pk, " FROM ", shape.quoted, " WHERE ",
          condition, bound ? StrCat(" AND ", shape.After(*session, *bound)) : "",
          " ORDER BY ", pk, " LIMIT ", kCleanupBatch,
          "), gone AS (DELETE FROM ", shape.quoted, " WHERE (", pk,
          ") IN (SELECT ", pk, " FROM batch) RETURNING 1) SELECT (SELECT "
          "count(*) FROM gone), ",
          absl::StrJoin(as_text, ", "), " FROM batch ORDER BY ",
          absl::StrJoin(descending, ", "), " LIMIT 1");
      ASSIGN_OR_RETURN(
          std::vector<MoveSession::Row> last,
          session->Query(sql, {},
                         StrCat("deleting moved rows of ", table.name, " on ",
                                shard.name)));
      if (last.empty()) break;  // no row left after the bound
      deleted += std::stoll(last[0][0].value_or("0"));
      bound.emplace();
      for (size_t i = 1; i < last[0].size(); ++i) {
        bound->push_back(last[0][i].value_or(""));
      }
      if (options_.progress) {
        options_.progress({move.id, "cleanup", shard.name, deleted, 0, 0});
      }
      Failpoint("move-cleanup-mid");
    }
  }
  return journal_.Event(move.id, StrCat("deleted ", deleted, " rows of the "
                                        "slice on ", shard.name));
}

absl::Status Mover::DeleteListedRows(const MoveRecord& move,
                                     const Sides& sides,
                                     const ShardEndpoint& shard,
                                     uint64_t epoch) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session, OpenSession(shard));
  const std::string keys = MoveKeysTable(move.id);
  ASSIGN_OR_RETURN(std::vector<MoveSession::Row> exists,
                   session->Query("SELECT to_regclass($1) IS NOT NULL",
                                  {keys}, "looking for the keys table"));
  if (exists.empty() || exists[0][0] != "t") return absl::OkStatus();
  RETURN_IF_ERROR(session
                      ->Run(StrCat("SET shardkit.epoch = ", epoch,
                                   "; CREATE TEMP TABLE IF NOT EXISTS "
                                   "shardkit_cleanup_batch (key ",
                                   KeySqlType(sides.key_type),
                                   ") ON COMMIT DELETE ROWS"))
                      .status());
  int64_t deleted = 0;
  while (true) {
    std::string sql = StrCat(
        "BEGIN; INSERT INTO pg_temp.shardkit_cleanup_batch SELECT key FROM ",
        keys, " ORDER BY key LIMIT ", kCleanupBatch, " FOR UPDATE; ");
    for (const TableToMove& t : sides.tables) {
      absl::StrAppend(&sql, "DELETE FROM ", QuoteQualifiedName(t.name),
                      " WHERE ", QuoteIdentifier(t.key_column),
                      " IN (SELECT key FROM pg_temp.shardkit_cleanup_batch); ");
    }
    absl::StrAppend(&sql, "DELETE FROM ", keys,
                    " WHERE key IN (SELECT key FROM "
                    "pg_temp.shardkit_cleanup_batch); COMMIT");
    absl::StatusOr<std::vector<int64_t>> counts =
        session->Run(sql, StrCat("deleting moved rows on ", shard.name));
    if (!counts.ok()) {
      session->RollbackQuietly();
      return counts.status();
    }
    // [BEGIN, INSERT batch, DELETE per table..., DELETE keys, COMMIT]
    const int64_t batch = (*counts)[1];
    for (size_t i = 2; i + 2 < counts->size(); ++i) deleted += (*counts)[i];
    if (options_.progress) {
      options_.progress({move.id, "cleanup", shard.name, deleted, 0, 0});
    }
    if (batch == 0) break;
    Failpoint("move-cleanup-mid");
  }
  return journal_.Event(move.id, StrCat("deleted ", deleted, " rows of the "
                                        "slice on ", shard.name));
}

absl::Status Mover::DropKeysTables(const MoveRecord& move, const Sides& sides) {
  for (const ShardEndpoint* shard : {&sides.source, &sides.destination}) {
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session, OpenSession(*shard));
    RETURN_IF_ERROR(
        session
            ->Run(StrCat("DROP TABLE IF EXISTS ", MoveKeysTable(move.id), ", ",
                         MovePendingTable(move.id), "; ",
                         RemoveWriteGuardsSql(move.id)),
                  "dropping the move's keys table and write "
                  "guards")
            .status());
  }
  return absl::OkStatus();
}

absl::Status Mover::Cleanup(const MoveRecord& move) {
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  if (FindMove(sides.live.state, move.id) != nullptr) {
    // A process that has not yet read the cutover's map still reads the
    // slice on the source (writes it cannot: the source's fence refuses
    // them). Routers hear of a new map at once (NOTIFY) or within their
    // 1 s poll: give them that before the source's rows go.
    absl::SleepFor(options_.map_grace);
    RETURN_IF_ERROR(DeleteSliceRows(move, sides, sides.source,
                                    sides.live.state.epoch));
    Failpoint("move-cleanup-before-publish");
    RETURN_IF_ERROR(
        PublishWithoutMove(move.id, StrCat("move ", move.id, ": done"))
            .status());
    // Routers still on the previous map hide keys through these tables.
    absl::SleepFor(options_.map_grace);
  }
  RETURN_IF_ERROR(DropKeysTables(move, sides));
  RETURN_IF_ERROR(Phase(move, JournalPhase::kDone));
  return absl::OkStatus();
}

absl::Status Mover::Abort(uint64_t id) {
  ASSIGN_OR_RETURN(MoveRecord move, journal_.Get(id));
  if (move.phase == JournalPhase::kAborted) return absl::OkStatus();
  if (move.past_point_of_no_return || move.phase == JournalPhase::kDone) {
    return absl::FailedPreconditionError(StrCat(
        "move ", id, " is past its point of no return (the destination "
        "owns the slice since the cutover); finish it with `shardctl "
        "moves resume ", id, "`"));
  }
  RETURN_IF_ERROR(TakeLease(id, "stop it first"));
  ASSIGN_OR_RETURN(Sides sides, SidesOf(move));
  LiveState::Move* in_map = FindMove(sides.live.state, move.id);
  if (in_map != nullptr && in_map->phase == MovePhase::kCutOver) {
    // Published but not journaled: the cutover happened. Checked before
    // the journal says "aborting", which resume would refuse.
    return absl::FailedPreconditionError(StrCat(
        "move ", id, " has cut over; finish it with `shardctl moves "
        "resume ", id, "`"));
  }
  RETURN_IF_ERROR(Phase(move, JournalPhase::kAborting));
  uint64_t epoch = sides.live.state.epoch;
  if (in_map != nullptr) {
    ASSIGN_OR_RETURN(epoch, PublishWithoutMove(
                                move.id, StrCat("move ", move.id, ": abort")));
  }
  // A router still on the dual-write map must not write the slice to the
  // destination once its copies are gone.
  if (move.phase != JournalPhase::kPlanned) {
    RETURN_IF_ERROR(PatientFence(sides, sides.destination, epoch));
    RETURN_IF_ERROR(DeleteSliceRows(move, sides, sides.destination, epoch));
  }
  // As in the cleanup: routers still on the dual-write map hide the
  // destination's keys through its keys table.
  if (in_map != nullptr) absl::SleepFor(options_.map_grace);
  RETURN_IF_ERROR(DropKeysTables(move, sides));
  RETURN_IF_ERROR(Phase(move, JournalPhase::kAborted));
  catalog_.ReleaseLease(StrCat("move/", id), identity_).IgnoreError();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Mover::Split(std::string_view distribution,
                                      std::string_view at) {
  return PublishEdit(
      [&](LiveState& state) -> absl::Status {
        ASSIGN_OR_RETURN(ShardMap map, ApplyLiveState(config_.map, state));
        ASSIGN_OR_RETURN(LiveState::Ownership own,
                         PlanSplit(map, distribution, at));
        state.distributions[std::string(distribution)] = std::move(own);
        return absl::OkStatus();
      },
      StrCat("split ", distribution, " at ", at));
}

}  // namespace shardkit::internal
