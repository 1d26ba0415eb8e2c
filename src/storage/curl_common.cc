#include "storage/curl_common.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <mutex>

#include "storage/parsed_uri.h"
#include "tensorizer/cancel.h"
#include "util/cancel_wait.h"

namespace tensorizer::internal {

namespace {

// Nonzero stops the transfer (CURLE_ABORTED_BY_CALLBACK): the thread that
// runs it was cancelled. libcurl calls this for every arrival, and about once
// a second while nothing arrives.
int AbortIfCancelled(void*, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return CancelRequested() ? 1 : 0;
}

struct Collected {
  Reply reply;
  std::string abort_reason;  // why a callback stopped the transfer
};

size_t CollectHeader(char* data, size_t size, size_t count, void* user) {
  auto* c = static_cast<Collected*>(user);
  c->reply.response.AddLine(std::string(data, size * count));
  if (!c->reply.response.header_problem.empty()) {
    c->abort_reason = c->reply.response.header_problem;
    return 0;
  }
  return size * count;
}

size_t CollectBody(char* data, size_t size, size_t count, void* user) {
  auto* c = static_cast<Collected*>(user);
  const size_t n = size * count;
  if (c->reply.body.size() + n > kMaxReplyBody) {
    c->abort_reason = "the response body is longer than " +
                      std::to_string(kMaxReplyBody >> 10) + " KiB";
    return 0;
  }
  c->reply.body.append(data, n);
  return n;
}

// A file body, read at its own offset so libcurl may rewind it.
struct FileBody {
  int fd;
  uint64_t size;
  uint64_t offset = 0;
};

size_t ReadFileBody(char* dst, size_t size, size_t count, void* user) {
  auto* f = static_cast<FileBody*>(user);
  const uint64_t want = std::min<uint64_t>(size * count, f->size - f->offset);
  size_t done = 0;
  while (done < want) {
    const ssize_t n = ::pread(f->fd, dst + done, want - done, static_cast<off_t>(f->offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return CURL_READFUNC_ABORT;
    done += static_cast<size_t>(n);
  }
  f->offset += done;
  return done;
}

int SeekFileBody(void* user, curl_off_t offset, int origin) {
  auto* f = static_cast<FileBody*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > f->size) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  f->offset = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

}  // namespace

void CurlGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

const char* CurlUserAgent() { return "tensorizer/" TENSORIZER_VERSION " (curl)"; }

void ApplyHttpOptions(CURL* c, const HttpOptions& options) {
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, CurlUserAgent());
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, AbortIfCancelled);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options.connect_timeout_ms));
  if (options.low_speed_timeout_ms > 0) {
    // libcurl measures stalls in whole seconds: round up.
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT,
                     static_cast<long>(std::max<uint32_t>(1, options.min_speed_bytes_per_s)));
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
                     static_cast<long>((options.low_speed_timeout_ms + 999) / 1000));
  }
  if (!options.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options.ca_file.c_str());
  if (!options.ca_path.empty()) curl_easy_setopt(c, CURLOPT_CAPATH, options.ca_path.c_str());
  if (!options.verify_tls) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
}

void ApplyRedirectPolicy(CURL* c, const std::string& url, bool follow_redirects) {
  const bool https = UriScheme(url) == "https";
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, https ? "https" : "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, https ? "https" : "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  // Credentials of the URL's userinfo go to its own host only.
  curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
}

bool IsRetriableCurl(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
      return true;
    default:
      return false;
  }
}

std::string CurlFailureText(CURLcode rc, const char* errbuf, bool in_headers) {
  if (rc == CURLE_OUT_OF_MEMORY && in_headers) {
    return "the server sent a response header line longer than libcurl accepts (100 KiB)";
  }
  return errbuf[0] ? std::string(errbuf) : curl_easy_strerror(rc);
}

int ErrnoForCurl(CURL* handle, CURLcode rc) {
  if (rc == CURLE_OPERATION_TIMEDOUT) return ETIMEDOUT;
  long os_errno = 0;
  if (rc == CURLE_COULDNT_CONNECT &&
      curl_easy_getinfo(handle, CURLINFO_OS_ERRNO, &os_errno) == CURLE_OK && os_errno > 0) {
    return static_cast<int>(os_errno);
  }
  return EIO;
}

