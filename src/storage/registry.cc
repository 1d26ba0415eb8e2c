#include "storage/registry.h"

#include <optional>
#include <vector>

#include "storage/parsed_uri.h"
#include "tensorizer/convert.h"
#include "tensorizer/uri.h"

namespace tensorizer {
namespace internal {
namespace {

using SourcePtr = Result<std::unique_ptr<Source>>;
using SinkPtr = Result<std::unique_ptr<Sink>>;

// The one scheme table. Rows: scheme, kind, local, copies_into_prefix,
// query_ends_name, open_source, create_sink.
const Backend kBackends[] = {
    {"file", "file", true, false, false,
     [](const std::string& uri, const SourceOptions& o) -> SourcePtr {
       return OpenFileSource(LocalPath(uri), o.file);
     },
     [](const std::string& uri, const SinkOptions&) -> SinkPtr {
       return CreateFileSink(LocalPath(uri));
     }},
    {"http", "http", false, false, true,
     [](const std::string& uri, const SourceOptions& o) -> SourcePtr {
       return OpenHttpSource(uri, o.http);
     },
     nullptr},
    {"https", "http", false, false, true,
     [](const std::string& uri, const SourceOptions& o) -> SourcePtr {
       return OpenHttpSource(uri, o.http);
     },
     nullptr},
    {"s3", "s3", false, true, false,
     [](const std::string& uri, const SourceOptions& o) -> SourcePtr {
       return OpenS3Source(uri, o.s3, o.http);
     },
     [](const std::string& uri, const SinkOptions& o) -> SinkPtr {
       return CreateS3Sink(uri, o.s3, o.http, o.s3_upload);
     }},
    {"redis", "redis", false, false, true,
     [](const std::string& uri, const SourceOptions& o) -> SourcePtr {
       return OpenRedisSource(uri, o.http);
     },
     nullptr},
};

const Backend& FileBackend() { return kBackends[0]; }

// "a, b and c".
std::string JoinList(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " and " : ", ";
    out += items[i];
  }
  return out;
}

}  // namespace

const Backend* FindBackend(std::string_view uri) {
  std::optional<std::string> scheme = UriScheme(uri);
  if (!scheme) return &FileBackend();
  for (const Backend& b : kBackends) {
    if (*scheme == b.scheme) return &b;
  }
  return nullptr;
}

Result<const Backend*> BackendFor(const std::string& uri) {
  if (const Backend* b = FindBackend(uri)) return b;
  std::vector<std::string> known = {"local paths"};
  for (const Backend& b : kBackends) known.push_back(std::string(b.scheme) + "://");
  return Status::InvalidArgument("unsupported URI scheme '" + EscapeControls(*UriScheme(uri)) +
                                 "' in " + RedactUri(uri) + " (tensorizer opens " +
                                 JoinList(known) + ")");
}

std::string LocalPath(const std::string& uri) {
  return UriScheme(uri) ? uri.substr(uri.find("://") + 3) : uri;
}

std::string WritableSchemes() {
  std::vector<std::string> writable = {"local paths"};
  for (const Backend& b : kBackends) {
    if (b.create_sink != nullptr && !b.local) writable.push_back(std::string(b.scheme) + "://");
  }
  return JoinList(writable);
}

}  // namespace internal

bool IsRemoteUri(std::string_view uri) {
  if (!internal::UriScheme(uri)) return false;
  const internal::Backend* b = internal::FindBackend(uri);
  return b == nullptr || !b->local;
}

}  // namespace tensorizer
