// Internal: named failpoints, for tests that crash the process at a chosen
// step of a protocol (two-phase commit) and check what survives.
//
// A failpoint is off unless the environment variable SHARDKIT_FAILPOINTS,
// read once when first needed, names it: a comma-separated list such as
// "2pc-after-decision". A failpoint that is on crashes the process when
// reached: it writes "shardkit: failpoint <name>: crashing" to stderr and
// ends the process at once with _exit(kFailpointExitCode): no destructor,
// no flush, no ROLLBACK sent; the kernel closes the sockets, as it would
// for a process killed with SIGKILL.
//
// The failpoints (README, "Transactions"):
//   2pc-before-prepare    a commit of several writers, nothing prepared yet
//   2pc-between-prepares  the first writer prepared, the others not
//   2pc-after-prepare     every writer prepared, no decision recorded
//   2pc-after-decision    the commit decision recorded, nothing committed
//   2pc-between-commits   the first writer committed, the others prepared
// and those of an online move (rebalancer/backfill.h, rebalancer/mover.h):
//   move-after-plan, move-after-dual-write, move-backfill-mid,
//   move-backfill-after-chunk, move-after-backfill, move-after-verify,
//   move-cutover-after-fence, move-after-cutover, move-cleanup-mid,
//   move-cleanup-before-publish
//
// Thread-safety: thread-safe.

#ifndef SHARDKIT_ROUTER_FAILPOINT_H_
#define SHARDKIT_ROUTER_FAILPOINT_H_

#include <string_view>

namespace shardkit::internal {

inline constexpr int kFailpointExitCode = 86;

// Whether failpoint `name` is on.
bool FailpointOn(std::string_view name);

// Crashes the process (see above) if failpoint `name` is on.
void Failpoint(std::string_view name);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_FAILPOINT_H_
