#include "schedule.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>

namespace l2fast::cpu {
namespace {

using Clock = std::chrono::steady_clock;

// Threads left out of the team, and until when, since a call last waited too long.
std::atomic<int> threads_left_out{0};
std::atomic<Clock::rep> reduced_until{0};

// How many threads this call leaves out.
int left_out_now() {
  return Clock::now().time_since_epoch().count() < reduced_until.load() ? threads_left_out.load() : 0;
}

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
  const int left_out = threads > 1 ? left_out_now() : 0;
  const int team = static_cast<int>(std::min<int64_t>(threads - left_out, count));
  if (team <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < count; ++i) task(i);
    return;
  }
  if (waited_long(count, team, task)) {
    threads_left_out.store(std::min(left_out + 1, threads - 1));
    reduced_until.store((Clock::now() + kReducedFor).time_since_epoch().count());
  }
}

}  // namespace l2fast::cpu
