// Internal: the one URI model. Every backend, the scheme registry
// (storage/registry.h), the converter and the S3 endpoint settings take
// URIs apart here, so "is this a URI, and of which scheme", host:port with
// IPv6 brackets and percent-decoding have one answer each.
//
// Pure functions, safe from any thread. Error messages show a URI only
// through RedactUri (tensorizer/uri.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tensorizer/status.h"

namespace tensorizer::internal {

// The scheme of `text`, lowercased, when it starts with an RFC 3986 scheme
// (a letter, then letters, digits, '+', '-' or '.') followed by "://";
// nullopt otherwise, which makes `text` a local path: "dir/x://y" and
// "./s3://b" are relative paths, "s3://b/k" and "HTTPS://h/" are URIs.
std::optional<std::string> UriScheme(std::string_view text);

struct HostPort {
  std::string host;  // an IPv6 literal without its brackets
  bool ipv6 = false;
  std::optional<uint16_t> port;  // absent, or empty as in "h:" (the default port)
  // The host as a URL spells it: IPv6 literals in brackets.
  std::string UrlHost() const { return ipv6 ? "[" + host + "]" : host; }
};

// "host", "host:port", "[v6]" or "[v6]:port". On failure the message is a
// phrase for the caller to put after what it parsed: "has no host", "has an
// unclosed '['", "has text after the IPv6 address", "has a port that is not
// a number", "has a port out of range" (ports are 1..65535).
Result<HostPort> ParseHostPort(std::string_view text);

// scheme://[userinfo@]host[:port][/path][?query][#fragment], every part as
// written (still percent-encoded) except the scheme, which is lowercased.
struct ParsedUri {
  std::string scheme;
  std::string authority;                // [userinfo@]host[:port]
  std::optional<std::string> userinfo;  // before the authority's last '@'
  HostPort host_port;                   // host empty for an empty authority (file:///x)
  std::string path;                     // from the '/' after the authority, to '?' or '#'
  std::optional<std::string> query;     // after '?', to '#'
  std::optional<std::string> fragment;  // after '#'
  // path, query and fragment as one string, for schemes whose '?' and '#'
  // are part of a name (an s3:// key).
  std::string after_authority;
};

// Takes a URI with an authority apart. InvalidArgument, naming the URI
// (redacted), for text without a scheme and "://" and for a malformed
// host:port.
Result<ParsedUri> ParseUri(std::string_view uri);

// %XX sequences decoded; false for a '%' not followed by two hex digits.
bool PercentDecode(std::string_view in, std::string* out);

// The user name and password of a URI's userinfo ("user:password"),
// percent-decoded. InvalidArgument naming the part (never its text) when the
// percent-encoding is bad.
struct UserInfo {
  std::string user;
  std::optional<std::string> password;
};
Result<UserInfo> DecodeUserInfo(std::string_view userinfo);

}  // namespace tensorizer::internal
