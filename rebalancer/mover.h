// Internal: the online mover: drives one move through its phases
// (design.md, "Online moves"; rebalancer/shard_objects.h for what it
// installs on the shards and what routers do meanwhile).
//
//   planned     the move is checked and journaled; the fence trigger, the
//               keys tables (filled for hash slices only) and the pending
//               tables are installed on source and destination
//   dual-write  the live map gets the move (phase kDualWrite): routers
//               apply writes to the slice on the destination too; then the
//               source's tables are fenced at that epoch, which waits out
//               writes in flight, so once it is committed every write to
//               the slice reaches the destination
//   backfill    the rows that existed before, chunk by chunk (backfill.h),
//               progress journaled with each chunk
//   verify      counts and checksums per chunk (verify.h); a mismatch
//               stops the move with a report
//   cutover     the write pause: the source's tables are fenced at the
//               next epoch (LOCK ... SHARE ROW EXCLUSIVE bounded by
//               lock_timeout: in-flight writes finish, later ones wait),
//               then that epoch is published with the destination as the
//               owner (phase kCutOver: the source's copies hidden); the
//               writes that waited are refused as stale, and the routers
//               refresh and send them to the destination. The publish is
//               the point of no return.
//   cleanup     the slice's rows deleted from the source in batches (by
//               the keys list of a hash slice, by the condition of a range
//               or region slice), then the move leaves the map and the
//               keys tables are dropped
//
// Every phase is journaled before it starts and checks the shards and the
// catalog before it acts, so Run() resumes a move killed anywhere by
// redoing its phase. Abort() rolls back a move that has not reached its
// point of no return: the map drops the move, the destination is fenced
// (no late dual-write), and the destination's copies are deleted.
//
// One mover at a time per move: Run and Abort hold the catalog lease
// "move/<id>".

#ifndef SHARDKIT_REBALANCER_MOVER_H_
#define SHARDKIT_REBALANCER_MOVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "config/live_state.h"
#include "rebalancer/backfill.h"
#include "rebalancer/journal.h"
#include "rebalancer/move_session.h"
#include "rebalancer/move_table.h"
#include "rebalancer/plan.h"
#include "router/catalog.h"
#include "shardkit/config.h"

namespace shardkit::internal {

// Where a move stands, for progress displays.
struct MoveProgress {
  uint64_t move_id = 0;
  std::string phase;
  std::string table;
  int64_t rows_copied = 0;  // this table, this run
  int64_t rows_scanned = 0;
  int64_t bytes = 0;
  // Backfill: about how many rows the backfill of `table` scans in all
  // (the table's rows for a hash slice, the slice's for a range or region
  // one), measured when it starts; 0 when unknown.
  int64_t rows_to_scan = 0;
};

struct MoverOptions {
  // Connect timeout and statement timeout for the catalog and the shards.
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration statement_timeout = absl::Minutes(5);
  int64_t chunk_rows = 20000;
  // Paces each table's backfill and verify at this many source rows per
  // second (0: as fast as the shards go), to leave the application its
  // share of the shards; see BackfillOptions::max_rows_per_second.
  int64_t max_rows_per_second = 0;
  // The longest the cutover waits to fence the source (the write pause's
  // bound); past it the cutover backs off and tries again.
  absl::Duration cutover_lock_timeout = absl::Milliseconds(500);
  int cutover_attempts = 10;
  // How long routers get to pick a new map up before the mover removes
  // what the previous one used: the source's rows after the cutover (a
  // stale router still reads them there), the keys tables after the move
  // left the map; well above the routers' catalog poll interval (1 s).
  absl::Duration map_grace = absl::Seconds(3);
  // A hash slice moves without key lists when both shards have shardkit's
  // hash functions (rebalancer/server_hash.h) and they agree with the
  // library; false: always with lists.
  bool use_server_hash = true;
  // (Every process that routes by the cluster's map must run a shardkit
  // that knows MovingSlice::server_hash, this one or later: an older one
  // would hide such a slice by its empty key lists.)
  // Called with each event line ("move 4: phase backfill") and progress.
  // During the backfill, progress runs while the next chunk's rows are
  // locked on the source: return promptly.
  std::function<void(std::string_view)> log;
  std::function<void(const MoveProgress&)> progress;
};

class Mover {
 public:
  // Fails with kFailedPrecondition when `config` has no [catalog].
  static absl::StatusOr<std::unique_ptr<Mover>> Open(Config config,
                                                     MoverOptions options);

  // Plans `request` against the live map and journals it (phase planned).
  [[nodiscard]] absl::StatusOr<MoveRecord> Start(const MoveRequest& request);

  // Drives move `id` from its journaled phase to done.
  absl::Status Run(uint64_t id);

  // Rolls move `id` back (see above).
  absl::Status Abort(uint64_t id);

  // Splits a slice in the map only (PlanSplit) and publishes it.
  [[nodiscard]] absl::StatusOr<uint64_t> Split(std::string_view distribution,
                                               std::string_view at);

  // The live state and the map it gives.
  struct Live {
    LiveState state;
    ShardMap map;
  };
  [[nodiscard]] absl::StatusOr<Live> Current();

  const MoverOptions& options() const { return options_; }
  Journal& journal() { return journal_; }
  Catalog& catalog() { return catalog_; }

 private:
  Mover(Config config, MoverOptions options);

