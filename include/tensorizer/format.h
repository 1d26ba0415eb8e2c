// The .tensors file format (tensorizer data versions 1-5), as pure functions.
//
// docs/format.md is the normative description; this header is its code. A
// file is: magic "|TZR|", a 60-byte file header, a u64 metadata length L and
// L bytes of metadata (one entry per tensor, then zero padding), then one
// record per tensor (a self-describing header immediately followed by the raw
// data), then eight zero bytes. All integers are little-endian, all offsets
// absolute. Writers reserve L = 262144, so the first tensor header sits at
// byte 262217.
//
// Parsing functions take a byte span and the total file size and check every
// length and offset against both before anything is allocated, so a hostile
// file can make them fail but never allocate more than the file justifies.
// Encoding functions produce exactly the bytes tensorizer 2.12.1 writes.
//
// Thread-safety: everything here is a pure function or a plain value.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tensorizer/status.h"

namespace tensorizer {

inline constexpr std::string_view kMagic = "|TZR|";
inline constexpr uint64_t kFileHeaderEnd = 65;        // magic + file header
inline constexpr uint64_t kMetadataStart = 73;        // after the u64 metadata length
inline constexpr uint64_t kMetadataReserve = 262144;  // what writers reserve
inline constexpr uint64_t kFirstTensorOffset = kMetadataStart + kMetadataReserve;
inline constexpr uint32_t kMinDataVersion = 1;
inline constexpr uint32_t kMaxDataVersion = 5;

// Data versions and the feature that first needs each one.
inline constexpr uint32_t kVersionPlain = 1;
inline constexpr uint32_t kVersionOpaque = 2;     // a dtype numpy cannot name
inline constexpr uint32_t kVersionEncrypted = 3;  // crypt-info in every header
inline constexpr uint32_t kVersionMeta = 4;       // meta tensors; feature flags
inline constexpr uint32_t kVersionLongShape = 5;  // a dimension >= 2^32

// Feature flag bits (meaningful from data version 4 on).
inline constexpr uint64_t kFlagEncrypted = 1;
inline constexpr uint64_t kFlagVersionedMetadata = 2;
inline constexpr uint64_t kKnownFlags = kFlagEncrypted | kFlagVersionedMetadata;

enum class TensorType : uint8_t { kParam = 0, kBuffer = 1, kStateDict = 2 };
enum class HashType : uint8_t { kCrc32 = 0, kSha256 = 1 };

struct FileHeader {
  uint32_t version = kVersionPlain;
  uint64_t flags = 0;        // the low 64 of the 256 flag bits
  uint64_t tensor_size = 0;  // sum of data lengths ("total_file_bytes")
  uint64_t tensor_count = 0;
  uint64_t metadata_length = 0;  // L, read at offset 65

  bool has_crypt_info() const {
    return version == kVersionEncrypted || (version >= kVersionMeta && (flags & kFlagEncrypted));
  }
  bool versioned_metadata() const {
    return version >= kVersionMeta && (flags & kFlagVersionedMetadata);
  }
};

// One metadata entry: where a tensor's record is and what it holds.
struct TensorEntry {
  std::string name;  // raw bytes: UTF-8, or 0x1E + a JSON array for paths
  TensorType type = TensorType::kParam;
  std::string dtype;  // numpy dtype.str, or "<V2\0torch.bfloat16" style
  std::vector<uint64_t> shape;
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  uint64_t data_length = 0;
  uint32_t metadata_version = 1;  // 5: u64 shape dims in entry and header

