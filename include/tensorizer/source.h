// Source: random-access bytes of one file or object.
//
// The load pipeline reads through this one interface: the total size and a
// positional ReadAt. ReadAt is safe to call from many threads at once (it has
// no cursor), and either fills the whole destination or fails; a premature end
// of data is an error naming the URI and the byte range. Backends are chosen
// by URI scheme in OpenSource(): local files, and http:// and https://.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "tensorizer/status.h"

namespace tensorizer {

class Source {
 public:
  virtual ~Source() = default;
  virtual uint64_t size() const = 0;
  // Fills [dst, dst + length) with bytes [offset, offset + length).
  virtual Status ReadAt(uint64_t offset, void* dst, uint64_t length) const = 0;
  // Scatter read of one contiguous byte range into several buffers. The
  // default loops over ReadAt; file sources issue one preadv.
  virtual Status ReadAtV(uint64_t offset, const struct iovec* iov, int iovcnt) const;
  // Where the bytes come from, for error messages ("/models/x.tensors").
  virtual const std::string& uri() const = 0;
  // Requests in flight this source wants at least, whatever the core count:
  // a worker waiting on the network or on a device holds no core, so remote
  // sources and files read with O_DIRECT ask for kMinRequestsInFlight. 0: no
  // wish (one worker per core is right).
  virtual int concurrency_hint() const { return 0; }
};

// What remote sources and direct-read files ask for in concurrency_hint():
// 4 connections beat 2 on 2 cores (3.20 vs 3.01 GB/s over HTTP,
// bench/results/http-*), and 4 requests in flight beat 2 on a cold disk
// (2.41 vs 2.13 GB/s, bench/bench_cold.py).
constexpr int kMinRequestsInFlight = 4;

// How a local file is read: through the page cache (buffered), or with
// O_DIRECT, which skips the page cache's copy, readahead and eviction work,
// so a cold file reads at the device's speed and leaves the page cache as it
// found it. Buffered stays best for a file already in the page cache.
enum class DirectIo : uint8_t {
  // Per read: direct unless at least 3/4 of the range's pages are in the
  // page cache (mincore on a mapping of the file). Where the kernel hides
  // residency from this process (it neither owns nor may write the file),
  // every read is buffered.
  kAuto,
  kOn,   // every read direct where the file system allows it
  kOff,  // every read buffered
};

struct FileOptions {
  DirectIo direct_io = DirectIo::kAuto;
};

// Opens a local file by path. Direct reads use a second descriptor opened
// with O_DIRECT; a file system without direct I/O (tmpfs, some FUSE mounts)
// is read buffered, with no error, whatever `options` asks.
Result<std::unique_ptr<Source>> OpenFileSource(const std::string& path,
                                               const FileOptions& options = FileOptions());
// Reads from a file descriptor the caller owns; it is duplicated, so the
// caller may close its copy. `name` is used in error messages. Direct reads
// reopen it through /proc/self/fd (checked to be the same file).
Result<std::unique_ptr<Source>> OpenFdSource(int fd, const std::string& name,
                                             const FileOptions& options = FileOptions());

// How a local file source has read so far; safe to call during a load.
struct FileReadStats {
  // The block direct reads are aligned to (statx STATX_DIOALIGN, else 4096);
  // 0 when this source reads buffered only, and then buffered_reason says
  // why ("direct I/O off", "tmpfs has no direct I/O", ...).
  uint32_t direct_block_bytes = 0;
  std::string buffered_reason;
  uint64_t direct_bytes = 0;    // requested bytes read with O_DIRECT
  uint64_t in_place_bytes = 0;  // of those, bytes that landed without a staging copy
  uint64_t buffered_bytes = 0;  // requested bytes read through the page cache
};
// Empty for sources that are not local files.
std::optional<FileReadStats> FileReadStatsOf(const Source& source);
// Whether a read of [offset, offset + length) would go direct now: kOn, or
// kAuto with less than 3/4 of its pages in the page cache. False for other
// sources and for files read buffered only.
bool WouldReadDirect(const Source& source, uint64_t offset, uint64_t length);
// Bytes already in memory (copied in).
std::unique_ptr<Source> MakeMemorySource(std::string bytes, const std::string& name);
// How an HTTP(S) source connects, waits and retries. Durations are in
// milliseconds; 0 disables that limit.
struct HttpOptions {
  uint32_t connect_timeout_ms = 10000;
  // A transfer slower than min_speed_bytes_per_s for low_speed_timeout_ms
  // (a server that accepts and never answers, a trickle, a slowloris) is a
  // stall: it is dropped and retried from the byte where it stopped. libcurl
  // measures the window in whole seconds, so it is rounded up.
  uint32_t low_speed_timeout_ms = 15000;
  uint32_t min_speed_bytes_per_s = 16384;
  // TLS: trust these CAs (a PEM bundle, a hashed directory) besides the
  // system's; verify_tls = false accepts any certificate (the reference's
  // CAInfo(allow_untrusted=True)).
  std::string ca_file;
  std::string ca_path;
  bool verify_tls = true;
  // Consecutive failed attempts of one request (dropped connection, stall,
  // timeout, 5xx, 429) before giving up. An attempt that delivered at least
  // min(1 MiB, what was still missing) resets the count, since the next one
  // resumes after it; less (a trickle) does not. Without range support no
  // attempt can resume, and none resets it.
  int max_retries = 6;
  // Backoff before retry k: a random time in [0, min(max, base * 2^k)].
  uint32_t retry_base_delay_ms = 100;
  uint32_t retry_max_delay_ms = 5000;
  // Throttling answers (503 SlowDown, 429) are retried with backoff for
  // this long from the first one, apart from max_retries, so a fleet that
  // meets a store's request rate slows down instead of failing. 0: they
  // count against max_retries like other failures.
  uint32_t throttle_retry_ms = 180000;
  // A bound on the whole load: from the source's open, no request starts,
  // no retry waits and no transfer runs past this many milliseconds (the
  // error is ETIMEDOUT, not retried). 0: no deadline. A lazy load's
  // tensors read after the deadline fail too.
  uint32_t deadline_ms = 0;
};

// Opens an http:// or https:// URL. One small ranged GET learns the size,
// the validators (ETag, Last-Modified) and whether the server honours Range;
// reads are then ranged GETs over keep-alive connections, conditional on the
// object not having changed since the open.
Result<std::unique_ptr<Source>> OpenHttpSource(const std::string& url, const HttpOptions& options);

// Where an s3:// object lives and who asks for it. Every field left unset is
// resolved in this order (docs/configuration.md): these explicit values;
// ~/.s3cfg (access_key, secret_key, host_base, use_https); the AWS
// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE); then
// ~/.aws/credentials and ~/.aws/config. With no endpoint anywhere, AWS's
// own is used; with no credentials anywhere, requests go unsigned
// (public buckets).
struct S3Options {
  std::optional<std::string> access_key_id;
  std::optional<std::string> secret_access_key;
  std::optional<std::string> session_token;
  // "host[:port]" (https unless force_http) or "http(s)://host[:port]".
  std::optional<std::string> endpoint;
  std::optional<std::string> region;
  // An s3cmd config file to read instead of ~/.s3cfg; it must exist.
  std::optional<std::string> s3cfg_path;
  std::optional<std::string> profile;  // instead of AWS_PROFILE / "default"
  // Use http:// for an endpoint given without a scheme.
  std::optional<bool> force_http;
  // Path-style (https://host/bucket/key) or virtual-hosted
  // (https://bucket.host/key); kAuto picks virtual-hosted for AWS and
  // path-style for every other endpoint.
  enum class Addressing { kAuto, kPath, kVirtual };
  Addressing addressing = Addressing::kAuto;
};

// Opens s3://bucket/key: the HTTP source's ranged, retried, ETag-checked
// reads, each request signed with SigV4 (or unsigned for anonymous access).
// A 403 names the endpoint, the bucket and the access key id (never the
// secret).
Result<std::unique_ptr<Source>> OpenS3Source(const std::string& uri, const S3Options& s3,
                                             const HttpOptions& http);

// Opens redis://[user:password@]host[:port]/prefix: the keys
// `prefix:<name>:<byte offset>` that tensorizer's to_redis writes, each
// holding the file's bytes from that offset (`prefix:header:0` the header and
// metadata). Keys are listed with SCAN and measured once; reads are GETRANGEs
// over a pool of connections, retried on a new connection when one drops.
// Bytes in no key are an error, never zeros. AUTH is sent when the URI has a
// password; error messages show the URI with the password masked. Of
// `options`, the connect timeout, the stall rule, the retries, the backoff
// and the deadline apply (the TLS settings do not: no rediss://).
Result<std::unique_ptr<Source>> OpenRedisSource(const std::string& uri,
                                                const HttpOptions& options = HttpOptions());

// Options for every remote backend, for OpenSource.
struct SourceOptions {
  HttpOptions http;
  S3Options s3;
  FileOptions file;  // local paths and file:// URIs
};

// Picks the backend from the URI scheme; a bare path is a local file.
Result<std::unique_ptr<Source>> OpenSource(const std::string& uri,
                                           const SourceOptions& options = SourceOptions());

}  // namespace tensorizer
