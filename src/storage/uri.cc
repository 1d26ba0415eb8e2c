#include "tensorizer/uri.h"

#include <cctype>
#include <cstdio>

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

}  // namespace tensorizer
