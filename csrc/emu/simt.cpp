#include "simt.h"

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace l2fast::emu {
namespace {

constexpr int kWarps = kBlockThreads / kWarpSize;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "SIMT harness: block %u, thread %u: %s\n", blockIdx.x, threadIdx.x, what);
  std::fflush(stderr);
  std::abort();
}

// The values a warp's lanes offer at a shuffle, and which shuffle each lane is at. Shuffles alternate
// between two slots, so one barrier per shuffle suffices: a lane can write slot s again (two
// shuffles later) only after every lane has passed the shuffle in between, i.e. has read slot s.
struct WarpExchange {
  double value[2][kWarpSize];
  uint64_t call[2][kWarpSize];
};

thread_local uint64_t shuffles_done = 0;  // this thread's shuffles in the current block

// kBlockThreads threads that run one block at a time. A block starts when every pool thread and
// the launching thread meet at `start_`, and ends when they meet at `done_`. Barriers inside the
// block are made fresh per block: a thread that returns from the kernel drops out of them, as an
// exited GPU thread stops counting for bar.sync.
//
// After each __syncthreads one warp of the block (warp blockIdx.x % 8) lags: it waits until every
// other thread is at the next __syncthreads or has returned, so the other warps run as far ahead as
// the program lets them. A GPU promises no order between warps after a barrier; a fair schedule of
// host threads would almost always give one order and hide a missing barrier.
class Pool {
 public:
  Pool() : start_(kBlockThreads + 1), done_(kBlockThreads + 1) {
    for (unsigned i = 0; i < kBlockThreads; ++i) threads_.emplace_back([this, i] { serve(i); });
  }
  ~Pool() {
    stop_ = true;
    start_.arrive_and_wait();
    for (std::thread& t : threads_) t.join();
  }

  void run(int64_t blocks, const std::function<void()>& kernel) {
    if (blocks < 1 || blocks > 0x7fffffff) {
      std::fprintf(stderr, "SIMT harness: a launch of %lld blocks (CUDA: invalid configuration argument)\n",
                   static_cast<long long>(blocks));
      std::abort();
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    kernel_ = &kernel;
    grid_ = static_cast<unsigned>(blocks);
    for (int64_t b = 0; b < blocks; ++b) {
      block_ = static_cast<unsigned>(b);
      block_sync_.reset();
      block_sync_.emplace(kBlockThreads, NewPhase{&at_sync_});
      for (int w = 0; w < kWarps; ++w) {
        warp_sync_[w].reset();
        warp_sync_[w].emplace(kWarpSize);
        for (int lane = 0; lane < kWarpSize; ++lane) exchange_[w].call[0][lane] = exchange_[w].call[1][lane] = 0;
      }
      at_sync_ = 0;
      returned_ = 0;
      start_.arrive_and_wait();
      done_.arrive_and_wait();
    }
  }

  void sync_threads() {
    ++at_sync_;
    block_sync_->arrive_and_wait();
    if (threadIdx.x / kWarpSize == blockIdx.x % kWarps) {
      while (at_sync_.load() + returned_.load() < kBlockThreads - kWarpSize)
        std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  double shfl_down(unsigned mask, double v, unsigned delta) {
    if (mask != 0xffffffffu) die("__shfl_down_sync with a partial mask (the harness supports full warps only)");
    const unsigned lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
    const uint64_t call = ++shuffles_done;
    double* value = exchange_[warp].value[call % 2];
    uint64_t* at_call = exchange_[warp].call[call % 2];
    value[lane] = v;
    at_call[lane] = call;
    warp_sync_[warp]->arrive_and_wait();
    for (int other = 0; other < kWarpSize; ++other)
      if (at_call[other] != call) die("__shfl_down_sync while another lane of the warp has returned or is elsewhere");
    return lane + delta < kWarpSize ? value[lane + delta] : v;
  }

 private:
  void serve(unsigned i) {
    threadIdx = {i, 0, 0};
    blockDim = {kBlockThreads, 1, 1};
    for (;;) {
      start_.arrive_and_wait();
      if (stop_) return;
      blockIdx = {block_, 0, 0};
      gridDim = {grid_, 1, 1};
      shuffles_done = 0;
      (*kernel_)();
      ++returned_;
      block_sync_->arrive_and_drop();
      warp_sync_[i / kWarpSize]->arrive_and_drop();
      done_.arrive_and_wait();
    }
  }

  std::mutex mutex_;
  std::barrier<> start_, done_;
  // Counts the threads at the next __syncthreads: reset when a phase completes, before anyone leaves.
  struct NewPhase {
    std::atomic<int>* at_sync;
    void operator()() noexcept { at_sync->store(0); }
  };
  std::optional<std::barrier<NewPhase>> block_sync_;
  std::optional<std::barrier<>> warp_sync_[kWarps];
  WarpExchange exchange_[kWarps];
  const std::function<void()>* kernel_ = nullptr;
  unsigned block_ = 0, grid_ = 0;
  std::atomic<int> at_sync_{0};   // threads of the running block waiting at __syncthreads
  std::atomic<int> returned_{0};  // threads of the running block that have returned
  bool stop_ = false;
  std::vector<std::thread> threads_;  // last: started once everything above is constructed
};

Pool& pool() {
  static Pool instance;
  return instance;
}

}  // namespace

void sync_threads() { pool().sync_threads(); }

double shfl_down_sync(unsigned mask, double v, unsigned delta) { return pool().shfl_down(mask, v, delta); }

void check_aligned(const void* p, size_t bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
    char message[200];
    std::snprintf(message, sizeof message, "misaligned packed access %s = %p (needs %zu-byte alignment)", what, p, bytes);
    die(message);
  }
}

void run_grid(int64_t blocks, const std::function<void()>& kernel) { pool().run(blocks, kernel); }

}  // namespace l2fast::emu
