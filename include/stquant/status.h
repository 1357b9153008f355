// Errors as values: Status and Result<T>.
//
// Every failure in stquant travels as a Status up to main(), which prints one line and maps
// the code to the process exit code. Nothing in the library throws across a layer boundary and
// nothing aborts on bad input (STQ_CHECK is for programming errors only).
//
// Codes, and when to use each:
//   kInvalidArgument  the caller (or the command line) asked for something impossible: exit 2
//   kInvalidInput     an input file or directory is malformed or inconsistent:          exit 2
//   kUnsupported      the input is well formed but uses a feature we do not handle:      exit 2
//   kIoError          the OS failed us (open, read, write, ENOSPC, rename):             exit 3
//   kInternal         a bug or an invariant that should never break:                    exit 1
//
// Thread safety: Status and Result are values; distinct objects may be used from distinct threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace stquant {

enum class StatusCode { kOk = 0, kInvalidArgument, kInvalidInput, kUnsupported, kIoError, kInternal };

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string message) {
    return Status(StatusCode::kInvalidArgument, std::move(message));
  }
  static Status InvalidInput(std::string message) {
    return Status(StatusCode::kInvalidInput, std::move(message));
  }
  static Status Unsupported(std::string message) {
    return Status(StatusCode::kUnsupported, std::move(message));
  }
  static Status IoError(std::string message) { return Status(StatusCode::kIoError, std::move(message)); }
  static Status Internal(std::string message) { return Status(StatusCode::kInternal, std::move(message)); }
  // An I/O error from errno, naming the operation and the path ("open 'x': No such file ...").
  static Status FromErrno(std::string_view operation, std::string_view path, int err);

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  const std::string& message() const;

  // Returns a copy whose message reads "<prefix>: <message>"; OK stays OK.
  Status Annotate(std::string_view prefix) const;

  // "invalid input: ..." etc.; "OK" for success.
  std::string ToString() const;

  // The process exit code for this status (0, 1, 2 or 3; see the table above).
  int ExitCode() const;

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  Status(StatusCode code, std::string message)
      : rep_(std::make_shared<const Rep>(Rep{code, std::move(message)})) {}
  std::shared_ptr<const Rep> rep_;  // null when OK, so success costs nothing
};

// Reports a failed internal invariant (file:line) and aborts. Never used on input data.
[[noreturn]] void CheckFailed(const char* file, int line, const char* expression);

#define STQ_CHECK(cond)                                                  \
  do {                                                                   \
    if (!(cond)) ::stquant::CheckFailed(__FILE__, __LINE__, #cond);      \
  } while (0)

// Holds either a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : value_(std::move(status)) {  // NOLINT: implicit by design
    STQ_CHECK(!std::get<Status>(value_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(value_); }
  Status status() const { return ok() ? Status() : std::get<Status>(value_); }

  T& value() & {
    STQ_CHECK(ok());
    return std::get<T>(value_);
  }
  const T& value() const& {
    STQ_CHECK(ok());
    return std::get<T>(value_);
  }
  T&& value() && {
    STQ_CHECK(ok());
    return std::get<T>(std::move(value_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> value_;
};

}  // namespace stquant

#define STQ_CONCAT_INNER_(a, b) a##b
#define STQ_CONCAT_(a, b) STQ_CONCAT_INNER_(a, b)

#define STQ_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::stquant::Status stq_status_ = (expr);        \
    if (!stq_status_.ok()) return stq_status_;     \
  } while (0)

#define STQ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#define STQ_ASSIGN_OR_RETURN(lhs, expr) \
  STQ_ASSIGN_OR_RETURN_IMPL_(STQ_CONCAT_(stq_result_, __LINE__), lhs, expr)
