// safetensors headers, read into the same Index the load pipeline uses.
//
// Layout: u64 little-endian N, then N bytes of JSON: an object whose keys are
// tensor names mapping to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the byte after the header), plus an optional
// "__metadata__" object of strings. The JSON is read as a stream of events
// (HeaderReader) with its nesting bounded, never as a document tree. Every
// number is checked before use, so a hostile header fails with a format
// error and never drives an allocation beyond a small multiple of the header
// itself (which the caller has already read, capped at 100 MB).
#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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
  return Status::FormatError("unsupported safetensors dtype '" + PrintableName(st_dtype) + "'");
}

Status Bad(const std::string& what) { return Status::FormatError("safetensors header: " + what); }

// One tensor object of the header as read, before its offsets are checked.
struct RawTensor {
  std::string name;
  std::string dtype;  // mapped to the .tensors dtype string
  std::vector<uint64_t> shape;
  uint64_t offsets[2] = {0, 0};
  bool has_dtype = false, has_shape = false;
  int offset_count = -1;  // -1: no "data_offsets" field
};

// Reads the header JSON as a stream of events straight into RawTensors and
// the metadata map, never building a document: nesting past
// kSafetensorsMaxDepth is refused at its first bracket, and what is kept is
// the names, dtypes, shapes and metadata strings, so memory is a small
// multiple of the header size. Like the safetensors package (serde_json), a
// repeated tensor key or metadata key keeps its last value, a repeated field
// inside a tensor is an error, and unknown fields are skipped.
class HeaderReader final : public nlohmann::json_sax<json> {
 public:
  std::vector<RawTensor> tensors;
  std::optional<std::map<std::string, std::string>> metadata;
  Status status;

  bool null() override { return Scalar("null"); }
  bool boolean(bool) override { return Scalar("a boolean"); }
  bool number_integer(number_integer_t) override { return Scalar("a negative number"); }
  bool number_unsigned(number_unsigned_t v) override {
    if (where_ == kInShape) {
      if (tensors.back().shape.size() == 255) return Fail(What() + " has more than 255 dimensions");
      tensors.back().shape.push_back(v);
      return true;
    }
    if (where_ == kInOffsets) {
      RawTensor& t = tensors.back();
      if (t.offset_count == 2) return Fail(NeedsFields());
      t.offsets[t.offset_count++] = v;
      return true;
    }
    return Scalar("a number");
  }
  bool number_float(number_float_t, const string_t&) override { return Scalar("a number"); }
  bool binary(binary_t&) override { return Scalar("binary"); }
  bool string(string_t& v) override {
    if (where_ == kMetadata) {
      (*metadata)[std::move(key_)] = std::move(v);
      return true;
    }
    if (where_ == kTensor && field_ == kDtype) {
      auto mapped = MapDtype(v);
      if (!mapped.ok()) return Fail(What() + ": " + mapped.status().message());
      tensors.back().dtype = std::move(mapped).value();
      tensors.back().has_dtype = true;
      return true;
    }
    return Scalar("a string");
  }
  bool start_object(std::size_t) override {
    if (!Deeper()) return false;
    switch (where_) {
      case kStart:
        where_ = kTop;
        return true;
      case kTop:
        if (key_ == "__metadata__") {
          metadata.emplace();
          where_ = kMetadata;
          return true;
        }
        return StartTensor();
      case kTensor:
        if (field_ != kOther) return Fail(NeedsFields());
        return Skip();
      case kSkip:
        ++skip_depth_;
        return true;
      default:
        return Scalar("an object");
    }
  }
  bool start_array(std::size_t) override {
    if (!Deeper()) return false;
    if (where_ == kTensor && field_ == kShape) {
      tensors.back().has_shape = true;
      where_ = kInShape;
      return true;
    }
    if (where_ == kTensor && field_ == kOffsets) {
      tensors.back().offset_count = 0;
      where_ = kInOffsets;
      return true;
    }
    if (where_ == kTensor && field_ == kOther) return Skip();
    if (where_ == kSkip) {
      ++skip_depth_;
      return true;
    }
    return Scalar("an array");
  }
  bool key(string_t& k) override {
    if (where_ != kTensor) {
      key_ = std::move(k);
      return true;
    }
    Field f = k == "dtype" ? kDtype : k == "shape" ? kShape : k == "data_offsets" ? kOffsets : kOther;
    RawTensor& t = tensors.back();
    bool seen = (f == kDtype && t.has_dtype) || (f == kShape && t.has_shape) ||
                (f == kOffsets && t.offset_count >= 0);
    if (seen) return Fail(What() + " has a duplicate field \"" + PrintableName(k) + "\"");
    field_ = f;
    return true;
  }
  bool end_object() override {
    --depth_;
    switch (where_) {
      case kSkip:
        return Unskip();
      case kTensor: {
        const RawTensor& t = tensors.back();
        if (!t.has_dtype || !t.has_shape || t.offset_count != 2) return Fail(NeedsFields());
        where_ = kTop;
        return true;
      }
      case kMetadata:
        where_ = kTop;
        return true;
      default:  // the top level
        where_ = kDone;
        return true;
    }
  }
  bool end_array() override {
    --depth_;
    if (where_ == kSkip) return Unskip();
    if (where_ == kInOffsets && tensors.back().offset_count != 2) return Fail(NeedsFields());
    where_ = kTensor;  // from kInShape or kInOffsets
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception&) override {
    if (status.ok()) status = Bad("invalid JSON (at byte " + std::to_string(position) + ")");
    return false;
  }

