// libFuzzer target for S3 configuration (src/storage/s3_config.h) and the
// S3 error-body reader (src/storage/s3_auth.h).
//
// Input: fields separated by the byte 0x1e (record separator):
//   0 ~/.s3cfg   1 ~/.aws/credentials   2 ~/.aws/config   (a missing field:
//                                                           no such file)
//   3 environment: "NAME=value" lines
//   4 S3Options: "name=value" lines; names id, secret, token, endpoint,
//     region, s3cfg, profile, force_http (0/1), addressing (path, virtual,
//     auto), home (the home directory; "" for none)
//   5 an s3:// URI   6 an S3 XML error body   7 ignored (older seeds: a tag name)
// A path read ending in "s3cfg", "credentials" or "config" gets field 0, 1
// or 2; a path ending in "unreadable" is a read error; any other is absent.
//
// The secret invariant, checked differentially: every secret in the input
// (the values of secret_key, access_token, aws_secret_access_key and
// aws_session_token lines in the files, AWS_SECRET_ACCESS_KEY and
// AWS_SESSION_TOKEN in the environment, the secret and token options) is
// changed in its letters and digits, and ResolveConfig runs again. What
// anyone sees (the error message, or the scheme, host, region and where the
// credentials came from, and a DescribeFailure for the result) must be the
// same: otherwise some message depends on a secret's text. On success the
// request host, path and URL of the URI's object must be well-formed.
//
// Seeds: fuzz/corpus_s3_config/ (regenerate with fuzz/make_corpus.py).
// Replayed by ctest (fuzz_s3_config_replay), with fuzz/regressions_s3/.
// Run:   build/fuzz/fuzz_s3_config -max_total_time=300 -rss_limit_mb=2048
//        build/fuzz-run/s3 fuzz/corpus_s3_config
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "storage/s3_auth.h"
#include "storage/s3_config.h"
#include "storage/s3_xml.h"

using namespace tensorizer;
using namespace tensorizer::s3;

