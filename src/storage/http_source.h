// Internal: the HTTP source with per-request authentication, for backends
// that speak HTTP underneath (S3).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensorizer/source.h"

namespace tensorizer::internal {

// Signs the requests of one HttpSource and explains its refusals.
// Thread-safety: called from every reading thread at once.
class HttpRequestAuth {
 public:
  virtual ~HttpRequestAuth() = default;
  // Header lines ("Name: value") for one GET attempt of the source's URL.
  // Called again for every retry, since signatures carry the time.
  virtual std::vector<std::string> Headers() const = 0;
  // The message for a final (not retried) HTTP error status, from the
  // status line and the start of the response body. It must say who asked
  // (for a 403) and must never contain a secret.
  virtual std::string DescribeFailure(const std::string& status_text,
                                      const std::string& body) const = 0;
};

// Like OpenHttpSource, with `auth` applied to every request; `name` is the
// source's uri() and the subject of its error messages (s3://bucket/key).
Result<std::unique_ptr<Source>> OpenAuthenticatedHttpSource(
    const std::string& url, const std::string& name, const HttpOptions& options,
    std::shared_ptr<const HttpRequestAuth> auth);

// The header fields of the response that opened `source` (the size probe of
// an http(s):// or s3:// source), in the order the server sent them; empty
// for every other kind of source.
std::vector<std::pair<std::string, std::string>> OpenResponseHeaders(const Source& source);

}  // namespace tensorizer::internal
