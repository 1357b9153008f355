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
#include <string>

#include "stquant/quantize_file.h"

namespace {

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

const std::string& Dir() {
  static const std::string dir = [] {
    char pattern[] = "/tmp/stquant-dequantize-fuzz-XXXXXX";
    Require(::mkdtemp(pattern) != nullptr);
    return std::string(pattern);
  }();
  return dir;
}

}  // namespace

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
