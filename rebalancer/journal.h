// Internal: the move journal, in the [catalog] database.
//
//   shardkit.moves          one row per move: what moves where, its phase,
//                           the epochs it published, its error if stopped
//   shardkit.move_progress  per move and table: the backfill's last
//                           committed chunk bound and counts
//   shardkit.move_events    what happened, in order (shardctl moves status)
//
// Each phase is recorded before it starts (design.md, "Online moves"), so
// a mover that dies leaves the phase it was in, and `resume` redoes that
// phase from the start: every phase checks the actual state of the shards
// and the catalog before it acts, so redoing one is harmless.
//
// Thread-safety: thread-safe (each call its own catalog connection).

#ifndef SHARDKIT_REBALANCER_JOURNAL_H_
#define SHARDKIT_REBALANCER_JOURNAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "router/catalog.h"

namespace shardkit::internal {

// The phases of a move, in order; kDone, kAborted are final.
enum class JournalPhase {
  kPlanned,
  kDualWrite,  // publishing the move and fencing the source
  kBackfill,
  kVerify,
  kCutover,    // the point of no return is the cutover's publish
  kCleanup,
  kDone,
  kAborting,
  kAborted,
};

std::string_view JournalPhaseName(JournalPhase phase);
std::optional<JournalPhase> JournalPhaseFromName(std::string_view name);

struct MoveRecord {
  uint64_t id = 0;
  std::string distribution;
  // The slice, as written in the configuration ("" = open side), or a
  // region name.
  std::string from;
  std::string to;
  std::string region;
  std::string source;
  std::string destination;
  JournalPhase phase = JournalPhase::kPlanned;
  // Set once the cutover published the destination as the owner: from
  // then on the move can only go forward.
  bool past_point_of_no_return = false;
  // Why the move stopped (a failed verify, an error), empty otherwise.
  std::string error;
  // A hash slice whose shards compute the key hash themselves (decided
  // when the move is prepared: MovingSlice::server_hash).
  bool server_hash = false;
  std::string created_at;
  std::string updated_at;
};

struct TableProgress {
  std::string table;
  // The primary key of the last row of the last committed chunk, as text
  // values; empty before the first chunk.
  std::vector<std::string> bound;
  int64_t rows_scanned = 0;
  int64_t rows_copied = 0;
  bool done = false;
};

class Journal {
 public:
  explicit Journal(Catalog& catalog) : catalog_(catalog) {}

  absl::Status EnsureSchema();

  // Records a new move in phase kPlanned; returns it with its id.
  [[nodiscard]] absl::StatusOr<MoveRecord> Create(const MoveRecord& move);

  // kNotFound (saying `shardctl moves list` shows the moves) if no such id.
  [[nodiscard]] absl::StatusOr<MoveRecord> Get(uint64_t id);

  // Newest first.
  [[nodiscard]] absl::StatusOr<std::vector<MoveRecord>> List();

  // Moves not done or aborted.
  [[nodiscard]] absl::StatusOr<std::vector<MoveRecord>> Active();

  absl::Status SetPhase(uint64_t id, JournalPhase phase,
                        std::string_view error = "");
  absl::Status MarkPointOfNoReturn(uint64_t id);
  absl::Status SetServerHash(uint64_t id, bool server_hash);

  absl::Status Event(uint64_t id, std::string_view message);
  [[nodiscard]] absl::StatusOr<std::vector<std::string>> Events(uint64_t id);

  [[nodiscard]] absl::StatusOr<std::vector<TableProgress>> Progress(
      uint64_t id);
  absl::Status SaveProgress(uint64_t id, const TableProgress& progress);

 private:
  Catalog& catalog_;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_JOURNAL_H_
