// What a reader accepts: the name and dtype rules of format.h, applied by
// ParseIndex and ParseSafetensorsIndex to every entry.
//
// The rules are those of tensorizer's Python loader (python/tensorizer
// _paths.decode_name, PathRegistry and _dtypes.str_to_dtype), written once
// here so that the CLI, the C++ API and the Python package, which all read an
// index through ParseIndex, decide alike. Path names are read by a streaming
// JSON reader that refuses any nesting at its first bracket, and the path
// registry is a flat table, so neither recursion nor memory grows with
// hostile nesting: cost is linear in the name bytes.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tensorizer/format.h"

namespace tensorizer {

namespace {

using namespace std::string_view_literals;

// Python refuses to read integers longer than this (sys.int_info's default
// str-digits limit), so a longer index is refused here too.
constexpr size_t kMaxIndexDigits = 4300;

// Reads the JSON array of a path name; any nesting, object or non-integer
// number ends the parse with `error` set.
class PathReader final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit PathReader(std::vector<PathComponent>* out) : out_(out) {}

  bool null() override { return Invalid("null"); }
  bool boolean(bool v) override { return Invalid(v ? "true" : "false"); }
  bool number_integer(number_integer_t v) override {
    if (v < 0) return Invalid(std::to_string(v));
    return Add(true, std::to_string(v));  // "-0"
  }
  bool number_unsigned(number_unsigned_t v) override { return Add(true, std::to_string(v)); }
  bool number_float(number_float_t, const string_t& text) override {
    // Integers past 64 bits arrive here; Python reads them as ints.
    bool digits = !text.empty() && text.size() <= kMaxIndexDigits &&
                  text.find_first_not_of("0123456789") == string_t::npos;
    return digits ? Add(true, text) : Invalid(text);
  }
  bool string(string_t& v) override { return Add(false, std::move(v)); }
  bool binary(binary_t&) override { return Invalid("binary"); }
  bool start_object(std::size_t) override { return Invalid("an object"); }
  bool key(string_t&) override { return false; }
  bool end_object() override { return false; }
  bool start_array(std::size_t) override {
    if (depth_ > 0) return Invalid("a nested array");
    ++depth_;
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    if (error.empty()) error = "not valid JSON (at byte " + std::to_string(position) + ")";
    return false;
  }

  std::string error;

 private:
  bool Add(bool is_index, std::string text) {
    if (depth_ != 1) return Invalid("a non-array json-seq");
    out_->push_back(PathComponent{is_index, std::move(text)});
    return true;
  }
  bool Invalid(const std::string& what) {
    error = "invalid tensor path component: " + PrintableName(what);
    return false;
  }

  std::vector<PathComponent>* out_;
  int depth_ = 0;
};

std::string Display(const std::vector<PathComponent>& path) {
  std::string out;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i > 0) out.push_back('.');
    out += path[i].text;
  }
  return PrintableName(out);
}

// Every path seen so far, as a trie in flat tables (no recursion, however
// long a path is).
class PathRegistry {
 public:
  PathRegistry() : nodes_(1) {}

  Status Add(const std::vector<PathComponent>& path) {
    uint32_t node = 0;
    for (size_t i = 0; i < path.size(); ++i) {
      const PathComponent& part = path[i];
      Node& n = nodes_[node];
      if (n.has_children && n.index_keys != part.is_index) {
        return Status::FormatError("conflicting tensor paths: '" + Display(path) +
                                   "' mixes key types at one level");
      }
      n.has_children = true;
      n.index_keys = part.is_index;
      auto [it, inserted] = children_.try_emplace({node, part}, 0);
      const bool last = i + 1 == path.size();
      if (!inserted && (last || nodes_[it->second].leaf)) {
        std::vector<PathComponent> prefix(path.begin(), path.begin() + static_cast<ptrdiff_t>(i + 1));
        return Status::FormatError(
            "conflicting tensor paths: '" + Display(prefix) +
            (last ? "' is already used" : "' is both a tensor and a prefix of another"));
      }
      if (inserted) {
        it->second = static_cast<uint32_t>(nodes_.size());
        nodes_.push_back(Node{});
      }
      node = it->second;
    }
    nodes_[node].leaf = true;
    return Status::Ok();
  }

 private:
  struct Node {
    bool leaf = false;
    bool has_children = false;
    bool index_keys = false;  // what the first child's key was
  };
  std::vector<Node> nodes_;
  std::map<std::pair<uint32_t, PathComponent>, uint32_t> children_;
};

// Numpy dtype strings the Python loader maps to torch dtypes.
constexpr std::string_view kNumpyDtypes[] = {
    "<f2", "<f4", "<f8", "|i1", "|u1", "<i2", "<i4", "<i8", "|b1", "<c8",
    "<c16", "<u2", "<u4", "<u8", "<b1", "?",  "|?",  "<i1", "<u1",
};

struct TorchDtype {
  std::string_view name;  // the attribute of the torch module
  uint64_t width;         // element size in bytes
};

