#include "tensorizer/status.h"

#include <cstring>

namespace tensorizer {

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      return "invalid_argument";
    case StatusCode::kFormatError:
      return "format_error";
    case StatusCode::kUnsupportedVersion:
      return "unsupported_version";
    case StatusCode::kIoError:
      return "io_error";
    case StatusCode::kHashMismatch:
      return "hash_mismatch";
    case StatusCode::kCryptography:
      return "cryptography";
    case StatusCode::kNotFound:
      return "not_found";
    case StatusCode::kResourceExhausted:
      return "resource_exhausted";
    case StatusCode::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Status Status::FromErrno(const std::string& what, int err) {
  return Status(StatusCode::kIoError, what + ": " + std::strerror(err), err);
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

}  // namespace tensorizer
