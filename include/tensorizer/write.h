// Writing .tensors files.
//
// Sink: positional writes to the destination, plus the commit step. A file
// sink opened by path writes to a temporary name beside the target and
// renames it over the target only in Commit(), so a failed or abandoned save
// leaves nothing under the target name; Abort() removes the temporary file.
//
// Writer: appends tensors in batches. For each batch it lays out the records
// after the current end, pre-allocates the space, then hashes and writes the
// records in parallel (each worker hashes a piece and writes it while it is
// still in cache), and finally rewrites the metadata block, the terminator and
// the file header. With data_alignment_bytes, each header is padded so its
// data starts aligned. The file is a valid .tensors file after every Write(), as
// with tensorizer. The data version is the lowest one the content needs
// (1; 2 for opaque dtypes; 4 for meta tensors; 5 for a dimension >= 2^32).
//
// Cancellation (tensorizer/cancel.h): Write() and Close() check the calling
// thread's cancel flag between pieces of at most chunk_bytes (2 MiB when
// encrypting), and the sinks check it in their transfers and waits; a
// cancelled save returns kCancelled and is aborted, as after any error.
//
// Thread-safety: one Writer is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tensorizer/crypto.h"
#include "tensorizer/format.h"
#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace tensorizer {

namespace internal {
class TensorHasher;
}

class Sink {
 public:
  virtual ~Sink() = default;
  virtual Status WriteAt(uint64_t offset, const void* data, uint64_t length) = 0;
  // Reserves [offset, offset + length) ahead of the writes; best effort.
  virtual void Preallocate(uint64_t offset, uint64_t length) = 0;
  virtual Status Commit() = 0;
  virtual void Abort() = 0;
  virtual const std::string& uri() const = 0;
  // True for sinks that publish nothing before Commit() and can take each
  // byte past the file-header region [0, kFirstTensorOffset) only once (an
  // S3 multipart upload sends a part as soon as all its bytes are written).
  // The Writer then skips the per-batch trailer that keeps a file valid
  // after every write, since nobody can see the object before Commit().
  virtual bool writes_once() const { return false; }
};

// Writes `path` through a temporary file beside it, ".<name>.tzr-tmp-...",
// that takes the replaced file's owner and mode, and is synced and renamed
// over `path` on Commit(), then the directory is synced. A symlink is
// followed; a target that is not a regular file (FIFO, device, directory)
// is refused. An existing file whose directory refuses the temporary, or
// whose owner the temporary cannot take, is written in place instead
// (truncated on Abort()). Temporaries left by dead processes on this host
// are removed by the next save to the same name. docs/storage.md has the
// details and the cost of the syncs.
Result<std::unique_ptr<Sink>> CreateFileSink(const std::string& path);
// Writes into a descriptor the caller owns (duplicated here). No rename and
// no sync: Commit() only closes the duplicate; Abort() leaves the file.
Result<std::unique_ptr<Sink>> CreateFdSink(int fd, const std::string& name);

// How an S3 sink uploads: a multipart upload of part_bytes parts,
// parallel_uploads at a time. Host memory holds at most the first part (sent
// last, once the file header is final), the parts being filled, and
// max_queued_parts complete parts waiting for an upload slot; a writer that
// gets further ahead blocks until a slot frees.
struct S3UploadOptions {
  uint64_t part_bytes = 16ull << 20;  // S3's minimum is 5 MiB (the last part may be less)
  int parallel_uploads = 4;
  int max_queued_parts = 4;
  // Parts double in size (up to S3's 5 GiB) after every this many, so an
  // object of unknown size always fits in S3's 10,000 parts: with the
  // defaults the first 1000 parts hold 15.6 GiB and all of them ~13 TiB.
  int parts_per_size_step = 1000;
};

