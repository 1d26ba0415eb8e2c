// Loading tensors from a Source into one memory arena.
//
// Arena: one anonymous mapping, 2 MiB aligned and advised for transparent
// huge pages. Where the destination memory comes from decides the speed of a
// CPU load: the kernel faults ordinary memory in 4 KiB at a time, which caps
// pread into it at ~1 GB/s on a small machine, while huge pages fault 2 MiB at
// a time. Tensors handed to users are views on the arena; it lives as long as
// any holder of its shared_ptr.
//
// Load: executes a LoadPlan with a pool of worker threads. Workers take jobs
// in file order, scatter-read each range straight into the arena, parse and
// check each tensor header against the index, verify hashes while the bytes
// are hot when asked, and publish each tensor as soon as all its bytes are in
// place: WaitTensor(i) returns as soon as tensor i is ready, before the rest
// of the file has arrived. Encrypted tensors are decrypted chunk by chunk as
// their bytes arrive (all reads of such a tensor run in one job, after its
// header), and their SHA-256 is always checked over the plaintext (see
// HashCheck). The first error stops
// all workers; every waiter then gets it, and a tensor that failed to
// decrypt is zeroed, never published.
//
// Cancellation (tensorizer/cancel.h): the workers run under a flag that is a
// child of the calling thread's flag at Start, so cancelling that flag, or
// calling Cancel(), stops the load: reads in flight are abandoned (a remote
// transfer is aborted), and waiters get kCancelled. WaitTensorFor/WaitFor
// let a caller wait in slices and do other work between them (the Python
// binding checks for Ctrl-C).
//
// Thread-safety: WaitTensor/Wait/Cancel/accessors may be called from any
// thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tensorizer/crypto.h"
#include "tensorizer/format.h"
#include "tensorizer/plan.h"
#include "tensorizer/source.h"
#include "tensorizer/staging.h"
#include "tensorizer/status.h"

namespace tensorizer {

class Arena {
 public:
  static Result<std::shared_ptr<Arena>> Allocate(uint64_t bytes, bool huge_pages);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  Arena(void* map, uint64_t map_bytes, uint8_t* data, uint64_t size)
      : map_(map), map_bytes_(map_bytes), data_(data), size_(size) {}
  void* map_;
  uint64_t map_bytes_;
  uint8_t* data_;
  uint64_t size_;
};

// Reads and parses the file header and index: one read of the first 262217
// bytes (what tensorizer files need), a second only for a larger index.
Result<Index> ReadIndex(const Source& source);

// Which stored hashes a load checks. Encrypted tensors are checked against
// the SHA-256 of their plaintext whatever this says (the MACs do not bind a
// chunk to its tensor or prove that none is missing), and one that stores
// no SHA-256 is refused (kCryptography).
enum class HashCheck : uint8_t {
  kNone,
  // CRC32 where the file stores one (every unencrypted tensor), else
  // SHA-256. CRC32 runs at memory speed; it catches accidental corruption,
  // which is all either hash can catch, as the file does not authenticate
  // its hashes.
  kFast,
  // Every stored hash, as tensorizer does; SHA-256 bounds the throughput.
  kAll,
};

// How to open encrypted tensors: an exact key, or a passphrase from which
// each tensor's key is derived with the Argon2id parameters stored in it.
struct DecryptionOptions {
  std::optional<CryptKey> key;
  std::optional<std::string> passphrase;
  // The file chooses the Argon2id parameters of a passphrase key: refuse
  // more work than this (kCryptography) unless the caller raises the caps
  // for a file it trusts. Default: tensorizer's strongest preset.
  uint64_t max_pwhash_opslimit = kDefaultMaxPwhashOpsLimit;
  uint64_t max_pwhash_memlimit = kDefaultMaxPwhashMemLimit;
  // Keys derived so far, shared by every load given these options (and
  // their copies), so several loads of one file derive each key once. Null:
  // each load keeps its own.
  std::shared_ptr<DerivedKeyCache> derived_keys;
};

struct LoadOptions {
  int num_threads = 0;  // 0: decided by ResolveLoadOptions
  HashCheck verify = HashCheck::kNone;
  uint64_t chunk_bytes = 16ull << 20;
  bool huge_pages = true;
  // Required for files with encrypted tensors. Chunks are decrypted in place
  // as they arrive, before hashes are checked and the tensor is published.
  std::optional<DecryptionOptions> decryption;
  // Set: a staged load (tensorizer/staging.h) into the destinations given
  // there, through a bounded ring of pinned buffers; no arena is allocated.
  std::optional<StagingOptions> staging;
};

// What a load's options come to for one source and file, decided here once
// for every caller (Python, the CLI, C++): a pure function of its inputs.
struct LoadContext {
  int available_cores = 1;     // AvailableCores() (tensorizer/machine.h)
  int source_concurrency = 0;  // Source::concurrency_hint()
  FileFormat format = FileFormat::kTensorizer;
  bool encrypted = false;  // the file stores crypt info
};

struct ResolvedLoadOptions {
  // Workers: LoadOptions::num_threads when positive, else one per available
  // core raised to the source's concurrency hint. Load::Start then runs no
  // more than the plan has jobs.
  int threads = 1;
  // Safetensors files store no hashes, so nothing is checked.
  HashCheck verify = HashCheck::kNone;
  // Hash checks and decryption need each tensor's reads in one job, in
  // order (PlanOptions::whole_tensor_jobs); they then use pieces of at most
  // kHashedChunkBytes, which are still in L2 when hashed.
  bool whole_tensor_jobs = false;
  uint64_t chunk_bytes = 16ull << 20;
};

constexpr uint64_t kHashedChunkBytes = 2ull << 20;

ResolvedLoadOptions ResolveLoadOptions(const LoadOptions& options, const LoadContext& context);

// The context of a load of `index` from `source` on this machine.
LoadContext LoadContextOf(const Source& source, const Index& index);

class Load {
 public:
  // Plans and starts loading `selected` (increasing entry indices).
  static Result<std::unique_ptr<Load>> Start(std::shared_ptr<const Source> source,
                                             std::shared_ptr<const Index> index,
                                             const std::vector<size_t>& selected,
                                             const LoadOptions& options);
  ~Load();  // cancels outstanding work and joins the workers

  // Blocks until tensor i (position in `selected`) is in place and checked.
  Status WaitTensor(size_t i);
  // Blocks until every tensor is in place (or the first error).
  Status Wait();
  // As WaitTensor and Wait, giving up after `timeout`: nullopt while the
  // tensor (the load) is still on its way.
  std::optional<Status> WaitTensorFor(size_t i, std::chrono::milliseconds timeout);
  std::optional<Status> WaitFor(std::chrono::milliseconds timeout);
  // Stops the load (see above) and returns at once; Wait() returns once the
  // workers have stopped. Idempotent; a no-op on a load that has finished.
  void Cancel();

  size_t tensor_count() const;
  const TensorEntry& entry(size_t i) const;
  // Valid once WaitTensor(i) succeeded.
  const TensorHeader& header(size_t i) const;
  // The bytes its hashes cover before the data (see HashedHeaderBytes).
  std::string hashed_header(size_t i) const;
  uint64_t arena_offset(size_t i) const;
  uint64_t arena_bytes(size_t i) const;
  const std::shared_ptr<Arena>& arena() const;
  uint64_t bytes_read() const;
  // A staged load's ring (zeros for an arena load).
  StagingStats staging_stats() const;

  struct State;

 private:
  explicit Load(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace tensorizer
