// Mapped loads: see include/tensorizer/mapped.h for the contract.
//
// Steps: (1) walk the selection in file order, parsing and checking each
// tensor header from the mapping (as Load does when its bytes arrive) and
// deciding where each tensor's data will be: in place, or at a 64-byte slot
// of the copy arena (unaligned data, meta tensors); (2) allocate the arena;
// (3) on a pool of threads, copy each unaligned tensor and hash each tensor
// when verifying, piece by piece so each piece is hashed while in cache.
// Invariant: nothing is returned unless every header matched its entry and
// every requested hash matched.
#include "tensorizer/mapped.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>

#include "format/hash.h"
#include "storage/local_file.h"
#include "tensorizer/cancel.h"
#include "tensorizer/machine.h"

namespace tensorizer {

namespace {

constexpr uint64_t kSlotAlignment = 64;
// Copies and hashes go in pieces this size, small enough to still be in
// cache when hashed.
constexpr uint64_t kPieceBytes = 2ull << 20;

}  // namespace

Result<std::shared_ptr<FileMapping>> FileMapping::Map(const Source& source) {
  const std::string what = "mapping " + source.uri();
  const int fd = internal::LocalFileDescriptor(source);
  if (fd < 0) {
    return Status::InvalidArgument("cannot map " + source.uri() +
                                   ": mapped loads need a local file");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::FromErrno(what, errno);
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument("cannot map " + source.uri() +
                                   ": mapped loads need a regular file");
  }
  // The index was checked against the size at open; a shorter file now
  // would leave pages the index points at past the end of the mapping,
  // where a touch is SIGBUS.
  const uint64_t size = source.size();
  if (static_cast<uint64_t>(st.st_size) < size) {
    return Status::FormatError(what + ": the file shrank from " + std::to_string(size) + " to " +
                               std::to_string(st.st_size) +
                               " bytes since it was opened (was it truncated?)");
  }
  if (size == 0) return Status::FormatError(what + ": the file is empty");
  // Private and writable: writes to a tensor make private copies of its
  // pages and never reach the file. MAP_NORESERVE: no commit charge for the
  // whole file (which strict overcommit would refuse for a large model);
  // only pages actually written take anonymous memory.
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) return Status::FromErrno(what, errno);
  return std::shared_ptr<FileMapping>(new FileMapping(static_cast<uint8_t*>(p), size));
}

FileMapping::~FileMapping() { ::munmap(data_, size_); }

uint64_t MappedAlignment(const DtypeInfo& dtype) {
  const uint64_t n = dtype.itemsize;
  if (n == 0) return 1;
  return std::min<uint64_t>(n & (~n + 1), 8);  // lowest set bit, at most 8
}