// Streams an s3://bucket/key upload. The object appears only on Commit()
// (CompleteMultipartUpload); Abort() and any failed request abort the
// upload, so no partial object is ever visible.
Result<std::unique_ptr<Sink>> CreateS3Sink(const std::string& uri, const S3Options& s3,
                                           const HttpOptions& http,
                                           const S3UploadOptions& upload = S3UploadOptions());

struct SinkOptions {
  HttpOptions http;
  S3Options s3;
  S3UploadOptions s3_upload;
};

// Picks the backend from the URI scheme: s3:// or a local path (file://).
Result<std::unique_ptr<Sink>> CreateSink(const std::string& uri,
                                         const SinkOptions& options = SinkOptions());

struct TensorWrite {
  std::string name;
  TensorType type = TensorType::kParam;
  uint16_t module_idx = 0;
  std::string dtype;
  std::vector<uint64_t> shape;
  const uint8_t* data = nullptr;  // data_length bytes; unused for meta tensors
  uint64_t data_length = 0;
  bool meta = false;  // stored with its shape but no data
};

// Encrypt every tensor with data: XSalsa20-Poly1305 in 2 MiB chunks with a
// fresh random nonce per tensor, MACs in the header, SHA-256 only (no
// plaintext CRC32), as tensorizer does. `key_derivation` records how the key
// came from a passphrase (Argon2id parameters and salt) so a reader can
// derive it again; leave it empty for exact or random keys.
struct WriterEncryption {
  CryptKey key{};
  std::optional<KeyDerivationChunk> key_derivation;
};

struct WriterOptions {
  int num_threads = 0;  // 0: one per available core
  uint64_t chunk_bytes = 8ull << 20;
  std::optional<WriterEncryption> encryption;
  // When > 1 (a power of two, at most kMaxDataAlignment): pad each tensor
  // header with zero bytes so that its data starts at a file offset that is
  // a multiple of this, and a mapped load (tensorizer/mapped.h) can use
  // every tensor in place. Readers skip the padding (docs/format.md §7.1):
  // tensorizer 2.12.1 loads such files. 0 or 1: no padding, the bytes
  // tensorizer writes.
  uint64_t data_alignment_bytes = 0;
};

inline constexpr uint64_t kMaxDataAlignment = 4096;

class Writer {
 public:
  // Writes the provisional header and the empty metadata block.
  static Result<std::unique_ptr<Writer>> Create(std::unique_ptr<Sink> sink,
                                                const WriterOptions& options);
  ~Writer();  // aborts unless closed

  // Appends a batch. On any error the save is abandoned (as by Abort()).
  Status Write(const std::vector<TensorWrite>& tensors);
  // Finalizes and commits. After an error the writer is aborted instead.
  Status Close();
  void Abort();

  uint32_t version() const { return header_.version; }
  uint64_t tensor_size() const { return header_.tensor_size; }
  uint64_t tensor_count() const { return header_.tensor_count; }
  bool closed() const { return closed_; }

 private:
  struct Record {
    TensorRecordSpec spec;
    uint64_t header_offset;
    uint64_t data_offset;
  };
  Writer(std::unique_ptr<Sink> sink, const WriterOptions& options)
      : sink_(std::move(sink)), options_(options) {}
  Status WriteBatch(const std::vector<TensorWrite>& tensors);
  CryptInfo SizedCryptInfo(const TensorRecordSpec& spec, bool meta) const;
  Status WritePlain(const Record& r, const uint8_t* data, internal::TensorHasher* hasher,
                    EncodedHeader* h);
  Status WriteSealed(const Record& r, const uint8_t* data, internal::TensorHasher* hasher,
                     EncodedHeader* h);
  Status WriteTrailer();
  // kCancelled once the calling thread's cancel flag is set.
  Status CheckCancel() const;

  std::unique_ptr<Sink> sink_;
  WriterOptions options_;
  FileHeader header_;
  std::vector<Record> records_;
  uint64_t end_ = kFirstTensorOffset;  // where the next record goes
  bool closed_ = false;
  bool broken_ = false;
};

}  // namespace tensorizer
