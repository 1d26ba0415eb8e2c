// Where CopyFile and ConvertFile write: a local path (through a temporary
// file renamed at the end) or an s3:// object (a multipart upload completed
// at the end). Private to src/convert.
// (The S3 sink grows its parts with the object, so any size fits in S3's
// 10,000 parts without the caller sizing them.)
#pragma once

#include <cctype>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "tensorizer/convert.h"
#include "tensorizer/write.h"

namespace tensorizer::convert_internal {

// "file:///x" -> "/x" (scheme case-insensitive); other strings unchanged.
inline std::string StripFileScheme(const std::string& uri) {
  if (uri.size() >= 7) {
    std::string scheme = uri.substr(0, 7);
    for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme == "file://") return uri.substr(7);
  }
  return uri;
}

// Opens the sink for `dest_uri`: a local path or file:// URI through a
// temporary file (bypassing CreateSink's scheme split, so "dir/x://y" stays
// a relative path, as IsRemoteUri says), anything else through CreateSink,
// which accepts s3:// and names the scheme it cannot write.
inline Result<std::unique_ptr<Sink>> CreateDestination(const std::string& dest_uri,
                                                       const SinkOptions& options) {
  if (!IsRemoteUri(dest_uri)) return CreateFileSink(StripFileScheme(dest_uri));
  return CreateSink(dest_uri, options);
}

}  // namespace tensorizer::convert_internal
