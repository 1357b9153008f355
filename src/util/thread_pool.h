// A process-wide pool of worker threads for data-parallel loops.
//
// ParallelFor(n, threads, fn) runs fn(0) .. fn(n-1), each exactly once, on up to `threads`
// threads (0 = all cores; the calling thread takes part) and returns when all are done. The
// returned Status is the error of the lowest failing index, so errors are deterministic; once an
// error is seen, indices not yet started are skipped. A ParallelFor called from inside a worker
// runs inline on that worker, so nesting cannot deadlock.
#pragma once

#include <cstdint>
#include <functional>

#include "stquant/status.h"

namespace stquant::util {

int HardwareThreads();

Status ParallelFor(int64_t n, int threads, const std::function<Status(int64_t)>& fn);

}  // namespace stquant::util
