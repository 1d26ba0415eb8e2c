// Mapped loads: tensors as views on a private mapping of a local file.
//
// FileMapping maps a whole local file copy-on-write (MAP_PRIVATE, readable
// and writable, MAP_NORESERVE). Its pages are the page cache's: mapping costs
// no memory until a page is touched, a touched page is shared with every
// other process that maps or reads the file, and a page written to becomes a
// private anonymous copy, so the file itself is never modified. It lives as
// long as any holder of its shared_ptr.
//
// MappedLoad: the mapped counterpart of Load (tensorizer/load.h), for one
// selection of an Index read from the same Source. It checks each selected
// tensor header against the index exactly as Load does (ParseTensorHeader,
// CheckHeaderMatchesEntry, hashes when asked), from the mapped bytes. A
// tensor whose data offset is a multiple of its dtype's alignment (the
// element size, capped at 8) is handed out as a view on the mapping; any
// other tensor (tensorizer writes data right after a variable-length header,
// so most tensors of its files are unaligned), and every meta tensor, gets a
// copy in an anonymous Arena. WriterOptions::data_alignment_bytes writes
// files whose tensors all map.
//
// Sizes: the index is checked against the file's size when the source was
// opened; Map refuses a file that has shrunk below that size since, so no
// byte the index points at lies past the end of the mapping. A file
// truncated by another process *after* it was mapped makes touching the lost
// pages raise SIGBUS: map only files that are replaced by rename, never
// rewritten in place.
//
// Encrypted files (their tensors must be decrypted into memory) and sources
// that are not local files are refused with kInvalidArgument.
//
// Thread-safety: a FileMapping and a finished MappedLoad are immutable and
// may be read from any thread. MappedLoad::Run runs synchronously, on up to
// num_threads threads, and checks the calling thread's cancel flag.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace tensorizer {

class FileMapping {
 public:
  // Maps bytes [0, source.size()) of the file behind a local file or
  // descriptor source.
  static Result<std::shared_ptr<FileMapping>> Map(const Source& source);
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  FileMapping(uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  uint8_t* data_;
  uint64_t size_;
};

// The alignment a tensor's data needs to be used in place: the element size
// when it is 1, 2, 4 or 8, 8 for wider elements (complex128), else the
// largest power of two dividing it.
uint64_t MappedAlignment(const DtypeInfo& dtype);

struct MappedLoadOptions {
  int num_threads = 0;  // 0: one per available core (for copies and hashing)
  HashCheck verify = HashCheck::kNone;
  bool huge_pages = true;  // for the arena of copied tensors
};

struct MappedTensor {
  size_t entry = 0;       // index into Index::entries
  bool mapped = false;    // a view on the mapping, else a copy in the arena
  uint64_t offset = 0;    // mapped: the file offset of its data; else the arena offset
  uint64_t bytes = 0;     // data bytes (meta tensors: their zero-filled size)
  bool meta = false;
  TensorHeader header;    // empty for safetensors files
  std::string hashed_header;  // the bytes its hashes cover before the data
};

class MappedLoad {
 public:
  // `selected`: increasing entry indices of `index`, read from `source`;
  // `mapping`: a mapping of that source (FileMapping::Map), shared by every
  // load of the file.
  static Result<MappedLoad> Run(const Source& source, const Index& index,
                                std::shared_ptr<FileMapping> mapping,
                                const std::vector<size_t>& selected,
                                const MappedLoadOptions& options);

  const std::shared_ptr<FileMapping>& mapping() const { return mapping_; }
  // Holds the copied tensors; null when none was copied.
  const std::shared_ptr<Arena>& arena() const { return arena_; }
  const std::vector<MappedTensor>& tensors() const { return tensors_; }
  size_t copied_count() const { return copied_count_; }
  uint64_t copied_bytes() const { return copied_bytes_; }
  uint64_t mapped_bytes() const { return mapped_bytes_; }

 private:
  std::shared_ptr<FileMapping> mapping_;
  std::shared_ptr<Arena> arena_;
  std::vector<MappedTensor> tensors_;
  size_t copied_count_ = 0;
  uint64_t copied_bytes_ = 0;
  uint64_t mapped_bytes_ = 0;
};

}  // namespace tensorizer
