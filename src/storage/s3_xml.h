// Internal: reading the XML documents an S3 endpoint answers with
// (InitiateMultipartUploadResult, CompleteMultipartUploadResult, Error).
//
// The body comes from a server and is untrusted. It is parsed whole by expat
// with namespace processing, so `<Error xmlns="http://s3.amazonaws.com/...">`
// is an Error like `<Error>`, and an Error after any amount of whitespace is
// still seen. A DOCTYPE is refused before its internal subset is read: S3
// never sends one, and entity declarations are how XML bombs work. Pure (no
// I/O), so fuzz/fuzz_s3_config.cc drives it directly.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>

namespace tensorizer::s3 {

// Text kept per child element; the rest is cut off.
constexpr size_t kMaxXmlFieldBytes = 4096;

struct XmlDocument {
  // Parsed to its end without an error. A document cut short (an error body
  // truncated for a message, an invalid byte) is not, but what was read
  // before the cut is still in `root` and `children`, the unfinished child
  // with its text so far.
  bool well_formed = false;
  std::string problem;  // why it is not well formed, for messages
  // The local name of the root element, without its namespace.
  std::string root;
  // The text of the root's child elements by local name (the first of each
  // name), at most kMaxXmlFieldBytes each.
  std::map<std::string, std::string> children;

  // children[name], or "".
  std::string Child(const std::string& name) const;
};

// Parses `body` after any leading whitespace (AWS keeps a slow
// CompleteMultipartUpload alive by sending spaces before the document).
XmlDocument ParseXml(std::string_view body);

}  // namespace tensorizer::s3
