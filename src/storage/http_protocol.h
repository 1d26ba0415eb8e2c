// Internal: the pure part of the HTTP source (src/storage/http_source.cc):
// reading a response's status line and headers, and the Content-Range value
// of a 206. These bytes come from a server and are untrusted; nothing here
// touches libcurl or a socket, so fuzz/fuzz_http_response.cc drives it
// directly.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tensorizer::http {

// `s` without leading and trailing spaces, tabs, CRs and LFs.
std::string Trim(const std::string& s);

// An error body for a one-line message: runs of whitespace become one space,
// and none leads or trails.
std::string OneLine(const std::string& s);

// ASCII case-insensitive equality.
bool IEquals(const std::string& a, const char* b);

// The wait a Retry-After header in seconds asks for, in milliseconds and at
// most `max_ms`. False when the value is not a number of seconds (an
// HTTP-date is not honoured).
bool RetryAfterMs(const std::string& value, uint64_t max_ms, uint64_t* ms);

// "bytes a-b/total" or "bytes */total"; total may be "*" (unknown).
struct ContentRange {
  bool has_range = false;
  uint64_t first = 0, last = 0;  // first <= last when has_range
  bool has_total = false;
  uint64_t total = 0;
};

// False (with `*out` untouched) for a value of another shape, or a range
// whose last byte is before its first.
bool ParseContentRange(const std::string& value, ContentRange* out);

// Bounds on what the headers of one request may cost, whatever the server
// sends: interim responses (100 Continue...) and header bytes in all.
constexpr int kMaxInterimResponses = 16;
constexpr size_t kMaxHeaderBytes = 256 << 10;

// The headers of the last response seen: a status line ("HTTP/...") starts
// a new one, as after a redirect or a 100 Continue.
struct Response {
  long status = 0;
  std::string reason;
  std::string etag, last_modified, content_range, retry_after;
  // Content-Encoding and Transfer-Encoding as sent ("" when absent), and
  // where a 3xx points.
  std::string content_encoding, transfer_encoding, location;
  bool has_length = false;
  uint64_t content_length = 0;
  // Every header field as sent (name and value trimmed), in order, for
  // callers that show them (tensorizer's response_headers); fields past
  // kMaxHeaderBytes of names and values are dropped.
  std::vector<std::pair<std::string, std::string>> fields;
  size_t field_bytes = 0;

  // Over the whole request (interim and redirected responses included):
  // header bytes and 1xx responses seen, and once either is past its bound
  // (kMaxHeaderBytes, kMaxInterimResponses), why; the caller then stops the
  // transfer.
  size_t header_bytes = 0;
  int interim_responses = 0;
  std::string header_problem;

  // One header line as libcurl hands it over (CRLF included or not).
  void AddLine(const std::string& line);

  // "HTTP 404 Not Found", for messages.
  std::string StatusText() const;

  // Why the body cannot be taken as the object's bytes as sent, or "" when it
  // can: any content coding but identity (a gzip body would be taken for raw
  // tensor bytes), any transfer coding but chunked.
  std::string EncodingProblem() const;
};

}  // namespace tensorizer::http