Result<MappedLoad> MappedLoad::Run(const Source& source, const Index& index,
                                   std::shared_ptr<FileMapping> mapping,
                                   const std::vector<size_t>& selected,
                                   const MappedLoadOptions& options) {
  const std::string& uri = source.uri();
  if (index.header.has_crypt_info()) {
    return Status::InvalidArgument(uri +
                                   " is encrypted: a mapped load cannot decrypt tensors in "
                                   "place; load it without mapping");
  }
  if (!mapping || mapping->size() < source.size()) {
    return Status::InvalidArgument("mapped load of " + uri + " without a mapping of the file");
  }
  const bool safetensors = index.format == FileFormat::kSafetensors;
  MappedLoad out;
  out.mapping_ = std::move(mapping);
  const uint8_t* file = out.mapping_->data();
  uint64_t arena_end = 0;
  size_t previous = 0;
  for (size_t k = 0; k < selected.size(); ++k) {
    const size_t i = selected[k];
    if (i >= index.entries.size() || (k > 0 && i <= previous)) {
      return Status::InvalidArgument("mapped load of " + uri +
                                     ": the selection is not increasing entry indices");
    }
    previous = i;
    const TensorEntry& e = index.entries[i];
    // ParseIndex placed every record inside the file; the mapping covers it.
    if (e.record_end() > out.mapping_->size()) {
      return Status::FormatError("tensor '" + PrintableName(e.name) + "' lies past the end of " +
                                 uri);
    }
    MappedTensor t;
    t.entry = i;
    auto meta = IsMetaTensor(e);
    if (!meta.ok()) return meta.status();
    auto dtype = ParseDtype(e.dtype);
    if (!dtype.ok()) return dtype.status().WithContext("tensor '" + PrintableName(e.name) + "'");
    if (!safetensors) {
      const uint8_t* p = file + e.header_offset;
      auto h = ParseTensorHeader(p, e.header_length(), e.metadata_version == kVersionLongShape,
                                 false);
      Status st = h.ok() ? CheckHeaderMatchesEntry(*h, e) : h.status();
      TZR_RETURN_IF_ERROR(st.WithContext("reading " + uri));
      t.header = std::move(h).value();
      t.hashed_header = HashedHeaderBytes(p, t.header);
    }
    t.meta = *meta;
    if (t.meta) {
      auto n = ExpectedDataLength(e);
      if (!n.ok()) return n.status();
      t.bytes = *n;
    } else {
      t.bytes = e.data_length;
      t.mapped = e.data_offset % MappedAlignment(*dtype) == 0;
    }
    if (t.mapped) {
      t.offset = e.data_offset;
      out.mapped_bytes_ += t.bytes;
    } else {
      uint64_t slot = (arena_end + kSlotAlignment - 1) / kSlotAlignment * kSlotAlignment;
      if (slot < arena_end || __builtin_add_overflow(slot, t.bytes, &arena_end)) {
        return Status::ResourceExhausted("selected tensors exceed the address space");
      }
      t.offset = slot;
      if (!t.meta) {
        ++out.copied_count_;
        out.copied_bytes_ += t.bytes;
      }
    }
    out.tensors_.push_back(std::move(t));
  }
  if (arena_end > 0) {
    // Anonymous memory is zero: meta tensors need nothing more.
    auto arena = Arena::Allocate(arena_end, options.huge_pages);
    if (!arena.ok()) return arena.status().WithContext("loading " + uri);
    out.arena_ = std::move(arena).value();
  }

  // Work: a copy for each unaligned tensor, a hash for each tensor when
  // verifying (tensors without data: just their header).
  const bool verify = options.verify != HashCheck::kNone && !safetensors;
  std::vector<size_t> work;
  for (size_t k = 0; k < out.tensors_.size(); ++k) {
    const MappedTensor& t = out.tensors_[k];
    if ((!t.mapped && !t.meta && t.bytes > 0) || verify) work.push_back(k);
  }
  std::stable_sort(work.begin(), work.end(), [&](size_t a, size_t b) {
    return index.entries[out.tensors_[a].entry].data_length >
           index.entries[out.tensors_[b].entry].data_length;
  });
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first_error;
  std::atomic<bool> failed{false};
  const std::shared_ptr<const CancelFlag> cancel = CurrentCancelFlag();
  auto run_one = [&](const MappedTensor& t) -> Status {
    const TensorEntry& e = index.entries[t.entry];
    std::unique_ptr<internal::TensorHasher> hasher;
    if (verify) {
      bool has_crc = false;
      for (const StoredHash& h : t.header.hashes) has_crc |= h.type == HashType::kCrc32;
      hasher = std::make_unique<internal::TensorHasher>(options.verify == HashCheck::kAll ||
                                                        !has_crc);
      hasher->Update(t.hashed_header.data(), t.hashed_header.size());
    }
    const uint8_t* src = file + e.data_offset;
    uint8_t* dst = t.mapped || t.meta ? nullptr : out.arena_->data() + t.offset;
    for (uint64_t done = 0; done < e.data_length;) {
      if (failed) return Status::Ok();  // another tensor's error is reported
      if (CancelRequested()) return CancelledStatus("loading " + uri);
      const uint64_t n = std::min(kPieceBytes, e.data_length - done);
      const uint8_t* piece = src + done;
      if (dst != nullptr) {
        std::memcpy(dst + done, piece, n);
        piece = dst + done;
      }
      if (hasher) hasher->Update(piece, n);
      done += n;
    }
    if (!hasher) return Status::Ok();
    return internal::CheckStoredHashes(t.header.hashes, hasher.get(), e.name, uri);
  };
  auto worker = [&] {
    CancelScope scope(cancel);
    while (!failed) {
      const size_t k = next.fetch_add(1);
      if (k >= work.size()) return;
      Status st = run_one(out.tensors_[work[k]]);
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = st;
        failed = true;
      }
    }
  };
  int threads = options.num_threads > 0 ? options.num_threads : AvailableCores();
  threads = std::max(1, std::min<int>(threads, static_cast<int>(work.size())));
  std::vector<std::thread> pool;
  for (int i = 1; i < threads && !work.empty(); ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (!first_error.ok()) return first_error;
  return out;
}

}  // namespace tensorizer
