// Kernel throughput: quantizing a [14336, 4096] tensor (an MLP projection of a 7-8B model) in each
// mode, single thread and all threads, in GB/s of input consumed, printed beside this machine's
// own read and memcpy bandwidth measured in the same run (the ratios are the figures of merit).
//
//   build/bench/quant_bench [--benchmark_filter=...]
//
// all_threads uses QuantizeRowsParallel on every hardware thread (the counter `threads`); the
// CPU column of Google Benchmark counts the main thread only, so use Time/GBps (mean real time).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "numeric/bf16.h"
#include "stquant/quantize.h"
#include "util/thread_pool.h"

namespace stquant {
namespace {

constexpr int64_t kRows = 14336;
constexpr int64_t kCols = 4096;

double g_read_gbps = 0.0;    // all threads, summing the buffer
double g_memcpy_gbps = 0.0;  // all threads, copy (counted as bytes read)

const std::vector<uint8_t>& Input(DType dtype) {
  static std::vector<uint8_t> bf16, f32;
  std::vector<uint8_t>& buffer = dtype == DType::kBF16 ? bf16 : f32;
  if (buffer.empty()) {
    std::mt19937_64 rng(1234);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    buffer.resize(kRows * kCols * (dtype == DType::kBF16 ? 2 : 4));
    for (int64_t i = 0; i < kRows * kCols; ++i) {
      const float v = normal(rng);
      if (dtype == DType::kBF16) {
        const uint16_t h = numeric::BF16FromFloat(v);
        std::memcpy(buffer.data() + i * 2, &h, 2);
      } else {
        std::memcpy(buffer.data() + i * 4, &v, 4);
      }
    }
  }
  return buffer;
}

// Best of a few passes of `fn` over `bytes`, in GB/s.
template <typename Fn>
double MeasureGbps(uint64_t bytes, Fn fn) {
  double best = 0.0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, bytes / seconds / 1e9);
  }
  return best;
}

// The 1/5/15-minute load averages: other processes competing for the cores make every figure here
// (the machine limits included) lower, and all_threads no faster than 1_thread.
void PrintLoad(const char* when) {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) != 3) return;
  const int threads = util::HardwareThreads();
  std::printf("load average %s: %.2f %.2f %.2f on %d hardware threads%s\n", when, load[0], load[1], load[2], threads,
              load[0] > 0.25 * threads + 0.5 ? "  ** WARNING: machine busy, timings are not representative **" : "");
}

void MeasureMachineLimits() {
  const std::vector<uint8_t>& src = Input(DType::kF32);
  std::vector<uint8_t> dst(src.size());
  const int threads = util::HardwareThreads();
  const int64_t chunk = (src.size() / threads + 63) & ~int64_t{63};
  volatile uint64_t sink = 0;
  g_read_gbps = MeasureGbps(src.size(), [&] {
    std::vector<uint64_t> sums(threads);
    (void)util::ParallelFor(threads, threads, [&](int64_t t) {
      const int64_t begin = t * chunk, end = std::min<int64_t>(src.size(), begin + chunk);
      const auto* p = reinterpret_cast<const uint64_t*>(src.data() + begin);
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = 0; i + 4 <= (end - begin) / 8; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
      }
      sums[t] = s0 + s1 + s2 + s3;
      return Status::Ok();
    });
    sink = sink + std::accumulate(sums.begin(), sums.end(), uint64_t{0});
  });
  g_memcpy_gbps = MeasureGbps(src.size(), [&] {
    (void)util::ParallelFor(threads, threads, [&](int64_t t) {
      const int64_t begin = t * chunk, end = std::min<int64_t>(src.size(), begin + chunk);
      std::memcpy(dst.data() + begin, src.data() + begin, end - begin);
      return Status::Ok();
    });
  });
  std::printf("machine: %d threads; read %.2f GB/s, memcpy %.2f GB/s (all threads, %zu MB buffer)\n", threads,
              g_read_gbps, g_memcpy_gbps, src.size() >> 20);
  PrintLoad("before the runs");
  std::printf("MLX CPU quantize on this machine type (shared/reference/mlx-cpu-bench.md, bf16 input): affine4 "
              "~0.31-0.39 GB/s, affine8 ~0.34-0.50, mxfp4 ~0.018, mxfp8 ~0.23-0.31, nvfp4 ~0.017\n");
}

void BM_Quantize(benchmark::State& state, QuantSpec spec, DType dtype, bool parallel) {
  const std::vector<uint8_t>& input = Input(dtype);
  const int scale_bytes = spec.mode == QuantMode::kAffine ? (dtype == DType::kBF16 ? 2 : 4) : 1;
  std::vector<uint32_t> packed(kRows * PackedWordsPerRow(spec, kCols));
  std::vector<uint8_t> scales(kRows * GroupsPerRow(spec, kCols) * scale_bytes), biases(scales.size());
  const float global_scale = spec.global_scale ? AbsMax(dtype, input.data(), kRows * kCols) : 0.0f;
  QuantizedBuffers out{packed.data(), scales.data(), biases.data()};
  for (auto _ : state) {
    const Status status = parallel ? QuantizeRowsParallel(spec, dtype, input.data(), kRows, kCols, global_scale, out)
                                   : QuantizeRows(spec, dtype, input.data(), kRows, kCols, global_scale, out);
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
    benchmark::DoNotOptimize(packed.data());
  }
  const double bytes = static_cast<double>(input.size());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  // Ratios computed from the mean time: GB/s of input / machine limit.
  state.counters["threads"] = parallel ? util::HardwareThreads() : 1;
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["x_read"] = benchmark::Counter(bytes / 1e9 / g_read_gbps, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["x_memcpy"] =
      benchmark::Counter(bytes / 1e9 / g_memcpy_gbps, benchmark::Counter::kIsIterationInvariantRate);
}

void RegisterAll() {
  struct Mode {
    const char* name;
    QuantSpec spec;
  };
  const Mode modes[] = {
      {"int4", {QuantMode::kAffine, 4, 64}},   {"int8", {QuantMode::kAffine, 8, 64}},
      {"int3", {QuantMode::kAffine, 3, 64}},   {"mxfp4", {QuantMode::kMxfp4, 4, 32}},
      {"mxfp8", {QuantMode::kMxfp8, 8, 32}},   {"nvfp4", {QuantMode::kNvfp4, 4, 16}},
      {"nvfp4_gscale", {QuantMode::kNvfp4, 4, 16, true}},
  };
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (const Mode& mode : modes) {
      for (bool parallel : {false, true}) {
        const std::string name = std::string("quantize/") + (dtype == DType::kBF16 ? "bf16/" : "f32/") + mode.name +
                                 (parallel ? "/all_threads" : "/1_thread");
        benchmark::RegisterBenchmark(name.c_str(), BM_Quantize, mode.spec, dtype, parallel)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(0.5);
      }
    }
  }
}

}  // namespace
}  // namespace stquant

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  stquant::MeasureMachineLimits();
  stquant::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  stquant::PrintLoad("after the runs");
  benchmark::Shutdown();
  return 0;
}
