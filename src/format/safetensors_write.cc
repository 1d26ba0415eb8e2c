// safetensors headers as the safetensors package writes them.
//
// The package (Rust, serde_json) sorts the tensors by dtype, descending in
// the declaration order of its Dtype enum, then by name; lays their data out
// contiguously from offset 0; serialises the header as compact JSON with
// `__metadata__` first; and pads the JSON with spaces to a multiple of 8.
// The JSON is written by hand here, not with nlohmann-json, because byte
// identity needs serde_json's exact string escapes and key order, which a
// general JSON library does not promise.
#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include "tensorizer/convert.h"

namespace tensorizer {

namespace {

using namespace std::string_view_literals;

struct SafetensorsDtypeName {
  std::string_view kind_size;  // numpy kind letter + itemsize, or the torch name
  std::string_view name;
  int rank;  // position in the safetensors package's Dtype enum
};

// Declaration order of safetensors' Dtype enum (0.8): BOOL, F4, F6_E2M3,
// F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32,
// F32, C64, F64, I64, U64. F4 and F6 have no .tensors spelling.
constexpr SafetensorsDtypeName kNumpyDtypes[] = {
    {"b1", "BOOL", 0}, {"u1", "U8", 4},   {"i1", "I8", 5},   {"i2", "I16", 9},  {"u2", "U16", 10},
    {"f2", "F16", 11}, {"i4", "I32", 13}, {"u4", "U32", 14}, {"f4", "F32", 15}, {"c8", "C64", 16},
    {"f8", "F64", 17}, {"i8", "I64", 18}, {"u8", "U64", 19},
};
constexpr SafetensorsDtypeName kOpaqueDtypes[] = {
    {"torch.float8_e5m2", "F8_E5M2", 6},
    {"torch.float8_e4m3fn", "F8_E4M3", 7},
    {"torch.float8_e8m0fnu", "F8_E8M0", 8},
    {"torch.bfloat16", "BF16", 12},
};

int RankOf(std::string_view safetensors_dtype) {
  for (const auto& d : kNumpyDtypes) {
    if (d.name == safetensors_dtype) return d.rank;
  }
  for (const auto& d : kOpaqueDtypes) {
    if (d.name == safetensors_dtype) return d.rank;
  }
  return -1;
}

// Printable form of a dtype string for messages ("<V4\0torch.complex32"
// shows as "torch.complex32").
std::string DtypeForMessage(std::string_view dtype) {
  size_t nul = dtype.find('\0');
  if (nul != std::string_view::npos) return std::string(dtype.substr(nul + 1));
  return std::string(dtype);
}

// A JSON string as serde_json writes it: '"' and '\\' escaped, \b \t \n \f
// \r by name, other control characters as \u00xx (lowercase hex), and
// everything else (DEL and non-ASCII UTF-8 included) as is.
void AppendJsonString(std::string_view s, std::string* out) {
  static const char* hex = "0123456789abcdef";
  out->push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\f':
        *out += "\\f";
        break;
      case '\r':
        *out += "\\r";
        break;
      default:
        if (c < 0x20) {
          *out += "\\u00";
          out->push_back(hex[c >> 4]);
          out->push_back(hex[c & 15]);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

}  // namespace

Result<std::string> SafetensorsDtype(std::string_view dtype) {
  auto unsupported = [&](const std::string& why) {
    return Status::InvalidArgument("dtype " + DtypeForMessage(dtype) +
                                   " cannot be stored in a safetensors file" +
                                   (why.empty() ? "" : " (" + why + ")"));
  };
  auto info = ParseDtype(dtype);
  if (!info.ok()) return unsupported(info.status().message());
  if (!info->opaque_name.empty()) {
    for (const auto& d : kOpaqueDtypes) {
      if (d.kind_size == info->opaque_name) {
        // Opaque dtypes are stored as raw bytes of their itemsize ("V2").
        if (info->itemsize != (d.name == "BF16" ? 2u : 1u)) break;
        return std::string(d.name);
      }
    }
    return unsupported("");
  }
  // numpy's dtype.str: byte order, kind letter, itemsize.
  if (dtype.size() < 3) return unsupported("");
  const char order = dtype[0];
  const std::string_view kind_size = dtype.substr(1);
  if (order == '>' && info->itemsize > 1) return unsupported("big-endian data");
  if (order != '<' && order != '=' && order != '|' && !(order == '>' && info->itemsize == 1)) {
    return unsupported("");
  }
  for (const auto& d : kNumpyDtypes) {
    if (d.kind_size == kind_size) return std::string(d.name);
  }
  return unsupported("");
}

Result<std::string> SafetensorsKey(std::string_view stored) {
  if (stored.empty()) return Status::InvalidArgument("empty tensor name");
  if (!IsValidUtf8(stored)) {
    return Status::InvalidArgument(
        "tensor name is not valid UTF-8, which safetensors keys must be");
  }
  if (stored[0] != '\x1e') return std::string(stored);
  auto path = DecodeTensorName(stored);
  if (!path.ok()) {
    return Status::InvalidArgument("tensor name '" + PrintableName(stored.substr(1)) +
                                   "' is not a valid path: " + path.status().message());
  }
  std::string key;
  for (size_t k = 0; k < path->size(); ++k) {
    if (k > 0) key.push_back('.');
    key += (*path)[k].text;
  }
  return key;
}

Result<SafetensorsLayout> EncodeSafetensorsHeader(
    const std::vector<SafetensorsTensor>& tensors,
    const std::optional<std::map<std::string, std::string>>& metadata, SafetensorsOrder order) {
  const size_t n = tensors.size();
  SafetensorsLayout layout;
  std::vector<std::string> st_dtypes(n);
  std::vector<int> ranks(n);
  layout.data_lengths.resize(n);
  std::set<std::string_view> names;
  for (size_t i = 0; i < n; ++i) {
    const SafetensorsTensor& t = tensors[i];
    auto fail = [&](const Status& st) { return st.WithContext("tensor '" + t.name + "'"); };
    if (t.name == "__metadata__") {
      return Status::InvalidArgument("tensor '__metadata__': the name is reserved in safetensors");
    }
    if (!IsValidUtf8(t.name)) return fail(Status::InvalidArgument("name is not valid UTF-8"));
    if (!names.insert(t.name).second) {
      return Status::InvalidArgument("tensor '" + t.name + "' appears twice");
    }
    auto dt = SafetensorsDtype(t.dtype);
    if (!dt.ok()) return fail(dt.status());
    st_dtypes[i] = std::move(dt).value();
    ranks[i] = RankOf(st_dtypes[i]);
    TensorEntry as_entry;
    as_entry.dtype = t.dtype;
    as_entry.shape = t.shape;
    auto bytes = ExpectedDataLength(as_entry);
    if (!bytes.ok()) return fail(Status::InvalidArgument(bytes.status().message()));
    layout.data_lengths[i] = *bytes;
  }
  layout.order.resize(n);
  for (size_t i = 0; i < n; ++i) layout.order[i] = i;
  if (order == SafetensorsOrder::kLikeSafetensorsPackage) {
    std::stable_sort(layout.order.begin(), layout.order.end(), [&](size_t a, size_t b) {
      if (ranks[a] != ranks[b]) return ranks[a] > ranks[b];
      return tensors[a].name < tensors[b].name;  // std::string compares bytes as unsigned
    });
  }

  std::string json = "{";
  if (metadata) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : *metadata) {
      if (!IsValidUtf8(k) || !IsValidUtf8(v)) {
        return Status::InvalidArgument("__metadata__ entry '" + k + "' is not valid UTF-8");
      }
      if (!first) json.push_back(',');
      first = false;
      AppendJsonString(k, &json);
      json.push_back(':');
      AppendJsonString(v, &json);
    }
    json += "}";
    if (n > 0) json.push_back(',');
  }
  layout.data_offsets.resize(n);
  std::vector<uint64_t> relative(n);
  uint64_t offset = 0;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = layout.order[k];
    const SafetensorsTensor& t = tensors[i];
    relative[i] = offset;
    if (layout.data_lengths[i] > UINT64_MAX - offset) {
      return Status::InvalidArgument("tensor '" + t.name + "': the data section overflows");
    }
    if (k > 0) json.push_back(',');
    AppendJsonString(t.name, &json);
    json += ":{\"dtype\":\"" + st_dtypes[i] + "\",\"shape\":[";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (d > 0) json.push_back(',');
      json += std::to_string(t.shape[d]);
    }
    json += "],\"data_offsets\":[" + std::to_string(offset) + ",";
    offset += layout.data_lengths[i];
    json += std::to_string(offset) + "]}";
    if (json.size() > kSafetensorsMaxHeader) break;
  }
  json.push_back('}');
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > kSafetensorsMaxHeader) {
    return Status::ResourceExhausted(
        "the safetensors header of " + std::to_string(n) + " tensors needs more than the " +
        std::to_string(kSafetensorsMaxHeader) + " bytes safetensors readers accept");
  }
  const uint64_t json_size = json.size();
  const uint64_t data_start = 8 + json_size;
  if (offset > UINT64_MAX - data_start) {
    return Status::InvalidArgument("the safetensors file would exceed 2^64 bytes");
  }
  layout.header.resize(8);
  std::memcpy(layout.header.data(), &json_size, 8);  // little-endian hosts only (CMake checks)
  layout.header += json;
  for (size_t i = 0; i < n; ++i) layout.data_offsets[i] = data_start + relative[i];
  layout.file_size = data_start + offset;
  return layout;
}

}  // namespace tensorizer
