// Opening and reading the files stquant is given. Their names come from strangers (a model
// directory, a Modelfile, an ollama store), and a name may be anything: a FIFO (whose open blocks
// until a writer appears, forever), a device, a socket, a directory, a dangling symbolic link, a
// link loop, a file of gigabytes where a few kilobytes are expected. Every input file stquant
// opens goes through OpenRegularFile, and every input read whole into memory through
// ReadRegularFile (and util::ParseJson for JSON) with the InputLimit of its kind, so that no input
// can block, or make stquant allocate more than that limit allows (README "Hostile files" lists
// the limits and the memory they bound).
//
// Symbolic links are followed (no O_NOFOLLOW): the Hugging Face cache is made of them
// (snapshots/<rev>/x -> ../../blobs/<hash>), and the kernel refuses a loop with ELOOP after 40
// hops, which is reported as bad input here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "stquant/status.h"
#include "util/file.h"

namespace stquant::util {

// How much of one kind of input may be read whole into memory, and its name in messages.
struct InputLimit {
  uint64_t max_bytes;  // of the file
  // JSON: the values (scalars, arrays, objects) and member names util::ParseJson may build. The
  // parsed form of dense JSON costs far more than its text (16 bytes a value and up to 150 a
  // member, against 2 bytes of "0,"): this bounds it where max_bytes alone would not.
  uint64_t max_json_values;
  std::string_view what;
};

// config.json, generation_config.json, hf_quant_config.json, tokenizer_config.json, ollama
// manifests and config blobs: real ones are a few KB and a few hundred values; a
// tokenizer_config.json with thousands of added tokens about 1 MB and 50,000 values.
inline constexpr InputLimit kJsonConfigLimit{4u << 20, 1u << 18, "a JSON configuration file"};
// model.safetensors.index.json names every tensor (about 100 bytes and 2 values each): Kimi-K2's
// 140,000 tensors (61 layers of 384 experts) make an index of about 14 MB and 280,000 values.
inline constexpr InputLimit kJsonIndexLimit{32u << 20, 1u << 20, "a safetensors index"};
// A Modelfile and the chat template of a model (texts of a few KB: templates, licenses).
inline constexpr InputLimit kTextFileLimit{4u << 20, 0, "a Modelfile or chat template"};

// Refuses anything at `path` but a regular file (symbolic links followed), without opening it:
// InvalidInput naming the path and what is there instead ("not a regular file (a FIFO)", "a
// directory", "dangling symbolic link to 'x'", "symbolic link loop", "permission denied", "no
// such file or directory"); IoError for a failure of the OS itself (EIO, ENOMEM).
Status CheckRegularFile(const std::string& path);

// A regular file open for reading, and its size when opened.
struct RegularFile {
  Fd fd;
  uint64_t size = 0;
};

// Opens an existing regular file read-only, never blocking: CheckRegularFile first (a device is
// never opened: opening some has side effects), then open(O_RDONLY | O_NONBLOCK | O_NOCTTY |
// O_CLOEXEC) and fstat again (the name may have been replaced in between: a FIFO is then open
// but refused), then O_NONBLOCK is cleared. Errors as CheckRegularFile's.
Result<RegularFile> OpenRegularFile(const std::string& path);

// The contents of the regular file at `path`: InvalidInput, before anything is allocated, when it
// holds more than limit.max_bytes.
Result<std::string> ReadRegularFile(const std::string& path, const InputLimit& limit);

}  // namespace stquant::util
