// The load pipeline: see include/tensorizer/load.h for the contract.
//
// Steps per job (one worker): for each read of the job, build the iovec from
// its segments (header buffer or arena), issue one scatter read, then walk
// the segments in order: a header segment is parsed and checked (and seeds
// the hashers when verifying); a data segment feeds the hashers. A tensor's
// remaining-read counter drops once per read that touched it; at zero the
// tensor is published. Invariant: a tensor is published only after its header
// was checked and, when verifying, its hashes matched.
//
// A staged load (tensorizer/staging.h) runs the same steps with each read's
// data segments packed into a staging buffer instead of the arena
// (RunStagedRead), and counts a read against its tensors when the copy
// stage reports its copies landed. An encrypted chunk may straddle two
// reads: its received part is carried into the next buffer, ahead of the
// bytes that complete it, so every chunk opens in one piece.
#include "tensorizer/load.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "format/hash.h"
#include "pipeline/staging_ring.h"
#include "tensorizer/cancel.h"
#include "tensorizer/crypto.h"
#include "tensorizer/machine.h"
#include "util/thread_annotations.h"

namespace tensorizer {

namespace {

constexpr uint64_t kHugePage = 2ull << 20;

}  // namespace

Result<Index> ReadIndex(const Source& source) {
  const std::string what = "reading the index of " + source.uri();
  uint64_t size = source.size();
  std::vector<uint8_t> prefix(std::min<uint64_t>(size, kFirstTensorOffset));
  TZR_RETURN_IF_ERROR(source.ReadAt(0, prefix.data(), prefix.size()).WithContext(what));
  if (LooksLikeSafetensors(prefix.data(), prefix.size(), size)) {
    uint64_t n = 0;
    std::memcpy(&n, prefix.data(), 8);
    uint64_t need = 8 + n;
    if (n <= kSafetensorsMaxHeader && need <= size && need > prefix.size()) {
      uint64_t have = prefix.size();
      prefix.resize(need);
      TZR_RETURN_IF_ERROR(source.ReadAt(have, prefix.data() + have, need - have).WithContext(what));
    }
    auto index = ParseSafetensorsIndex(prefix.data(), prefix.size(), size);
    if (!index.ok()) return index.status().WithContext(what);
    return index;
  }
  auto header = ParseFileHeader(prefix.data(), prefix.size(), size);
  if (!header.ok()) return header.status().WithContext(what);
  uint64_t need = kMetadataStart + header->metadata_length;  // <= size, checked by the parser
  if (need > prefix.size()) {
    uint64_t have = prefix.size();
    prefix.resize(need);
    TZR_RETURN_IF_ERROR(source.ReadAt(have, prefix.data() + have, need - have).WithContext(what));
  }
  auto index = ParseIndex(prefix.data(), prefix.size(), size);
  if (!index.ok()) return index.status().WithContext(what);
  return index;
}

Result<std::shared_ptr<Arena>> Arena::Allocate(uint64_t bytes, bool huge_pages) {
  // Map a little extra so the data can start on a 2 MiB boundary, which the
  // kernel needs before it backs the range with huge pages.
  const bool use_huge = huge_pages && bytes >= kHugePage;
  // Beyond 2^62 no machine can map it; refusing early also keeps the
  // rounding below from wrapping.
  if (bytes > (uint64_t{1} << 62)) {
    return Status::ResourceExhausted("cannot map a " + std::to_string(bytes) + "-byte arena");
  }
  uint64_t map_bytes = std::max<uint64_t>(bytes, 1) + (use_huge ? kHugePage : 0);
  void* map =
      ::mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) {
    return Status::ResourceExhausted("cannot map a " + std::to_string(bytes) +
                                     "-byte arena: " + std::strerror(errno));
  }
  auto base = reinterpret_cast<uintptr_t>(map);
  uintptr_t data = use_huge ? (base + kHugePage - 1) / kHugePage * kHugePage : base;
  if (use_huge) {
    // Advisory: where THP is off the arena simply stays on 4 KiB pages.
    ::madvise(reinterpret_cast<void*>(data), (bytes + kHugePage - 1) / kHugePage * kHugePage,
              MADV_HUGEPAGE);
  }
  return std::shared_ptr<Arena>(new Arena(map, map_bytes, reinterpret_cast<uint8_t*>(data), bytes));
}

