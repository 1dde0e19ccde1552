#include "router/parser_thread.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace shardkit::internal {

ParserThread& ParserThread::Default() {
  // Never destroyed: the thread outlives static destruction safely.
  static ParserThread* const thread = new ParserThread();
  return *thread;
}

ParserThread::ParserThread() {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, kStackBytes);
  const int err = pthread_create(&thread_, &attr, &ParserThread::Main, this);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    // Without it no statement can be routed: an unrecoverable state.
    std::fprintf(stderr, "shardkit: cannot start the SQL parser thread: %s\n",
                 std::strerror(err));
    std::abort();
  }
  pthread_detach(thread_);
}

void* ParserThread::Main(void* self) {
  static_cast<ParserThread*>(self)->Loop();
  return nullptr;
}

bool ParserThread::IsCurrent() const {
  return pthread_equal(pthread_self(), thread_) != 0;
}

void ParserThread::Loop() {
  for (;;) {
    Job* job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](std::deque<Job*>* q) { return !q->empty(); }, &queue_));
      job = queue_.front();
      queue_.pop_front();
    }
    job->fn();
    absl::MutexLock lock(&mu_);
    job->done = true;
  }
}

void ParserThread::Run(absl::FunctionRef<void()> fn) {
  Job job{fn};
  absl::MutexLock lock(&mu_);
  queue_.push_back(&job);
  mu_.Await(absl::Condition(&job.done));
}

}  // namespace shardkit::internal
