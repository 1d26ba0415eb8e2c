// Passphrase to key: Argon2id v1.3 through libsodium's crypto_pwhash, with
// the parameters tensorizer stores in a key-derivation chunk. The checks and
// their order follow tensorizer 2.12.1 (algorithm, then salt, then limits),
// so the same bad chunk fails with the same complaint.
//
// Cancellation: crypto_pwhash has no way to stop it once it runs (no
// callback, no step API), and Argon2id is not something to write ourselves.
// So a derivation on a thread with a cancel flag runs on a helper thread of
// its own while the caller waits in slices; when cancelled, the caller
// returns kCancelled at once and the helper is abandoned: it runs to its end
// (bounded by the cost caps, CheckPwhashCost), then frees its memory and
// wipes the passphrase copy and the key, which nobody reads. Without a flag
// (nothing can cancel it) the derivation runs on the calling thread.
#include <sodium.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "crypto/sodium_init.h"
#include "tensorizer/cancel.h"
#include "tensorizer/crypto.h"
#include "util/cancel_wait.h"

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

// Argon2id into `key`: crypto_pwhash's result (0 on success).
int Pwhash(CryptKey* key, std::string_view passphrase, const PwhashParams& params) {
  const char* passwd = passphrase.empty() ? "" : passphrase.data();
  return crypto_pwhash(key->data(), key->size(), passwd, passphrase.size(),
                       reinterpret_cast<const unsigned char*>(params.salt.data()), params.opslimit,
                       static_cast<size_t>(params.memlimit), params.alg);
}

// One derivation on a helper thread, shared by the helper and its caller so
// that either may finish last.
struct PwhashJob {
  std::string passphrase;
  PwhashParams params;
  CryptKey key{};
  int rc = -1;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;  // guarded by mu

  ~PwhashJob() {
    sodium_memzero(passphrase.data(), passphrase.size());
    sodium_memzero(key.data(), key.size());
  }
};

// Pwhash on a helper thread; -2 when the calling thread is cancelled first.
int PwhashUnlessCancelled(CryptKey* key, std::string_view passphrase,
                          const PwhashParams& params) {
  auto job = std::make_shared<PwhashJob>();
  job->passphrase = std::string(passphrase);
  job->params = params;
  std::thread([job] {
    int rc = Pwhash(&job->key, job->passphrase, job->params);
    std::lock_guard<std::mutex> lock(job->mu);
    job->rc = rc;
    job->done = true;
    job->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(job->mu);
  if (!internal::WaitUnlessCancelled(job->cv, lock, [&] { return job->done; })) return -2;
  *key = job->key;
  return job->rc;
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
  if (CancelRequested()) return CancelledStatus("deriving a key");
  CryptKey key;
  int rc = CurrentCancelFlag() ? PwhashUnlessCancelled(&key, passphrase, params)
                               : Pwhash(&key, passphrase, params);
  if (rc == -2) return CancelledStatus("deriving a key");
  if (rc != 0) {
    sodium_memzero(key.data(), key.size());
    return Status::Cryptography("Password hashing failed. May have run out of memory (opslimit " +
                                std::to_string(params.opslimit) + ", memlimit " +
                                std::to_string(params.memlimit) + " bytes)");
  }
  return key;
}

Status CheckPwhashCost(const PwhashParams& params, uint64_t max_opslimit, uint64_t max_memlimit) {
  if (params.opslimit > max_opslimit) {
    return Status::Cryptography(
        "key derivation asks for opslimit " + std::to_string(params.opslimit) +
        ", more than the allowed " + std::to_string(max_opslimit) +
        " (raise max_pwhash_opslimit / max_opslimit if the file is trusted)");
  }
  if (params.memlimit > max_memlimit) {
    return Status::Cryptography(
        "key derivation asks for " + std::to_string(params.memlimit) +
        " bytes of memory, more than the allowed " + std::to_string(max_memlimit) +
        " (raise max_pwhash_memlimit / max_memlimit if the file is trusted)");
  }
  return Status::Ok();
}

DerivedKeyCache::~DerivedKeyCache() {
  for (Entry& e : entries_) {
    sodium_memzero(e.key.data(), e.key.size());
    sodium_memzero(e.passphrase.data(), e.passphrase.size());
  }
}

Result<CryptKey> DerivedKeyCache::Get(std::string_view passphrase, const PwhashParams& params,
                                      uint64_t max_opslimit, uint64_t max_memlimit) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Entry& e : entries_) {
    if (e.params == params && e.passphrase == passphrase) return e.key;
  }
  TZR_RETURN_IF_ERROR(CheckPwhashCost(params, max_opslimit, max_memlimit));
  auto key = DeriveKey(passphrase, params);
  if (!key.ok()) return key.status();
  entries_.push_back(Entry{std::string(passphrase), params, *key});
  return key;
}

}  // namespace tensorizer
