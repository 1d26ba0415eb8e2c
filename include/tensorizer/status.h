// Status and Result: errors as values.
//
// Every fallible function in the engine returns a Status or a Result<T>.
// A Status carries a code (what kind of failure, which decides the Python
// exception type), a human-readable message that names the file or URI and
// the byte range involved, and the errno of a failed system call when there
// was one. Context is added where the error passes through a layer that knows
// more ("reading model.tensors bytes [0, 262217): ..."), never by string
// parsing at the top.
//
// Thread-safety: plain values; copy freely between threads.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace tensorizer {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller passed something unusable
  kFormatError,         // the bytes are not a valid file of the expected format
  kUnsupportedVersion,  // a well-formed file from a newer or unknown version
  kIoError,             // a system call or transfer failed
  kHashMismatch,        // stored and computed hashes differ
  kCryptography,        // encrypted data that cannot be read as asked
  kNotFound,            // a named tensor or object does not exist
  kResourceExhausted,   // a limit of the format or the machine was hit
  kCancelled,           // stopped because another part of the job failed
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message, int sys_errno = 0)
      : code_(code), message_(std::move(message)), sys_errno_(sys_errno) {}

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status FormatError(std::string m) { return {StatusCode::kFormatError, std::move(m)}; }
  static Status Unsupported(std::string m) {
    return {StatusCode::kUnsupportedVersion, std::move(m)};
  }
  static Status IoError(std::string m, int err = 0) {
    return {StatusCode::kIoError, std::move(m), err};
  }
  static Status HashMismatch(std::string m) { return {StatusCode::kHashMismatch, std::move(m)}; }
  static Status Cryptography(std::string m) { return {StatusCode::kCryptography, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status ResourceExhausted(std::string m) {
    return {StatusCode::kResourceExhausted, std::move(m)};
  }
  static Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
  // An I/O error from the current errno, formatted as "what: strerror".
  static Status FromErrno(const std::string& what, int err);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  int sys_errno() const { return sys_errno_; }

  // Returns this status with "context: " prepended to the message.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_, sys_errno_);
  }
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  int sys_errno_ = 0;
};

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace tensorizer

#define TZR_RETURN_IF_ERROR(expr)      \
  do {                                 \
    ::tensorizer::Status _st = (expr); \
    if (!_st.ok()) return _st;         \
  } while (0)

#define TZR_CONCAT_INNER(a, b) a##b
#define TZR_CONCAT(a, b) TZR_CONCAT_INNER(a, b)
#define TZR_ASSIGN_OR_RETURN(lhs, expr) \
  TZR_ASSIGN_OR_RETURN_IMPL(TZR_CONCAT(_res_, __LINE__), lhs, expr)
#define TZR_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
