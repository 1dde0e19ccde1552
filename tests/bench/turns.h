// Helpers shared by the benchmarks that start real servers (router_bench,
// txn_bench): skipping a benchmark with its reason, and two ways of doing
// one thing measured in turns.

#ifndef SHARDKIT_TESTS_BENCH_TURNS_H_
#define SHARDKIT_TESTS_BENCH_TURNS_H_

#include <benchmark/benchmark.h>

#include <chrono>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace shardkit::bench {

// Every thread must go through the loop even when it has nothing to
// measure: its start and end are barriers across the benchmark's threads.
inline void Skip(benchmark::State& state, std::string_view why) {
  state.SkipWithError(std::string(why).c_str());
  for (auto _ : state) {
  }
}

using Clock = std::chrono::steady_clock;

inline double Microseconds(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

// Two ways of doing one thing take turns, call by call, on each thread, the
// order swapping every time, so that whatever else the machine runs falls
// on both alike. Counters `a_name` and `b_name`: each one's wall time per
// call, in microseconds. `a` and `b` return absl::Status; a failure ends
// the benchmark with it.
template <typename A, typename B>
void TakeTurns(benchmark::State& state, A a, B b, const char* a_name,
               const char* b_name) {
  Clock::duration a_time{};
  Clock::duration b_time{};
  bool a_first = true;
  for (auto _ : state) {
    const Clock::time_point t0 = Clock::now();
    absl::Status status = a_first ? a() : b();
    const Clock::time_point t1 = Clock::now();
    if (status.ok()) status = a_first ? b() : a();
    const Clock::time_point t2 = Clock::now();
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
    (a_first ? a_time : b_time) += t1 - t0;
    (a_first ? b_time : a_time) += t2 - t1;
    a_first = !a_first;
  }
  const double calls = static_cast<double>(state.iterations());
  if (calls == 0) return;
  // Each thread's mean; averaged over the threads.
  state.counters[a_name] = benchmark::Counter(Microseconds(a_time) / calls,
                                              benchmark::Counter::kAvgThreads);
  state.counters[b_name] = benchmark::Counter(Microseconds(b_time) / calls,
                                              benchmark::Counter::kAvgThreads);
}

}  // namespace shardkit::bench

#endif  // SHARDKIT_TESTS_BENCH_TURNS_H_
