// XSalsa20-Poly1305 (libsodium crypto_secretbox, detached) over the chunks
// of a tensor's data, in place.
//
// Invariants:
//  * chunk i of a tensor is sealed with nonce0 + i (little-endian, as
//    sodium_increment counts), so any chunk can be sealed or opened alone,
//    from any thread, without the ones before it;
//  * a chunk that fails to open is zeroed before the error returns: libsodium
//    checks the MAC before it decrypts, which would otherwise leave the
//    ciphertext in the caller's tensor;
//  * nonce0 comes from libsodium's CSPRNG for every tensor. With 192-bit
//    random nonces a collision is not a practical concern, so unlike
//    tensorizer we keep no per-file set of used nonces here.
#include <sodium.h>

#include <algorithm>
#include <string>

#include "crypto/sodium_init.h"
#include "tensorizer/crypto.h"

namespace tensorizer {

static_assert(kKeyBytes == crypto_secretbox_KEYBYTES);
static_assert(kNonceBytes == crypto_secretbox_NONCEBYTES);
static_assert(kMacBytes == crypto_secretbox_MACBYTES);

namespace internal {

Status InitSodium() {
  // sodium_init() is itself safe to call from many threads; the static
  // keeps it to one call and remembers the outcome.
  static const int rc = sodium_init();
  if (rc < 0) return Status::Cryptography("libsodium could not be initialised");
  return Status::Ok();
}

}  // namespace internal

namespace {

// libsodium reads `m` even for zero bytes; give it a valid address.
uint8_t* NonNull(uint8_t* data) {
  static uint8_t empty;
  return data != nullptr ? data : &empty;
}

Status CheckChunkBytesArgument(uint64_t chunk_bytes) {
  if (chunk_bytes % kCryptChunkQuantum != 0 || chunk_bytes < kMinCryptChunkBytes) {
    return Status::InvalidArgument("invalid encryption chunk size " + std::to_string(chunk_bytes) +
                                   ": must be a multiple of 64 and at least 1024");
  }
  return Status::Ok();
}

}  // namespace

Nonce NonceForChunk(const Nonce& nonce0, uint64_t index) {
  Nonce nonce = nonce0;
  unsigned carry = 0;
  for (size_t i = 0; i < kNonceBytes && (index != 0 || carry != 0); ++i) {
    const unsigned sum = nonce[i] + static_cast<unsigned>(index & 0xff) + carry;
    nonce[i] = static_cast<uint8_t>(sum);
    carry = sum >> 8;
    index >>= 8;
  }
  return nonce;
}

Status EncryptChunk(const CryptKey& key, const Nonce& nonce0, uint64_t chunk_index, uint8_t* data,
                    size_t size, Mac* mac) {
  TZR_RETURN_IF_ERROR(internal::InitSodium());
  const Nonce nonce = NonceForChunk(nonce0, chunk_index);
  data = NonNull(data);
  if (crypto_secretbox_detached(data, mac->data(), data, size, nonce.data(), key.data()) != 0) {
    return Status::Cryptography("Encryption failed for crypt chunk " + std::to_string(chunk_index) +
                                " (" + std::to_string(size) + " bytes)");
  }
  return Status::Ok();
}

Result<std::vector<Mac>> EncryptChunks(const CryptKey& key, const Nonce& nonce0, uint8_t* data,
                                       size_t size, uint64_t chunk_bytes) {
  TZR_RETURN_IF_ERROR(CheckChunkBytesArgument(chunk_bytes));
  std::vector<Mac> macs(CryptChunkCount(size, chunk_bytes));
  for (size_t i = 0; i < macs.size(); ++i) {
    const uint64_t offset = i * chunk_bytes;
    const uint64_t length = std::min<uint64_t>(chunk_bytes, size - offset);
    TZR_RETURN_IF_ERROR(EncryptChunk(key, nonce0, i, data + offset, length, &macs[i]));
  }
  return macs;
}

Status DecryptChunk(const CryptKey& key, const Nonce& nonce0, uint64_t chunk_index, uint8_t* data,
                    size_t size, const Mac& mac) {
  Status init = internal::InitSodium();
  if (!init.ok()) {
    if (size) sodium_memzero(data, size);
    return init;
  }
  const Nonce nonce = NonceForChunk(nonce0, chunk_index);
  uint8_t* buf = NonNull(data);
  if (crypto_secretbox_open_detached(buf, buf, mac.data(), size, nonce.data(), key.data()) != 0) {
    if (size) sodium_memzero(data, size);
    return Status::Cryptography(
        "Tensor decryption failed: crypt chunk " + std::to_string(chunk_index) + " (" +
        std::to_string(size) +
        " bytes) does not authenticate; the key is wrong, or the data or its MAC was altered");
  }
  return Status::Ok();
}

Status DecryptSealedChunks(const CryptKey& key, const SealedChunks& layout, uint8_t* data) {
  for (size_t i = 0; i < layout.count(); ++i) {
    Status st = DecryptChunk(key, layout.nonce0, i, data + layout.offset(i), layout.length(i),
                             layout.macs[i]);
    if (!st.ok()) {
      // Chunks before this one are plaintext now; leave nothing behind.
      if (layout.data_bytes) sodium_memzero(data, layout.data_bytes);
      return st.WithContext("bytes [" + std::to_string(layout.offset(i)) + ", " +
                            std::to_string(layout.offset(i) + layout.length(i)) + ")");
    }
  }
  return Status::Ok();
}

Result<CryptInfo> SealTensorData(const CryptKey& key, const KeyDerivationChunk* key_derivation,
                                 uint8_t* data, size_t size, uint64_t chunk_bytes) {
  TZR_RETURN_IF_ERROR(CheckChunkBytesArgument(chunk_bytes));
  XSalsa20ParallelChunk parallel;
  parallel.chunk_bytes = chunk_bytes;
  TZR_ASSIGN_OR_RETURN(parallel.nonce0, RandomNonce());
  TZR_ASSIGN_OR_RETURN(parallel.macs, EncryptChunks(key, parallel.nonce0, data, size, chunk_bytes));
  CryptInfo info;
  if (key_derivation != nullptr) info.chunks.emplace_back(*key_derivation);
  info.chunks.emplace_back(std::move(parallel));
  return info;
}

Status RandomBytes(uint8_t* out, size_t size) {
  TZR_RETURN_IF_ERROR(internal::InitSodium());
  if (size) randombytes_buf(out, size);
  return Status::Ok();
}

Result<CryptKey> RandomKey() {
  CryptKey key;
  TZR_RETURN_IF_ERROR(RandomBytes(key.data(), key.size()));
  return key;
}

Result<Nonce> RandomNonce() {
  Nonce nonce;
  TZR_RETURN_IF_ERROR(RandomBytes(nonce.data(), nonce.size()));
  return nonce;
}

Result<std::string> RandomSalt() {
  std::string salt(kSaltBytes, '\0');
  TZR_RETURN_IF_ERROR(RandomBytes(reinterpret_cast<uint8_t*>(salt.data()), salt.size()));
  return salt;
}

}  // namespace tensorizer
