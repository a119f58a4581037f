// The team-size policy of schedule.h on its own (no torch), so that a test can drive it with any
// sequence of late and on-time calls and any clock.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace l2fast::cpu {

constexpr int64_t kFirstInterval = 4;
constexpr int64_t kLongestInterval = 256;
constexpr std::chrono::seconds kLongestWait{10};

// Shared by every calling thread; the mutex is held only to read or update the policy, never during
// a call's work.
class Backoff {
 public:
  using Clock = std::chrono::steady_clock;

  // Threads for the next call of a `threads`-thread process: all of them, or fewer between probes.
  int team(int threads, Clock::time_point now) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (left_out_ == 0) return threads;
    if (calls_left_ > 0 && now < probe_by_) {
      --calls_left_;
      return std::max(threads - left_out_, 1);
    }
    return threads;  // a probe
  }

  // What a call given `team` of `threads` threads found: late if its calling thread waited long.
  void record(int team, int threads, bool late, Clock::time_point now) {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool probe = team == threads;
    if (!late) {
      if (probe) left_out_ = 0, interval_ = kFirstInterval;
      return;
    }
    if (probe && left_out_ > 0) interval_ = std::min(interval_ * 2, kLongestInterval);
    left_out_ = std::min(threads - team + 1, threads - 1);
    calls_left_ = interval_;
    probe_by_ = now + kLongestWait;
  }

 private:
  std::mutex mutex_;
  int left_out_ = 0;           // threads the calls until the next probe leave out
  int64_t calls_left_ = 0;     // calls before the next probe
  int64_t interval_ = kFirstInterval;  // calls between a late probe and the next
  Clock::time_point probe_by_;
};

}  // namespace l2fast::cpu
