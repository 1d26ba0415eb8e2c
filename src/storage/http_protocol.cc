#include "storage/http_protocol.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

#include "util/decimal.h"

namespace tensorizer::http {

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string OneLine(const std::string& s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

bool IEquals(const std::string& a, const char* b) {
  size_t n = std::strlen(b);
  if (a.size() != n) return false;
  for (size_t i = 0; i < n; ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

bool RetryAfterMs(const std::string& value, uint64_t max_ms, uint64_t* ms) {
  uint64_t after_s = 0;
  if (!internal::ParseDecimal(value, &after_s)) return false;
  // A huge number of seconds is the maximum, not what its product in
  // milliseconds wraps to (2^64 ms is 584 million years).
  *ms = after_s > UINT64_MAX / 1000 ? max_ms : std::min<uint64_t>(after_s * 1000, max_ms);
  return true;
}

bool ParseContentRange(const std::string& value, ContentRange* out) {
  std::string v = Trim(value);
  if (v.size() < 6 || !IEquals(v.substr(0, 6), "bytes ")) return false;
  v = Trim(v.substr(6));
  size_t slash = v.find('/');
  if (slash == std::string::npos) return false;
  std::string range = v.substr(0, slash), total = v.substr(slash + 1);
  ContentRange cr;
  if (range != "*") {
    size_t dash = range.find('-');
    if (dash == std::string::npos) return false;
    if (!internal::ParseDecimal(range.substr(0, dash), &cr.first) || !internal::ParseDecimal(range.substr(dash + 1), &cr.last))
      return false;
    if (cr.last < cr.first) return false;
    cr.has_range = true;
  }
  if (total != "*") {
    if (!internal::ParseDecimal(total, &cr.total)) return false;
    cr.has_total = true;
  }
  *out = cr;
  return true;
}

void Response::AddLine(const std::string& line) {
  header_bytes += line.size();
  if (header_bytes > kMaxHeaderBytes && header_problem.empty()) {
    header_problem =
        "the response headers exceed " + std::to_string(kMaxHeaderBytes >> 10) + " KiB";
  }
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response: only what bounds the whole request carries over.
    Response next;
    next.header_bytes = header_bytes;
    next.interim_responses = interim_responses;
    next.header_problem = header_problem;
    *this = std::move(next);
    size_t sp = line.find(' ');
    if (sp != std::string::npos) {
      status = std::strtol(line.c_str() + sp + 1, nullptr, 10);
      size_t sp2 = line.find(' ', sp + 1);
      if (sp2 != std::string::npos) reason = Trim(line.substr(sp2 + 1));
    }
    if (status >= 100 && status < 200 && ++interim_responses > kMaxInterimResponses &&
        header_problem.empty()) {
      header_problem = "the server sent more than " + std::to_string(kMaxInterimResponses) +
                       " interim (1xx) responses";
    }
    return;
  }
  size_t colon = line.find(':');
  if (colon == std::string::npos) return;
  std::string name = Trim(line.substr(0, colon)), value = Trim(line.substr(colon + 1));
  if (field_bytes + name.size() + value.size() <= kMaxHeaderBytes) {
    field_bytes += name.size() + value.size();
    fields.emplace_back(name, value);
  }
  if (IEquals(name, "etag")) {
    etag = value;
  } else if (IEquals(name, "last-modified")) {
    last_modified = value;
  } else if (IEquals(name, "content-range")) {
    content_range = value;
  } else if (IEquals(name, "retry-after")) {
    retry_after = value;
  } else if (IEquals(name, "content-length")) {
    has_length = internal::ParseDecimal(value, &content_length);
  } else if (IEquals(name, "content-encoding")) {
    content_encoding = content_encoding.empty() ? value : content_encoding + ", " + value;
  } else if (IEquals(name, "transfer-encoding")) {
    transfer_encoding = transfer_encoding.empty() ? value : transfer_encoding + ", " + value;
  } else if (IEquals(name, "location")) {
    location = value;
  }
}

namespace {

// True when every comma-separated coding in `list` is one of `allowed`
// (case-insensitive); an empty list passes.
bool OnlyCodings(const std::string& list, std::initializer_list<const char*> allowed) {
  size_t begin = 0;
  while (begin <= list.size()) {
    size_t comma = list.find(',', begin);
    if (comma == std::string::npos) comma = list.size();
    std::string coding = Trim(list.substr(begin, comma - begin));
    if (!coding.empty()) {
      bool ok = false;
      for (const char* a : allowed) ok = ok || IEquals(coding, a);
      if (!ok) return false;
    }
    begin = comma + 1;
  }
  return true;
}

}  // namespace

std::string Response::EncodingProblem() const {
  // aws-chunked is how a client may upload an object to S3, never how a
  // server sends one: S3 drops it from the stored metadata, but some
  // S3-compatible servers (moto) echo it on GET over a plain body.
  if (!OnlyCodings(content_encoding, {"identity", "aws-chunked"})) {
    return "the server answered with Content-Encoding '" + OneLine(content_encoding).substr(0, 64) +
           "' although only identity was accepted";
  }
  if (!OnlyCodings(transfer_encoding, {"chunked", "identity"})) {
    return "the server answered with Transfer-Encoding '" +
           OneLine(transfer_encoding).substr(0, 64) + "', which is not supported";
  }
  return "";
}

std::string Response::StatusText() const {
  return "HTTP " + std::to_string(status) + (reason.empty() ? "" : " " + reason);
}

}  // namespace tensorizer::http
