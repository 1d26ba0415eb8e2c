// Streaming CRC32 (zlib's polynomial, as tensorizer stores it) and SHA-256.
// CRC32 uses ISA-L's carry-less-multiply kernel when the build found it (an
// order of magnitude faster than zlib's table code, and the same function),
// else zlib. SHA-256 is OpenSSL's, which uses the CPU's SHA extensions.
// Not thread-safe per object; use one hasher per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/status.h"

namespace tensorizer::internal {

uint32_t Crc32Update(uint32_t crc, const void* data, size_t size);

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size);
  std::string Finish();  // 32 raw bytes

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// The hashes tensorizer stores, fed the same bytes. A verifier may skip
// SHA-256 (the slow one: ~2 GB/s per core even with SHA extensions).
class TensorHasher {
 public:
  explicit TensorHasher(bool with_sha256 = true) : with_sha_(with_sha256) {}
  void Update(const void* data, size_t size) {
    crc_ = Crc32Update(crc_, data, size);
    if (with_sha_) sha_.Update(data, size);
  }
  bool with_sha256() const { return with_sha_; }
  uint32_t crc32() const { return crc_; }
  std::string FinishSha256() { return sha_.Finish(); }

 private:
  bool with_sha_;
  uint32_t crc_ = 0;
  Sha256 sha_;
};

// A tensor name as messages show it: printable ASCII only.
std::string DisplayName(const std::string& name);

// Checks a hasher fed a tensor's hashed header and data against the hashes
// its header stores: every CRC32, then every SHA-256 when the hasher computed
// it. kHashMismatch in tensorizer's words, naming the tensor (`name`, made
// printable) and `uri`. Consumes the hasher's SHA-256.
Status CheckStoredHashes(const std::vector<StoredHash>& stored, TensorHasher* hasher,
                         const std::string& name, const std::string& uri);

}  // namespace tensorizer::internal