  void Log(std::string_view line);
  absl::Status Phase(const MoveRecord& move, JournalPhase phase);
  // Publishes `edit` applied to the current state at the next epoch,
  // retrying if another process published first. Returns the epoch.
  absl::StatusOr<uint64_t> PublishEdit(
      const std::function<absl::Status(LiveState&)>& edit,
      std::string_view reason);
  // What a phase works with, from one read of the live map: the map, the
  // move's two shards, and the distribution's tables.
  struct Sides {
    Live live;
    ShardEndpoint source;
    ShardEndpoint destination;
    std::vector<TableToMove> tables;
    KeyType key_type = KeyType::kInt8;
    Strategy strategy = Strategy::kHash;
  };
  absl::StatusOr<Sides> SidesOf(const MoveRecord& move);
  // The move planned again against `live` without itself (it may be in the
  // map already), and the rows it moves.
  absl::StatusOr<PlannedMove> Replan(const MoveRecord& move, const Live& live);
  MoveSlice SliceOf(const Sides& sides, const PlannedMove& plan) const;
  absl::StatusOr<std::unique_ptr<MoveSession>> OpenSession(
      const ShardEndpoint& shard) const;
  // Takes (or renews) the catalog lease "move/<id>"; `doing` completes the
  // refusal when another process holds it.
  absl::Status TakeLease(uint64_t id, std::string_view doing);
  // Publishes the live map without move `id`; returns the epoch.
  absl::StatusOr<uint64_t> PublishWithoutMove(uint64_t id,
                                              std::string_view reason);

  absl::Status Prepare(const MoveRecord& move);
  // For a move with server_hash: OK while both of its shards still hash
  // keys as the library does; kFailedPrecondition saying what to do
  // otherwise (checked before each phase that relies on it).
  absl::Status CheckBothStillHashing(const MoveRecord& move,
                                     const Sides& sides);
  absl::Status StartDualWrite(const MoveRecord& move);
  absl::Status Backfill(const MoveRecord& move);
  absl::Status Verify(const MoveRecord& move);
  absl::Status Cutover(const MoveRecord& move);
  absl::Status Cleanup(const MoveRecord& move);

  // Fences `shard`'s tables of the move's distribution at `epoch`.
  absl::Status Fence(const Sides& sides, const ShardEndpoint& shard,
                     uint64_t epoch, absl::Duration lock_timeout);
  // Fence on an open session of `shard`.
  absl::Status FenceOn(const Sides& sides, MoveSession& session,
                       const ShardEndpoint& shard, uint64_t epoch,
                       absl::Duration lock_timeout);
  // The shapes of the move's tables (DescribeTableForMove).
  absl::StatusOr<std::vector<TableShape>> ShapesOf(const Sides& sides,
                                                   MoveSession& source,
                                                   MoveSession& destination);
  // Puts the source's rows back over the destination's copies whose
  // source transaction rolled back (pending_copies.h), with the source's
  // tables locked against writes meanwhile; nothing to do, no lock.
  absl::Status RepairRolledBackCopies(const MoveRecord& move,
                                      const Sides& sides);
  // The sequences that fill columns of the move's tables (serial and
  // identity columns), as pg_get_serial_sequence names them.
  absl::StatusOr<std::vector<std::string>> SequencesOf(const Sides& sides,
                                                       MoveSession& destination);
  // Sets each of `sequences` on the destination to the source's last
  // value where that is higher, so that the destination, once it owns the
  // slice, hands out no value the source already gave a moved row.
  absl::Status AdvanceSequences(const std::vector<std::string>& sequences,
                                MoveSession& source, MoveSession& destination);
  // Runs `attempt` until it succeeds or statement_timeout has passed,
  // logging each failure ("<what>, attempt N: ...") and backing off
  // (50 ms more each time, at most 500 ms). Returns the last outcome.
  absl::Status Patiently(std::string_view what,
                         absl::FunctionRef<absl::Status()> attempt);
  // "SET lock_timeout = ...; BEGIN; LOCK TABLE <the move's tables> IN
  // SHARE ROW EXCLUSIVE MODE": the transaction that holds writes to them.
  static std::string LockTablesSql(const Sides& sides,
                                   absl::Duration lock_timeout);
  // Fence, each attempt's lock wait bounded by cutover_lock_timeout,
  // retried until statement_timeout has passed.
  absl::Status PatientFence(const Sides& sides, const ShardEndpoint& shard,
                            uint64_t epoch);
  // Deletes on `shard` the move's rows, in batches: DeleteListedRows for a
  // hash slice, DeleteRowsInCondition for a range or region slice.
  absl::Status DeleteSliceRows(const MoveRecord& move, const Sides& sides,
                               const ShardEndpoint& shard, uint64_t epoch);
  // The rows whose keys are listed in the move's keys table there,
  // emptying the list.
  absl::Status DeleteListedRows(const MoveRecord& move, const Sides& sides,
                                const ShardEndpoint& shard, uint64_t epoch);
  // The rows of each table in the slice's condition (SliceConditionSql),
  // in primary-key order.
  absl::Status DeleteRowsInCondition(const MoveRecord& move,
                                     const Sides& sides,
                                     const ShardEndpoint& shard,
                                     uint64_t epoch);
  // Drops the move's keys and pending tables and removes its write guards
  // on both shards (the end of a cleanup or an abort).
  absl::Status DropKeysTables(const MoveRecord& move, const Sides& sides);

  const Config config_;
  const MoverOptions options_;
  Catalog catalog_;
  Journal journal_;
  const std::string identity_;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_MOVER_H_
