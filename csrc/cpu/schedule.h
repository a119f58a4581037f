// How many threads share a CPU call's grabs, and how they are started: torch's fork-join threads
// (at::parallel_for), one team per call, each thread taking grabs from a shared counter.
//
// torch's OpenMP threads stay hot (spinning) for a while after every torch op, so a call made during
// training finds them ready. But a fork-join region waits at its end for every thread of its team, and
// with another process busy on one of the cores, the thread sharing that core may run only a
// scheduler time slice later, when the others have long finished. So each call measures how long its
// calling thread waited for the team after running out of grabs. A call that waited for more than a
// quarter of its time (and over 0.2 ms) is late: the calls after it use one thread fewer (down to the
// calling thread alone), which the scheduler can then place on the free cores. After kFirstInterval
// calls the full team is tried again (a probe); each late probe doubles the interval, up to
// kLongestInterval calls, and kLongestWait bounds it in time when calls are rare. Intervals count
// calls, not time: a penalty is computed once per training step, and an interval in time would probe
// on most steps. The schedule never changes the bits: every chunk's partial lands at its own index and
// is folded in a fixed order. The policy itself is backoff.h.
#pragma once
#include <cstdint>
#include <functional>

namespace l2fast::cpu {

// Runs task(i) once for every i in [0, count), on up to `threads` threads (torch's intra-op count).
void run_grabs(int64_t count, int threads, const std::function<void(int64_t)>& task);

}  // namespace l2fast::cpu