namespace {

[[noreturn]] void Violated(const char* what) {
  std::fprintf(stderr, "fuzz_s3_config: invariant violated: %s\n", what);
  std::abort();
}

#define CHECK(cond)               \
  do {                            \
    if (!(cond)) Violated(#cond); \
  } while (0)

constexpr char kSeparator = '\x1e';

struct Span {
  size_t begin, end;
};

std::string TrimCopy(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The value spans of lines in [begin, end) of `in` whose key (split at the
// first of `delims`, trimmed, lowercased when `fold`) is in `keys`.
void SecretSpans(const std::string& in, size_t begin, size_t end, const char* delims, bool fold,
                 const std::vector<std::string>& keys, std::vector<Span>* out) {
  size_t at = begin;
  while (at < end) {
    size_t eol = in.find('\n', at);
    if (eol == std::string::npos || eol > end) eol = end;
    const std::string line = in.substr(at, eol - at);
    size_t d = line.find_first_of(delims);
    if (d != std::string::npos) {
      std::string key = TrimCopy(line.substr(0, d));
      if (fold) key = Lower(key);
      for (const std::string& k : keys) {
        if (key == k) out->push_back({at + d + 1, eol});
      }
    }
    at = eol + 1;
  }
}

struct Parsed {
  std::vector<std::string> fields;
  bool has_file[3] = {false, false, false};
  Environment env;
  S3Options options;
};

Parsed Split(const std::string& in) {
  Parsed p;
  size_t at = 0;
  while (true) {
    size_t sep = in.find(kSeparator, at);
    p.fields.push_back(in.substr(at, sep == std::string::npos ? std::string::npos : sep - at));
    if (sep == std::string::npos) break;
    at = sep + 1;
  }
  for (int i = 0; i < 3; ++i) p.has_file[i] = p.fields.size() > static_cast<size_t>(i);
  p.fields.resize(8);
  p.env.home = "/home/fuzz";
  auto lines = [](const std::string& block, char delim, auto&& each) {
    size_t a = 0;
    while (a <= block.size()) {
      size_t e = block.find('\n', a);
      if (e == std::string::npos) e = block.size();
      const std::string line = block.substr(a, e - a);
      size_t d = line.find(delim);
      if (d != std::string::npos) each(line.substr(0, d), line.substr(d + 1));
      a = e + 1;
    }
  };
  lines(p.fields[3], '=', [&](const std::string& k, const std::string& v) { p.env.vars[k] = v; });
  S3Options& o = p.options;
  lines(p.fields[4], '=', [&](const std::string& k, const std::string& v) {
    if (k == "id") o.access_key_id = v;
    if (k == "secret") o.secret_access_key = v;
    if (k == "token") o.session_token = v;
    if (k == "endpoint") o.endpoint = v;
    if (k == "region") o.region = v;
    if (k == "s3cfg") o.s3cfg_path = v;
    if (k == "profile") o.profile = v;
    if (k == "force_http") o.force_http = v == "1";
    if (k == "home") p.env.home = v;
    if (k == "addressing") {
      o.addressing = v == "path"      ? S3Options::Addressing::kPath
                     : v == "virtual" ? S3Options::Addressing::kVirtual
                                      : S3Options::Addressing::kAuto;
    }
  });
  const std::vector<std::string> files(p.fields.begin(), p.fields.begin() + 3);
  const bool has[3] = {p.has_file[0], p.has_file[1], p.has_file[2]};
  p.env.read_file = [files, has0 = has[0], has1 = has[1],
                     has2 = has[2]](const std::string& path) -> Result<std::optional<std::string>> {
    auto ends = [&](const char* s) {
      std::string x(s);
      return path.size() >= x.size() && path.compare(path.size() - x.size(), x.size(), x) == 0;
    };
    if (ends("unreadable")) return Status::IoError("reading failed", 5);
    if (ends("s3cfg") && has0) return std::optional<std::string>(files[0]);
    if (ends("credentials") && has1) return std::optional<std::string>(files[1]);
    if (ends("config") && has2) return std::optional<std::string>(files[2]);
    return std::optional<std::string>();
  };
  return p;
}

// What a server's error body becomes in a message: no configured secret
// (one holding '*' or a backslash could be formed by the redaction or the escapes
// themselves), no control character, bounded.
void CheckServerText(const ResolvedConfig& c, const Location& l, const std::string& body) {
  const std::string text = ServerText(body, c);
  CHECK(text.size() <= 300 + 16);
  for (unsigned char ch : text) CHECK(ch >= 0x20 && ch != 0x7f);
  if (c.credentials) {
    std::vector<std::string> secrets = {c.credentials->secret_access_key};
    if (c.credentials->session_token) secrets.push_back(*c.credentials->session_token);
    for (const std::string& secret : secrets) {
      // A secret of a few characters can be spelled by the text the
      // redaction itself adds ("***", "\\xNN", "... (cut)"); real ones
      // (AWS: 40 characters) cannot.
      if (secret.size() < 8 || secret.find_first_of("*\\") != std::string::npos) continue;
      CHECK(text.find(secret) == std::string::npos);
    }
  }
  const std::string message = DescribeFailure(c, l, "HTTP 403 Forbidden", body);
  for (unsigned char ch : message) CHECK(ch >= 0x20 && ch != 0x7f);
}

// Everything ResolveConfig lets a user see.
std::string Observe(const std::string& in) {
  Parsed p = Split(in);
  auto config = ResolveConfig(p.options, p.env);
  if (!config.ok()) {
    CHECK(!config.status().message().empty());
    return "error " + config.status().ToString();
  }
  const ResolvedConfig& c = *config;
  CHECK(c.scheme == "http" || c.scheme == "https");
  CHECK(!c.host.empty() && !c.region.empty());
  if (c.credentials) {
    CHECK(!c.credentials->access_key_id.empty() && !c.credentials->secret_access_key.empty());
  }
  std::string seen = c.scheme + "|" + c.host + "|" + c.region + "|" + c.credentials_from + "|" +
                     std::to_string(c.virtual_hosted) + std::to_string(c.path_style_fallback);
  auto loc = ParseS3Uri(p.fields[5]);
  Location l = loc.ok() ? *loc : Location{"bucket", "key"};
  // The config's part of a refusal; the server's part is checked alone,
  // since hiding a secret that the body echoes differs by design.
  seen += "|" + DescribeFailure(c, l, "HTTP 403 Forbidden", "");
  CheckServerText(c, l, p.fields[6]);
  const std::string host = c.RequestHost(l), path = c.RequestPath(l), url = c.ObjectUrl(l);
  CHECK(path.size() > 1 && path[0] == '/');
  CHECK(url.rfind(c.scheme + "://" + host + "/", 0) == 0);
  seen += "|" + host + "|" + path + "|" + url;
  return seen;
}

// Letters and digits rotated within each span: the same shape, other text.
std::string Rotated(std::string in, const std::vector<Span>& spans) {
  for (const Span& s : spans) {
    for (size_t i = s.begin; i < s.end; ++i) {
      char& c = in[i];
      if (c >= 'a' && c <= 'z') c = static_cast<char>('a' + (c - 'a' + 7) % 26);
      if (c >= 'A' && c <= 'Z') c = static_cast<char>('A' + (c - 'A' + 7) % 26);
      if (c >= '0' && c <= '9') c = static_cast<char>('0' + (c - '0' + 3) % 10);
    }
  }
  return in;
}

void CheckUri(const std::string& uri) {
  auto loc = ParseS3Uri(uri);
  if (!loc.ok()) return;
  CHECK(!loc->bucket.empty() && !loc->key.empty() && loc->key[0] != '/');
  CHECK(uri.size() >= 5 + loc->bucket.size() + loc->key.size());
  CHECK(uri.compare(5, loc->bucket.size(), loc->bucket) == 0);
  CHECK(uri.compare(uri.size() - loc->key.size(), loc->key.size(), loc->key) == 0);
}

// ParseXml: a problem exactly when not well formed; a document has a root;
// child texts are bounded.
void CheckXml(const std::string& xml) {
  const XmlDocument doc = ParseXml(xml);
  CHECK(doc.well_formed == doc.problem.empty());
  if (doc.well_formed) CHECK(!doc.root.empty());
  for (const auto& [name, text] : doc.children) CHECK(text.size() <= kMaxXmlFieldBytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  // Field boundaries, for the secret spans.
  std::vector<Span> fields;
  size_t at = 0;
  while (true) {
    size_t sep = in.find(kSeparator, at);
    fields.push_back({at, sep == std::string::npos ? in.size() : sep});
    if (sep == std::string::npos) break;
    at = sep + 1;
  }
  fields.resize(8, Span{in.size(), in.size()});
  std::vector<Span> secrets;
  const std::vector<std::string> file_keys = {"secret_key", "access_token", "aws_secret_access_key",
                                              "aws_session_token"};
  for (int f = 0; f < 3; ++f) {
    SecretSpans(in, fields[f].begin, fields[f].end, "=:", true, file_keys, &secrets);
  }
  SecretSpans(in, fields[3].begin, fields[3].end, "=", false,
              {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}, &secrets);
  SecretSpans(in, fields[4].begin, fields[4].end, "=", false, {"secret", "token"}, &secrets);

  const std::string seen = Observe(in);
  const std::string seen_rotated = Observe(Rotated(in, secrets));
  if (seen != seen_rotated) {
    std::fprintf(stderr, "with the secrets:  %s\nwith them changed: %s\n", seen.c_str(),
                 seen_rotated.c_str());
    Violated("a message or setting depends on a secret's text");
  }
  const Parsed p = Split(in);
  CheckUri(p.fields[5]);
  CheckXml(p.fields[6]);
  return 0;
}
