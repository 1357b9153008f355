#include "output/read_ahead.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace stquant::output {

struct ReadAhead::State {
  std::vector<Range> ranges;
  std::mutex mu;
  std::condition_variable wake;
  uint64_t consumed = 0;
  bool stop = false;
  std::thread thread;

  void Loop() {
    uint64_t asked = 0;  // bytes of the ranges already asked for
    for (const Range& range : ranges) {
      const uint64_t size = range.tensor->nbytes();
      for (uint64_t offset = 0; offset < size;) {
        {
          std::unique_lock<std::mutex> lock(mu);
          wake.wait(lock, [&] { return stop || asked < consumed + kWindowBytes; });
          if (stop) return;
        }
        const uint64_t length = std::min(kStepBytes, size - offset);
        range.reader->Prefetch(*range.tensor, offset, length);
        offset += length;
        asked += length;
      }
    }
  }
};

ReadAhead::ReadAhead(std::vector<Range> ranges) : state_(std::make_unique<State>()) {
  state_->ranges = std::move(ranges);
  state_->thread = std::thread([state = state_.get()] { state->Loop(); });
}

ReadAhead::~ReadAhead() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->wake.notify_all();
  state_->thread.join();
}

void ReadAhead::ConsumedUpTo(uint64_t bytes) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (bytes <= state_->consumed) return;
    state_->consumed = bytes;
  }
  state_->wake.notify_one();
}

}  // namespace stquant::output
