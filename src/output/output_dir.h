// The output directory of a conversion, made atomic: everything is written into a temporary
// directory beside the target ("<parent>/.<name>.stquant-tmp-<pid>-<random>", with a lock file of
// the same name + ".lock" held while it is in use) that is renamed onto the target only when
// complete. An uncommitted OutputDir (error, exception, early return) deletes its temporary
// directory; a killed process leaves only hidden temporaries, which the next conversion to the
// same target removes. Concurrent conversions to one target keep their own temporaries: the first
// to finish creates the target, the others fail ("already exists") or, with replace, swap theirs
// in atomically.
#pragma once

#include <functional>
#include <span>
#include <string>

#include "stquant/status.h"
#include "util/file.h"

namespace stquant::output {

class OutputDir {
 public:
  // Creates missing parent directories. Fails when `target` exists (unless `replace`).
  static Result<OutputDir> Create(const std::string& target, bool replace);
  ~OutputDir();
  OutputDir(OutputDir&& other) noexcept;
  OutputDir& operator=(OutputDir&&) = delete;
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;

  // Where to write files now.
  const std::string& temp_path() const { return temp_; }
  std::string PathOf(const std::string& file) const { return temp_ + "/" + file; }

  // fsyncs the temporary directory, renames it onto the target (replacing an existing target when
  // allowed) and fsyncs the parent. InvalidArgument when the target exists and may not be replaced.
  Status Commit();

 private:
  OutputDir() = default;
  Status CommitByRenames();
  util::TempLock lock_;
  std::string target_;
  std::string temp_;
  bool replace_ = false;
  bool committed_ = false;
};

// Writes `contents` to `path` through a temp file + fsync + rename.
Status WriteFileAtomically(const std::string& path, const std::string& contents);
// Copies a regular file (following symlinks; anything else is refused, see util::OpenRegularFile)
// to `path`, atomically, in pieces of at most 8 MiB; `copied` (optional) gets each piece, in order
// (a hash taken while copying).
Status CopyFileAtomically(const std::string& from, const std::string& path,
                          const std::function<void(std::span<const uint8_t>)>& copied = nullptr);

}  // namespace stquant::output
