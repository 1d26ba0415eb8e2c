// Source: random-access bytes of one file or object.
//
// The load pipeline reads through this one interface: the total size and a
// positional ReadAt. ReadAt is safe to call from many threads at once (it has
// no cursor), and either fills the whole destination or fails; a premature end
// of data is an error naming the URI and the byte range. Backends are chosen
// by URI scheme in OpenSource(); local files are the only one so far.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>

#include "tensorizer/status.h"

namespace tensorizer {

class Source {
 public:
  virtual ~Source() = default;
  virtual uint64_t size() const = 0;
  // Fills [dst, dst + length) with bytes [offset, offset + length).
  virtual Status ReadAt(uint64_t offset, void* dst, uint64_t length) const = 0;
  // Scatter read of one contiguous byte range into several buffers. The
  // default loops over ReadAt; file sources issue one preadv.
  virtual Status ReadAtV(uint64_t offset, const struct iovec* iov, int iovcnt) const;
  // Where the bytes come from, for error messages ("/models/x.tensors").
  virtual const std::string& uri() const = 0;
};

// Opens a local file by path.
Result<std::unique_ptr<Source>> OpenFileSource(const std::string& path);
// Reads from a file descriptor the caller owns; it is duplicated, so the
// caller may close its copy. `name` is used in error messages.
Result<std::unique_ptr<Source>> OpenFdSource(int fd, const std::string& name);
// Bytes already in memory (copied in).
std::unique_ptr<Source> MakeMemorySource(std::string bytes, const std::string& name);
// Picks the backend from the URI scheme; a bare path is a local file.
Result<std::unique_ptr<Source>> OpenSource(const std::string& uri);

}  // namespace tensorizer
