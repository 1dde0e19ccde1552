// Internal: the thread on which SQL is parsed, analysed and deparsed.
//
// libpg_query recurses once per level of an expression and has no depth
// guard: "SELECT 1+1+...+1" with 40,000 terms overflows an 8 MiB stack.
// Statements are capped (sql_parser.h), and every parse runs here, on a
// long-lived thread whose stack is large enough for the deepest statement
// accepted whatever the caller's own stack (only the pages a parse touches
// are committed). Being long-lived also keeps libpg_query's per-thread
// state to one thread.
//
// Thread-safety: Run may be called from any number of threads; calls run
// one at a time, in arrival order.

#ifndef SHARDKIT_ROUTER_PARSER_THREAD_H_
#define SHARDKIT_ROUTER_PARSER_THREAD_H_

#include <pthread.h>

#include <deque>

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace shardkit::internal {

class ParserThread {
 public:
  // The process's parser thread, started on first use and never stopped.
  static ParserThread& Default();

  // Stack of the parser thread. Operator chains are capped (sql_parser.h);
  // what nests deepest then is parentheses, which PostgreSQL's grammar
  // stops at about 5,000 levels: a few MiB, with ample room here.
  static constexpr size_t kStackBytes = size_t{64} << 20;

  // Runs `fn` on the parser thread and returns when it has returned.
  // REQUIRES: not called from the parser thread itself.
  void Run(absl::FunctionRef<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether the calling thread is the parser thread.
  bool IsCurrent() const;

 private:
  ParserThread();
  static void* Main(void* self);
  void Loop();

  struct Job {
    absl::FunctionRef<void()> fn;
    bool done = false;
  };

  pthread_t thread_;
  absl::Mutex mu_;
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_PARSER_THREAD_H_