Arena::~Arena() { ::munmap(map_, map_bytes_); }

struct TensorState {
  std::atomic<uint32_t> reads_left{0};
  bool ready = false;  // guarded by State::mu
  TensorHeader header;
  std::unique_ptr<internal::TensorHasher> hasher;
  uint64_t data_hashed = 0;
  // Encrypted tensors: the chunk layout, the key, and progress.
  std::optional<SealedChunks> sealed;
  CryptKey key{};
  uint64_t data_received = 0;
  size_t chunks_opened = 0;
  // Staged loads: received bytes of a chunk not yet complete.
  std::vector<uint8_t> carry;
};

struct Load::State {
  std::shared_ptr<const Source> source;
  std::shared_ptr<const Index> index;
  LoadPlan plan;
  LoadOptions options;
  std::shared_ptr<Arena> arena;
  std::vector<uint8_t> headers;
  std::vector<TensorState> tensors;
  std::atomic<size_t> next_job{0};
  std::atomic<bool> failed{false};
  // The workers' cancel flag: a child of the flag current at Start, set by
  // Cancel() and by the first error, so that the other workers' transfers
  // in flight stop too.
  std::shared_ptr<CancelFlag> cancel;
  std::atomic<uint64_t> bytes_read{0};
  std::mutex mu;
  std::condition_variable cv;
  Status error TZR_GUARDED_BY(mu);
  std::vector<std::thread> workers;
  size_t workers_running TZR_GUARDED_BY(mu) = 0;
  // Passphrase keys: options.decryption->derived_keys when the caller
  // shares one between loads, else this load's own.
  std::shared_ptr<DerivedKeyCache> keys;
  // Staged loads only.
  std::unique_ptr<internal::StagingRing> ring;

  void Fail(const Status& st) {
    std::lock_guard<std::mutex> lock(mu);
    if (error.ok()) error = st;
    failed = true;
    cancel->Cancel();
    cv.notify_all();
  }

  void Publish(uint32_t t) {
    std::lock_guard<std::mutex> lock(mu);
    tensors[t].ready = true;
    cv.notify_all();
  }

  Status FinishHashes(uint32_t t) {
    TensorState& ts = tensors[t];
    const TensorEntry& e = index->entries[plan.tensors[t].entry];
    Status st =
        internal::CheckStoredHashes(ts.header.hashes, ts.hasher.get(), e.name, source->uri());
    ts.hasher.reset();
    return st;
  }

  Status OnHeader(uint32_t t) {
    const PlannedTensor& pt = plan.tensors[t];
    const TensorEntry& e = index->entries[pt.entry];
    const uint8_t* p = headers.data() + pt.header_offset;
    auto h = ParseTensorHeader(p, e.header_length(), e.metadata_version == kVersionLongShape,
                               index->header.has_crypt_info());
    if (!h.ok()) return h.status();
    TZR_RETURN_IF_ERROR(CheckHeaderMatchesEntry(*h, e));
    TensorState& ts = tensors[t];
    ts.header = std::move(h).value();
    if (index->header.has_crypt_info()) TZR_RETURN_IF_ERROR(PrepareDecryption(t, p));
    bool has_crc = false, has_sha = false;
    for (const StoredHash& sh : ts.header.hashes) {
      has_crc |= sh.type == HashType::kCrc32;
      has_sha |= sh.type == HashType::kSha256;
    }
    // Decrypting is verifying. The MACs prove each chunk came from the key's
    // holder, but not which tensor it belongs to nor that no chunk is
    // missing: swapped records or a cut last chunk decrypt cleanly. The
    // SHA-256 of the plaintext (and of the header: name, shape, length),
    // which an attacker without the key cannot recompute, catches both, so
    // it is checked whatever `verify` says, while each chunk is in cache.
    const bool sealed = ts.sealed.has_value();
    if (sealed && !has_sha) {
      return Status::Cryptography("tensor '" + internal::DisplayName(e.name) + "' in " + source->uri() +
                                  " is encrypted but stores no SHA-256 of its plaintext, so "
                                  "its decrypted data cannot be checked");
    }
    if (options.verify != HashCheck::kNone || sealed) {
      ts.hasher =
          std::make_unique<internal::TensorHasher>(options.verify == HashCheck::kAll || !has_crc);
      std::string hashed = HashedHeaderBytes(p, ts.header);
      ts.hasher->Update(hashed.data(), hashed.size());
      if (e.data_length == 0) return FinishHashes(t);
    }
    return Status::Ok();
  }

