// safetensors headers, read into the same Index the load pipeline uses.
//
// Layout: u64 little-endian N, then N bytes of JSON: an object whose keys are
// tensor names mapping to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the byte after the header), plus an optional
// "__metadata__" object of strings. Every number is checked before use, so
// a hostile header fails with a format error and never drives an allocation
// beyond the header itself (which the caller has already read, capped).
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>

#include "tensorizer/format.h"

namespace tensorizer {

namespace {

using nlohmann::json;

using namespace std::string_view_literals;

struct DtypeMapping {
  std::string_view safetensors;
  std::string_view tensorizer;  // what our writer stores for the same torch dtype
};

// Byte-compatible with what our writer stores for the same torch dtypes, so
// a converted file is identical to one serialized from the tensors.
constexpr DtypeMapping kDtypes[] = {
    {"F64", "<f8"},
    {"F32", "<f4"},
    {"F16", "<f2"},
    {"BF16", "<V2\0torch.bfloat16"sv},
    {"I64", "<i8"},
    {"I32", "<i4"},
    {"I16", "<i2"},
    {"I8", "|i1"},
    {"U64", "<u8"},
    {"U32", "<u4"},
    {"U16", "<u2"},
    {"U8", "|u1"},
    {"BOOL", "|b1"},
    {"C64", "<c8"},
    {"F8_E4M3", "|V1\0torch.float8_e4m3fn"sv},
    {"F8_E5M2", "|V1\0torch.float8_e5m2"sv},
    {"F8_E8M0", "|V1\0torch.float8_e8m0fnu"sv},
};

Result<std::string> MapDtype(const std::string& st_dtype) {
  for (const DtypeMapping& m : kDtypes) {
    if (st_dtype == m.safetensors) return std::string(m.tensorizer);
  }
  return Status::FormatError("unsupported safetensors dtype '" + st_dtype + "'");
}

Status Bad(const std::string& what) { return Status::FormatError("safetensors header: " + what); }

bool AsU64(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<uint64_t>();
  return true;
}

}  // namespace

bool LooksLikeSafetensors(const uint8_t* data, size_t size, uint64_t file_size) {
  // Any u64 then '{' counts, so an oversized or truncated safetensors header
  // gets the safetensors parser's precise error, not "bad magic".
  (void)file_size;
  return size >= 9 && data[8] == '{' && std::memcmp(data, kMagic.data(), kMagic.size()) != 0;
}

Result<Index> ParseSafetensorsIndex(const uint8_t* data, size_t size, uint64_t file_size) {
  if (size < 8 || file_size < 8) return Bad("file too small for the header size field");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n > kSafetensorsMaxHeader) {
    return Bad("header of " + std::to_string(n) + " bytes exceeds the " +
               std::to_string(kSafetensorsMaxHeader) + "-byte limit");
  }
  if (n > file_size - 8) {
    return Bad("header of " + std::to_string(n) + " bytes runs past the end of the " +
               std::to_string(file_size) + "-byte file");
  }
  if (size < 8 + n) return Status::InvalidArgument("ParseSafetensorsIndex needs the whole header");
  const char* text = reinterpret_cast<const char*>(data + 8);
  json doc = json::parse(text, text + n, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Bad("invalid JSON");
  if (!doc.is_object()) return Bad("top level is not a JSON object");

  Index index;
  index.format = FileFormat::kSafetensors;
  index.header.version = 0;
  index.header.metadata_length = n;
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Bad("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return Bad("__metadata__ values must be strings");
      }
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (!v.is_object()) return Bad(what + " is not an object");
    auto dtype = v.find("dtype");
    auto shape = v.find("shape");
    auto offsets = v.find("data_offsets");
    if (dtype == v.end() || !dtype->is_string() || shape == v.end() || !shape->is_array() ||
        offsets == v.end() || !offsets->is_array() || offsets->size() != 2) {
      return Bad(what + " needs \"dtype\", \"shape\" and a two-element \"data_offsets\"");
    }
    TensorEntry e;
    e.name = name;
    e.type = TensorType::kStateDict;
    auto mapped = MapDtype(dtype->get<std::string>());
    if (!mapped.ok()) return Bad(what + ": " + mapped.status().message());
    e.dtype = std::move(mapped).value();
    if (shape->size() > 255) return Bad(what + " has more than 255 dimensions");
    for (const json& d : *shape) {
      uint64_t dim;
      if (!AsU64(d, &dim))
        return Bad(what + " has a shape entry that is not a non-negative integer");
      e.shape.push_back(dim);
    }
    uint64_t begin, end;
    if (!AsU64((*offsets)[0], &begin) || !AsU64((*offsets)[1], &end) || begin > end) {
      return Bad(what + " has invalid data_offsets");
    }
    if (end > data_size) {
      return Bad(what + " data [" + std::to_string(begin) + ", " + std::to_string(end) +
                 ") lies outside the " + std::to_string(data_size) + "-byte data section");
    }
    auto expected = ExpectedDataLength(e);
    if (!expected.ok()) return Bad(what + ": " + expected.status().message());
    if (*expected != end - begin) {
      return Bad(what + " occupies " + std::to_string(end - begin) +
                 " bytes but its dtype and shape need " + std::to_string(*expected));
    }
    e.header_offset = e.data_offset = data_start + begin;
    e.data_length = end - begin;
    index.entries.push_back(std::move(e));
  }
  // Tensors in data order must tile the data section: no overlaps, no holes.
  std::stable_sort(index.entries.begin(), index.entries.end(),
                   [](const TensorEntry& a, const TensorEntry& b) {
                     // Empty tensors may share an offset with the next one.
                     return a.data_offset != b.data_offset ? a.data_offset < b.data_offset
                                                           : a.data_length < b.data_length;
                   });
  uint64_t expect = data_start;
  for (const TensorEntry& e : index.entries) {
    if (e.data_offset != expect) {
      return Bad("tensor '" + e.name + "' starts at data offset " +
                 std::to_string(e.data_offset - data_start) +
                 (e.data_offset < expect ? ", overlapping the previous tensor"
                                         : ", leaving a hole after the previous tensor"));
    }
    expect = e.record_end();
  }
  if (expect != file_size) {
    return Bad("the data section has " + std::to_string(file_size - expect) +
               " bytes after the last tensor that no tensor covers");
  }
  index.header.tensor_count = index.entries.size();
  for (const TensorEntry& e : index.entries) index.header.tensor_size += e.data_length;
  return index;
}

}  // namespace tensorizer