  uint64_t header_length() const { return data_offset - header_offset; }
  uint64_t record_end() const { return data_offset + data_length; }
};

// Which container the bytes are in. Safetensors files have no per-tensor
// headers or hashes: their entries have header_offset == data_offset.
enum class FileFormat : uint8_t { kTensorizer, kSafetensors };

struct Index {
  FileFormat format = FileFormat::kTensorizer;
  FileHeader header;
  std::vector<TensorEntry> entries;  // in file order
  // A safetensors header's "__metadata__" map, kept from the one parse of
  // the header (nothing re-reads it); absent when the header has none.
  std::optional<std::map<std::string, std::string>> safetensors_metadata;
  // Bytes [0, prefix_length) hold the header and the whole metadata block
  // (for safetensors: the u64 header size and the JSON header).
  uint64_t prefix_length() const {
    return (format == FileFormat::kSafetensors ? 8 : kMetadataStart) + header.metadata_length;
  }
};

// What a dtype string says about the element layout.
struct DtypeInfo {
  uint64_t itemsize = 0;
  char kind = 0;            // numpy kind letter: f, i, u, b, c, V
  std::string opaque_name;  // "torch.bfloat16" for opaque dtypes, else empty
};
Result<DtypeInfo> ParseDtype(std::string_view dtype);

// Bytes the data of a tensor occupies when not stored (meta tensors get a
// zero-filled buffer of this size); fails on overflow.
Result<uint64_t> ExpectedDataLength(const TensorEntry& entry);
// A meta tensor: stored with no data although its shape says it has some.
Result<bool> IsMetaTensor(const TensorEntry& entry);

// --- What a reader accepts --------------------------------------------------
//
// One set of rules for every reader: ParseIndex applies them to each entry,
// so the C++ API, the CLI and the Python package accept the same files. They
// are the rules of tensorizer's Python loader:
//   - a name is not empty; a name whose first byte is not 0x1E is UTF-8;
//     a path name is 0x1E + a one-line JSON array (no CR or LF), not empty,
//     of strings and non-negative integers, in UTF-8;
//   - no two names decode to the same path, no path is both a tensor and a
//     prefix of another, and the components at one level are all strings or
//     all indices (the first one decides);
//   - only state-dict entries have a path that is not a single string;
//   - the dtype is one CheckLoadableDtype accepts.

// True for well-formed UTF-8 (no overlong forms, surrogates or code points
// past U+10FFFF), as Python's strict decoder accepts.
bool IsValidUtf8(std::string_view s);

// One component of a tensor's path: a string key or a list index.
struct PathComponent {
  bool is_index = false;
  // The key, or the index in decimal without leading zeros. Indices are kept
  // as text because Python reads them as unbounded integers.
  std::string text;
  bool operator==(const PathComponent& o) const {
    return is_index == o.is_index && text == o.text;
  }
  bool operator<(const PathComponent& o) const {
    return is_index != o.is_index ? is_index < o.is_index : text < o.text;
  }
};

// The path a stored .tensors name encodes: a plain name is one string
// component. kFormatError, saying what is wrong, for a name that breaks the
// rules above. Never recurses: nested JSON is refused at its first bracket.
Result<std::vector<PathComponent>> DecodeTensorName(std::string_view stored);

// A stored dtype string a reader can map to a torch dtype: one of the numpy
// strings tensorizer writes ("<f4", "|b1", "<c16", ...; numpy's bool
// spellings "?", "|?", "<b1"), or an opaque "[<|=]V<n>\0torch.<name>" whose
// torch dtype exists (torch 2.13's names and aliases) and is n bytes wide.
Status CheckLoadableDtype(std::string_view dtype);

// Applies the rules above to every entry (messages name the entry:
// "index entry 3 ('x'): ..."). Safetensors indexes have plain keys, which
// need only be unique.
Status CheckLoadableIndex(const Index& index);

// A name made safe for messages: bytes outside printable ASCII as \xNN, cut
// at 200 bytes.
std::string PrintableName(std::string_view name);

// Parses the file header from the first bytes of a file (needs >= 73 bytes).
Result<FileHeader> ParseFileHeader(const uint8_t* data, size_t size, uint64_t file_size);

// Parses the header and index from the file prefix [0, size). `size` must be
// at least Index::prefix_length(); call ParseFileHeader first to learn it.
// Checks: counts and lengths fit the metadata block; every record lies inside
// the file, after the metadata block, in file order and without overlap; and
// CheckLoadableIndex.
Result<Index> ParseIndex(const uint8_t* data, size_t size, uint64_t file_size);

// --- safetensors ---------------------------------------------------------

// The safetensors spec's cap on the JSON header (100 MB).
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;
// JSON nesting refused in a header, as the safetensors package (serde_json)
// refuses it. A valid header nests 3 deep; deeper values can only be in
// fields nobody reads, which are skipped without being stored.
inline constexpr int kSafetensorsMaxDepth = 128;

// True when the first bytes look like a safetensors file: not the .tensors
// magic, and a u64 header size followed by '{'.
bool LooksLikeSafetensors(const uint8_t* data, size_t size, uint64_t file_size);

// Parses a safetensors header into an Index (entries in data order, type
// kStateDict, dtypes as .tensors dtype strings, e.g. BF16 ->
// "<V2\0torch.bfloat16"). `size` must cover the 8-byte length and the JSON.
// Checks, as the safetensors spec asks: the header-size cap, valid JSON of
// the expected shape nested at most kSafetensorsMaxDepth deep, unique keys,
// known dtypes, data offsets inside the data section, lengths equal to
// dtype x shape, and no overlaps or holes between tensors. The JSON is read
// as a stream into the Index (no document tree): memory stays within a small
// multiple of the header's size whatever its shape.
Result<Index> ParseSafetensorsIndex(const uint8_t* data, size_t size, uint64_t file_size);

struct StoredHash {
  HashType type;
  std::string value;  // raw bytes: CRC32 as u32 LE (4 bytes), SHA-256 (32)
  size_t offset = 0;  // where the value starts inside the header
};

// A parsed per-tensor header.
struct TensorHeader {
  uint64_t header_size = 0;
  uint16_t module_idx = 0;
  TensorType type = TensorType::kParam;
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<StoredHash> hashes;
  // The crypt-info block, u64 length prefix included, when the file has one.
  size_t crypt_info_offset = 0;
  size_t crypt_info_size = 0;
  int64_t data_length = 0;
};

// Parses a tensor header from exactly its bytes. `long_shape` selects u64
// dims (metadata version 5); `has_crypt_info` comes from the file header.
Result<TensorHeader> ParseTensorHeader(const uint8_t* data, size_t size, bool long_shape,
                                       bool has_crypt_info);

// Checks that a tensor header agrees with the index entry that points at it.
Status CheckHeaderMatchesEntry(const TensorHeader& header, const TensorEntry& entry);

// The bytes hashes are computed over before the data: the header with every
// hash value zeroed and the crypt-info block (with its length) cut out.
std::string HashedHeaderBytes(const uint8_t* data, const TensorHeader& header);

// --- Encoding -----------------------------------------------------------

// What a writer knows about one tensor before hashing it.
struct TensorRecordSpec {
  std::string name;
  TensorType type = TensorType::kParam;
  uint16_t module_idx = 0;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t data_length = 0;
  bool long_shape = false;  // encode dims as u64 (metadata version 5)
  // Encrypted tensors store SHA-256 only, so no plaintext CRC leaks.
  bool include_crc32 = true;
  // Files with crypt info reserve this many bytes (the u64 length included)
  // for the crypt-info block in every header; 0 in other files.
  uint64_t crypt_info_bytes = 0;
  // Zero bytes before the trailing data_length, which readers (ours and
  // tensorizer's) skip and hash: they move the data to an aligned offset
  // (WriterOptions::data_alignment_bytes). 0 in the files tensorizer writes.
  uint64_t padding_bytes = 0;
};

// An encoded tensor header whose hash values are still zero.
struct EncodedHeader {
  std::string bytes;
  size_t crc32_offset = 0;   // where the 4 CRC32 bytes go (when included)
  size_t sha256_offset = 0;  // where the 32 SHA-256 bytes go
  size_t crypt_info_offset = 0;  // where the crypt-info block goes (when reserved)
  size_t crypt_info_bytes = 0;

  // The bytes the hashes cover before the data: these bytes with the
  // crypt-info block cut out (hash values are still zero here).
  std::string HashedPrefix() const {
    std::string out = bytes;
    if (crypt_info_bytes) out.erase(crypt_info_offset, crypt_info_bytes);
    return out;
  }
};
Result<EncodedHeader> EncodeTensorHeader(const TensorRecordSpec& spec);

// One metadata entry; `versioned` prefixes the u32 metadata version tag.
Result<std::string> EncodeMetadataEntry(const TensorRecordSpec& spec, uint64_t header_offset,
                                        uint64_t data_offset, bool versioned);

// Magic + 60-byte file header + the u64 metadata length: 73 bytes.
std::string EncodeFileHeader(const FileHeader& header);

// True when some dimension needs u64 encoding.
bool NeedsLongShape(const std::vector<uint64_t>& shape);

}  // namespace tensorizer
