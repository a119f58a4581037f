// The CPU backend's own worker threads: a call never waits for a thread that has not started work.
//
// at::parallel_for forks and joins: every thread it starts must run before the call returns, even
// one that finds no work left. With another process busy on one of two cores, that thread may wait a
// whole time slice to be scheduled, and the call waits with it. Here the calling thread takes tasks
// itself from the start, pool threads join in when they get a core, and the call waits only for
// threads that hold a task at the moment the tasks run out.
#pragma once
#include <cstdint>
#include <functional>

namespace l2fast::cpu {

// Runs task(i) once for every i in [0, count), on the calling thread and up to `helpers` pool
// threads, in no fixed order; returns when all have finished, rethrowing the first exception a task
// threw. A call made while another is running (from a second Python thread, say) or from inside a
// task runs its tasks on the calling thread alone. A forked child starts a pool of its own.
void run_tasks(int64_t count, int helpers, const std::function<void(int64_t)>& task);

}  // namespace l2fast::cpu
