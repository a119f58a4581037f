#include "pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace l2fast::cpu {
namespace {

// One run_tasks call. Pool threads hold it by shared_ptr, so one that wakes after the call returned
// still finds valid counters; it never reaches `task` then, because the tasks have run out.
struct Job {
  Job(int64_t count, int helpers, const std::function<void(int64_t)>& task)
      : count(count), helpers(helpers), task(task) {}

  const int64_t count;
  const int helpers;                           // pool threads 0 .. helpers-1 take part
  const std::function<void(int64_t)>& task;    // the caller's: alive until the call returns
  std::atomic<int64_t> next{0};                // the next task to hand out
  std::atomic<int> holding{0};                 // threads between taking a task and finishing it
  std::mutex mutex;                            // guards error and the wait for holding == 0
  std::condition_variable finished;
  std::exception_ptr error;

  // Takes tasks until none are left. `holding` goes up before a task is taken (sequentially
  // consistent, as is `next`): a caller that saw the tasks run out and then holding == 0 knows no
  // thread is still inside one.
  void take_tasks() {
    for (;;) {
      holding.fetch_add(1);
      const int64_t i = next.fetch_add(1);
      if (i < count) {
        try {
          task(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mutex);
          if (!error) error = std::current_exception();
        }
      }
      if (holding.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mutex);  // so a caller between its check and its wait is woken
        finished.notify_all();
      }
      if (i >= count) return;
    }
  }

  void wait_for_holders() {
    std::unique_lock<std::mutex> lock(mutex);
    finished.wait(lock, [&] { return holding.load() == 0; });
  }
};

thread_local bool inside_task = false;

class Pool {
 public:
  // The caller's turn at the pool, or false while another call has it.
  bool try_acquire() { return calling_.try_lock(); }
  void release() { calling_.unlock(); }

  void publish(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (static_cast<int>(started_) < job->helpers) {
      std::thread(&Pool::serve, this, started_++).detach();  // detached: never joined, even at exit
    }
    job_ = job;
    ++generation_;
    wake_.notify_all();
  }

  void retire() {
    std::lock_guard<std::mutex> lock(mutex_);
    job_.reset();
  }

 private:
  void serve(int index) {
    inside_task = true;
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      if (job && index < job->helpers) job->take_tasks();
    }
  }

  std::mutex calling_;
  std::mutex mutex_;  // guards everything below
  std::condition_variable wake_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  int started_ = 0;
};

// Never destroyed: detached threads may still wait on it while the process exits. A forked child has
// none of the parent's threads, and its copy of calling_ may be locked, so it starts a new pool.
Pool* the_pool = nullptr;
std::once_flag pool_created;

Pool& pool() {
  std::call_once(pool_created, [] {
    the_pool = new Pool;
    pthread_atfork(nullptr, nullptr, [] { the_pool = new Pool; });
  });
  return *the_pool;
}

}  // namespace

void run_tasks(int64_t count, int helpers, const std::function<void(int64_t)>& task) {
  helpers = static_cast<int>(std::min<int64_t>(helpers, count - 1));
  Pool& workers = pool();
  // inside_task first: try_lock by the thread that holds the lock would be undefined.
  if (helpers <= 0 || inside_task || !workers.try_acquire()) {
    for (int64_t i = 0; i < count; ++i) task(i);
    return;
  }
  struct Turn {  // gives the pool back however the call ends
    Pool& pool;
    ~Turn() {
      inside_task = false;
      pool.retire();
      pool.release();
    }
  } turn{workers};
  inside_task = true;
  auto job = std::make_shared<Job>(count, helpers, task);
  workers.publish(job);
  job->take_tasks();
  job->wait_for_holders();
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace l2fast::cpu