Status CurlFailure(CURLcode rc, const char* errbuf, int sys_errno, bool in_headers) {
  if (rc == CURLE_ABORTED_BY_CALLBACK && CancelRequested()) return CancelledStatus("the transfer");
  return Status::IoError(CurlFailureText(rc, errbuf, in_headers), sys_errno);
}

bool IsRetriableStatus(long status) { return status >= 500 || status == 429 || status == 408; }

bool ThrottleRetries::Retry(long status, const HttpOptions& options) {
  uint32_t window_ms;
  if (status == 503 || status == 429) {
    window_ms = options.throttle_retry_ms;
  } else if (status == 500 || status == 502 || status == 504) {
    window_ms = std::min(options.throttle_retry_ms, kServerErrorRetryMs);
  } else {
    return false;
  }
  if (window_ms == 0) return false;
  auto now = std::chrono::steady_clock::now();
  if (count_++ == 0) first_ = now;
  return now - first_ < std::chrono::milliseconds(window_ms);
}

int ErrnoForStatus(long status) {
  switch (status) {
    case 404:
    case 410:
      return ENOENT;
    case 401:
    case 403:
      return EACCES;
    default:
      return EIO;
  }
}

uint64_t BackoffDelayMs(const HttpOptions& options, int attempt, std::mt19937_64& rng) {
  uint64_t cap = options.retry_base_delay_ms;
  for (int i = 0; i < attempt && cap < options.retry_max_delay_ms; ++i) cap *= 2;
  cap = std::min<uint64_t>(cap, options.retry_max_delay_ms);
  return std::uniform_int_distribution<uint64_t>(0, cap)(rng);
}

Result<Reply> PerformRequest(CURL* c, const HttpOptions& options, const std::string& method,
                             const std::string& url, const std::vector<std::string>& headers,
                             const RequestBody& body, bool* retriable) {
  *retriable = false;
  curl_slist* list = nullptr;
  for (const std::string& h : headers) list = curl_slist_append(list, h.c_str());
  list = curl_slist_append(list, "Expect:");
  list = curl_slist_append(list, "Content-Type:");
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
  FileBody file{body.fd, body.file_size};
  if (body.fd >= 0) {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, ReadFileBody);
    curl_easy_setopt(c, CURLOPT_READDATA, &file);
    curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, SeekFileBody);
    curl_easy_setopt(c, CURLOPT_SEEKDATA, &file);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body.file_size));
  } else if (body.bytes != nullptr) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.bytes->data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.bytes->size()));
  } else if (method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  }
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  Collected collected;
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, CollectHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &collected);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &collected);
  ApplyHttpOptions(c, options);
  ApplyRedirectPolicy(c, url, /*follow_redirects=*/false);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  const CURLcode rc = curl_easy_perform(c);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, nullptr);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, nullptr);
  curl_slist_free_all(list);
  if (rc == CURLE_WRITE_ERROR && !collected.abort_reason.empty()) {
    return Status::IoError(collected.abort_reason);
  }
  if (rc != CURLE_OK) {
    *retriable = IsRetriableCurl(rc);
    return CurlFailure(rc, errbuf, ErrnoForCurl(c, rc), collected.reply.response.status == 0);
  }
  return std::move(collected.reply);
}

Status RetryRequest(const HttpOptions& options, const std::string& what,
                    const std::function<Attempt()>& attempt) {
  std::mt19937_64 rng(std::random_device{}());
  ThrottleRetries throttled;
  for (int failures = 0;;) {
    Attempt a = attempt();
    if (a.status.ok()) return a.status;
    int backoff = 0;
    if (a.retriable && throttled.Retry(a.http_status, options)) {
      backoff = throttled.count() - 1;
    } else if (!a.retriable || failures >= options.max_retries) {
      return a.status.WithContext(what);
    } else {
      backoff = failures++;
    }
    if (!SleepUnlessCancelled(BackoffDelayMs(options, backoff, rng))) {
      return CancelledStatus(what);
    }
  }
}

}  // namespace tensorizer::internal
