// Internal: what every S3 request shares, source and sink alike: its
// authentication headers and the message for a refusal.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/s3_config.h"
#include "storage/sigv4.h"

namespace tensorizer::s3 {

// "Host: ..." plus, unless the config is anonymous, the SigV4 Authorization
// header and the x-amz-* headers it covers, for `method` on the object with
// `query` and a body whose hex SHA-256 is `payload_sha256`, signed at
// `time_utc_seconds`.
std::vector<std::string> AuthHeaders(const ResolvedConfig& config, const Location& location,
                                     const std::string& method, const QueryList& query,
                                     const std::string& payload_sha256, int64_t time_utc_seconds);

// "HTTP 403 Forbidden: SignatureDoesNotMatch: <message> (endpoint ..., bucket
// ..., access key id ..., credentials from ...)" from a status line and the
// start of an S3 XML error body (namespaced or not). The server's code and
// message pass through ServerText. Never includes the secret.
std::string DescribeFailure(const ResolvedConfig& config, const Location& location,
                            const std::string& status_text, const std::string& body);

// Text a server sent, made fit for a message: the configured secret key and
// session token, and the values after Signature=, X-Amz-Signature=,
// X-Amz-Credential= and X-Amz-Security-Token (= or :) become "***" (a proxy
// that echoes the request puts them in its <Message>); control characters
// become \xNN, so it cannot forge log lines; at most 300 bytes are kept.
std::string ServerText(const std::string& text, const ResolvedConfig& config);

}  // namespace tensorizer::s3
