// Where CopyFile and ConvertFile write: a local path (through a temporary
// file renamed at the end) or an s3:// object (a multipart upload completed
// at the end). Private to src/convert.
//
// An S3 upload has at most 10000 parts, so the part size bounds the object:
// 16 MiB parts stop at 156 GiB. Both callers know (or can bound) how much
// they will write before they start, so the part size is raised to fit it;
// host memory stays a few parts, whatever the part size.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "tensorizer/convert.h"
#include "tensorizer/write.h"

namespace tensorizer::convert_internal {

inline constexpr uint64_t kMaxS3Parts = 10000;
inline constexpr uint64_t kMaxS3PartBytes = 5ull << 30;

// "file:///x" -> "/x" (scheme case-insensitive); other strings unchanged.
inline std::string StripFileScheme(const std::string& uri) {
  if (uri.size() >= 7) {
    std::string scheme = uri.substr(0, 7);
    for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme == "file://") return uri.substr(7);
  }
  return uri;
}

// `options` with the S3 part size raised, if need be, so that an object of
// `expected_bytes` fits in S3's 10000 parts (rounded up to whole MiB, capped
// at S3's 5 GiB part limit).
inline SinkOptions SizedFor(SinkOptions options, uint64_t expected_bytes) {
  uint64_t& part = options.s3_upload.part_bytes;
  if (part > 0 && expected_bytes / part >= kMaxS3Parts) {
    uint64_t need = expected_bytes / (kMaxS3Parts - 1) + 1;
    need = (need + (1ull << 20) - 1) & ~((1ull << 20) - 1);
    part = std::min(need, kMaxS3PartBytes);
  }
  return options;
}

// Opens the sink for `dest_uri`: a local path or file:// URI through a
// temporary file (bypassing CreateSink's scheme split, so "dir/x://y" stays
// a relative path, as IsRemoteUri says), anything else through CreateSink,
// which accepts s3:// and names the scheme it cannot write.
inline Result<std::unique_ptr<Sink>> CreateDestination(const std::string& dest_uri,
                                                       const SinkOptions& options,
                                                       uint64_t expected_bytes) {
  if (!IsRemoteUri(dest_uri)) return CreateFileSink(StripFileScheme(dest_uri));
  return CreateSink(dest_uri, SizedFor(options, expected_bytes));
}

}  // namespace tensorizer::convert_internal
