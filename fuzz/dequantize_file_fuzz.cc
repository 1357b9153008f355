// libFuzzer target: DequantizeFile on an arbitrary file (the fuzz input is the whole
// .safetensors file: header and data), the `stquant dequantize` command end to end.
//
// Checks, besides "no crash, no sanitizer report, no unbounded allocation" (run with
// -rss_limit_mb): a refusal is InvalidInput, InvalidArgument or Unsupported (never IoError or
// Internal: the file is readable, only its contents are hostile), one line naming the file; no
// output file is left behind on failure.
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "stquant/quantize_file.h"

namespace {

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

// The input and the output are real files, as the command reads and writes them, in a tmpfs
// directory when there is one (/dev/shm): on a disk filesystem such as ext4, rewriting the input
// with O_TRUNC forces a writeback of the previous one, which held the target to ~300 execs/s.
const std::string& Dir() {
  static const std::string dir = [] {
    const char* base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string pattern = std::string(base) + "/stquant-dequantize-fuzz-XXXXXX";
    Require(::mkdtemp(pattern.data()) != nullptr);
    return pattern;
  }();
  return dir;
}

void RemoveDir() {
  ::unlink((Dir() + "/in.safetensors").c_str());
  ::rmdir(Dir().c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)Dir();  // constructed before the handler is registered, so destroyed after it runs
  std::atexit(RemoveDir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in = Dir() + "/in.safetensors";
  const std::string out = Dir() + "/out.safetensors";
  std::FILE* f = std::fopen(in.c_str(), "wb");
  Require(f != nullptr);
  Require(std::fwrite(data, 1, size, f) == size);
  Require(std::fclose(f) == 0);

  stquant::DequantizeFileOptions options;
  options.threads = 1;
  const stquant::Status status = stquant::DequantizeFile(in, out, options);
  if (!status.ok()) {
    Require(status.code() == stquant::StatusCode::kInvalidInput || status.code() == stquant::StatusCode::kInvalidArgument ||
            status.code() == stquant::StatusCode::kUnsupported);
    Require(status.message().find('\n') == std::string::npos);
    Require(status.message().find(Dir()) != std::string::npos);  // names the file
    Require(::access(out.c_str(), F_OK) != 0);
  }
  ::unlink(out.c_str());
  return 0;
}
