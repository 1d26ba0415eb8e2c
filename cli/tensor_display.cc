// See tensor_display.h.
#include "tensor_display.h"

#include <cstdio>

#include "tensorizer/uri.h"

namespace tensorizer::cli {
namespace {

// Length of the well-formed UTF-8 sequence at s[i], or 0 if there is none
// (RFC 3629 table: no overlongs, no surrogates, nothing above U+10FFFF).
size_t Utf8SequenceLength(std::string_view s, size_t i, uint32_t* code_point) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  auto cont = [&](size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(0);
  if (c < 0x80) {
    *code_point = c;
    return 1;
  }
  if (c >= 0xC2 && c <= 0xDF && cont(1)) {
    *code_point = (uint32_t{c} & 0x1F) << 6 | (b(1) & 0x3F);
    return 2;
  }
  if (c >= 0xE0 && c <= 0xEF && cont(1) && cont(2)) {
    if ((c == 0xE0 && b(1) < 0xA0) || (c == 0xED && b(1) > 0x9F)) return 0;
    *code_point = (uint32_t{c} & 0x0F) << 12 | (uint32_t{b(1)} & 0x3F) << 6 | (b(2) & 0x3F);
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4 && cont(1) && cont(2) && cont(3)) {
    if ((c == 0xF0 && b(1) < 0x90) || (c == 0xF4 && b(1) > 0x8F)) return 0;
    *code_point = (uint32_t{c} & 0x07) << 18 | (uint32_t{b(1)} & 0x3F) << 12 |
                  (uint32_t{b(2)} & 0x3F) << 6 | (b(3) & 0x3F);
    return 4;
  }
  return 0;
}

}  // namespace

std::string DisplayText(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    size_t n = Utf8SequenceLength(s, i, &cp);
    // C0 and C1 controls and DEL would move the cursor or be invisible.
    bool control = cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
    if (n == 0 || control) {
      size_t bytes = n == 0 ? 1 : n;
      for (size_t k = 0; k < bytes; ++k) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(s[i + k]));
        out += buf;
      }
      i += bytes;
    } else if (cp == '\\') {
      out += "\\\\";
      i += 1;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

bool IsPathName(std::string_view raw) { return !raw.empty() && raw[0] == '\x1e'; }

std::string DisplayName(std::string_view raw) {
  return DisplayText(IsPathName(raw) ? raw.substr(1) : raw);
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    size_t n = Utf8SequenceLength(s, i, &cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string DisplayDtype(const std::string& dtype) {
  auto info = ParseDtype(dtype);
  if (info.ok() && !info->opaque_name.empty()) return DisplayText(info->opaque_name);
  return DisplayText(dtype);
}

std::string DisplayShape(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

const char* TensorTypeName(TensorType type) {
  switch (type) {
    case TensorType::kParam:
      return "param";
    case TensorType::kBuffer:
      return "buffer";
    case TensorType::kStateDict:
      return "state_dict";
  }
  return "unknown";
}

std::vector<std::string> FeatureFlagNames(uint64_t flags) {
  std::vector<std::string> names;
  for (int bit = 0; bit < 64; ++bit) {
    uint64_t mask = uint64_t{1} << bit;
    if (!(flags & mask)) continue;
    if (mask == kFlagEncrypted) {
      names.emplace_back("encrypted");
    } else if (mask == kFlagVersionedMetadata) {
      names.emplace_back("versioned-metadata");
    } else {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(mask));
      names.emplace_back(buf);
    }
  }
  return names;
}

std::string DescribeFormat(const Index& index) {
  if (index.format == FileFormat::kSafetensors) return "safetensors";
  return "tensorizer data version " + std::to_string(index.header.version);
}

std::string Plural(uint64_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

size_t DisplayWidth(std::string_view s) {
  size_t width = 0;
  for (unsigned char c : s) width += (c & 0xC0) != 0x80;
  return width;
}

std::string PadRight(const std::string& s, size_t width) {
  size_t w = DisplayWidth(s);
  return w >= width ? s : s + std::string(width - w, ' ');
}

std::string PadLeft(const std::string& s, size_t width) {
  size_t w = DisplayWidth(s);
  return w >= width ? s : std::string(width - w, ' ') + s;
}

std::string DisplayUri(const std::string& uri) { return DisplayText(RedactUri(uri)); }

}  // namespace tensorizer::cli
