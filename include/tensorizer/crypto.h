// Encryption building blocks for .tensors files, as pure functions.
//
// tensorizer (data version 3, or 4+ with the encrypted flag) seals each
// tensor's data with libsodium's crypto_secretbox, XSalsa20-Poly1305 in
// detached mode: the ciphertext has the plaintext's length and replaces it
// in the file, and the 16-byte MACs go in the tensor's header, in the
// crypt-info block (docs/format.md §16). Data is cut into chunks of
// `chunk_bytes` (2 MiB when written) sealed independently, so chunks can be
// decrypted in parallel as they arrive; chunk i uses nonce0 + i, the 24-byte
// nonce read as a little-endian integer (libsodium's sodium_increment).
// Names, shapes, offsets and hashes stay plaintext and unauthenticated.
//
// A key is 32 random bytes, or derived from a passphrase with Argon2id
// (crypto_pwhash) under the parameters stored in the key-derivation chunk.
//
// Error codes: kFormatError for crypt-info bytes that do not parse (lengths,
// sizes, MAC counts that do not fit the data); kCryptography where
// tensorizer raises CryptographyError (no or two ciphers, unknown key
// derivation, data that does not authenticate); kInvalidArgument for
// parameters outside libsodium's ranges (tensorizer's ValueError).
//
// Thread-safety: everything here is a pure function or a plain value, and
// safe to call from many threads at once, except DerivedKeyCache, which
// locks; libsodium is initialised on first use.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tensorizer/status.h"

namespace tensorizer {

inline constexpr size_t kKeyBytes = 32;    // crypto_secretbox_KEYBYTES
inline constexpr size_t kNonceBytes = 24;  // crypto_secretbox_NONCEBYTES
inline constexpr size_t kMacBytes = 16;    // crypto_secretbox_MACBYTES
inline constexpr size_t kSaltBytes = 16;   // crypto_pwhash_SALTBYTES

// What writers use, and the rule every stored chunk size must follow.
inline constexpr uint64_t kCryptChunkBytes = 2 << 20;
inline constexpr uint64_t kCryptChunkQuantum = 64;  // a Salsa20 block
inline constexpr uint64_t kMinCryptChunkBytes = 1024;

using CryptKey = std::array<uint8_t, kKeyBytes>;
using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

enum class CryptChunkType : uint16_t {
  kKeyDerivation = 1,
  kXSalsa20Parallel = 2,
  kXSalsa20Sequential = 3,
};
inline constexpr uint16_t kKeyDerivationPwhash = 1;  // the only method
inline constexpr int32_t kPwhashAlgArgon2id13 = 2;   // crypto_pwhash_ALG_ARGON2ID13

// libsodium's Argon2id presets, the values of tensorizer's
// EncryptionParams.OpsLimit and .MemLimit.
enum class OpsLimit : uint64_t { kMin = 1, kInteractive = 2, kModerate = 3, kSensitive = 4 };
enum class MemLimit : uint64_t {
  kMin = 8192,
  kInteractive = 64ull << 20,
  kModerate = 256ull << 20,
  kSensitive = 1ull << 30,
};
inline constexpr uint64_t kOpsLimitMax = 4294967295ull;     // crypto_pwhash_OPSLIMIT_MAX
inline constexpr uint64_t kMemLimitMax = 4398046510080ull;  // crypto_pwhash_MEMLIMIT_MAX

// The most Argon2id work a file may ask of a reader by default: tensorizer's
// strongest preset, sensitive (opslimit 4, 1 GiB; a few seconds of one
// core). The file chooses the parameters, so without a cap a hostile file
// could make a load run for hours (opslimit 2^32 - 1) or allocate terabytes.
inline constexpr uint64_t kDefaultMaxPwhashOpsLimit = static_cast<uint64_t>(OpsLimit::kSensitive);
inline constexpr uint64_t kDefaultMaxPwhashMemLimit = static_cast<uint64_t>(MemLimit::kSensitive);

// --- The crypt-info block --------------------------------------------------

// Chunk type 1, method 1: the key is crypto_pwhash(passphrase) with these.
struct PwhashParams {
  uint64_t opslimit = static_cast<uint64_t>(OpsLimit::kModerate);
  uint64_t memlimit = static_cast<uint64_t>(MemLimit::kModerate);
  int32_t alg = kPwhashAlgArgon2id13;
  std::string salt;  // kSaltBytes when written; any length parses
  bool operator==(const PwhashParams& o) const {
    return opslimit == o.opslimit && memlimit == o.memlimit && alg == o.alg && salt == o.salt;
  }
};
struct KeyDerivationChunk {
  PwhashParams pwhash;  // method kKeyDerivationPwhash
};

// Chunk type 2: chunk i of the data sealed with nonce0 + i and macs[i]. A
// single MAC means one secretbox over all the data, whatever its length.
struct XSalsa20ParallelChunk {
  uint64_t chunk_bytes = kCryptChunkBytes;
  Nonce nonce0{};
  std::vector<Mac> macs;
};

// Chunk type 3: one secretbox over all the data. Read, never written.
struct XSalsa20SequentialChunk {
  Nonce nonce{};
  Mac mac{};
};

using CryptInfoChunk =
    std::variant<KeyDerivationChunk, XSalsa20ParallelChunk, XSalsa20SequentialChunk>;

// A parsed crypt-info block. Empty (no chunks) for tensors that are not
// encrypted in an encrypted file; otherwise exactly one cipher chunk (type 2
// or 3) and at most one key-derivation chunk, in stored order.
struct CryptInfo {
  std::vector<CryptInfoChunk> chunks;

