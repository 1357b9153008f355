// The output directory of a conversion, made atomic: everything is written into a temporary
// directory beside the target ("<parent>/.<name>.stquant-tmp-<pid>") that is renamed onto the
// target only when complete. An uncommitted OutputDir (error, exception, early return) deletes
// its temporary directory; a killed process leaves only a hidden temporary directory, which the
// next conversion to the same target removes.
#pragma once

#include <string>

#include "stquant/status.h"

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
  // allowed) and fsyncs the parent.
  Status Commit();

 private:
  OutputDir() = default;
  std::string target_;
  std::string temp_;
  bool replace_ = false;
  bool committed_ = false;
};

// Writes `contents` to `path` through a temp file + fsync + rename.
Status WriteFileAtomically(const std::string& path, const std::string& contents);
// Copies a regular file (following symlinks) to `path`, atomically.
Status CopyFileAtomically(const std::string& from, const std::string& path);

}  // namespace stquant::output
