// AWS Signature Version 4 request signing, as pure functions.
//
// Nothing here reads a clock, the environment or the network: the caller
// passes the credentials, the request and the signing time, and gets back
// every intermediate string AWS defines (canonical request, string to sign,
// signature) along with what to put on the wire. That is what lets the tests
// check each step against AWS's published worked examples, and what lets the
// S3 source and sink sign the same way from any thread.
//
// Two forms of authentication are supported:
//   - SignRequest: the `Authorization` header, single-chunk payload (signed
//     payload hash or "UNSIGNED-PAYLOAD");
//   - PresignRequest: query-string authentication (presigned URLs).
// Chunked (streaming) payload signing and SigV4a are not implemented.
//
// Conventions shared by both:
//   - `path` is the raw, unencoded path beginning with '/', for example
//     "/my bucket/a+b$c". It is URI-encoded here exactly once, segment by
//     segment, with '/' kept (S3's rule: no normalization of "." or "..", no
//     collapsing of repeated slashes, no double encoding). Do not pass an
//     already-encoded path: "%" would be encoded again as "%25".
//   - query parameters are raw, unencoded name/value pairs; a parameter with
//     no value ("?lifecycle") is {"lifecycle", ""}. They are encoded and
//     sorted here.
//   - headers are name/value pairs as sent. Every header passed is signed.
//     Names are case-insensitive; values are trimmed and runs of spaces
//     collapsed for signing (send them as given; the server does the same).
//     Repeated names are joined with ',' in the order given. `host` is
//     added from the `host` field unless the caller passes one.
//   - time is seconds since the Unix epoch, UTC.
//
// All functions are thread-safe (they share no state).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tensorizer/status.h"

namespace tensorizer::s3 {

using HeaderList = std::vector<std::pair<std::string, std::string>>;
using QueryList = std::vector<std::pair<std::string, std::string>>;

// Hex SHA-256 of the empty string: the payload hash of a request with no body.
inline constexpr std::string_view kEmptyPayloadSha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";
// The longest validity AWS accepts for a presigned URL (7 days).
inline constexpr int64_t kMaxPresignExpiresSeconds = 604800;

struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  // Temporary (STS) credentials carry a session token; it is sent as
  // x-amz-security-token (header or query parameter) and is signed.
  std::optional<std::string> session_token;
};

struct RequestToSign {
  std::string method = "GET";
  std::string host;        // as in the Host header, with ":port" if not the default
  std::string path = "/";  // raw, see above
  QueryList query;
  HeaderList headers;
  // Hex SHA-256 of the body, kEmptyPayloadSha256, or kUnsignedPayload.
  // For PresignRequest the S3 convention is kUnsignedPayload.
  std::string payload_sha256 = std::string(kEmptyPayloadSha256);
  std::string region = "us-east-1";
  std::string service = "s3";
  int64_t time_utc_seconds = 0;
  // S3 requires x-amz-content-sha256 on every header-signed request; other
  // services (and AWS's generic SigV4 test suite) do not send it.
  bool add_content_sha256_header = true;
};

struct SignedRequest {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;       // 64 lowercase hex digits
  std::string signed_headers;  // "host;range;x-amz-content-sha256;x-amz-date"
  std::string authorization;   // the Authorization header's value
  // Headers the caller must send in addition to its own (the signature covers
  // them): x-amz-date, x-amz-content-sha256 (if requested) and
  // x-amz-security-token (with a session token). Host is not included.
  HeaderList headers_to_add;
};

// Signs `request` for the Authorization header. The caller's headers must not
// already contain x-amz-date, x-amz-content-sha256 or x-amz-security-token:
// they are added (and signed) here.
SignedRequest SignRequest(const Credentials& credentials, const RequestToSign& request);

struct PresignedRequest {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;
  // The encoded path and the full query string (caller's parameters plus
  // X-Amz-*, X-Amz-Signature last), ready for "https://" + host + path + "?"
  // + query.
  std::string encoded_path;
  std::string query_string;
};

// Presigns `request` (query-string authentication) for `expires_seconds`,
// 1..kMaxPresignExpiresSeconds. The signed headers are host plus any headers
// in the request, which the eventual client must then send verbatim.
Result<PresignedRequest> PresignRequest(const Credentials& credentials,
                                        const RequestToSign& request, int64_t expires_seconds);

// --- building blocks, exposed for tests and for callers that hash bodies ---

// AWS URI encoding: A-Z a-z 0-9 - _ . ~ are kept, every other byte becomes
// %XX with uppercase hex; '/' is kept only when `keep_slash` (paths).
std::string UriEncode(std::string_view s, bool keep_slash);

// "20130524T000000Z" and "20130524" for a time in seconds since the epoch.
std::string AmzDate(int64_t time_utc_seconds);
std::string AmzDateStamp(int64_t time_utc_seconds);

std::string Sha256Hex(std::string_view data);
std::string HmacSha256(std::string_view key, std::string_view data);  // raw 32 bytes
std::string HexEncode(std::string_view bytes);

// HMAC chain "AWS4"+secret -> date -> region -> service -> "aws4_request".
std::string DeriveSigningKey(std::string_view secret_access_key, std::string_view date_stamp,
                             std::string_view region, std::string_view service);

}  // namespace tensorizer::s3
