// libFuzzer target for the HTTP source's response parsing
// (src/storage/http_protocol.h): what a server sends is untrusted.
//
// Input: the first line is a Content-Range value; every later line is a
// header line as libcurl hands it to the header callback (status lines
// included, so redirects and 100 Continue reset the response).
//
// Invariants: nothing crashes; a Content-Range that parses has first <= last
// and re-encodes to a value that parses the same; ParseDecimal agrees with an
// independent decimal reader; the Retry-After wait never exceeds its cap and
// is the exact product when that fits; OneLine leaves no run, lead or trail
// of whitespace; a status line resets every field but the request's header
// byte and interim-response counts, and a problem is reported exactly when
// one of them is past its bound.
//
// Seeds: fuzz/corpus_http_response/. Replayed by ctest (fuzz_http_response_replay).
// Run:   build/fuzz/fuzz_http_response -max_total_time=300 -rss_limit_mb=2048
//        build/fuzz-run/http fuzz/corpus_http_response
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "storage/http_protocol.h"
#include "util/decimal.h"

using namespace tensorizer::http;
using tensorizer::internal::ParseDecimal;

namespace {

[[noreturn]] void Violated(const char* what) {
  std::fprintf(stderr, "fuzz_http_response: invariant violated: %s\n", what);
  std::abort();
}

#define CHECK(cond)               \
  do {                            \
    if (!(cond)) Violated(#cond); \
  } while (0)

// Decimal digits only, the value if it fits in 64 bits.
bool Decimal(const std::string& s, unsigned __int128* v) {
  if (s.empty()) return false;
  *v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    *v = *v * 10 + static_cast<unsigned>(c - '0');
    if (*v > UINT64_MAX) return false;
  }
  return true;
}

void CheckU64(const std::string& s) {
  uint64_t got = 12345;
  bool ok = ParseDecimal(s, &got);
  unsigned __int128 want = 0;
  bool want_ok = Decimal(s, &want);
  CHECK(ok == want_ok);
  if (ok) CHECK(got == static_cast<uint64_t>(want));
  if (!ok) CHECK(got == 12345);
}

void CheckContentRange(const std::string& value) {
  ContentRange cr;
  cr.first = 7;
  if (!ParseContentRange(value, &cr)) {
    CHECK(cr.first == 7);  // untouched on failure
    return;
  }
  if (cr.has_range) CHECK(cr.first <= cr.last);
  std::string again = "bytes ";
  again += cr.has_range ? std::to_string(cr.first) + "-" + std::to_string(cr.last) : "*";
  again += "/";
  again += cr.has_total ? std::to_string(cr.total) : "*";
  ContentRange cr2;
  CHECK(ParseContentRange(again, &cr2));
  CHECK(cr2.has_range == cr.has_range && cr2.first == cr.first && cr2.last == cr.last);
  CHECK(cr2.has_total == cr.has_total && cr2.total == cr.total);
}

void CheckRetryAfter(const std::string& value, uint64_t max_ms) {
  uint64_t ms = 0;
  bool ok = RetryAfterMs(value, max_ms, &ms);
  uint64_t s = 0;
  CHECK(ok == ParseDecimal(value, &s));
  if (!ok) return;
  CHECK(ms <= max_ms);
  unsigned __int128 want = static_cast<unsigned __int128>(s) * 1000;
  CHECK(ms == (want < max_ms ? static_cast<uint64_t>(want) : max_ms));
}

void CheckOneLine(const std::string& s) {
  std::string o = OneLine(s);
  CHECK(o.size() <= s.size());
  if (o.empty()) return;
  CHECK(o.front() != ' ' && o.back() != ' ');
  for (size_t i = 0; i < o.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(o[i]);
    CHECK(c == ' ' || !std::isspace(c));
    if (i > 0) CHECK(!(o[i] == ' ' && o[i - 1] == ' '));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  size_t eol = in.find('\n');
  const std::string range_value = in.substr(0, eol);
  CheckContentRange(range_value);
  CheckU64(range_value);
  CheckRetryAfter(range_value, size % 2 ? 30000 : UINT64_MAX);
  CheckOneLine(in);

  Response r;
  size_t header_bytes = 0;
  int interim = 0;
  size_t at = eol == std::string::npos ? in.size() : eol + 1;
  while (at < in.size()) {
    size_t end = in.find('\n', at);
    end = end == std::string::npos ? in.size() : end + 1;
    const std::string line = in.substr(at, end - at);
    r.AddLine(line);
    header_bytes += line.size();
    if (line.rfind("HTTP/", 0) == 0) {
      CHECK(r.etag.empty() && r.last_modified.empty() && r.content_range.empty());
      CHECK(r.retry_after.empty() && !r.has_length && r.content_length == 0);
      if (r.status >= 100 && r.status < 200) ++interim;
    }
    // The bounds of the whole request survive every status line.
    CHECK(r.header_bytes == header_bytes && r.interim_responses == interim);
    CHECK(r.header_problem.empty() ==
          (header_bytes <= kMaxHeaderBytes && interim <= kMaxInterimResponses));
    at = end;
  }
  CHECK(Trim(r.etag) == r.etag && Trim(r.content_range) == r.content_range);
  CHECK(r.reason == Trim(r.reason));
  CheckContentRange(r.content_range);
  CheckRetryAfter(r.retry_after, 2000);
  if (r.has_length) CHECK(r.content_length <= 9999999999999999999ull);
  std::string text = r.StatusText();
  CHECK(text.rfind("HTTP ", 0) == 0);
  return 0;
}