  // Reads the tensor's crypt-info and sets up its key and chunk layout.
  Status PrepareDecryption(uint32_t t, const uint8_t* header) {
    TensorState& ts = tensors[t];
    const TensorEntry& e = index->entries[plan.tensors[t].entry];
    const std::string what = "tensor '" + internal::DisplayName(e.name) + "'";
    auto info = ParseCryptInfo(header + ts.header.crypt_info_offset + 8,
                               ts.header.crypt_info_size - 8);
    if (!info.ok()) return info.status().WithContext(what);
    if (!info->encrypted()) {
      if (e.data_length > 0 && options.decryption) {
        return Status::Cryptography(what + ": Tensor is not encrypted, but decryption was requested");
      }
      return Status::Ok();  // meta tensors carry an empty crypt-info
    }
    if (!options.decryption) {
      return Status::Cryptography(what + ": Tensor is encrypted, but decryption was not requested");
    }
    const DecryptionOptions& d = *options.decryption;
    if (d.key) {
      ts.key = *d.key;
    } else {
      const KeyDerivationChunk* kdf = info->key_derivation();
      if (kdf == nullptr) {
        return Status::Cryptography(
            what +
            ": Source string was provided, but the tensor was not originally encrypted using a "
            "source string (e.g. EncryptionParams.from_string()). DecryptionParams.from_key() "
            "must be used instead");
      }
      auto key = keys->Get(d.passphrase.value_or(""), kdf->pwhash, d.max_pwhash_opslimit,
                           d.max_pwhash_memlimit);
      if (!key.ok()) return key.status().WithContext(what);
      ts.key = *key;
    }
    auto layout = SealedChunksOf(*info, e.data_length);
    if (!layout.ok()) return layout.status().WithContext(what);
    ts.sealed = std::move(layout).value();
    // Nothing to wait for: an empty tensor's lone chunk (if any) opens now.
    return ring ? OpenArrivedChunks(t, arena->data(), 0, 0) : OpenArrivedChunks(t);
  }

  Status OpenArrivedChunks(uint32_t t) {
    return OpenArrivedChunks(t, arena->data() + plan.tensors[t].arena_offset, 0,
                             tensors[t].sealed->data_bytes);
  }

  // Decrypts every chunk whose bytes have all arrived, in order, and feeds
  // the plaintext to the hashers. `window` holds the tensor's data from
  // byte `window_offset` on, `window_bytes` of it (zeroed on failure).
  Status OpenArrivedChunks(uint32_t t, uint8_t* window, uint64_t window_offset,
                           uint64_t window_bytes) {
    TensorState& ts = tensors[t];
    const SealedChunks& sc = *ts.sealed;
    while (ts.chunks_opened < sc.count() &&
           sc.offset(ts.chunks_opened) + sc.length(ts.chunks_opened) <= ts.data_received) {
      size_t i = ts.chunks_opened;
      uint8_t* chunk = window + (sc.offset(i) - window_offset);
      Status st = DecryptChunk(ts.key, sc.nonce0, i, chunk, sc.length(i), sc.macs[i]);
      if (!st.ok()) {
        std::memset(window, 0, window_bytes);  // never leave partial plaintext
        const TensorEntry& e = index->entries[plan.tensors[t].entry];
        return st.WithContext("tensor '" + internal::DisplayName(e.name) + "' in " + source->uri());
      }
      ++ts.chunks_opened;
      if (ts.hasher) TZR_RETURN_IF_ERROR(HashData(t, chunk, sc.length(i)));
    }
    return Status::Ok();
  }

