// AWS Signature Version 4, following AWS's "Signature Calculations for the
// Authorization Header" and "Authenticating Requests: Using Query Parameters".
//
// Steps, for both forms:
//   1. canonical request = method \n encoded path \n sorted encoded query \n
//      canonical headers (lowercase name:trimmed value\n, sorted) \n
//      signed header names (;-joined) \n payload hash
//   2. string to sign = "AWS4-HMAC-SHA256" \n amz-date \n scope \n
//      hex(sha256(canonical request)), scope = date/region/service/aws4_request
//   3. signature = hex(hmac(signing key, string to sign)), signing key derived
//      from the secret through the scope's parts.
// The query-string form moves the X-Amz-* parameters (everything but the
// signature) into the canonical query before step 1.
//
// SHA-256 and HMAC come from OpenSSL; only the string building is ours, since
// no well-kept C/C++ library offers SigV4 as a pure function without pulling
// in a whole SDK.
#include "storage/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace tensorizer::s3 {

namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Trims leading and trailing whitespace and collapses inner runs of spaces to
// one, as AWS's canonical header value rule asks.
std::string CanonicalHeaderValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  bool pending_space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); H. Hinnant's
// civil_from_days, so no time-zone state (gmtime) is involved.
void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2 ? 1 : 0);
}

struct CanonicalHeaders {
  std::string block;         // "name:value\n" lines
  std::string signed_names;  // "a;b;c"
};

CanonicalHeaders Canonicalize(const HeaderList& headers, const std::string& host) {
  // Stable sort keeps repeated names in the order given, for the ',' join.
  std::vector<std::pair<std::string, std::string>> lowered;
  lowered.reserve(headers.size() + 1);
  bool has_host = false;
  for (const auto& [name, value] : headers) {
    lowered.emplace_back(ToLower(name), CanonicalHeaderValue(value));
    if (lowered.back().first == "host") has_host = true;
  }
  if (!has_host) lowered.emplace_back("host", host);
  std::stable_sort(lowered.begin(), lowered.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  CanonicalHeaders out;
  for (size_t i = 0; i < lowered.size();) {
    const std::string& name = lowered[i].first;
    std::string value = lowered[i].second;
    size_t j = i + 1;
    for (; j < lowered.size() && lowered[j].first == name; ++j) value += "," + lowered[j].second;
    out.block += name + ":" + value + "\n";
    if (!out.signed_names.empty()) out.signed_names += ";";
    out.signed_names += name;
    i = j;
  }
  return out;
}

std::string CanonicalQuery(const QueryList& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [k, v] : query) encoded.emplace_back(UriEncode(k, false), UriEncode(v, false));
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [k, v] : encoded) {
    if (!out.empty()) out += "&";
    out += k + "=" + v;
  }
  return out;
}

std::string Scope(const RequestToSign& r) {
  return AmzDateStamp(r.time_utc_seconds) + "/" + r.region + "/" + r.service + "/aws4_request";
}

std::string StringToSign(const RequestToSign& r, const std::string& canonical_request) {
  return std::string(kAlgorithm) + "\n" + AmzDate(r.time_utc_seconds) + "\n" + Scope(r) + "\n" +
         Sha256Hex(canonical_request);
}

std::string Sign(const Credentials& c, const RequestToSign& r, const std::string& string_to_sign) {
  const std::string key =
      DeriveSigningKey(c.secret_access_key, AmzDateStamp(r.time_utc_seconds), r.region, r.service);
  return HexEncode(HmacSha256(key, string_to_sign));
}

}  // namespace

std::string UriEncode(std::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~' || (c == '/' && keep_slash)) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  return out;
}

std::string AmzDateStamp(int64_t t) { return AmzDate(t).substr(0, 8); }

std::string AmzDate(int64_t t) {
  int64_t days = t / 86400;
  int64_t secs = t % 86400;
  if (secs < 0) {
    secs += 86400;
    days -= 1;
  }
  int64_t y;
  unsigned m, d;
  CivilFromDays(days, &y, &m, &d);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04lld%02u%02uT%02d%02d%02dZ", static_cast<long long>(y), m, d,
                static_cast<int>(secs / 3600), static_cast<int>(secs / 60 % 60),
                static_cast<int>(secs % 60));
  return buf;
}