 private:
  enum Where { kStart, kTop, kMetadata, kTensor, kInShape, kInOffsets, kSkip, kDone };
  enum Field { kDtype, kShape, kOffsets, kOther };

  bool Fail(const std::string& what) {
    if (status.ok()) status = Bad(what);
    return false;
  }
  std::string What() const { return "tensor '" + PrintableName(tensors.back().name) + "'"; }
  std::string NeedsFields() const {
    return What() + " needs \"dtype\", \"shape\" and a two-element \"data_offsets\"";
  }
  bool Deeper() {
    if (++depth_ > kSafetensorsMaxDepth) {
      return Fail("JSON nested deeper than " + std::to_string(kSafetensorsMaxDepth) + " levels");
    }
    return true;
  }
  bool StartTensor() {
    tensors.emplace_back();
    tensors.back().name = std::move(key_);
    where_ = kTensor;
    return true;
  }
  bool Skip() {
    where_ = kSkip;
    skip_depth_ = 1;
    return true;
  }
  bool Unskip() {
    if (--skip_depth_ == 0) where_ = kTensor;
    return true;
  }
  // A value where it does not belong (or an unknown field's, ignored).
  bool Scalar(const char* what) {
    switch (where_) {
      case kStart:
        return Fail("top level is not a JSON object");
      case kTop:
        if (key_ == "__metadata__" && std::string_view(what) == "null") return true;
        if (key_ == "__metadata__") return Fail("__metadata__ is not an object");
        tensors.emplace_back();
        tensors.back().name = std::move(key_);
        return Fail(What() + " is not an object");
      case kMetadata:
        return Fail("__metadata__ values must be strings");
      case kTensor:
        if (field_ == kOther) return true;
        return Fail(NeedsFields());
      case kInShape:
        return Fail(What() + " has a shape entry that is not a non-negative integer");
      case kInOffsets:
        return Fail(What() + " has invalid data_offsets");
      case kSkip:
        return true;
      case kDone:
        break;
    }
    return Fail("invalid JSON");
  }

  Where where_ = kStart;
  Field field_ = kOther;
  int depth_ = 0;
  int skip_depth_ = 0;
  std::string key_;
};

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
  HeaderReader reader;
  bool parsed;
  try {
    parsed = json::sax_parse(text, text + n, &reader);
  } catch (const json::exception& e) {
    return Bad(std::string("invalid JSON: ") + e.what());
  }
  if (!parsed) return reader.status.ok() ? Bad("invalid JSON") : reader.status;

  // A repeated key keeps its last value, as in the safetensors package.
  std::vector<size_t> by_name(reader.tensors.size());
  for (size_t i = 0; i < by_name.size(); ++i) by_name[i] = i;
  std::stable_sort(by_name.begin(), by_name.end(), [&](size_t a, size_t b) {
    return reader.tensors[a].name < reader.tensors[b].name;
  });
  std::vector<bool> replaced(reader.tensors.size(), false);
  for (size_t k = 0; k + 1 < by_name.size(); ++k) {
    if (reader.tensors[by_name[k]].name == reader.tensors[by_name[k + 1]].name) {
      replaced[by_name[k]] = true;
    }
  }

  Index index;
  index.format = FileFormat::kSafetensors;
  index.header.version = 0;
  index.header.metadata_length = n;
  index.safetensors_metadata = std::move(reader.metadata);
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;
  for (size_t i = 0; i < reader.tensors.size(); ++i) {
    if (replaced[i]) continue;
    RawTensor& t = reader.tensors[i];
    const std::string what = "tensor '" + PrintableName(t.name) + "'";
    const uint64_t begin = t.offsets[0], end = t.offsets[1];
    if (begin > end) return Bad(what + " has invalid data_offsets");
    if (end > data_size) {
      return Bad(what + " data [" + std::to_string(begin) + ", " + std::to_string(end) +
                 ") lies outside the " + std::to_string(data_size) + "-byte data section");
    }
    TensorEntry e;
    e.name = std::move(t.name);
    e.type = TensorType::kStateDict;
    e.dtype = std::move(t.dtype);
    e.shape = std::move(t.shape);
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
  reader.tensors.clear();
  // Tensors in data order must tile the data section: no overlaps, no holes.
  std::stable_sort(index.entries.begin(), index.entries.end(),
                   [](const TensorEntry& a, const TensorEntry& b) {
                     // Empty tensors may share an offset with the next one;
                     // ties go by name, so the order does not depend on the
                     // order of the keys in the header.
                     if (a.data_offset != b.data_offset) return a.data_offset < b.data_offset;
                     if (a.data_length != b.data_length) return a.data_length < b.data_length;
                     return a.name < b.name;
                   });
  uint64_t expect = data_start;
  for (const TensorEntry& e : index.entries) {
    if (e.data_offset != expect) {
      return Bad("tensor '" + PrintableName(e.name) + "' starts at data offset " +
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
  TZR_RETURN_IF_ERROR(CheckLoadableIndex(index).WithContext("safetensors header"));
  return index;
}

}  // namespace tensorizer