  Status HashData(uint32_t t, const uint8_t* data, uint64_t length) {
    TensorState& ts = tensors[t];
    ts.hasher->Update(data, length);
    ts.data_hashed += length;
    if (ts.data_hashed == index->entries[plan.tensors[t].entry].data_length) return FinishHashes(t);
    return Status::Ok();
  }

  Status RunRead(const ReadOp& op) {
    iovec iov[512];
    std::vector<iovec> big;
    iovec* v = op.segment_count <= 512 ? iov : (big.resize(op.segment_count), big.data());
    for (uint32_t s = 0; s < op.segment_count; ++s) {
      const ReadSegment& seg = plan.segments[op.first_segment + s];
      uint8_t* base = seg.header ? headers.data() : arena->data();
      v[s] = iovec{base + seg.dst_offset, seg.length};
    }
    TZR_RETURN_IF_ERROR(source->ReadAtV(op.file_offset, v, static_cast<int>(op.segment_count)));
    bytes_read += op.length;
    uint32_t last_tensor = UINT32_MAX;
    for (uint32_t s = 0; s < op.segment_count; ++s) {
      const ReadSegment& seg = plan.segments[op.first_segment + s];
      if (seg.header) {
        TZR_RETURN_IF_ERROR(OnHeader(seg.tensor).WithContext("reading " + source->uri()));
      } else if (tensors[seg.tensor].sealed) {
        tensors[seg.tensor].data_received += seg.length;
        TZR_RETURN_IF_ERROR(OpenArrivedChunks(seg.tensor));
      } else if (tensors[seg.tensor].hasher) {
        TZR_RETURN_IF_ERROR(HashData(seg.tensor, arena->data() + seg.dst_offset, seg.length));
      }
      // Count each tensor once per read, after its last segment here.
      bool last_of_tensor =
          s + 1 == op.segment_count || plan.segments[op.first_segment + s + 1].tensor != seg.tensor;
      if (last_of_tensor && seg.tensor != last_tensor) {
        last_tensor = seg.tensor;
        if (tensors[seg.tensor].reads_left.fetch_sub(1) == 1) Publish(seg.tensor);
      }
    }
    return Status::Ok();
  }

