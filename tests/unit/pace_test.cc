// The backfill's pace (rebalancer/backfill.h, PaceDelay): how long a paced
// backfill waits after a chunk.

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "rebalancer/backfill.h"

namespace shardkit::internal {
namespace {

TEST(PaceDelayTest, WaitsUntilTheAverageIsAtThePace) {
  // 20,000 rows at 10,000 rows/s are due after 2 s.
  EXPECT_EQ(PaceDelay(20000, 10000, absl::Milliseconds(500)),
            absl::Milliseconds(1500));
  EXPECT_EQ(PaceDelay(20000, 10000, absl::Seconds(2)), absl::ZeroDuration());
  // Behind the pace (the shards were slower): no wait, and no credit kept
  // beyond the average since the start.
  EXPECT_EQ(PaceDelay(20000, 10000, absl::Seconds(5)), absl::ZeroDuration());
  EXPECT_EQ(PaceDelay(60000, 10000, absl::Seconds(5)), absl::Seconds(1));
  EXPECT_EQ(PaceDelay(0, 10000, absl::ZeroDuration()), absl::ZeroDuration());
  EXPECT_EQ(PaceDelay(3, 2, absl::ZeroDuration()), absl::Milliseconds(1500));
}

}  // namespace
}  // namespace shardkit::internal
