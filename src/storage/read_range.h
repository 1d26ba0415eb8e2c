// Helpers every Source backend shares for describing and bounds-checking a
// requested byte range, so all of them report a short file the same way.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <string>

#include "tensorizer/cancel.h"
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

// Bytes a scatter read asks for.
inline uint64_t IovBytes(const struct iovec* iov, int iovcnt) {
  uint64_t total = 0;
  for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
  return total;
}

// A backend whose natural read is one request for one byte range into
// several buffers (preadv, a ranged GET, GETRANGEs): ReadAt is a scatter read
// into a single buffer, and the range arrives bounds-checked in ReadRange. A
// read on a cancelled thread (tensorizer/cancel.h) is refused before it starts.
class ScatterReadSource : public Source {
 public:
  Status ReadAt(uint64_t offset, void* dst, uint64_t length) const final {
    struct iovec iov = {dst, length};
    return ReadAtV(offset, &iov, 1);
  }
  Status ReadAtV(uint64_t offset, const struct iovec* iov, int iovcnt) const final {
    const uint64_t total = IovBytes(iov, iovcnt);
    TZR_RETURN_IF_ERROR(CheckReadRange(*this, offset, total));
    if (total == 0) return Status::Ok();
    if (CancelRequested()) {
      return CancelledStatus("reading " + uri() + " " + ByteRange(offset, total));
    }
    return ReadRange(offset, total, iov, iovcnt);
  }

 protected:
  // Fills the buffers with bytes [offset, offset + total), total > 0, all
  // within size().
  virtual Status ReadRange(uint64_t offset, uint64_t total, const struct iovec* iov,
                           int iovcnt) const = 0;
};

}  // namespace tensorizer::internal