  // Fills staging buffer `b` from `op`; the copies and the tensors to
  // count go to `batch`.
  Status FillStaged(const ReadOp& op, uint32_t b, internal::StagedBatch* batch) {
    uint8_t* buf = ring->data(b);
    std::vector<iovec> v(op.segment_count);
    std::vector<uint64_t> window_at(op.segment_count);  // where each data window starts
    uint64_t pos = 0;
    for (uint32_t s = 0; s < op.segment_count; ++s) {
      const ReadSegment& seg = plan.segments[op.first_segment + s];
      if (seg.header) {
        v[s] = iovec{headers.data() + seg.dst_offset, seg.length};
        continue;
      }
      std::vector<uint8_t>& carry = tensors[seg.tensor].carry;
      if (pos + carry.size() + seg.length > ring->buffer_bytes()) {
        const TensorEntry& e = index->entries[plan.tensors[seg.tensor].entry];
        return Status::InvalidArgument(
            "tensor '" + internal::DisplayName(e.name) + "' in " + source->uri() + ": " +
            std::to_string(carry.size() + seg.length) + " bytes (a read" +
            (carry.empty() ? "" : " and the part of an encrypted chunk before it") +
            ") do not fit a staging buffer of " + std::to_string(ring->buffer_bytes()) +
            " bytes; use larger staging buffers");
      }
      window_at[s] = pos;
      std::memcpy(buf + pos, carry.data(), carry.size());
      pos += carry.size();
      v[s] = iovec{buf + pos, seg.length};
      pos += seg.length;
    }
    TZR_RETURN_IF_ERROR(source->ReadAtV(op.file_offset, v.data(), static_cast<int>(op.segment_count)));
    bytes_read += op.length;
    batch->buffer = b;
    for (uint32_t s = 0; s < op.segment_count; ++s) {
      const ReadSegment& seg = plan.segments[op.first_segment + s];
      const uint32_t t = seg.tensor;
      TensorState& ts = tensors[t];
      if (seg.header) {
        TZR_RETURN_IF_ERROR(OnHeader(t).WithContext("reading " + source->uri()));
      } else {
        const uint64_t data_at = seg.dst_offset - plan.tensors[t].arena_offset;
        const uint64_t dst = options.staging->destinations[t];
        uint8_t* window = buf + window_at[s];
        if (ts.sealed) {
          const uint64_t carried = ts.carry.size();
          const uint64_t from = data_at - carried;
          ts.carry.clear();
          ts.data_received += seg.length;
          TZR_RETURN_IF_ERROR(OpenArrivedChunks(t, window, from, carried + seg.length));
          const SealedChunks& sc = *ts.sealed;
          const uint64_t opened =
              ts.chunks_opened == sc.count() ? sc.data_bytes : sc.offset(ts.chunks_opened);
          if (opened > from) {
            batch->regions.push_back({window_at[s], dst + from, opened - from});
          }
          ts.carry.assign(window + (opened - from), window + carried + seg.length);
        } else {
          if (ts.hasher) TZR_RETURN_IF_ERROR(HashData(t, window, seg.length));
          batch->regions.push_back({window_at[s], dst + data_at, seg.length});
        }
      }
      bool last_of_tensor =
          s + 1 == op.segment_count || plan.segments[op.first_segment + s + 1].tensor != t;
      if (last_of_tensor && (batch->tensors.empty() || batch->tensors.back() != t)) {
        batch->tensors.push_back(t);
      }
    }
    return Status::Ok();
  }

  Status RunStagedRead(const ReadOp& op) {
    auto b = ring->Acquire(*cancel);
    if (!b.ok()) return b.status().WithContext("loading " + source->uri());
    internal::StagedBatch batch;
    Status st = FillStaged(op, *b, &batch);
    if (!st.ok()) {
      ring->Release(*b);
      return st;
    }
    ring->Submit(std::move(batch));
    return Status::Ok();
  }

  // The copy stage's thread: counts each landed read against its tensors.
  void CopyStage() {
    Status st = ring->RunCopies(*cancel, [this](const std::vector<uint32_t>& landed) {
      for (uint32_t t : landed) {
        if (tensors[t].reads_left.fetch_sub(1) == 1) Publish(t);
      }
    });
    if (!st.ok()) Fail(st.WithContext("loading " + source->uri()));
    std::lock_guard<std::mutex> lock(mu);
    --workers_running;
    cv.notify_all();
  }

  void Work() {
    CancelScope scope(cancel);
    while (!failed) {
      size_t j = next_job.fetch_add(1);
      if (j >= plan.job_count()) break;
      for (uint32_t r = plan.job_starts[j]; r < plan.job_end(j) && !failed; ++r) {
        Status st = cancel->cancelled() ? CancelledStatus("loading " + source->uri())
                    : ring             ? RunStagedRead(plan.reads[r])
                                       : RunRead(plan.reads[r]);
        if (!st.ok()) {
          Fail(st);
          break;
        }
      }
    }
    if (ring) ring->ProducerDone();
    std::lock_guard<std::mutex> lock(mu);
    --workers_running;
    cv.notify_all();
  }
};

Load::Load(std::unique_ptr<State> state) : state_(std::move(state)) {}

Load::~Load() {
  // Stop taking jobs, and stop the reads in flight.
  state_->failed = true;
  state_->cancel->Cancel();
  for (auto& t : state_->workers) t.join();
}

