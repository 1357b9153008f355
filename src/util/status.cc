#include "stquant/status.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace stquant {

namespace {
const std::string& EmptyString() {
  static const std::string* const kEmpty = new std::string();
  return *kEmpty;
}

const char* CodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kInvalidInput: return "invalid input";
    case StatusCode::kUnsupported: return "unsupported";
    case StatusCode::kIoError: return "I/O error";
    case StatusCode::kInternal: return "internal error";
  }
  return "unknown";
}
}  // namespace

Status Status::FromErrno(std::string_view operation, std::string_view path, int err) {
  std::string message;
  message.append(operation).append(" '").append(path).append("': ").append(std::strerror(err));
  return IoError(std::move(message));
}

const std::string& Status::message() const { return rep_ ? rep_->message : EmptyString(); }

Status Status::Annotate(std::string_view prefix) const {
  if (ok()) return *this;
  std::string message(prefix);
  message.append(": ").append(rep_->message);
  return Status(rep_->code, std::move(message));
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(rep_->code)) + ": " + rep_->message;
}

int Status::ExitCode() const {
  switch (code()) {
    case StatusCode::kOk: return 0;
    case StatusCode::kInvalidArgument:
    case StatusCode::kInvalidInput:
    case StatusCode::kUnsupported: return 2;
    case StatusCode::kIoError: return 3;
    case StatusCode::kInternal: return 1;
  }
  return 1;
}

void CheckFailed(const char* file, int line, const char* expression) {
  std::fprintf(stderr, "stquant: internal check failed at %s:%d: %s\n", file, line, expression);
  std::abort();
}

}  // namespace stquant
