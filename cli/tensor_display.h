// How the tool shows the fields of a .tensors index to people: tensor names,
// dtypes, shapes, tensor types and feature flags. Pure functions.
//
// These belong in the library (format.h) once the Python layer wants the
// same spellings; they live here until then.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tensorizer/format.h"

namespace tensorizer::cli {

// A stored name as one line of text. A name that is a path (0x1E followed
// by a JSON array) shows as that JSON; valid UTF-8 shows as itself. Control
// characters and bytes that are not valid UTF-8 show as \xNN, and a
// backslash as \\, so the result is printable and maps back to one name.
std::string DisplayName(std::string_view raw);

// Any text (a file name, a message part) escaped the same way.
std::string DisplayText(std::string_view s);

// A file name or URI as the CLI prints it: passwords and presigned
// signatures redacted (RedactUri), then escaped as DisplayText.
std::string DisplayUri(const std::string& uri);

// True when the name is a path: 0x1E followed by its JSON.
bool IsPathName(std::string_view raw);

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code
// points above U+10FFFF).
bool IsValidUtf8(std::string_view s);

// "torch.bfloat16" for an opaque dtype, else the numpy dtype string ("<f4"),
// escaped like a name.
std::string DisplayDtype(const std::string& dtype);

// "[2, 3]"; "[]" for a 0-d tensor.
std::string DisplayShape(const std::vector<uint64_t>& shape);

// "param", "buffer" or "state_dict".
const char* TensorTypeName(TensorType type);

// Names of the set feature flags ("encrypted", "versioned-metadata"), and
// "0x..." for a bit the format does not define.
std::vector<std::string> FeatureFlagNames(uint64_t flags);

// "tensorizer data version 4" or "safetensors".
std::string DescribeFormat(const Index& index);

// "1 tensor", "2 tensors".
std::string Plural(uint64_t n, const char* word);

// Columns `s` takes on a terminal: one per code point (wide characters are
// rare enough in tensor names not to matter).
size_t DisplayWidth(std::string_view s);

// `s` padded with spaces to `width` columns, on the right or the left.
std::string PadRight(const std::string& s, size_t width);
std::string PadLeft(const std::string& s, size_t width);

}  // namespace tensorizer::cli