  bool encrypted() const { return !chunks.empty(); }
  // Null when absent.
  const KeyDerivationChunk* key_derivation() const;
  const XSalsa20ParallelChunk* parallel() const;
  const XSalsa20SequentialChunk* sequential() const;
};

// Parses the bytes that follow the block's u64 length: a u16 chunk count,
// then per chunk a u64 length, a u16 type and the body. The whole span must
// be consumed. Checks every length before using it, the chunk sizes and
// counts described above, and chunk_bytes (a multiple of 64, >= 1024).
Result<CryptInfo> ParseCryptInfo(const uint8_t* data, size_t size);

// The bytes tensorizer 2.12.1 writes for `info`, with the u64 length first
// when `with_length_prefix` (as it sits in a tensor header). The empty crypt
// info is `00 00`. Fails on what ParseCryptInfo would reject.
Result<std::string> EncodeCryptInfo(const CryptInfo& info, bool with_length_prefix = true);
// The size of that encoding, prefix included; needs no MAC values.
uint64_t EncodedCryptInfoBytes(const CryptInfo& info);

// How one tensor's stored bytes divide into independently sealed chunks.
// Chunk i covers [offset(i), offset(i) + length(i)), uses nonce
// NonceForChunk(nonce0, i) and macs[i]. A type-3 block or a type-2 block
// with one MAC is one chunk spanning all the data; zero-length data has no
// chunks (or that one, verified over nothing).
struct SealedChunks {
  uint64_t data_bytes = 0;
  uint64_t chunk_bytes = 0;  // length of every chunk but the last
  Nonce nonce0{};
  std::vector<Mac> macs;

