// `tensorizer inspect FILE [--json]`: the file header and every tensor's
// index entry, read from the metadata block alone (no tensor data is read).
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "command.h"
#include "remote_options.h"
#include "tensor_display.h"
#include "tensorizer/uri.h"

namespace tensorizer::cli {
namespace {

const std::string kHelp =
    std::string(
        "usage: tensorizer inspect [--json] [REMOTE OPTIONS] FILE\n"
        "\n"
        "Prints the header of a .tensors (or safetensors) file (data version, feature flags, "
        "tensor\n"
        "count and total tensor data) and, for each tensor in file order, its name,\n"
        "dtype, shape, data bytes, tensor type and whether it is a meta tensor\n"
        "(stored with a shape but no data). Only the index is read. FILE is a path\n"
        "or a URI: file://, http(s)://, s3://bucket/key or redis://host/prefix.\n"
        "\n"
        "Names that are paths (0x1E + JSON) show as their JSON; control characters\n"
        "show as \\xNN. Opaque dtypes show as their torch name (torch.bfloat16),\n"
        "others as the numpy dtype string (<f4). A file the Python loader would\n"
        "refuse (a name that is not UTF-8 or not a valid path, a duplicate name,\n"
        "a dtype torch has no type for) fails here too, naming the entry.\n"
        "\n"
        "options:\n"
        "  --json      print one JSON document instead of text\n"
        "  -h, --help  show this help\n"
        "\n") +
    kRemoteOptionsHelp +
    "\n"
    "exit status: 0 printed, 1 the file cannot be read or is invalid, 2 usage error\n";

struct Row {
  std::string name, dtype, shape, bytes, type, meta;
};

struct Totals {
  uint64_t data_bytes = 0;
  uint64_t by_type[3] = {0, 0, 0};
  uint64_t meta = 0;
};

Result<Totals> CountTotals(const Index& index) {
  Totals t;
  for (const TensorEntry& e : index.entries) {
    auto meta = IsMetaTensor(e);
    if (!meta.ok()) return meta.status();
    t.data_bytes += e.data_length;
    t.by_type[static_cast<int>(e.type)]++;  // 0-2, checked by ParseIndex
    t.meta += *meta;
  }
  return t;
}

std::string FlagsText(uint64_t flags) {
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(flags));
  std::string names;
  for (const std::string& n : FeatureFlagNames(flags)) names += (names.empty() ? "" : ", ") + n;
  return std::string(hex) + " (" + (names.empty() ? "none" : names) + ")";
}

std::string TextReport(const std::string& file, uint64_t file_size, const Index& index,
                       const Totals& totals) {
  const FileHeader& h = index.header;
  std::string out;
  const bool tzr = index.format == FileFormat::kTensorizer;
  out += "file:          " + DisplayUri(file) + "\n";
  out += std::string("format:        ") + (tzr ? "tensorizer" : "safetensors") + "\n";
  out += "file size:     " + std::to_string(file_size) + " bytes\n";
  if (tzr) {
    out += "data version:  " + std::to_string(h.version) + "\n";
    out += "feature flags: " + FlagsText(h.flags) + "\n";
    out += std::string("encrypted:     ") + (h.has_crypt_info() ? "yes" : "no") + "\n";
  }
  out += "tensors:       " + std::to_string(h.tensor_count) + "\n";
  out += "tensor data:   " + std::to_string(h.tensor_size) + " bytes\n";

  if (!index.entries.empty()) {
    std::vector<Row> rows;
    rows.push_back({"name", "dtype", "shape", "bytes", "type", "meta"});
    for (const TensorEntry& e : index.entries) {
      bool meta = IsMetaTensor(e).value();  // checked by CountTotals
      rows.push_back({DisplayName(e.name), DisplayDtype(e.dtype), DisplayShape(e.shape),
                      std::to_string(e.data_length), TensorTypeName(e.type), meta ? "yes" : "no"});
    }
    size_t w_index = std::to_string(rows.size() - 2).size();
    size_t widths[6] = {0, 0, 0, 0, 0, 0};
    for (const Row& r : rows) {
      const std::string* cells[6] = {&r.name, &r.dtype, &r.shape, &r.bytes, &r.type, &r.meta};
      for (int c = 0; c < 6; ++c) widths[c] = std::max(widths[c], DisplayWidth(*cells[c]));
    }
    out += "\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::string line = PadLeft(i == 0 ? "#" : std::to_string(i - 1), w_index) + "  " +
                         PadRight(r.name, widths[0]) + "  " + PadRight(r.dtype, widths[1]) + "  " +
                         PadRight(r.shape, widths[2]) + "  " + PadLeft(r.bytes, widths[3]) + "  " +
                         PadRight(r.type, widths[4]) + "  " + r.meta;
      out += line + "\n";
    }
  }

