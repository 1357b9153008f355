// Reading the input ahead of the converter, on a thread of its own: the kernel is asked for the
// source bytes of the coming tensors (posix_fadvise WILLNEED, a few MiB at a time) while they are
// less than a window ahead of what the converter has consumed. The converter's threads then find
// their reads in the page cache instead of waiting for the disk, and the asking itself (which can
// block while the disk queue is full) never stalls a quantizing thread.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "stquant/safetensors.h"

namespace stquant::output {

class ReadAhead {
 public:
  struct Range {
    const safetensors::Reader* reader = nullptr;
    const safetensors::TensorInfo* tensor = nullptr;
  };
  static constexpr uint64_t kWindowBytes = 256ull << 20;
  static constexpr uint64_t kStepBytes = 8ull << 20;

  // `ranges`: whole source tensors in the order the converter consumes them.
  explicit ReadAhead(std::vector<Range> ranges);
  ~ReadAhead();  // stops the thread
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  // The converter has consumed this many bytes of the ranges, counted from the first.
  void ConsumedUpTo(uint64_t bytes);

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace stquant::output
