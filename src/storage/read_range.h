// Helpers every Source backend shares for describing and bounds-checking a
// requested byte range, so all of them report a short file the same way.
#pragma once

#include <cstdint>
#include <string>

#include "tensorizer/source.h"

namespace tensorizer::internal {

// "bytes [offset, offset + length)", for error messages.
inline std::string ByteRange(uint64_t offset, uint64_t length) {
  return "bytes [" + std::to_string(offset) + ", " + std::to_string(offset + length) + ")";
}

// A read past the end of the source is a format error naming it.
inline Status CheckReadRange(const Source& s, uint64_t offset, uint64_t length) {
  if (offset > s.size() || length > s.size() - offset) {
    return Status::FormatError("reading " + s.uri() + " " + ByteRange(offset, length) +
                               ": unexpected end of file at byte " + std::to_string(s.size()));
  }
  return Status::Ok();
}

}  // namespace tensorizer::internal
