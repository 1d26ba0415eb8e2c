// Writer: see include/tensorizer/write.h for the contract.
//
// Order of a batch, chosen so that a crash mid-batch leaves the previous
// valid file header in place: (1) check that the metadata still fits, (2)
// preallocate, (3) hash + write every record in parallel, (4) metadata block,
// (5) terminator, (6) file header last.
#include "tensorizer/write.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include "format/hash.h"
#include "tensorizer/cancel.h"
#include "tensorizer/crypto.h"
#include "tensorizer/machine.h"

namespace tensorizer {

Result<std::unique_ptr<Writer>> Writer::Create(std::unique_ptr<Sink> sink,
                                               const WriterOptions& options) {
  const uint64_t align = options.data_alignment_bytes;
  if (align > kMaxDataAlignment || (align & (align - 1)) != 0) {
    sink->Abort();
    return Status::InvalidArgument("data alignment must be a power of two up to " +
                                   std::to_string(kMaxDataAlignment) + " bytes, not " +
                                   std::to_string(align));
  }
  std::unique_ptr<Writer> w(new Writer(std::move(sink), options));
  w->header_.metadata_length = kMetadataReserve;
  if (options.encryption) {
    // Version 3 says "crypt info in every header"; from version 4 on the
    // flag says it (and is written only then).
    w->header_.version = kVersionEncrypted;
    w->header_.flags |= kFlagEncrypted;
  }
  std::string start = EncodeFileHeader(w->header_);
  start.resize(kFirstTensorOffset, '\0');
  Status st = w->sink_->WriteAt(0, start.data(), start.size());
  if (!st.ok()) {
    w->Abort();
    return st;
  }
  return w;
}

Writer::~Writer() {
  if (!closed_) Abort();
}

void Writer::Abort() {
  if (closed_) return;
  sink_->Abort();
  closed_ = true;
  broken_ = true;
}

Status Writer::WriteTrailer() {
  uint64_t zero = 0;
  TZR_RETURN_IF_ERROR(sink_->WriteAt(end_, &zero, sizeof zero));
  std::string head = EncodeFileHeader(header_);
  return sink_->WriteAt(0, head.data(), head.size());
}

Status Writer::Write(const std::vector<TensorWrite>& tensors) {
  if (closed_) return Status::InvalidArgument("writing to " + sink_->uri() + " after close");
  // A failed write fails the save: nothing is left under the target name,
  // and Close() cannot commit a file without the caller's tensors.
  Status st = WriteBatch(tensors);
  if (!st.ok()) Abort();
  return st;
}

Status Writer::WriteBatch(const std::vector<TensorWrite>& tensors) {
  // Lay out the batch and the new header without touching the file yet.
  FileHeader next = header_;
  std::vector<Record> batch;
  std::vector<EncodedHeader> encoded;
  uint64_t pos = end_;
  for (const TensorWrite& t : tensors) {
    Record r;
    r.spec.name = t.name;
    r.spec.type = t.type;
    r.spec.module_idx = t.module_idx;
    r.spec.dtype = t.dtype;
    r.spec.shape = t.shape;
    r.spec.data_length = t.meta ? 0 : t.data_length;
    r.spec.long_shape = NeedsLongShape(t.shape);
    auto dinfo = ParseDtype(t.dtype);
    if (!dinfo.ok()) return dinfo.status().WithContext("tensor '" + t.name + "'");
    TensorEntry as_entry;
    as_entry.dtype = t.dtype;
    as_entry.shape = t.shape;
    auto expected = ExpectedDataLength(as_entry);
    if (!expected.ok()) return expected.status().WithContext("tensor '" + t.name + "'");
    if (!t.meta && *expected != t.data_length) {
      return Status::InvalidArgument(
          "tensor '" + t.name + "' has " + std::to_string(t.data_length) +
          " data bytes but its dtype and shape need " + std::to_string(*expected));
    }
    if (!dinfo->opaque_name.empty()) next.version = std::max(next.version, kVersionOpaque);
    if (t.meta) next.version = std::max(next.version, kVersionMeta);
    if (r.spec.long_shape) {
      next.version = std::max(next.version, kVersionLongShape);
      next.flags |= kFlagVersionedMetadata;
    }
    if (options_.encryption) {
      // Every header of an encrypted file holds a crypt-info block: empty
      // for meta tensors (which keep both hashes), else the cipher chunk.
      r.spec.include_crc32 = t.meta;
      r.spec.crypt_info_bytes = EncodedCryptInfoBytes(SizedCryptInfo(r.spec, t.meta));
    }
    auto h = EncodeTensorHeader(r.spec);
    if (h.ok() && options_.data_alignment_bytes > 1) {
      const uint64_t a = options_.data_alignment_bytes;
      r.spec.padding_bytes = (a - (pos + h->bytes.size()) % a) % a;
      if (r.spec.padding_bytes != 0) h = EncodeTensorHeader(r.spec);
    }
    if (!h.ok()) return h.status().WithContext("tensor '" + t.name + "'");
    r.header_offset = pos;
    r.data_offset = pos + h->bytes.size();
    pos = r.data_offset + r.spec.data_length;
    next.tensor_size += r.spec.data_length;
    next.tensor_count++;
    batch.push_back(r);
    encoded.push_back(std::move(h).value());
  }
  std::string metadata;
  const bool versioned = next.versioned_metadata();
  for (const auto* list : {&records_, &batch}) {
    for (const Record& r : *list) {
      auto entry = EncodeMetadataEntry(r.spec, r.header_offset, r.data_offset, versioned);
      if (!entry.ok()) return entry.status();
      metadata += *entry;
    }
  }
  if (metadata.size() > kMetadataReserve) {
    return Status::ResourceExhausted(
        "Metadata overflow: the index of " + std::to_string(next.tensor_count) + " tensors needs " +
        std::to_string(metadata.size()) + " bytes, more than the " +
        std::to_string(kMetadataReserve) + " reserved in " + sink_->uri());
  }

  broken_ = true;  // until the batch is fully written
  sink_->Preallocate(end_, pos + 8 - end_);

  // Largest records first, so the pool ends with small ones and stays busy.
  std::vector<size_t> order(batch.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return batch[a].spec.data_length > batch[b].spec.data_length;
  });
  std::atomic<size_t> next_item{0};
  std::mutex mu;
  Status first_error;
  // The pool works under the caller's cancel flag.
  const std::shared_ptr<const CancelFlag> cancel = CurrentCancelFlag();
  auto work = [&] {
    CancelScope scope(cancel);
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error.ok()) return;
      }
      size_t k = next_item.fetch_add(1);
      if (k >= order.size()) return;
      size_t i = order[k];
      const Record& r = batch[i];
      EncodedHeader& h = encoded[i];
      internal::TensorHasher hasher;
      std::string prefix = h.HashedPrefix();  // hash values are still zero
      hasher.Update(prefix.data(), prefix.size());
      const uint8_t* data = tensors[i].data;
      Status st = options_.encryption && !tensors[i].meta ? WriteSealed(r, data, &hasher, &h)
                                                          : WritePlain(r, data, &hasher, &h);
      if (st.ok()) {
        if (r.spec.include_crc32) {
          uint32_t crc = hasher.crc32();
          std::memcpy(h.bytes.data() + h.crc32_offset, &crc, 4);
        }
        std::string sha = hasher.FinishSha256();
        std::memcpy(h.bytes.data() + h.sha256_offset, sha.data(), 32);
        st = sink_->WriteAt(r.header_offset, h.bytes.data(), h.bytes.size());
      }
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = st;
        return;
      }
    }
  };
  int threads = options_.num_threads > 0 ? options_.num_threads : AvailableCores();
  threads = std::max(1, std::min<int>(threads, static_cast<int>(order.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  Status st = first_error;
  if (st.ok()) st = sink_->WriteAt(kMetadataStart, metadata.data(), metadata.size());
  if (st.ok()) {
    end_ = pos;
    header_ = next;
    for (Record& r : batch) records_.push_back(std::move(r));
    if (!sink_->writes_once()) st = WriteTrailer();
  }
  if (!st.ok()) return st;  // Write() aborts: the destination is inconsistent
  broken_ = false;
  return Status::Ok();
}

// The crypt-info a record will carry, with zero MACs and nonce: encoding it
// gives the size to reserve in the header before the data is sealed.
CryptInfo Writer::SizedCryptInfo(const TensorRecordSpec& spec, bool meta) const {
  CryptInfo info;
  if (meta) return info;
  if (options_.encryption->key_derivation)
    info.chunks.push_back(*options_.encryption->key_derivation);
  XSalsa20ParallelChunk cipher;
  cipher.macs.resize(CryptChunkCount(spec.data_length, cipher.chunk_bytes));
  info.chunks.push_back(cipher);
  return info;
}

Status Writer::WritePlain(const Record& r, const uint8_t* data, internal::TensorHasher* hasher,
                          EncodedHeader* h) {
  if (h->crypt_info_bytes) {
    // The empty crypt-info of a meta tensor in an encrypted file.
    auto empty = EncodeCryptInfo(CryptInfo{});
    if (!empty.ok()) return empty.status();
    std::memcpy(h->bytes.data() + h->crypt_info_offset, empty->data(), empty->size());
  }
  for (uint64_t done = 0; done < r.spec.data_length;) {
    TZR_RETURN_IF_ERROR(CheckCancel());
    uint64_t n = std::min(options_.chunk_bytes, r.spec.data_length - done);
    hasher->Update(data + done, n);
    TZR_RETURN_IF_ERROR(sink_->WriteAt(r.data_offset + done, data + done, n));
    done += n;
  }
  return Status::Ok();
}

// Per 2 MiB chunk: hash the plaintext, copy it to a scratch buffer, seal the
// copy (the caller's tensor is never modified) and write it; then the
// crypt-info with the MACs goes into the header.
Status Writer::WriteSealed(const Record& r, const uint8_t* data, internal::TensorHasher* hasher,
                           EncodedHeader* h) {
  const WriterEncryption& enc = *options_.encryption;
  CryptInfo info = SizedCryptInfo(r.spec, false);
  auto& cipher = std::get<XSalsa20ParallelChunk>(info.chunks.back());
  auto nonce = RandomNonce();
  if (!nonce.ok()) return nonce.status();
  cipher.nonce0 = *nonce;
  std::vector<uint8_t> scratch(std::min<uint64_t>(cipher.chunk_bytes, r.spec.data_length));
  for (size_t i = 0; i < cipher.macs.size(); ++i) {
    TZR_RETURN_IF_ERROR(CheckCancel());
    uint64_t off = i * cipher.chunk_bytes;
    uint64_t n = std::min<uint64_t>(cipher.chunk_bytes, r.spec.data_length - off);
    hasher->Update(data + off, n);
    std::memcpy(scratch.data(), data + off, n);
    TZR_RETURN_IF_ERROR(
        EncryptChunk(enc.key, cipher.nonce0, i, scratch.data(), n, &cipher.macs[i]));
    TZR_RETURN_IF_ERROR(sink_->WriteAt(r.data_offset + off, scratch.data(), n));
  }
  auto block = EncodeCryptInfo(info);
  if (!block.ok()) return block.status();
  if (block->size() != h->crypt_info_bytes) {
    return Status::InvalidArgument("crypt-info size changed while sealing");
  }
  std::memcpy(h->bytes.data() + h->crypt_info_offset, block->data(), block->size());
  return Status::Ok();
}

Status Writer::CheckCancel() const {
  return CancelRequested() ? CancelledStatus("saving " + sink_->uri()) : Status::Ok();
}

Status Writer::Close() {
  if (closed_) return Status::Ok();
  if (broken_) {
    Abort();
    return Status::IoError("an earlier write to " + sink_->uri() + " failed; nothing was saved");
  }
  Status st = CheckCancel();
  if (st.ok()) st = WriteTrailer();
  if (st.ok()) st = sink_->Commit();
  if (!st.ok()) {
    Abort();
    return st;
  }
  closed_ = true;
  return Status::Ok();
}

}  // namespace tensorizer
