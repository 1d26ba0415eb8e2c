#include "tensorizer/uri.h"

#include <cctype>
#include <cstdio>

#include "storage/parsed_uri.h"
#include "util/decimal.h"

namespace tensorizer {
namespace {

bool IEq(const std::string& a, const char* b) {
  size_t i = 0;
  for (; i < a.size() && b[i]; ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return i == a.size() && b[i] == '\0';
}

}  // namespace

std::string EscapeControls(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

bool IsSecretQueryParameter(const std::string& name) {
  static const char* const kSecret[] = {
      "x-amz-signature", "x-amz-security-token", "x-goog-signature", "x-goog-credential",
      "signature",       "sig",                  "token",            "access_token",
      "id_token",        "refresh_token",        "password",         "passwd",
      "secret",          "client_secret",        "api_key",          "apikey",
      "key",             "auth",                 "authorization",    "x-amz-credential"};
  for (const char* s : kSecret) {
    if (IEq(name, s)) return true;
  }
  return false;
}

std::string RedactUri(const std::string& uri) {
  std::string s = EscapeControls(uri);
  size_t scheme_end = s.find("://");
  if (scheme_end == std::string::npos) return s;
  const size_t authority = scheme_end + 3;
  size_t authority_end = s.find_first_of("/?#", authority);
  if (authority_end == std::string::npos) authority_end = s.size();
  std::string out = s.substr(0, authority);
  // Userinfo ends at the last '@' of the authority (a password may hold '@').
  size_t at = s.rfind('@', authority_end == 0 ? 0 : authority_end - 1);
  if (at != std::string::npos && at >= authority) {
    std::string userinfo = s.substr(authority, at - authority);
    size_t colon = userinfo.find(':');
    out += colon == std::string::npos ? userinfo : userinfo.substr(0, colon) + ":***";
    out += "@";
    out += s.substr(at + 1, authority_end - at - 1);
  } else {
    out += s.substr(authority, authority_end - authority);
  }
  size_t query = s.find('?', authority_end);
  size_t fragment = s.find('#', authority_end);
  if (query == std::string::npos || (fragment != std::string::npos && fragment < query)) {
    return out + s.substr(authority_end);
  }
  out += s.substr(authority_end, query + 1 - authority_end);
  const size_t query_end = fragment == std::string::npos ? s.size() : fragment;
  size_t begin = query + 1;
  while (begin <= query_end) {
    size_t amp = s.find('&', begin);
    if (amp == std::string::npos || amp > query_end) amp = query_end;
    std::string pair = s.substr(begin, amp - begin);
    size_t eq = pair.find('=');
    std::string name = eq == std::string::npos ? pair : pair.substr(0, eq);
    out += (eq != std::string::npos && IsSecretQueryParameter(name)) ? name + "=***" : pair;
    if (amp < query_end) out += "&";
    begin = amp + 1;
  }
  return out + s.substr(query_end);
}

namespace internal {

std::optional<std::string> UriScheme(std::string_view text) {
  const size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) return std::nullopt;
  if (!std::isalpha(static_cast<unsigned char>(text[0]))) return std::nullopt;
  std::string scheme;
  for (char c : text.substr(0, sep)) {
    const auto u = static_cast<unsigned char>(c);
    if (!std::isalnum(u) && c != '+' && c != '-' && c != '.') return std::nullopt;
    scheme += static_cast<char>(std::tolower(u));
  }
  return scheme;
}

Result<HostPort> ParseHostPort(std::string_view text) {
  HostPort hp;
  std::string_view host = text, port;
  bool has_port = false;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return Status::InvalidArgument("has an unclosed '['");
    host = text.substr(1, close - 1);
    hp.ipv6 = true;
    std::string_view after = text.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return Status::InvalidArgument("has text after the IPv6 address");
      port = after.substr(1);
      has_port = true;
    }
  } else if (const size_t colon = text.rfind(':'); colon != std::string_view::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    has_port = true;
  }
  if (host.empty()) return Status::InvalidArgument("has no host");
  hp.host = std::string(host);
  if (has_port && !port.empty()) {
    uint64_t n = 0;
    if (!ParseDecimal(port, &n)) {
      // Digits too many for a uint64_t are still a number, just too large.
      const bool digits = port.find_first_not_of("0123456789") == std::string_view::npos;
      return Status::InvalidArgument(digits ? "has a port out of range"
                                            : "has a port that is not a number");
    }
    if (n < 1 || n > 65535) return Status::InvalidArgument("has a port out of range");
    hp.port = static_cast<uint16_t>(n);
  }
  return hp;
}

Result<ParsedUri> ParseUri(std::string_view uri) {
  std::optional<std::string> scheme = UriScheme(uri);
  if (!scheme) {
    return Status::InvalidArgument(RedactUri(std::string(uri)) + " is not a scheme://... URI");
  }
  ParsedUri u;
  u.scheme = std::move(*scheme);
  const size_t begin = u.scheme.size() + 3;
  size_t end = uri.find_first_of("/?#", begin);
  if (end == std::string_view::npos) end = uri.size();
  u.authority = std::string(uri.substr(begin, end - begin));
  u.after_authority = std::string(uri.substr(end));
  // A password may hold '@': the userinfo ends at the authority's last one.
  std::string_view host_port = u.authority;
  if (const size_t at = host_port.rfind('@'); at != std::string_view::npos) {
    u.userinfo = std::string(host_port.substr(0, at));
    host_port.remove_prefix(at + 1);
  }
  if (!host_port.empty()) {
    Result<HostPort> hp = ParseHostPort(host_port);
    if (!hp.ok()) {
      return Status::InvalidArgument(RedactUri(std::string(uri)) + " " + hp.status().message());
    }
    u.host_port = std::move(hp).value();
  }
  std::string_view rest = u.after_authority;
  if (const size_t hash = rest.find('#'); hash != std::string_view::npos) {
    u.fragment = std::string(rest.substr(hash + 1));
    rest = rest.substr(0, hash);
  }
  if (const size_t q = rest.find('?'); q != std::string_view::npos) {
    u.query = std::string(rest.substr(q + 1));
    rest = rest.substr(0, q);
  }
  u.path = std::string(rest);
  return u;
}

bool PercentDecode(std::string_view in, std::string* out) {
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string decoded;
  decoded.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      decoded += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    decoded += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  *out = std::move(decoded);
  return true;
}

Result<UserInfo> DecodeUserInfo(std::string_view userinfo) {
  UserInfo info;
  const size_t colon = userinfo.find(':');
  if (!PercentDecode(userinfo.substr(0, colon), &info.user)) {
    return Status::InvalidArgument("bad percent-encoding in the user name");
  }
  if (colon != std::string_view::npos) {
    std::string password;
    if (!PercentDecode(userinfo.substr(colon + 1), &password)) {
      return Status::InvalidArgument("bad percent-encoding in the password");
    }
    info.password = std::move(password);
  }
  return info;
}

}  // namespace internal

}  // namespace tensorizer