  out += "\ntotal: " + Plural(index.entries.size(), "tensor") + " (" +
         std::to_string(totals.by_type[0]) + " param, " + std::to_string(totals.by_type[1]) +
         " buffer, " + std::to_string(totals.by_type[2]) + " state_dict; " +
         std::to_string(totals.meta) + " meta), " + std::to_string(totals.data_bytes) +
         " data bytes\n";
  return out;
}

// The name as JSON: the text, and the path it encodes. The index parser
// accepted only names that decode (UTF-8, flat paths), and the path is read
// without recursion, so the output is proportional to the name.
void NameToJson(const TensorEntry& e, FileFormat format, nlohmann::ordered_json* t) {
  const std::string& raw = e.name;
  const bool path_name = format == FileFormat::kTensorizer && IsPathName(raw);
  (*t)["name"] = path_name ? raw.substr(1) : raw;
  nlohmann::ordered_json path = nullptr;
  auto decoded = path_name ? DecodeTensorName(raw)
                           : Result<std::vector<PathComponent>>(
                                 std::vector<PathComponent>{{false, raw}});
  if (decoded.ok()) {
    path = nlohmann::ordered_json::array();
    for (const PathComponent& c : *decoded) {
      // An index past 64 bits (Python reads it) stays as its digits.
      if (c.is_index && c.text.size() < 20) {
        path.push_back(std::stoull(c.text));
      } else {
        path.push_back(c.text);
      }
    }
  }
  (*t)["path"] = std::move(path);
}

std::string JsonReport(const std::string& file, uint64_t file_size, const Index& index,
                       const Totals& totals) {
  using nlohmann::ordered_json;
  const FileHeader& h = index.header;
  ordered_json doc;
  doc["file"] = RedactUri(file);
  const bool tzr = index.format == FileFormat::kTensorizer;
  doc["format"] = tzr ? "tensorizer" : "safetensors";
  doc["file_size"] = file_size;
  // What safetensors files do not have is null, so every document has the same keys.
  doc["data_version"] = tzr ? ordered_json(h.version) : ordered_json(nullptr);
  doc["feature_flags"] = tzr ? ordered_json(h.flags) : ordered_json(nullptr);
  doc["features"] = tzr ? ordered_json(FeatureFlagNames(h.flags)) : ordered_json(nullptr);
  doc["encrypted"] = tzr && h.has_crypt_info();
  doc["tensor_count"] = h.tensor_count;
  doc["tensor_data_bytes"] = h.tensor_size;
  doc["metadata_bytes"] = h.metadata_length;
  ordered_json tensors = ordered_json::array();
  for (const TensorEntry& e : index.entries) {
    ordered_json t;
    NameToJson(e, index.format, &t);
    auto info = ParseDtype(e.dtype);
    t["dtype"] = info.ok() && !info->opaque_name.empty() ? info->opaque_name : e.dtype;
    t["shape"] = e.shape;
    t["data_bytes"] = e.data_length;
    t["type"] = TensorTypeName(e.type);
    t["meta"] = IsMetaTensor(e).value();
    t["data_offset"] = e.data_offset;
    tensors.push_back(std::move(t));
  }
  doc["tensors"] = std::move(tensors);
  doc["totals"] = {{"tensors", index.entries.size()}, {"data_bytes", totals.data_bytes},
                   {"param", totals.by_type[0]},      {"buffer", totals.by_type[1]},
                   {"state_dict", totals.by_type[2]}, {"meta", totals.meta}};
  return doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

int RunInspect(const std::vector<std::string>& args) {
  const Command& self = kInspectCommand;
  int exit_code = kExitOk;
  OptionSpec spec{{"--json"}, {}};
  AddRemoteOptions(&spec);
  auto parsed = ParseCommand(self, args, spec, {"FILE"}, &exit_code);
  if (!parsed) return exit_code;
  std::string usage_error;
  auto remote = RemoteOptionsFromArgs(*parsed, &usage_error);
  if (!remote) return UsageError(self, usage_error);
  const std::string& file = parsed->positional[0];
  auto opened = OpenTensorsFile(file, remote->source);
  if (!opened.ok()) return Failure(self, opened.status().message());
  const Index& index = *opened->index;
  auto totals = CountTotals(index);
  if (!totals.ok()) return Failure(self, DisplayUri(file) + ": " + totals.status().message());
  uint64_t size = opened->source->size();
  Print(parsed->has("--json") ? JsonReport(file, size, index, *totals)
                              : TextReport(file, size, index, *totals));
  return kExitOk;
}

}  // namespace

const Command kInspectCommand = {"inspect", "print the header and the index of tensors",
                                 kHelp.c_str(), RunInspect};

}  // namespace tensorizer::cli
