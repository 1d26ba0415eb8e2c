// Internal: the one table from URI scheme to storage backend.
//
// OpenSource, CreateSink, the converter and cp (IsRemoteUri, copy into a
// prefix), the CLI and Python (through _core.uri_scheme_kind) all ask this
// table, so no other scheme list exists. Adding a backend is one file with
// its Source (and Sink, when it can write) and one row in kBackends
// (registry.cc).
//
// Which text is a URI at all is UriScheme's rule (storage/parsed_uri.h): a
// string without "scheme://" at its start is a local path.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "tensorizer/source.h"
#include "tensorizer/status.h"
#include "tensorizer/write.h"

namespace tensorizer::internal {

struct Backend {
  const char* scheme;  // lowercase, as UriScheme returns it
  // What the backend is, for callers that pick options by it: "file",
  // "http" (http and https), "s3", "redis".
  const char* kind;
  // file://: the text after "://" is a local path.
  bool local;
  // cp's destination ending in '/' is a prefix to copy into (s3://b/dir/,
  // as `aws s3 cp` takes it) rather than an object name.
  bool copies_into_prefix;
  // '?' and '#' end the object's name (http(s)); false: they are part of it
  // (an s3:// key).
  bool query_ends_name;
  Result<std::unique_ptr<Source>> (*open_source)(const std::string& uri, const SourceOptions&);
  // nullptr: the backend cannot write.
  Result<std::unique_ptr<Sink>> (*create_sink)(const std::string& uri, const SinkOptions&);
};

// The backend of `uri`'s scheme; nullptr for a scheme with none. A local
// path (no scheme) gets the "file" row.
const Backend* FindBackend(std::string_view uri);

// The backend for `uri`, or InvalidArgument naming the unknown scheme, the
// URI (redacted) and the schemes there are.
Result<const Backend*> BackendFor(const std::string& uri);

// The local path a bare path or file:// URI names ("file:///x" -> "/x").
std::string LocalPath(const std::string& uri);

// "local paths, http://, https:// and s3://": what CreateSink can write,
// for messages.
std::string WritableSchemes();

}  // namespace tensorizer::internal