void Load::Cancel() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.workers_running == 0) return;  // finished, or failed already
  if (s.error.ok()) s.error = CancelledStatus("loading " + s.source->uri());
  s.failed = true;
  s.cancel->Cancel();
  s.cv.notify_all();
}

ResolvedLoadOptions ResolveLoadOptions(const LoadOptions& options, const LoadContext& context) {
  ResolvedLoadOptions r;
  r.threads = options.num_threads > 0
                  ? options.num_threads
                  : std::max({1, context.available_cores, context.source_concurrency});
  r.verify = context.format == FileFormat::kSafetensors ? HashCheck::kNone : options.verify;
  // Encrypted tensors are opened chunk by chunk in order, after their
  // header (which holds the MACs): like hashing, that needs whole-tensor
  // jobs.
  r.whole_tensor_jobs = r.verify != HashCheck::kNone || context.encrypted;
  r.chunk_bytes = r.whole_tensor_jobs ? std::min(options.chunk_bytes, kHashedChunkBytes)
                                      : options.chunk_bytes;
  return r;
}

LoadContext LoadContextOf(const Source& source, const Index& index) {
  LoadContext c;
  c.available_cores = AvailableCores();
  c.source_concurrency = source.concurrency_hint();
  c.format = index.format;
  c.encrypted = index.header.has_crypt_info();
  return c;
}

Result<std::unique_ptr<Load>> Load::Start(std::shared_ptr<const Source> source,
                                          std::shared_ptr<const Index> index,
                                          const std::vector<size_t>& selected,
                                          const LoadOptions& options) {
  auto st = std::make_unique<State>();
  const ResolvedLoadOptions resolved = ResolveLoadOptions(options, LoadContextOf(*source, *index));
  PlanOptions po;
  po.chunk_bytes = resolved.chunk_bytes;
  po.whole_tensor_jobs = resolved.whole_tensor_jobs;
  // A load that will read with O_DIRECT gets an arena laid out so the
  // file's blocks land on aligned memory, straight from the device. One
  // whose bytes are mostly in the page cache (auto mode reads it buffered)
  // keeps the 64-byte slots of a buffered load.
  auto file = FileReadStatsOf(*source);
  if (file && file->direct_block_bytes != 0 && !selected.empty() && !options.staging) {
    const TensorEntry& first = index->entries[selected.front()];
    const TensorEntry& last = index->entries[selected.back()];
    if (WouldReadDirect(*source, first.header_offset, last.record_end() - first.header_offset)) {
      po.direct_block_bytes = file->direct_block_bytes;
    }
  }
  internal::RingShape ring_shape{};
  if (options.staging) {
    if (!options.staging->device || options.staging->destinations.size() != selected.size()) {
      return Status::InvalidArgument("a staged load needs a device and one destination per tensor");
    }
    uint64_t load_bytes = 0;
    for (size_t e : selected) {
      if (e < index->entries.size()) load_bytes += index->entries[e].data_length;
    }
    ring_shape = internal::ChooseRingShape(*options.staging, resolved.threads, load_bytes);
    // A read's data fills at most one buffer; an encrypted one leaves room
    // for the part of a chunk carried over from the read before.
    uint64_t fits = index->header.has_crypt_info() ? ring_shape.buffer_bytes / 2
                                                   : ring_shape.buffer_bytes;
    po.chunk_bytes = std::max<uint64_t>(std::min(po.chunk_bytes, fits), 1);
  }
  auto plan = MakeLoadPlan(*index, selected, po);
  if (!plan.ok()) return plan.status().WithContext("planning load of " + source->uri());
  st->plan = std::move(plan).value();
  st->source = std::move(source);
  st->index = std::move(index);
  st->options = options;
  st->cancel = std::make_shared<CancelFlag>(CurrentCancelFlag());
  st->keys = options.decryption && options.decryption->derived_keys
                 ? options.decryption->derived_keys
                 : std::make_shared<DerivedKeyCache>();
  st->options.verify = resolved.verify;
  auto arena = Arena::Allocate(options.staging ? 0 : st->plan.arena_bytes, options.huge_pages);
  if (!arena.ok()) return arena.status().WithContext("loading " + st->source->uri());
  st->arena = std::move(arena).value();
  st->headers.resize(st->plan.header_bytes);
  st->tensors = std::vector<TensorState>(st->plan.tensors.size());
  for (size_t i = 0; i < st->plan.tensors.size(); ++i) {
    st->tensors[i].reads_left = st->plan.tensors[i].read_count;
    // A safetensors tensor with no elements has nothing to read.
    st->tensors[i].ready = st->plan.tensors[i].read_count == 0;
  }
  int threads = std::max(1, std::min<int>(resolved.threads, static_cast<int>(st->plan.job_count())));
  if (st->plan.job_count() == 0) threads = 0;
  State* raw = st.get();
  if (options.staging) {
    auto ring = internal::StagingRing::Create(options.staging->device, ring_shape.count,
                                              ring_shape.buffer_bytes, static_cast<size_t>(threads));
    if (!ring.ok()) return ring.status().WithContext("loading " + raw->source->uri());
    raw->ring = std::move(ring).value();
  }
  raw->workers_running = static_cast<size_t>(threads) + (raw->ring ? 1 : 0);
  for (int i = 0; i < threads; ++i) raw->workers.emplace_back([raw] { raw->Work(); });
  // Joined after the workers (the destructor joins in order).
  if (raw->ring) raw->workers.emplace_back([raw] { raw->CopyStage(); });
  return std::unique_ptr<Load>(new Load(std::move(st)));
}