std::string HexEncode(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xF]);
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // EVP_Digest only fails on allocation failure or a missing provider, which
  // leave nothing sensible to sign with; an empty digest then makes the
  // signature wrong and the server rejects the request.
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  return HexEncode(std::string_view(reinterpret_cast<const char*>(md), len));
}

std::string HmacSha256(std::string_view key, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len) == nullptr) {
    return {};
  }
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string DeriveSigningKey(std::string_view secret_access_key, std::string_view date_stamp,
                             std::string_view region, std::string_view service) {
  std::string k = HmacSha256("AWS4" + std::string(secret_access_key), date_stamp);
  k = HmacSha256(k, region);
  k = HmacSha256(k, service);
  return HmacSha256(k, "aws4_request");
}

SignedRequest SignRequest(const Credentials& credentials, const RequestToSign& request) {
  SignedRequest out;
  out.headers_to_add.emplace_back("x-amz-date", AmzDate(request.time_utc_seconds));
  if (request.add_content_sha256_header) {
    out.headers_to_add.emplace_back("x-amz-content-sha256", request.payload_sha256);
  }
  if (credentials.session_token) {
    out.headers_to_add.emplace_back("x-amz-security-token", *credentials.session_token);
  }
  HeaderList all = request.headers;
  all.insert(all.end(), out.headers_to_add.begin(), out.headers_to_add.end());
  const CanonicalHeaders ch = Canonicalize(all, request.host);

  out.canonical_request = request.method + "\n" + UriEncode(request.path, true) + "\n" +
                          CanonicalQuery(request.query) + "\n" + ch.block + "\n" + ch.signed_names +
                          "\n" + request.payload_sha256;
  out.string_to_sign = StringToSign(request, out.canonical_request);
  out.signature = Sign(credentials, request, out.string_to_sign);
  out.signed_headers = ch.signed_names;
  out.authorization = std::string(kAlgorithm) + " Credential=" + credentials.access_key_id + "/" +
                      Scope(request) + ", SignedHeaders=" + ch.signed_names +
                      ", Signature=" + out.signature;
  return out;
}

Result<PresignedRequest> PresignRequest(const Credentials& credentials,
                                        const RequestToSign& request, int64_t expires_seconds) {
  if (expires_seconds < 1 || expires_seconds > kMaxPresignExpiresSeconds) {
    return Status::InvalidArgument("presigned URL expiry must be 1.." +
                                   std::to_string(kMaxPresignExpiresSeconds) + " seconds, got " +
                                   std::to_string(expires_seconds));
  }
  const CanonicalHeaders ch = Canonicalize(request.headers, request.host);
  QueryList query = request.query;
  query.emplace_back("X-Amz-Algorithm", std::string(kAlgorithm));
  query.emplace_back("X-Amz-Credential", credentials.access_key_id + "/" + Scope(request));
  query.emplace_back("X-Amz-Date", AmzDate(request.time_utc_seconds));
  query.emplace_back("X-Amz-Expires", std::to_string(expires_seconds));
  if (credentials.session_token) {
    query.emplace_back("X-Amz-Security-Token", *credentials.session_token);
  }
  query.emplace_back("X-Amz-SignedHeaders", ch.signed_names);

  PresignedRequest out;
  out.encoded_path = UriEncode(request.path, true);
  const std::string canonical_query = CanonicalQuery(query);
  out.canonical_request = request.method + "\n" + out.encoded_path + "\n" + canonical_query + "\n" +
                          ch.block + "\n" + ch.signed_names + "\n" + request.payload_sha256;
  out.string_to_sign = StringToSign(request, out.canonical_request);
  out.signature = Sign(credentials, request, out.string_to_sign);
  out.query_string = canonical_query + "&X-Amz-Signature=" + out.signature;
  return out;
}

}  // namespace tensorizer::s3
