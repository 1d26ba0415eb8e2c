// Converting between .tensors and safetensors files, and copying files.
//
// Both read from any URI OpenSource() opens (a local path, file://,
// http(s)://, s3://, redis://) and write to a local path, a file:// URI or
// an s3:// object (CreateSink()); the options carry the SourceOptions and
// SinkOptions (endpoints, credentials, TLS, timeouts, retries, S3 part
// size) for the remote ends. Output is never visible half-written: a local
// destination is written under a temporary name beside it and renamed over
// it at the end, an s3:// one is a multipart upload completed at the end;
// on any failure the temporary file is removed or the upload aborted, so
// nothing appears (and an existing destination is left as it was).
//
// ConvertFile streams: it reads the input's index, then loads the tensors in
// batches of bounded size (`batch_bytes` of tensor data, or one tensor when a
// tensor is larger) through the same Load pipeline every load uses, and
// writes each batch before the batch after next is read, so at most two
// batches are in memory at once: the one being written and the one being
// read. The output is written front to back (batches follow the output's
// data order), so an S3 upload holds only a few parts besides them.
// CopyFile moves the bytes in chunks, a few at a time, through memory: one
// chunk per worker, plus an S3 upload's parts.
//
// What carries over between the formats:
//   safetensors -> .tensors: each key becomes a plain UTF-8 name of a
//     state-dict tensor (module_idx 0), in data order, with the dtype our
//     Python writer stores for the same torch dtype, so the file is
//     byte-identical to `TensorSerializer(path).write_state_dict(d)` of the
//     same tensors in the same order (unencrypted). The `__metadata__` map
//     has no place in a .tensors file and is dropped (ConvertResult says so).
//   .tensors -> safetensors: a plain name is the key; a path name (0x1E +
//     JSON array, e.g. ["layers", 0, "weight"]) becomes its components joined
//     by dots ("layers.0.weight"), as torch names state-dict entries; two
//     names that map to one key are an error. Meta tensors (stored without
//     data) are written as zeros, which is what loading them yields, in
//     tensorizer and here. Tensor types and module indices are dropped.
//     The tensors are ordered as the safetensors package orders them (see
//     SafetensorsOrder), so the output is byte-identical to
//     `safetensors.torch.save_file` of the same tensors.
//   .tensors -> .tensors and safetensors -> safetensors work too (to
//     encrypt, decrypt or re-key a file, or to normalise one).
//
// Thread-safety: pure functions and plain values, except that ConvertFile
// and CopyFile run worker threads of their own; the progress callback is
// called on the caller's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/status.h"
#include "tensorizer/write.h"