std::optional<Status> Load::WaitTensorFor(size_t i, std::chrono::milliseconds timeout) {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  auto done = [&] { return s.tensors[i].ready || !s.error.ok() || s.workers_running == 0; };
  if (timeout == std::chrono::milliseconds::max()) {
    s.cv.wait(lock, done);
  } else if (!s.cv.wait_for(lock, timeout, done)) {
    return std::nullopt;
  }
  if (s.tensors[i].ready) return Status::Ok();
  if (!s.error.ok()) return s.error;
  return Status::IoError("load of " + s.source->uri() + " ended before tensor " +
                         std::to_string(i) + " was read");
}

std::optional<Status> Load::WaitFor(std::chrono::milliseconds timeout) {
  State& s = *state_;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    auto done = [&] { return s.workers_running == 0; };
    if (timeout == std::chrono::milliseconds::max()) {
      s.cv.wait(lock, done);
    } else if (!s.cv.wait_for(lock, timeout, done)) {
      return std::nullopt;
    }
    if (!s.error.ok()) return s.error;
  }
  for (size_t i = 0; i < s.tensors.size(); ++i) TZR_RETURN_IF_ERROR(WaitTensor(i));
  return Status::Ok();
}

Status Load::WaitTensor(size_t i) { return *WaitTensorFor(i, std::chrono::milliseconds::max()); }

Status Load::Wait() { return *WaitFor(std::chrono::milliseconds::max()); }

size_t Load::tensor_count() const { return state_->plan.tensors.size(); }
const TensorEntry& Load::entry(size_t i) const {
  return state_->index->entries[state_->plan.tensors[i].entry];
}
const TensorHeader& Load::header(size_t i) const { return state_->tensors[i].header; }
std::string Load::hashed_header(size_t i) const {
  return HashedHeaderBytes(state_->headers.data() + state_->plan.tensors[i].header_offset,
                           state_->tensors[i].header);
}
uint64_t Load::arena_offset(size_t i) const { return state_->plan.tensors[i].arena_offset; }
uint64_t Load::arena_bytes(size_t i) const { return state_->plan.tensors[i].arena_bytes; }
const std::shared_ptr<Arena>& Load::arena() const { return state_->arena; }
uint64_t Load::bytes_read() const { return state_->bytes_read; }
StagingStats Load::staging_stats() const {
  return state_->ring ? state_->ring->stats() : StagingStats{};
}

}  // namespace tensorizer