// Every torch.dtype attribute of torch 2.13, aliases included, as
// getattr(torch, name) finds them.
constexpr TorchDtype kTorchDtypes[] = {
    {"bfloat16", 2},      {"bit", 1},           {"bits16", 2},
    {"bits1x8", 1},       {"bits2x4", 1},       {"bits4x2", 1},
    {"bits8", 1},         {"bool", 1},          {"cdouble", 16},
    {"cfloat", 8},        {"chalf", 4},         {"complex128", 16},
    {"complex32", 4},     {"complex64", 8},     {"double", 8},
    {"float", 4},         {"float16", 2},       {"float32", 4},
    {"float4_e2m1fn_x2", 1}, {"float64", 8},    {"float8_e4m3fn", 1},
    {"float8_e4m3fnuz", 1}, {"float8_e5m2", 1}, {"float8_e5m2fnuz", 1},
    {"float8_e8m0fnu", 1}, {"half", 2},         {"int", 4},
    {"int1", 1},          {"int16", 2},         {"int2", 1},
    {"int3", 1},          {"int32", 4},         {"int4", 1},
    {"int5", 1},          {"int6", 1},          {"int64", 8},
    {"int7", 1},          {"int8", 1},          {"long", 8},
    {"qint32", 4},        {"qint8", 1},         {"quint2x4", 1},
    {"quint4x2", 1},      {"quint8", 1},        {"short", 2},
    {"uint1", 1},         {"uint16", 2},        {"uint2", 1},
    {"uint3", 1},         {"uint32", 4},        {"uint4", 1},
    {"uint5", 1},         {"uint6", 1},         {"uint64", 8},
    {"uint7", 1},         {"uint8", 1},
};

// The width an opaque dtype's base ("<V2") gives, for the widths numpy has
// integer types of (the loader views the bytes as those); 0 otherwise.
uint64_t OpaqueBaseWidth(std::string_view base) {
  if (!base.empty() && (base[0] == '<' || base[0] == '|' || base[0] == '=')) base.remove_prefix(1);
  if (base == "V1") return 1;
  if (base == "V2") return 2;
  if (base == "V4") return 4;
  if (base == "V8") return 8;
  if (base == "V16") return 16;
  return 0;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;  // truncated sequence
    for (size_t k = 1; k <= n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

std::string PrintableName(std::string_view name) {
  std::string out;
  for (unsigned char c : name.substr(0, 200)) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (name.size() > 200) out += "...";
  return out;
}

Result<std::vector<PathComponent>> DecodeTensorName(std::string_view stored) {
  if (stored.empty()) return Status::FormatError("invalid empty tensor name");
  if (!IsValidUtf8(stored)) return Status::FormatError("tensor name is not valid UTF-8");
  if (stored[0] != '\x1e') return std::vector<PathComponent>{{false, std::string(stored)}};
  if (stored.size() < 3 || stored[1] != '[' || stored.back() != ']') {
    return Status::FormatError("invalid tensor path: non-array json-seq");
  }
  if (stored.find_first_of("\r\n") != std::string_view::npos) {
    return Status::FormatError("illegal newline in json-seq");
  }
  std::vector<PathComponent> path;
  PathReader reader(&path);
  std::string_view json = stored.substr(1);
  bool ok;
  try {
    ok = nlohmann::json::sax_parse(json.begin(), json.end(), &reader);
  } catch (const nlohmann::json::exception& e) {
    return Status::FormatError(std::string("invalid tensor path: ") + e.what());
  }
  if (!ok) return Status::FormatError(reader.error);
  if (path.empty()) return Status::FormatError("invalid tensor path: expected a non-empty array");
  return path;
}

Status CheckLoadableDtype(std::string_view dtype) {
  const size_t sep = dtype.find('\0');
  if (sep == std::string_view::npos) {
    for (std::string_view d : kNumpyDtypes) {
      if (dtype == d) return Status::Ok();
    }
    return Status::FormatError("unsupported dtype string '" + PrintableName(dtype) + "'");
  }
  std::string_view name = dtype.substr(sep + 1);
  if (name.find('\0') != std::string_view::npos) {
    return Status::FormatError("too many separators in dtype string '" + PrintableName(dtype) +
                               "'");
  }
  const TorchDtype* torch_dtype = nullptr;
  if (name.substr(0, 6) == "torch."sv) {
    for (const TorchDtype& t : kTorchDtypes) {
      if (name.substr(6) == t.name) torch_dtype = &t;
    }
  }
  if (torch_dtype == nullptr) {
    return Status::FormatError("unknown torch dtype '" + PrintableName(name) +
                               "' in dtype string '" + PrintableName(dtype) + "'");
  }
  if (OpaqueBaseWidth(dtype.substr(0, sep)) != torch_dtype->width) {
    return Status::FormatError("dtype string '" + PrintableName(dtype) +
                               "' has the wrong width for " + std::string(name));
  }
  return Status::Ok();
}

Status CheckLoadableIndex(const Index& index) {
  const bool safetensors = index.format == FileFormat::kSafetensors;
  PathRegistry registry;
  for (size_t i = 0; i < index.entries.size(); ++i) {
    const TensorEntry& e = index.entries[i];
    auto fail = [&](const Status& st) {
      return st.WithContext("index entry " + std::to_string(i) + " ('" + PrintableName(e.name) +
                            "')");
    };
    // A safetensors key is a plain name, whatever its first byte.
    auto path = safetensors ? Result<std::vector<PathComponent>>(
                                  std::vector<PathComponent>{{false, e.name}})
                            : DecodeTensorName(e.name);
    if (!path.ok()) return fail(path.status());
    const bool plain = path->size() == 1 && !(*path)[0].is_index;
    if (!plain && e.type != TensorType::kStateDict) {
      return fail(Status::FormatError("a structured name on a tensor that is not a state_dict "
                                      "entry"));
    }
    Status st = CheckLoadableDtype(e.dtype);
    if (!st.ok()) return fail(st);
    st = registry.Add(*path);
    if (!st.ok()) return fail(st);
  }
  return Status::Ok();
}

}  // namespace tensorizer
