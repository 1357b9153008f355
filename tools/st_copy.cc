// st_copy IN OUT [--metadata KEY=VALUE]...
//
// Re-writes a safetensors file through stquant's Reader and Writer: same tensors, dtypes, shapes
// and bytes, in the input's data order; the metadata is the input's, with each --metadata pair
// added or replaced. Warnings of the reader go to stderr. Exit codes as stquant (0, 1, 2, 3).
// A test-support program for tests/python/test_safetensors_interop.py.
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stquant/safetensors.h"

namespace {

using stquant::Result;
using stquant::Status;
using namespace stquant::safetensors;

Status Copy(const std::string& in, const std::string& out,
            const std::vector<std::pair<std::string, std::string>>& extra_metadata) {
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader, Reader::Open(in));
  for (const std::string& warning : reader->warnings()) std::fprintf(stderr, "st_copy: warning: %s\n", warning.c_str());
  std::optional<std::map<std::string, std::string>> metadata = reader->metadata();
  for (const auto& [key, value] : extra_metadata) {
    if (!metadata) metadata.emplace();
    (*metadata)[key] = value;
  }
  std::vector<TensorDecl> decls;
  for (const TensorInfo& t : reader->tensors()) decls.push_back({t.name, t.dtype, t.shape});
  STQ_ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer, Writer::Create(out, std::move(decls), std::move(metadata)));
  for (size_t i = 0; i < reader->tensors().size(); ++i) {
    STQ_ASSIGN_OR_RETURN(std::span<const uint8_t> bytes, reader->View(reader->tensors()[i]));
    STQ_RETURN_IF_ERROR(writer->WriteTensorData(i, 0, bytes));
  }
  return writer->Commit();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> metadata;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--metadata") == 0 && i + 1 < argc) {
      const std::string pair = argv[++i];
      const size_t eq = pair.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "st_copy: error: --metadata wants KEY=VALUE, got '%s'\n", pair.c_str());
        return 2;
      }
      metadata.emplace_back(pair.substr(0, eq), pair.substr(eq + 1));
    } else {
      positional.emplace_back(argv[i]);
    }
  }
  if (positional.size() != 2) {
    std::fprintf(stderr, "usage: st_copy IN OUT [--metadata KEY=VALUE]...\n");
    return 2;
  }
  const Status status = Copy(positional[0], positional[1], metadata);
  if (!status.ok()) {
    std::fprintf(stderr, "st_copy: error: %s\n", status.message().c_str());
    return status.ExitCode();
  }
  return 0;
}
