#include "schedule.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "backoff.h"

namespace l2fast::cpu {
namespace {

using Clock = Backoff::Clock;

Backoff backoff;

// at::parallel_for, one task per thread. Returns whether the calling thread (thread 0) waited long
// for the others after it ran out of grabs.
bool waited_long(int64_t count, int team, const std::function<void(int64_t)>& task) {
  std::atomic<int64_t> next{0};
  const auto start = Clock::now();
  Clock::time_point caller_done = start;
  at::parallel_for(0, team, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) task(i);
    if (at::get_thread_num() == 0) caller_done = Clock::now();
  });
  const auto end = Clock::now();
  const auto waited = end - caller_done;
  return waited > std::chrono::microseconds(200) && waited * 4 > end - start;
}

}  // namespace

void run_grabs(int64_t count, int threads, const std::function<void(int64_t)>& task) {
  const int chosen = threads > 1 ? backoff.team(threads, Clock::now()) : 1;
  const int team = static_cast<int>(std::min<int64_t>(chosen, count));
  if (team <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < count; ++i) task(i);
    return;
  }
  const bool late = waited_long(count, team, task);
  backoff.record(chosen, threads, late, Clock::now());
}

}  // namespace l2fast::cpu
