#include "storage/s3_auth.h"

#include <cctype>
#include <cstdio>
#include <cstring>

#include "storage/s3_xml.h"
#include "tensorizer/uri.h"

namespace tensorizer::s3 {

std::vector<std::string> AuthHeaders(const ResolvedConfig& config, const Location& location,
                                     const std::string& method, const QueryList& query,
                                     const std::string& payload_sha256, int64_t time_utc_seconds) {
  // The Host header is sent explicitly so that what the server sees is what
  // was signed, whatever libcurl would derive from the URL.
  std::string host = config.RequestHost(location);
  std::vector<std::string> lines = {"Host: " + host};
  if (!config.credentials) return lines;
  RequestToSign r;
  r.method = method;
  r.host = host;
  r.path = config.RequestPath(location);
  r.query = query;
  r.payload_sha256 = payload_sha256;
  r.region = config.region;
  r.time_utc_seconds = time_utc_seconds;
  SignedRequest signed_request = SignRequest(*config.credentials, r);
  lines.push_back("Authorization: " + signed_request.authorization);
  for (const auto& [name, value] : signed_request.headers_to_add)
    lines.push_back(name + ": " + value);
  return lines;
}

namespace {

// Bytes of server text (an error's code and message) kept in a message.
constexpr size_t kMaxServerTextBytes = 300;

bool StartsWithAt(const std::string& s, size_t at, const char* lower) {
  for (size_t i = 0; lower[i]; ++i) {
    if (at + i >= s.size() || std::tolower(static_cast<unsigned char>(s[at + i])) != lower[i]) {
      return false;
    }
  }
  return true;
}

// `s` with every occurrence of a non-empty secret replaced by "***", in one
// left-to-right pass, so that no replacement is searched again.
std::string WithoutSecrets(const std::string& s, const std::vector<std::string>& secrets) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    size_t matched = 0;
    for (const std::string& secret : secrets) {
      if (!secret.empty() && s.compare(i, secret.size(), secret) == 0) matched = secret.size();
    }
    if (matched) {
      out += "***";
      i += matched;
    } else {
      out += s[i++];
    }
  }
  return out;
}

}  // namespace

std::string ServerText(const std::string& text, const ResolvedConfig& config) {
  std::vector<std::string> secrets;
  if (config.credentials) {
    // As sent, and percent-encoded as in a query string.
    secrets.push_back(config.credentials->secret_access_key);
    secrets.push_back(UriEncode(config.credentials->secret_access_key, false));
    if (config.credentials->session_token) {
      secrets.push_back(*config.credentials->session_token);
      secrets.push_back(UriEncode(*config.credentials->session_token, false));
    }
  }
  const std::string s = WithoutSecrets(text, secrets);
  // What a proxy that echoes the request would show: the Authorization
  // header's Signature=, a presigned URL's parameters, the token header.
  static const char* const kMarkers[] = {"signature=", "x-amz-signature=", "x-amz-security-token=",
                                         "x-amz-security-token:", "x-amz-credential="};
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const char* marker = nullptr;
    for (const char* m : kMarkers) {
      if (StartsWithAt(s, i, m)) marker = m;
    }
    if (!marker) {
      out += s[i++];
      continue;
    }
    const size_t n = std::strlen(marker);
    out.append(s, i, n);
    i += n;
    while (i < s.size() && s[i] == ' ') out += s[i++];
    const size_t value = i;
    while (i < s.size() && !std::strchr(" \t\r\n&,;\"'<>", s[i])) ++i;
    if (i > value) out += "***";
  }
  std::string escaped;
  for (unsigned char c : out) {
    if (escaped.size() >= kMaxServerTextBytes) {
      escaped += "... (cut)";
      break;
    }
    if (c < 0x20 || c == 0x7f) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      escaped += buf;
    } else {
      escaped += static_cast<char>(c);
    }
  }
  return escaped;
}

std::string DescribeFailure(const ResolvedConfig& config, const Location& location,
                            const std::string& status_text, const std::string& body) {
  const XmlDocument doc = ParseXml(body);
  const std::string code = doc.root == "Error" ? doc.Child("Code") : "";
  const std::string message = doc.root == "Error" ? doc.Child("Message") : "";
  std::string out = status_text;
  if (!code.empty()) {
    out += ": " + ServerText(code, config) +
           (message.empty() ? "" : ": " + ServerText(message, config));
  } else if (!body.empty() && body.find('<') == std::string::npos) {
    out += ": " + ServerText(body, config);
  }
  out += " (endpoint " + config.scheme + "://" + EscapeControls(config.host) + ", bucket " +
         EscapeControls(location.bucket);
  if (config.credentials) {
    out += ", access key id " + EscapeControls(config.credentials->access_key_id) + " from " +
           EscapeControls(config.credentials_from);
  } else {
    out += ", anonymous request: no credentials were found";
  }
  return out + ")";
}

}  // namespace tensorizer::s3
