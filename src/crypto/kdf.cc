// Passphrase to key: Argon2id v1.3 through libsodium's crypto_pwhash, with
// the parameters tensorizer stores in a key-derivation chunk. The checks and
// their order follow tensorizer 2.12.1 (algorithm, then salt, then limits),
// so the same bad chunk fails with the same complaint.
#include <sodium.h>

#include <string>

#include "crypto/sodium_init.h"
#include "tensorizer/crypto.h"

namespace tensorizer {

static_assert(kSaltBytes == crypto_pwhash_SALTBYTES);
static_assert(kPwhashAlgArgon2id13 == crypto_pwhash_ALG_ARGON2ID13);
static_assert(static_cast<uint64_t>(OpsLimit::kMin) == crypto_pwhash_OPSLIMIT_MIN);
static_assert(static_cast<uint64_t>(OpsLimit::kInteractive) == crypto_pwhash_OPSLIMIT_INTERACTIVE);
static_assert(static_cast<uint64_t>(OpsLimit::kModerate) == crypto_pwhash_OPSLIMIT_MODERATE);
static_assert(static_cast<uint64_t>(OpsLimit::kSensitive) == crypto_pwhash_OPSLIMIT_SENSITIVE);
static_assert(kOpsLimitMax == crypto_pwhash_OPSLIMIT_MAX);
static_assert(static_cast<uint64_t>(MemLimit::kMin) == crypto_pwhash_MEMLIMIT_MIN);
static_assert(static_cast<uint64_t>(MemLimit::kInteractive) == crypto_pwhash_MEMLIMIT_INTERACTIVE);
static_assert(static_cast<uint64_t>(MemLimit::kModerate) == crypto_pwhash_MEMLIMIT_MODERATE);
static_assert(static_cast<uint64_t>(MemLimit::kSensitive) == crypto_pwhash_MEMLIMIT_SENSITIVE);
static_assert(kKeyBytes >= crypto_pwhash_BYTES_MIN);

namespace {

Status CheckRange(uint64_t value, uint64_t lo, uint64_t hi, const char* name) {
  if (value < lo || value > hi) {
    return Status::InvalidArgument("Invalid " + std::string(name) + " " + std::to_string(value) +
                                   ", must be in the range [" + std::to_string(lo) + ", " +
                                   std::to_string(hi) + "]");
  }
  return Status::Ok();
}

}  // namespace

Result<CryptKey> DeriveKey(std::string_view passphrase, const PwhashParams& params) {
  if (params.alg != kPwhashAlgArgon2id13) {
    return Status::Cryptography("Unsupported pwhash algorithm (" + std::to_string(params.alg) +
                                ")");
  }
  if (params.salt.size() != kSaltBytes) {
    return Status::InvalidArgument("Invalid salt size, " + std::to_string(params.salt.size()) +
                                   " != " + std::to_string(kSaltBytes));
  }
  TZR_RETURN_IF_ERROR(
      CheckRange(params.opslimit, static_cast<uint64_t>(OpsLimit::kMin), kOpsLimitMax, "opslimit"));
  TZR_RETURN_IF_ERROR(
      CheckRange(params.memlimit, static_cast<uint64_t>(MemLimit::kMin), kMemLimitMax, "memlimit"));
  TZR_RETURN_IF_ERROR(internal::InitSodium());
  CryptKey key;
  const char* passwd = passphrase.empty() ? "" : passphrase.data();
  if (crypto_pwhash(key.data(), key.size(), passwd, passphrase.size(),
                    reinterpret_cast<const unsigned char*>(params.salt.data()), params.opslimit,
                    static_cast<size_t>(params.memlimit), params.alg) != 0) {
    sodium_memzero(key.data(), key.size());
    return Status::Cryptography("Password hashing failed. May have run out of memory (opslimit " +
                                std::to_string(params.opslimit) + ", memlimit " +
                                std::to_string(params.memlimit) + " bytes)");
  }
  return key;
}

}  // namespace tensorizer
