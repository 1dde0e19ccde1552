#include "router/failover.h"

#include <gtest/gtest.h>

#include <string>

namespace shardkit::internal {
namespace {

TEST(NeverSentTest, OnlyFailuresBeforeTheStatementWasSent) {
  struct Case {
    absl::Status status;
    bool never_sent;
  };
  const Case cases[] = {
      {absl::UnavailableError("shard s1 (host=127.0.0.1 port=1) is "
                              "unreachable: connection refused; start the "
                              "server, or fix the shard's dsn"),
       true},
      {absl::UnavailableError("shard s1: the connection was lost before the "
                              "statement was sent: server closed"),
       true},
      {absl::UnavailableError("shard s1: connection lost while waiting for "
                              "the result: EOF; the statement may or may not "
                              "have been applied on this shard"),
       false},
      {absl::DeadlineExceededError("shard s1 (x) is unreachable: no "
                                   "connection within the connect timeout"),
       false},
      {absl::OkStatus(), false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(NeverSent(c.status), c.never_sent) << c.status;
  }
}

TEST(RepointConninfoTest, KeepsCredentialsAndTakesTheNewAddress) {
  EXPECT_EQ(RepointConninfo("user=postgres passfile='/root/.pgpass' "
                            "host=127.0.0.1 port=6001 sslmode=prefer",
                            "host=10.0.0.2 port=6003 dbname=app user=app"),
            "user='postgres' passfile='/root/.pgpass' sslmode='prefer' "
            "host='10.0.0.2' port='6003'");
  EXPECT_EQ(RepointConninfo("", "host=10.0.0.2 port=6003"),
            "host=10.0.0.2 port=6003");
  EXPECT_EQ(RepointConninfo("host='a b", "host=h port=1"), "host=h port=1");
  EXPECT_EQ(RepointConninfo("application_name='it\\'s' host=x",
                            "hostaddr=10.0.0.9 port=7"),
            "application_name='it\\'s' hostaddr='10.0.0.9' port='7'");
}

}  // namespace
}  // namespace shardkit::internal
