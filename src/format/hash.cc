#include "format/hash.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>

#ifdef TENSORIZER_HAVE_ISAL
#include <isa-l/crc.h>
#else
#include <zlib.h>
#endif

namespace tensorizer::internal {

uint32_t Crc32Update(uint32_t crc, const void* data, size_t size) {
#ifdef TENSORIZER_HAVE_ISAL
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), size);
#else
  // zlib takes a uInt length; feed large buffers in pieces.
  const auto* p = static_cast<const Bytef*>(data);
  while (size > 0) {
    uInt n = size > (1u << 30) ? (1u << 30) : static_cast<uInt>(size);
    crc = static_cast<uint32_t>(crc32(crc, p, n));
    p += n;
    size -= n;
  }
  return crc;
#endif
}

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    throw std::bad_alloc();
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_->md); }

void Sha256::Update(const void* data, size_t size) { EVP_DigestUpdate(ctx_->md, data, size); }

std::string Sha256::Finish() {
  std::string out(32, '\0');
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_->md, reinterpret_cast<unsigned char*>(out.data()), &len);
  return out;
}

namespace {

std::string HexBytes(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

}  // namespace

std::string DisplayName(const std::string& name) {
  std::string out;
  for (unsigned char c : name) {
    if (c >= 0x20 && c < 0x7f) out.push_back(static_cast<char>(c));
  }
  return out;
}

Status CheckStoredHashes(const std::vector<StoredHash>& stored, TensorHasher* hasher,
                         const std::string& name, const std::string& uri) {
  const uint32_t crc = hasher->crc32();
  const bool checked_sha = hasher->with_sha256();
  const std::string sha = checked_sha ? hasher->FinishSha256() : std::string();
  for (const StoredHash& h : stored) {
    if (h.type != HashType::kCrc32) continue;
    uint32_t value = 0;
    std::memcpy(&value, h.value.data(), 4);
    if (value != crc) {
      char buf[64];
      snprintf(buf, sizeof buf, "Expected %u, got %u.", value, crc);
      return Status::HashMismatch("Tensor '" + DisplayName(name) + "' in " + uri +
                                  " failed CRC32 verification. " + buf);
    }
  }
  for (const StoredHash& h : stored) {
    if (checked_sha && h.type == HashType::kSha256 && h.value != sha) {
      return Status::HashMismatch("Tensor '" + DisplayName(name) + "' in " + uri +
                                  " failed SHA256 verification. Expected " + HexBytes(h.value) +
                                  ", got " + HexBytes(sha) + ".");
    }
  }
  return Status::Ok();
}

}  // namespace tensorizer::internal