namespace tensorizer {

// --- safetensors encoding ----------------------------------------------------

// The safetensors dtype for a .tensors dtype string: "<f4" -> "F32",
// "<V2\0torch.bfloat16" -> "BF16" (the inverse of what
// ParseSafetensorsIndex maps). kInvalidArgument for a dtype safetensors has
// no name for (complex32 and complex128, float8_e4m3fnuz/e5m2fnuz, bits and
// sub-byte integers, big-endian data).
Result<std::string> SafetensorsDtype(std::string_view tensors_dtype);

// The safetensors key for a stored .tensors name: a plain name as it is (it
// must be valid UTF-8), a path name as its components joined by ".".
Result<std::string> SafetensorsKey(std::string_view stored_name);

struct SafetensorsTensor {
  std::string name;   // the key: valid UTF-8, unique, not "__metadata__"
  std::string dtype;  // a .tensors dtype string; see SafetensorsDtype
  std::vector<uint64_t> shape;
};

enum class SafetensorsOrder : uint8_t {
  // What the safetensors package (0.4 to 0.8) writes: by dtype, descending
  // in the order of its Dtype enum (U64, I64, F64, C64, F32, U32, I32, BF16,
  // F16, U16, I16, F8_E8M0, F8_E4M3, F8_E5M2, I8, U8, BOOL), then by name,
  // bytewise.
  kLikeSafetensorsPackage,
  kAsGiven,  // data in the order of the input
};

struct SafetensorsLayout {
  // Everything before the data: the u64 little-endian JSON length, then the
  // JSON padded with spaces to a multiple of 8 bytes.
  std::string header;
  std::vector<size_t> order;           // input indices in data order
  std::vector<uint64_t> data_offsets;  // per input tensor: absolute offset of its data
  std::vector<uint64_t> data_lengths;  // per input tensor
  uint64_t file_size = 0;
};

// The header the safetensors package writes for these tensors, byte for
// byte: {"__metadata__":{...},"name":{"dtype":"F32","shape":[2,3],
// "data_offsets":[b,e]},...} in compact JSON with serde_json's string
// escapes, tensors in data order, contiguous from data offset 0. The one
// difference: the package writes `__metadata__` entries in hash-map order,
// which changes from run to run; here they are sorted by key. Without
// `metadata` there is no `__metadata__` key (as with metadata=None); an
// empty map writes `"__metadata__":{}` (as metadata={} does).
// kInvalidArgument, naming the tensor, for a dtype with no safetensors name,
// a duplicate or invalid key, or a shape whose size overflows;
// kResourceExhausted for a header over kSafetensorsMaxHeader.
Result<SafetensorsLayout> EncodeSafetensorsHeader(
    const std::vector<SafetensorsTensor>& tensors,
    const std::optional<std::map<std::string, std::string>>& metadata = std::nullopt,
    SafetensorsOrder order = SafetensorsOrder::kLikeSafetensorsPackage);

// --- Conversion ----------------------------------------------------------------

enum class ConvertTo : uint8_t {
  kAuto,  // by the destination's extension (.tensors / .safetensors), else
          // the format that the input is not
  kTensors,
  kSafetensors,
};

struct ConvertOptions {
  ConvertTo to = ConvertTo::kAuto;
  // Hash check of .tensors input (safetensors files store no hashes).
  HashCheck verify = HashCheck::kNone;
  // For encrypted .tensors input; an error for input that is not encrypted.
  std::optional<DecryptionOptions> decryption;
  // Encrypts .tensors output; an error with safetensors output.
  std::optional<WriterEncryption> encryption;
  // Tensor data loaded per batch; two batches may be in memory at once.
  uint64_t batch_bytes = 128ull << 20;
  int num_threads = 0;  // per load and for the writer; 0: one per core
  // How to reach a remote input (HTTP timeouts and TLS, S3 endpoint and
  // credentials) and a remote output (the same, plus the S3 upload knobs).
  SourceOptions source;
  SinkOptions sink;
};

struct ConvertResult {
  FileFormat input_format = FileFormat::kTensorizer;
  FileFormat output_format = FileFormat::kTensorizer;
  uint32_t output_version = 0;  // .tensors data version written; 0 for safetensors
  uint64_t tensor_count = 0;
  uint64_t data_bytes = 0;  // tensor data written
  uint64_t file_size = 0;   // of the output
  uint64_t batches = 0;
  // Meta tensors of the input; with safetensors output they became zeros.
  uint64_t meta_tensors = 0;
  // Entries of the input's safetensors __metadata__ that .tensors output
  // could not keep (0 when nothing was dropped).
  uint64_t dropped_metadata_entries = 0;
  bool dropped_metadata = false;
};

// Converts `source_uri` (any URI OpenSource opens; the format is detected
// from its bytes) into a new file at `dest_uri`: a local path, a file:// URI
// or s3://bucket/key. Other destination schemes fail with kInvalidArgument
// (from CreateSink) before anything is loaded. The output format comes from
// ConvertOptions::to, else `dest_uri`'s extension.
Result<ConvertResult> ConvertFile(const std::string& source_uri, const std::string& dest_uri,
                                  const ConvertOptions& options = {});

// --- Copying ---------------------------------------------------------------------

struct CopyOptions {
  uint64_t chunk_bytes = 16ull << 20;
  int num_threads = 4;  // chunks copied at once
  // Called on the caller's thread every `progress_interval_ms` while copying
  // and once at the end, with the bytes copied so far and the total.
  // `done` counts bytes handed to the destination; an S3 upload sends its
  // first and last parts when the copy commits, after the last report of
  // less than `total`.
  std::function<void(uint64_t done, uint64_t total)> progress;
  int progress_interval_ms = 100;
  SourceOptions source;  // for a remote source
  SinkOptions sink;      // for an s3:// destination
};

// Copies `source_uri` (any URI OpenSource opens) to `dest`: a local file, an
// existing local directory (copied into under the source's base name), an
// s3://bucket/key object, or an s3:// URI ending in '/' (the base name is
// appended, as `aws s3 cp` does). Chunks are read and written in parallel;
// the destination appears only when every byte is written. Other
// destination schemes fail with kInvalidArgument. Returns the bytes copied.
Result<uint64_t> CopyFile(const std::string& source_uri, const std::string& dest,
                          const CopyOptions& options = {});

// True for a URI with a scheme other than file:// ("s3://b/k", "https://h/p").
bool IsRemoteUri(std::string_view uri);

}  // namespace tensorizer
