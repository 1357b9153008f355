#include "util/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace stquant::util {

namespace {

thread_local bool tls_in_worker = false;

// One loop in flight. Workers and the caller claim indices from `next`.
struct Job {
  int64_t n = 0;
  const std::function<Status(int64_t)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> first_error_index{INT64_MAX};
  std::mutex error_mutex;
  Status first_error;
  int max_helpers = 0;
  std::atomic<int> helpers{0};

  void Run() {
    for (;;) {
      const int64_t i = next.fetch_add(1);
      if (i >= n) return;
      if (i < first_error_index.load(std::memory_order_relaxed)) {
        Status status = (*fn)(i);
        if (!status.ok()) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (i < first_error_index.load()) {
            first_error_index.store(i);
            first_error = std::move(status);
          }
        }
      }
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

class Pool {
 public:
  static Pool& Get() {
    static Pool* const pool = new Pool();  // never destroyed: workers may outlive static teardown
    return *pool;
  }

  Status Run(int64_t n, int threads, const std::function<Status(int64_t)>& fn) {
    auto job = std::make_shared<Job>();
    job->n = n;
    job->fn = &fn;
    job->max_helpers = std::max(0, std::min<int>(threads, static_cast<int>(workers_.size()) + 1) - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(job);
    }
    cv_.notify_all();
    tls_in_worker = true;
    job->Run();
    tls_in_worker = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      jobs_.erase(std::find(jobs_.begin(), jobs_.end(), job));
      // Wait for helpers still finishing an index they claimed.
      done_cv_.wait(lock, [&] { return job->done.load() >= n && job->helpers.load() == 0; });
    }
    return job->first_error;
  }

 private:
  Pool() {
    const int count = HardwareThreads() - 1;
    for (int i = 0; i < count; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    for (std::thread& t : workers_) t.detach();
  }

  void WorkerLoop() {
    tls_in_worker = true;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      std::shared_ptr<Job> job;
      cv_.wait(lock, [&] {
        for (const auto& candidate : jobs_) {
          if (candidate->next.load() < candidate->n && candidate->helpers.load() < candidate->max_helpers) {
            job = candidate;
            return true;
          }
        }
        return false;
      });
      job->helpers.fetch_add(1);
      lock.unlock();
      job->Run();
      lock.lock();
      job->helpers.fetch_sub(1);
      done_cv_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  std::vector<std::shared_ptr<Job>> jobs_;
  std::vector<std::thread> workers_;
};

}  // namespace

int HardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

Status ParallelFor(int64_t n, int threads, const std::function<Status(int64_t)>& fn) {
  if (n <= 0) return Status::Ok();
  if (threads <= 0) threads = HardwareThreads();
  if (n == 1 || threads == 1 || tls_in_worker) {
    for (int64_t i = 0; i < n; ++i) STQ_RETURN_IF_ERROR(fn(i));
    return Status::Ok();
  }
  return Pool::Get().Run(n, threads, fn);
}

}  // namespace stquant::util
