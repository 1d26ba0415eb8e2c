#include "tensorizer/format.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>

#include "format/bytes.h"

namespace tensorizer {

using internal::ByteReader;
using internal::ByteWriter;

namespace {

constexpr uint64_t kU32Limit = uint64_t{1} << 32;
// Smallest metadata entry: u16 name len, u8 type, u8 dtype len, u8 ndim, 3 x u64.
constexpr uint64_t kMinEntryBytes = 2 + 1 + 1 + 1 + 24;

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

std::string Dec(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

Result<DtypeInfo> ParseDtype(std::string_view dtype) {
  DtypeInfo info;
  std::string_view base = dtype;
  size_t sep = dtype.find('\0');
  if (sep != std::string_view::npos) {
    base = dtype.substr(0, sep);
    info.opaque_name = std::string(dtype.substr(sep + 1));
    if (info.opaque_name.find('\0') != std::string::npos || info.opaque_name.empty()) {
      return Status::FormatError("invalid opaque dtype string '" + PrintableName(dtype) + "'");
    }
  }
  size_t i = 0;
  if (i < base.size() && (base[i] == '<' || base[i] == '>' || base[i] == '|' || base[i] == '=')) {
    if (base[i] == '>') {
      return Status::FormatError("big-endian dtype '" + PrintableName(dtype) + "' is not supported");
    }
    ++i;
  }
  if (i >= base.size()) return Status::FormatError("empty dtype string");
  info.kind = base[i++];
  if (std::string_view("fiubcV?").find(info.kind) == std::string_view::npos) {
    return Status::FormatError("unsupported dtype '" + PrintableName(dtype) + "'");
  }
  if (info.kind == '?') {  // numpy's bool may be spelled "?"
    if (i != base.size()) {
      return Status::FormatError("unsupported dtype '" + PrintableName(dtype) + "'");
    }
    info.kind = 'b';
    info.itemsize = 1;
    return info;
  }
  if (i >= base.size() || base.size() - i > 6) {
    return Status::FormatError("dtype '" + PrintableName(dtype) + "' has no valid item size");
  }
  uint64_t size = 0;
  for (; i < base.size(); ++i) {
    if (base[i] < '0' || base[i] > '9') {
      return Status::FormatError("dtype '" + PrintableName(dtype) + "' has no valid item size");
    }
    size = size * 10 + static_cast<uint64_t>(base[i] - '0');
  }
  if (size == 0) return Status::FormatError("dtype '" + PrintableName(dtype) + "' has item size 0");
  info.itemsize = size;
  return info;
}

Result<uint64_t> ExpectedDataLength(const TensorEntry& entry) {
  auto info = ParseDtype(entry.dtype);
  if (!info.ok()) return info.status();
  uint64_t n = info->itemsize;
  for (uint64_t d : entry.shape) {
    if (MulOverflows(n, d, &n)) {
      return Status::FormatError("tensor shape overflows 64 bits");
    }
  }
  return n;
}

Result<bool> IsMetaTensor(const TensorEntry& entry) {
  if (entry.data_length != 0) return false;
  auto expected = ExpectedDataLength(entry);
  if (!expected.ok()) return expected.status();
  return *expected > 0;
}

Result<FileHeader> ParseFileHeader(const uint8_t* data, size_t size, uint64_t file_size) {
  if (size < kMagic.size() || std::memcmp(data, kMagic.data(), kMagic.size()) != 0) {
    return Status::FormatError("not a tensorizer file (bad magic)");
  }
  if (size < kMetadataStart || file_size < kMetadataStart) {
    return Status::FormatError("file too small: " + Dec(file_size) +
                               " bytes, ran out of data before reading a full header");
  }
  ByteReader r(data + kMagic.size(), size - kMagic.size());
  FileHeader h;
  h.version = r.Read<uint32_t>();
  if (h.version < kMinDataVersion || h.version > kMaxDataVersion) {
    return Status::Unsupported("unsupported data version " + std::to_string(h.version) +
                               "; supported data versions: 1, 2, 3, 4, 5");
  }
  uint64_t flag_words[4];
  for (auto& w : flag_words) w = r.Read<uint64_t>();
  h.tensor_size = r.Read<uint64_t>();
  r.Skip(8);
  h.tensor_count = r.Read<uint64_t>();
  h.metadata_length = r.Read<uint64_t>();
  // Writers leave the flag bytes zero before version 4; like tensorizer,
  // reject unknown bits in any version.
  if (flag_words[1] || flag_words[2] || flag_words[3] || (flag_words[0] & ~kKnownFlags)) {
    return Status::Unsupported("unsupported feature flags in file header");
  }
  h.flags = flag_words[0];
  if ((h.flags & kFlagVersionedMetadata) && h.version < kVersionLongShape) {
    return Status::FormatError("invalid feature flag: versioned metadata in a data version " +
                               std::to_string(h.version) + " file");
  }
  if (h.metadata_length > file_size - kMetadataStart) {
    return Status::FormatError("metadata block of " + Dec(h.metadata_length) +
                               " bytes extends past the end of the " + Dec(file_size) +
                               "-byte file");
  }
  if (h.tensor_count > h.metadata_length / kMinEntryBytes) {
    return Status::FormatError("tensor count " + Dec(h.tensor_count) +
                               " cannot fit in a metadata block of " + Dec(h.metadata_length) +
                               " bytes");
  }
  return h;
}

Result<Index> ParseIndex(const uint8_t* data, size_t size, uint64_t file_size) {
  auto header = ParseFileHeader(data, size, file_size);
  if (!header.ok()) return header.status();
  Index index;
  index.header = *header;
  if (index.header.tensor_count == 0) {
    return Status::FormatError("tensor index in the file is empty");
  }
  if (size < index.prefix_length()) {
    return Status::InvalidArgument("ParseIndex needs the whole metadata block");
  }
  ByteReader r(data + kMetadataStart, index.header.metadata_length);
  const bool versioned = index.header.versioned_metadata();
  uint64_t prev_end = index.prefix_length();
  index.entries.reserve(index.header.tensor_count);
  for (uint64_t i = 0; i < index.header.tensor_count; ++i) {
    TensorEntry e;
    if (versioned) {
      e.metadata_version = r.Read<uint32_t>();
      if (r.ok() && e.metadata_version != 1 && e.metadata_version != kVersionLongShape) {
        return Status::Unsupported("unsupported metadata version " +
                                   std::to_string(e.metadata_version) + " in index entry " +
                                   std::to_string(i) + "; supported metadata versions: 1, 5");
      }
    }
    uint16_t name_len = r.Read<uint16_t>();
    e.name = r.ReadString(name_len);
    uint8_t type = r.Read<uint8_t>();
    uint8_t dtype_len = r.Read<uint8_t>();
    e.dtype = r.ReadString(dtype_len);
    uint8_t ndim = r.Read<uint8_t>();
    const bool long_shape = e.metadata_version == kVersionLongShape;
    e.shape.resize(r.remaining() >= ndim ? ndim : 0);
    for (uint8_t d = 0; d < ndim && r.ok(); ++d) {
      uint64_t dim = long_shape ? r.Read<uint64_t>() : r.Read<uint32_t>();
      if (d < e.shape.size()) e.shape[d] = dim;
    }
    e.header_offset = r.Read<uint64_t>();
    e.data_offset = r.Read<uint64_t>();
    e.data_length = r.Read<uint64_t>();
    if (!r.ok()) {
      return Status::FormatError("index entry " + std::to_string(i) +
                                 " runs past the end of the metadata block");
    }
    if (type > 2) {
      return Status::FormatError("index entry " + std::to_string(i) + " ('" + PrintableName(e.name) +
                                 "') has unknown tensor type " + std::to_string(type));
    }
    e.type = static_cast<TensorType>(type);
    const std::string what = "tensor '" + PrintableName(e.name) + "'";
    auto expected = ExpectedDataLength(e);
    if (!expected.ok()) return expected.status().WithContext(what);
    if (e.data_length != 0 && e.data_length != *expected) {
      return Status::FormatError(what + " stores " + Dec(e.data_length) +
                                 " data bytes but its dtype and shape need " + Dec(*expected));
    }
    if (e.header_offset < prev_end || e.data_offset <= e.header_offset ||
        e.data_offset > file_size || e.data_length > file_size - e.data_offset) {
      return Status::FormatError(what + " record [" + Dec(e.header_offset) + ", " +
                                 Dec(e.data_offset) + "+" + Dec(e.data_length) +
                                 ") lies outside the file (" + Dec(file_size) +
                                 " bytes) or overlaps the previous record");
    }
    // A header holds at least: size, module, type, name len, dtype len, ndim,
    // hash section header and data length.
    if (e.header_length() < 8 + 2 + 1 + 2 + 1 + 1 + 3 + 8) {
      return Status::FormatError(what + " has a header of only " + Dec(e.header_length()) +
                                 " bytes");
    }
    prev_end = e.record_end();
    index.entries.push_back(std::move(e));
  }
  TZR_RETURN_IF_ERROR(CheckLoadableIndex(index));
  return index;
}

Result<TensorHeader> ParseTensorHeader(const uint8_t* data, size_t size, bool long_shape,
                                       bool has_crypt_info) {
  ByteReader r(data, size);
  TensorHeader h;
  h.header_size = r.Read<uint64_t>();
  if (!r.ok() || h.header_size != size) {
    return Status::FormatError("tensor header size field (" + Dec(h.header_size) +
                               ") disagrees with the index (" + Dec(size) + ")");
  }
  h.module_idx = r.Read<uint16_t>();
  uint8_t type = r.Read<uint8_t>();
  uint16_t name_len = r.Read<uint16_t>();
  h.name = r.ReadString(name_len);
  uint8_t dtype_len = r.Read<uint8_t>();
  h.dtype = r.ReadString(dtype_len);
  uint8_t ndim = r.Read<uint8_t>();
  for (uint8_t d = 0; d < ndim && r.ok(); ++d) {
    h.shape.push_back(long_shape ? r.Read<uint64_t>() : r.Read<uint32_t>());
  }
  uint16_t hash_section = r.Read<uint16_t>();
  size_t hash_section_start = r.pos();
  uint8_t hash_count = r.Read<uint8_t>();
  for (uint8_t k = 0; k < hash_count && r.ok(); ++k) {
    uint8_t htype = r.Read<uint8_t>();
    uint8_t hlen = r.Read<uint8_t>();
    if (!r.ok()) break;
    if (htype > 1) return Status::FormatError("unknown hash type " + std::to_string(htype));
    if ((htype == 0 && hlen != 4) || (htype == 1 && hlen != 32)) {
      return Status::FormatError("hash of type " + std::to_string(htype) + " has length " +
                                 std::to_string(hlen));
    }
    StoredHash sh{static_cast<HashType>(htype), {}, r.pos()};
    sh.value = r.ReadString(hlen);
    h.hashes.push_back(std::move(sh));
  }
  if (r.ok() && r.pos() - hash_section_start != hash_section) {
    return Status::FormatError("hash section length " + std::to_string(hash_section) +
                               " disagrees with its " + std::to_string(hash_count) + " entries");
  }
  if (has_crypt_info) {
    h.crypt_info_offset = r.pos();
    uint64_t len = r.Read<uint64_t>();
    if (r.ok() && len > r.remaining()) {
      return Status::FormatError("crypt-info block runs past the end of the tensor header");
    }
    r.Skip(len);
    h.crypt_info_size = 8 + len;
  }
  if (!r.ok() || r.remaining() < 8) {
    return Status::FormatError("tensor header is truncated");
  }
  // The data length is defined as the last 8 bytes of the header.
  std::memcpy(&h.data_length, data + size - 8, 8);
  if (type > 2) return Status::FormatError("unknown tensor type " + std::to_string(type));
  h.type = static_cast<TensorType>(type);
  return h;
}

Status CheckHeaderMatchesEntry(const TensorHeader& header, const TensorEntry& entry) {
  if (header.name != entry.name || header.dtype != entry.dtype || header.shape != entry.shape ||
      header.type != entry.type || header.data_length < 0 ||
      static_cast<uint64_t>(header.data_length) != entry.data_length) {
    return Status::FormatError("tensor header at byte " + Dec(entry.header_offset) +
                               " does not match its index entry '" + PrintableName(entry.name) + "'");
  }
  return Status::Ok();
}

std::string HashedHeaderBytes(const uint8_t* data, const TensorHeader& header) {
  std::string out(reinterpret_cast<const char*>(data), header.header_size);
  for (const auto& h : header.hashes) {
    std::fill_n(out.begin() + static_cast<ptrdiff_t>(h.offset), h.value.size(), '\0');
  }
  if (header.crypt_info_size) {
    out.erase(header.crypt_info_offset, header.crypt_info_size);
  }
  return out;
}

bool NeedsLongShape(const std::vector<uint64_t>& shape) {
  return std::any_of(shape.begin(), shape.end(), [](uint64_t d) { return d >= kU32Limit; });
}

namespace {

Status CheckSpec(const TensorRecordSpec& spec) {
  if (spec.name.size() > std::numeric_limits<uint16_t>::max()) {
    return Status::InvalidArgument("tensor name is longer than 65535 bytes");
  }
  if (spec.dtype.size() > 255) {
    return Status::InvalidArgument("dtype string is longer than 255 bytes");
  }
  if (spec.shape.size() > 255) {
    return Status::InvalidArgument("tensor has more than 255 dimensions");
  }
  if (!spec.long_shape && NeedsLongShape(spec.shape)) {
    return Status::InvalidArgument("dimension >= 2^32 needs a long-shape record");
  }
  return Status::Ok();
}

void WriteShape(ByteWriter& w, const TensorRecordSpec& spec) {
  w.Write<uint8_t>(static_cast<uint8_t>(spec.shape.size()));
  for (uint64_t d : spec.shape) {
    if (spec.long_shape) {
      w.Write<uint64_t>(d);
    } else {
      w.Write<uint32_t>(static_cast<uint32_t>(d));
    }
  }
}

}  // namespace

Result<EncodedHeader> EncodeTensorHeader(const TensorRecordSpec& spec) {
  TZR_RETURN_IF_ERROR(CheckSpec(spec));
  ByteWriter w;
  w.Write<uint64_t>(0);  // header size, patched below
  w.Write<uint16_t>(spec.module_idx);
  w.Write<uint8_t>(static_cast<uint8_t>(spec.type));
  w.Write<uint16_t>(static_cast<uint16_t>(spec.name.size()));
  w.WriteBytes(spec.name);
  w.Write<uint8_t>(static_cast<uint8_t>(spec.dtype.size()));
  w.WriteBytes(spec.dtype);
  WriteShape(w, spec);
  EncodedHeader out;
  // Hash section: CRC32 (unless encrypted), then SHA-256.
  w.Write<uint16_t>(spec.include_crc32 ? 1 + (2 + 4) + (2 + 32) : 1 + (2 + 32));
  w.Write<uint8_t>(spec.include_crc32 ? 2 : 1);
  if (spec.include_crc32) {
    w.Write<uint8_t>(static_cast<uint8_t>(HashType::kCrc32));
    w.Write<uint8_t>(4);
    out.crc32_offset = w.size();
    w.Write<uint32_t>(0);
  }
  w.Write<uint8_t>(static_cast<uint8_t>(HashType::kSha256));
  w.Write<uint8_t>(32);
  out.sha256_offset = w.size();
  w.WriteBytes(std::string(32, '\0'));
  if (spec.crypt_info_bytes) {
    out.crypt_info_offset = w.size();
    out.crypt_info_bytes = spec.crypt_info_bytes;
    w.WriteBytes(std::string(spec.crypt_info_bytes, '\0'));  // filled in after sealing
  }
  w.WriteBytes(std::string(spec.padding_bytes, '\0'));
  w.Write<int64_t>(static_cast<int64_t>(spec.data_length));
  uint64_t size = w.size();
  std::memcpy(w.str().data(), &size, 8);
  out.bytes = std::move(w.str());
  return out;
}

Result<std::string> EncodeMetadataEntry(const TensorRecordSpec& spec, uint64_t header_offset,
                                        uint64_t data_offset, bool versioned) {
  TZR_RETURN_IF_ERROR(CheckSpec(spec));
  ByteWriter w;
  if (versioned) w.Write<uint32_t>(spec.long_shape ? kVersionLongShape : 1);
  w.Write<uint16_t>(static_cast<uint16_t>(spec.name.size()));
  w.WriteBytes(spec.name);
  w.Write<uint8_t>(static_cast<uint8_t>(spec.type));
  w.Write<uint8_t>(static_cast<uint8_t>(spec.dtype.size()));
  w.WriteBytes(spec.dtype);
  WriteShape(w, spec);
  w.Write<uint64_t>(header_offset);
  w.Write<uint64_t>(data_offset);
  w.Write<uint64_t>(spec.data_length);
  return std::move(w.str());
}

std::string EncodeFileHeader(const FileHeader& header) {
  ByteWriter w;
  w.WriteBytes(kMagic);
  w.Write<uint32_t>(header.version);
  // Flags exist only from version 4 on; older versions keep the bytes zero.
  w.Write<uint64_t>(header.version >= kVersionMeta ? header.flags : 0);
  w.WriteBytes(std::string(24, '\0'));
  w.Write<uint64_t>(header.tensor_size);
  w.Write<uint64_t>(0);
  w.Write<uint64_t>(header.tensor_count);
  w.Write<uint64_t>(header.metadata_length);
  return std::move(w.str());
}

}  // namespace tensorizer
