// Test helpers: build .tensors files byte by byte, so tests can make valid
// files and then break exactly one thing in them.
//
// The builder uses the library's encoders (format_test pins those to golden
// bytes first) and computes the hashes itself. It can add what the writer
// never writes: a crypt-info block in every header (data version 3, or 4 with
// the encrypted flag), tagged metadata entries, a small metadata block.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "format/hash.h"
#include "tensorizer/format.h"

namespace tensorizer::testing {

// Bytes from a hex string; spaces are ignored.
inline std::string Unhex(std::string_view hex) {
  std::string out;
  int hi = -1;
  for (char c : hex) {
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      continue;
    }
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<char>(hi * 16 + v));
      hi = -1;
    }
  }
  return out;
}

inline std::string Hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

template <typename T>
void PutLE(std::string& s, size_t at, T v) {
  std::memcpy(s.data() + at, &v, sizeof v);
}
template <typename T>
T GetLE(const std::string& s, size_t at) {
  T v;
  std::memcpy(&v, s.data() + at, sizeof v);
  return v;
}

inline std::string F32(std::initializer_list<float> values) {
  std::string out;
  for (float f : values) out.append(reinterpret_cast<const char*>(&f), 4);
  return out;
}

struct TensorBlueprint {
  std::string name;
  std::string dtype = "<f4";
  std::vector<uint64_t> shape;
  std::string data;  // empty with a non-empty shape: a meta tensor
  TensorType type = TensorType::kStateDict;
  uint16_t module_idx = 0;
  bool long_shape = false;
  // Crypt-info body (after its u64 length); used only when the file has
  // crypt info. Empty: the empty CryptInfo (chunk count 0).
  std::string crypt_info;
};

struct FileBlueprint {
  uint32_t version = 1;
  uint64_t flags = 0;
  std::optional<uint64_t> metadata_length;  // default: exactly the entries
  std::vector<TensorBlueprint> tensors;
};

struct BuiltRecord {
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  uint64_t data_length = 0;
  size_t entry_offset = 0;  // where its metadata entry starts in the file
  size_t header_length = 0;
};

struct BuiltFile {
  std::string bytes;
  uint64_t metadata_length = 0;
  std::vector<BuiltRecord> records;
  const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(bytes.data()); }
  size_t size() const { return bytes.size(); }
};

inline TensorRecordSpec SpecOf(const TensorBlueprint& t) {
  TensorRecordSpec spec;
  spec.name = t.name;
  spec.type = t.type;
  spec.module_idx = t.module_idx;
  spec.dtype = t.dtype;
  spec.shape = t.shape;
  spec.data_length = t.data.size();
  spec.long_shape = t.long_shape;
  return spec;
}

// One tensor record (header with hashes filled in, then data).
inline std::string EncodeRecord(const TensorBlueprint& t, bool with_crypt_info) {
  auto enc = EncodeTensorHeader(SpecOf(t));
  if (!enc.ok()) return {};
  std::string header = enc->bytes;
  std::string crypt_block;
  if (with_crypt_info) {
    // The block sits just before the trailing data length. The size field
    // counts it; the hashes skip it (length prefix included).
    std::string body = t.crypt_info.empty() ? std::string(2, '\0') : t.crypt_info;
    crypt_block.assign(8, '\0');
    PutLE<uint64_t>(crypt_block, 0, body.size());
    crypt_block += body;
    PutLE<uint64_t>(header, 0, header.size() + crypt_block.size());
  }
  internal::TensorHasher hasher;
  hasher.Update(header.data(), header.size());
  hasher.Update(t.data.data(), t.data.size());
  uint32_t crc = hasher.crc32();
  std::string sha = hasher.FinishSha256();
  std::memcpy(header.data() + enc->crc32_offset, &crc, 4);
  std::memcpy(header.data() + enc->sha256_offset, sha.data(), 32);
  header.insert(header.size() - 8, crypt_block);
  return header + t.data;
}

inline BuiltFile BuildFile(const FileBlueprint& bp) {
  FileHeader fh;
  fh.version = bp.version;
  fh.flags = bp.flags;
  fh.tensor_count = bp.tensors.size();
  const bool crypt = fh.has_crypt_info();
  const bool versioned = bp.version >= kVersionMeta && (bp.flags & kFlagVersionedMetadata);
  std::vector<std::string> records;
  uint64_t entries_len = 0;
  for (const auto& t : bp.tensors) {
    records.push_back(EncodeRecord(t, crypt));
    fh.tensor_size += t.data.size();
    auto e = EncodeMetadataEntry(SpecOf(t), 0, 0, versioned);
    entries_len += e.ok() ? e->size() : 0;
  }
  BuiltFile out;
  out.metadata_length = bp.metadata_length.value_or(entries_len);
  fh.metadata_length = out.metadata_length;
  std::string metadata;
  uint64_t pos = kMetadataStart + out.metadata_length;
  for (size_t i = 0; i < bp.tensors.size(); ++i) {
    const auto& t = bp.tensors[i];
    BuiltRecord r;
    r.header_offset = pos;
    r.data_length = t.data.size();
    r.header_length = records[i].size() - t.data.size();
    r.data_offset = pos + r.header_length;
    r.entry_offset = kMetadataStart + metadata.size();
    auto e = EncodeMetadataEntry(SpecOf(t), r.header_offset, r.data_offset, versioned);
    metadata += e.ok() ? *e : std::string();
    pos += records[i].size();
    out.records.push_back(r);
  }
  metadata.resize(out.metadata_length, '\0');
  out.bytes = EncodeFileHeader(fh) + metadata;
  for (const auto& r : records) out.bytes += r;
  out.bytes += std::string(8, '\0');
  return out;
}

// The §1.14 file written by tensorizer for {"a": arange(6.).reshape(2, 3)}.
inline FileBlueprint GoldenBlueprint(std::optional<uint64_t> metadata_length = kMetadataReserve) {
  FileBlueprint bp;
  bp.metadata_length = metadata_length;
  TensorBlueprint t;
  t.name = "a";
  t.shape = {2, 3};
  t.data = F32({0, 1, 2, 3, 4, 5});
  bp.tensors.push_back(t);
  return bp;
}

}  // namespace tensorizer::testing