  size_t count() const { return macs.size(); }
  uint64_t offset(size_t i) const { return i * chunk_bytes; }
  uint64_t length(size_t i) const {
    return i + 1 == count() ? data_bytes - offset(i) : chunk_bytes;
  }
};
// Fails (kCryptography) when `info` is empty, and (kFormatError) when its
// MAC count does not fit `data_bytes` of data.
Result<SealedChunks> SealedChunksOf(const CryptInfo& info, uint64_t data_bytes);

// --- XSalsa20-Poly1305 over chunks ------------------------------------------

// nonce0 + index, little-endian over all 24 bytes, wrapping: the nonce
// sodium_increment yields after `index` increments.
Nonce NonceForChunk(const Nonce& nonce0, uint64_t index);

// Number of chunks `data_bytes` of data is sealed in (0 for no data).
uint64_t CryptChunkCount(uint64_t data_bytes, uint64_t chunk_bytes);

// Seals chunk `chunk_index` (`size` bytes at `data`) in place and writes its
// MAC. Chunks are independent: seal them from as many threads as you like.
Status EncryptChunk(const CryptKey& key, const Nonce& nonce0, uint64_t chunk_index, uint8_t* data,
                    size_t size, Mac* mac);

// Seals `size` bytes in place in chunks of `chunk_bytes`, one after
// another; returns one MAC per chunk (none for no data).
Result<std::vector<Mac>> EncryptChunks(const CryptKey& key, const Nonce& nonce0, uint8_t* data,
                                       size_t size, uint64_t chunk_bytes = kCryptChunkBytes);

// Opens chunk `chunk_index` in place. On failure (wrong key, altered data or
// MAC) the chunk is zeroed and kCryptography returned: a failed chunk never
// leaves ciphertext or partial plaintext behind. A caller that decrypts a
// tensor chunk by chunk must zero the rest of the tensor when one fails.
Status DecryptChunk(const CryptKey& key, const Nonce& nonce0, uint64_t chunk_index, uint8_t* data,
                    size_t size, const Mac& mac);

// Opens every chunk of a tensor's `layout.data_bytes` bytes in place, one
// after another. On failure the whole buffer is zeroed.
Status DecryptSealedChunks(const CryptKey& key, const SealedChunks& layout, uint8_t* data);

// What a writer does for one tensor: a fresh random nonce0, the data sealed
// in place in chunks of `chunk_bytes`, and the crypt-info that describes it,
// [key derivation (when given), XSalsa20Parallel] as tensorizer writes it.
// Zero-length data gets a parallel chunk with no MACs (tensorizer 2.12.1
// crashes there; it reads such a block back fine).
Result<CryptInfo> SealTensorData(const CryptKey& key, const KeyDerivationChunk* key_derivation,
                                 uint8_t* data, size_t size,
                                 uint64_t chunk_bytes = kCryptChunkBytes);

// --- Keys -------------------------------------------------------------------

// Bytes from libsodium's CSPRNG (randombytes_buf).
Status RandomBytes(uint8_t* out, size_t size);
Result<CryptKey> RandomKey();
Result<Nonce> RandomNonce();
// A fresh salt of kSaltBytes for PwhashParams.
Result<std::string> RandomSalt();

// Argon2id: crypto_pwhash(passphrase bytes as given, salt, opslimit,
// memlimit, alg) into 32 bytes. The passphrase may be empty here (tensorizer
// refuses an empty one in its Python API). kCryptography for an algorithm
// other than Argon2id v1.3 or when hashing fails (out of memory);
// kInvalidArgument for a salt that is not 16 bytes or limits outside
// [kMin, kMax]. Takes as long and as much memory as the parameters ask: a
// caller reading them from an untrusted file may want to cap memlimit first.
// Argon2id cannot be interrupted: on a thread with a cancel flag
// (tensorizer/cancel.h) it runs on a helper thread, and cancelling returns
// kCancelled at once while the helper finishes in the background and then
// frees its memory.
Result<CryptKey> DeriveKey(std::string_view passphrase, const PwhashParams& params);

// kCryptography when `params` (read from a file) ask for more work than the
// caller allows; the message gives both numbers and names the setting that
// raises the cap.
Status CheckPwhashCost(const PwhashParams& params, uint64_t max_opslimit, uint64_t max_memlimit);

// Keys derived from passphrases, one per passphrase and distinct stored
// parameters, so that loads sharing one (every tensor of a file, checked one
// by one) derive each key once. Thread-safe: a derivation holds the lock, so
// threads asking for the same key wait for the first rather than repeat it.
class DerivedKeyCache {
 public:
  DerivedKeyCache() = default;
  DerivedKeyCache(const DerivedKeyCache&) = delete;
  DerivedKeyCache& operator=(const DerivedKeyCache&) = delete;
  ~DerivedKeyCache();  // wipes the keys and passphrases it holds

  // The cached key, else CheckPwhashCost then DeriveKey (a failure is not
  // cached).
  Result<CryptKey> Get(std::string_view passphrase, const PwhashParams& params,
                       uint64_t max_opslimit, uint64_t max_memlimit);

 private:
  struct Entry {
    std::string passphrase;
    PwhashParams params;
    CryptKey key;
  };
  std::mutex mu_;
  std::vector<Entry> entries_;  // guarded by mu_
};

}  // namespace tensorizer
