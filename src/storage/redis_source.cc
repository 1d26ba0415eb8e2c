// RedisSource: a Source over the keys tensorizer's to_redis writes, for
// redis://[user:password@]host[:port]/prefix.
//
// Steps:
//  1. Open connects (AUTH when the URI has a password), reads the file
//     header from `<prefix>:header:0` and the database's DBSIZE, which bound
//     the listing (how many keys the file can have, how many pages a SCAN
//     may take), lists the keys with SCAN MATCH "<escaped prefix>:*",
//     measures them with pipelined STRLEN and
//     builds a sorted extent map (src/storage/redis_protocol.h): key
//     `<prefix>:<name>:<offset>` holds the file's bytes [offset, offset +
//     STRLEN). Keys that overlap are an error; the size is the end of the
//     last key.
//  2. ReadAt/ReadAtV plan the pieces of the range (one per key it touches)
//     and send one `GETRANGE key start end` per piece, pipelined on one
//     connection; each bulk-string reply is received straight into the
//     caller's buffers.
//  3. A dropped connection, a stall or a server that is briefly loading is
//     retried on a new connection after a random backoff, resuming at the
//     first byte not yet received; a retry that follows real progress (1 MiB
//     or the rest of the read) starts the failure count afresh, and a read
//     gives up after HttpOptions::max_retries failures in a row. A reply is
//     received under the HTTP source's stall rule (a minimum rate over a
//     window), and nothing runs past the load's deadline.
//
// Bytes that no key holds. What tensorizer 2.12.1 writes leaves exactly one
// range of the file out: `header:0` is the magic, the file header and the
// raw metadata block (all L bytes of it, zero padding included), and each
// tensor's header and data keys are back to back from the first record on,
// as the records are in the file; so only the 8-byte terminator after the
// last record is in no key. That lies past the last key, hence past size(),
// and no reader reads it. Any other uncovered range means keys are missing
// (a to_redis after filter_func, an interrupted write, an evicted or expired
// key), and nothing in the format says what its bytes were, so reading it is
// an error naming the URI and the range; no byte is ever made up.
//
// Consistency: Redis keeps no version of a value, so a key rewritten with the
// same length during a load cannot be told apart; a key that shrank, grew or
// vanished since the open is an error (ESTALE), never a short read.
//
// Why not hiredis: its reader copies every reply into an allocation of its
// own, and the point of step 2 is that the payload lands in the caller's
// buffer once. The subset of RESP needed here (bulk strings, integers,
// arrays, errors) is small.
//
// Thread-safety: ReadAt may run on many threads at once. Each call takes a
// connection from a pool (connecting a new one when all are busy) and puts it
// back after a clean exchange, so the pool grows to the number of concurrent
// readers; a connection that failed mid-exchange is closed, never reused.
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "storage/parsed_uri.h"
#include "storage/read_range.h"
#include "storage/redis_protocol.h"
#include "tensorizer/format.h"
#include "tensorizer/source.h"
#include "tensorizer/uri.h"
#include "util/cancel_wait.h"
#include "util/decimal.h"
#include "util/thread_annotations.h"

namespace tensorizer {
namespace redis {

// --- Pure helpers ---------------------------------------------------------------

namespace {

using internal::ParseDecimal;

bool ParseSigned(const std::string& s, int64_t* out) {
  bool negative = !s.empty() && s[0] == '-';
  uint64_t magnitude = 0;
  if (!ParseDecimal(negative ? s.substr(1) : s, &magnitude)) return false;
  if (magnitude > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = negative ? -static_cast<int64_t>(magnitude) : static_cast<int64_t>(magnitude);
  return true;
}

// A Redis error reply as a Status: the first word says whether waiting helps.
Status ErrorReply(const std::string& text) {
  std::string word = text.substr(0, text.find(' '));
  int err = EIO;
  if (word == "LOADING" || word == "BUSY" || word == "TRYAGAIN" || word == "MASTERDOWN") {
    err = EAGAIN;
  } else if (word == "NOAUTH" || word == "WRONGPASS" || word == "NOPERM") {
    err = EACCES;
  }
  return Status::IoError("the server answered '" + text + "'", err);
}

constexpr size_t kMaxLineBytes = 1 << 20;
// Redis's own limit on a string (proto-max-bulk-len's default).
constexpr int64_t kMaxBulkBytes = int64_t{512} << 20;
constexpr int64_t kMaxArrayElements = int64_t{1} << 24;
constexpr int kMaxNesting = 8;

}  // namespace

Result<RedisUri> ParseRedisUri(const std::string& uri) {
  if (internal::UriScheme(uri) != "redis") {
    return Status::InvalidArgument("not a redis:// URI: " + RedactUri(uri));
  }
  TZR_ASSIGN_OR_RETURN(internal::ParsedUri parsed, internal::ParseUri(uri));
  RedisUri u;
  u.redacted = RedactUri(uri);
  if (parsed.userinfo) {
    Result<internal::UserInfo> info = internal::DecodeUserInfo(*parsed.userinfo);
    if (!info.ok()) return info.status().WithContext("a redis:// URI");
    u.user = std::move(info->user);
    u.has_password = info->password.has_value();
    u.password = std::move(info->password).value_or("");
  }
  if (parsed.host_port.host.empty()) return Status::InvalidArgument("no host in " + u.redacted);
  u.host = parsed.host_port.host;
  if (parsed.host_port.port) u.port = *parsed.host_port.port;
  // As urllib.parse.urlparse(uri).path.lstrip("/"): no query, no fragment.
  const size_t first = parsed.path.find_first_not_of('/');
  u.prefix = first == std::string::npos ? "" : parsed.path.substr(first);
  return u;
}

std::string EscapeGlob(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string EncodeCommand(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const std::string& a : args) {
    out += "$" + std::to_string(a.size()) + "\r\n";
    out += a;
    out += "\r\n";
  }
  return out;
}

bool ParseKeyOffset(const std::string& key, const std::string& prefix, uint64_t* offset) {
  if (key.size() <= prefix.size() + 1 || key.compare(0, prefix.size(), prefix) != 0 ||
      key[prefix.size()] != ':') {
    return false;
  }
  std::string rest = key.substr(prefix.size() + 1);
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  // Leading zeros spell the same offset, as Python's int() reads them.
  return ParseDecimal(rest.substr(colon + 1), offset);
}

Result<std::vector<Extent>> BuildExtentMap(std::vector<Extent> extents, const std::string& uri) {
  std::vector<Extent> kept;
  kept.reserve(extents.size());
  for (Extent& e : extents) {
    if (e.length == 0) continue;
    if (e.offset > UINT64_MAX - e.length) {
      return Status::FormatError(uri + ": key '" + e.key + "' of " + std::to_string(e.length) +
                                 " bytes at offset " + std::to_string(e.offset) +
                                 " ends past 2^64");
    }
    kept.push_back(std::move(e));
  }
  std::sort(kept.begin(), kept.end(), [](const Extent& a, const Extent& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.key < b.key;
  });
  for (size_t i = 1; i < kept.size(); ++i) {
    const Extent& a = kept[i - 1];
    const Extent& b = kept[i];
    if (b.offset < a.offset + a.length) {
      return Status::FormatError(uri + ": keys '" + a.key + "' (" +
                                 internal::ByteRange(a.offset, a.length) + ") and '" + b.key +
                                 "' (" + internal::ByteRange(b.offset, b.length) +
                                 ") overlap: the prefix holds parts of more than one file");
    }
  }
  return kept;
}

Result<std::vector<Piece>> PlanPieces(const std::vector<Extent>& extents, uint64_t offset,
                                      uint64_t length, const std::string& uri) {
  std::vector<Piece> pieces;
  if (offset > UINT64_MAX - length) {
    // `offset + length` would wrap, and the loop below would plan nothing
    // for a range that is not empty.
    return Status::InvalidArgument("reading " + uri + ": a range of " + std::to_string(length) +
                                   " bytes at offset " + std::to_string(offset) +
                                   " ends past 2^64");
  }
  const uint64_t end = offset + length;
  // The last extent starting at or before `offset`.
  auto it = std::upper_bound(extents.begin(), extents.end(), offset,
                             [](uint64_t pos, const Extent& e) { return pos < e.offset; });
  size_t i = static_cast<size_t>(it - extents.begin());
  if (i > 0) --i;
  uint64_t pos = offset;
  while (pos < end) {
    while (i < extents.size() && extents[i].offset + extents[i].length <= pos) ++i;
    if (i == extents.size() || extents[i].offset > pos) {
      uint64_t gap_end = i == extents.size() ? end : std::min(end, extents[i].offset);
      return Status::IoError("reading " + uri + " " + internal::ByteRange(offset, length) + ": " +
                                 internal::ByteRange(pos, gap_end - pos) +
                                 " are in no key (keys under the prefix are missing: written "
                                 "with a filter, not completely, or evicted)",
                             ENODATA);
    }
    const Extent& e = extents[i];
    uint64_t take = std::min(end, e.offset + e.length) - pos;
    pieces.push_back(Piece{i, pos - e.offset, take});
    pos += take;
    ++i;
  }
  return pieces;
}

Result<uint64_t> MaxKeysForFile(const std::string& header, uint64_t header_length,
                                const std::string& uri) {
  // The header key holds the whole metadata block, so its length bounds the
  // block as a file's size would, and with it the tensor count.
  Result<FileHeader> h = ParseFileHeader(reinterpret_cast<const uint8_t*>(header.data()),
                                         header.size(), header_length);
  if (!h.ok()) return h.status().WithContext(uri + ": the header key");
  return 1 + 2 * h->tensor_count;
}

ScanPlan PlanScan(int64_t dbsize) {
  constexpr uint64_t kMinCount = 1000, kMaxCount = 1 << 20, kTargetPages = 64;
  uint64_t keys = static_cast<uint64_t>(std::clamp<int64_t>(dbsize, 0, int64_t{1} << 32));
  ScanPlan plan;
  plan.count = std::clamp<uint64_t>(keys / kTargetPages, kMinCount, kMaxCount);
  plan.max_pages = 256 + 8 * ((keys + plan.count - 1) / plan.count);
  return plan;
}

bool IsRetriable(const Status& st) {
  if (st.code() != StatusCode::kIoError) return false;
  switch (st.sys_errno()) {
    case ECONNRESET:
    case ECONNREFUSED:
    case ECONNABORTED:
    case EPIPE:
    case ETIMEDOUT:
    case EAGAIN:
    case ENOTCONN:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
      return true;
    default:
      return false;
  }
}

// --- RespReader -----------------------------------------------------------------

RespReader::RespReader(RecvFn recv, size_t buffer_bytes)
    : recv_(std::move(recv)), buf_(std::max<size_t>(buffer_bytes, 64)) {}

Status RespReader::Fill() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (begin_ > 0) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ == buf_.size()) buf_.resize(buf_.size() * 2);
  while (true) {
    ssize_t n = recv_(buf_.data() + end_, buf_.size() - end_);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      return Status::Ok();
    }
    if (n == 0) return Status::IoError("the server closed the connection", ECONNRESET);
    if (errno == EINTR) continue;
    int err = (errno == EAGAIN || errno == EWOULDBLOCK) ? ETIMEDOUT : errno;
    return Status::FromErrno("receiving", err);
  }
}

Status RespReader::ReadLine(std::string* line) {
  size_t checked = 0;  // bytes after begin_ known to end no line
  while (true) {
    for (size_t i = begin_ + std::max<size_t>(checked, 1); i < end_; ++i) {
      if (buf_[i] == '\n' && buf_[i - 1] == '\r') {
        line->assign(buf_.data() + begin_, i - 1 - begin_);
        begin_ = i + 1;
        return Status::Ok();
      }
    }
    checked = end_ - begin_;
    if (checked > kMaxLineBytes) {
      return Status::FormatError("a reply line longer than " + std::to_string(kMaxLineBytes) +
                                 " bytes");
    }
    TZR_RETURN_IF_ERROR(Fill());  // may move the bytes, never past begin_'s offsets
  }
}

Status RespReader::ReadExact(char* dst, size_t n) {
  while (n > 0) {
    if (begin_ == end_) TZR_RETURN_IF_ERROR(Fill());
    size_t take = std::min(n, end_ - begin_);
    std::memcpy(dst, buf_.data() + begin_, take);
    begin_ += take;
    dst += take;
    n -= take;
  }
  return Status::Ok();
}

Status RespReader::ReadValue(RespValue* out) { return ReadValue(out, UINT64_MAX); }

Status RespReader::ReadValue(RespValue* out, uint64_t max_bytes) {
  budget_ = max_bytes;
  Status st = ReadValueDepth(out, 0);
  budget_ = UINT64_MAX;
  return st;
}

Status RespReader::Spend(uint64_t n) {
  if (budget_ == UINT64_MAX) return Status::Ok();
  if (n > budget_) return Status::FormatError("a reply larger than the listing allows");
  budget_ -= n;
  return Status::Ok();
}

Status RespReader::ReadValueDepth(RespValue* out, int depth) {
  std::string line;
  TZR_RETURN_IF_ERROR(ReadLine(&line));
  if (line.empty()) return Status::FormatError("an empty reply line");
  TZR_RETURN_IF_ERROR(Spend(line.size() + 2));
  *out = RespValue();
  std::string body = line.substr(1);
  switch (line[0]) {
    case '+':
      out->type = RespValue::Type::kSimple;
      out->str = std::move(body);
      return Status::Ok();
    case '-':
      out->type = RespValue::Type::kError;
      out->str = std::move(body);
      return Status::Ok();
    case ':':
      out->type = RespValue::Type::kInteger;
      if (!ParseSigned(body, &out->integer)) {
        return Status::FormatError("a malformed integer reply ':" + body + "'");
      }
      return Status::Ok();
    case '$': {
      int64_t n = 0;
      if (!ParseSigned(body, &n) || n < -1 || n > kMaxBulkBytes) {
        return Status::FormatError("a malformed bulk string length '$" + body + "'");
      }
      if (n == -1) return Status::Ok();  // null
      TZR_RETURN_IF_ERROR(Spend(static_cast<uint64_t>(n) + 2));
      out->type = RespValue::Type::kBulk;
      // Grown as the bytes arrive, never sized up front from the length the
      // server claims: "$536870912" alone must not cost 512 MiB.
      while (out->str.size() < static_cast<size_t>(n)) {
        if (begin_ == end_) TZR_RETURN_IF_ERROR(Fill());
        size_t take = std::min(static_cast<size_t>(n) - out->str.size(), end_ - begin_);
        out->str.append(buf_.data() + begin_, take);
        begin_ += take;
      }
      char crlf[2];
      TZR_RETURN_IF_ERROR(ReadExact(crlf, 2));
      if (crlf[0] != '\r' || crlf[1] != '\n') {
        return Status::FormatError("a bulk string not followed by CRLF");
      }
      return Status::Ok();
    }
    case '*': {
      int64_t n = 0;
      if (!ParseSigned(body, &n) || n < -1 || n > kMaxArrayElements) {
        return Status::FormatError("a malformed array length '*" + body + "'");
      }
      if (n == -1) return Status::Ok();
      if (depth >= kMaxNesting) return Status::FormatError("arrays nested too deep");
      out->type = RespValue::Type::kArray;
      // As for bulk strings: each element takes at least 3 bytes of the
      // stream, so elements are added as they are read, not made up front
      // from the count ("*16777216" is 1.3 GiB of empty values).
      out->elements.reserve(static_cast<size_t>(std::min<int64_t>(n, 1024)));
      for (int64_t i = 0; i < n; ++i) {
        RespValue e;
        TZR_RETURN_IF_ERROR(ReadValueDepth(&e, depth + 1));
        out->elements.push_back(std::move(e));
      }
      return Status::Ok();
    }
    default:
      return Status::FormatError("an unknown reply type '" + line.substr(0, 16) + "'");
  }
}

Status RespReader::ReadBulkInto(const struct iovec* iov, int iovcnt, uint64_t length,
                                uint64_t* got) {
  std::string line;
  TZR_RETURN_IF_ERROR(ReadLine(&line));
  if (line.empty()) return Status::FormatError("an empty reply line");
  if (line[0] == '-') return ErrorReply(line.substr(1));
  int64_t n = 0;
  if (line[0] != '$' || !ParseSigned(line.substr(1), &n) || n < -1) {
    return Status::FormatError("expected a bulk string, got '" + line.substr(0, 64) + "'");
  }
  if (n != static_cast<int64_t>(length)) {
    return Status::IoError("the key answered " + std::to_string(std::max<int64_t>(n, 0)) +
                               " bytes where " + std::to_string(length) +
                               " were expected: it changed since the source was opened",
                           ESTALE);
  }
  int index = 0;
  size_t at = 0;
  uint64_t left = length;
  while (left > 0) {
    if (index >= iovcnt) return Status::InvalidArgument("buffers smaller than the reply");
    size_t room = iov[index].iov_len - at;
    if (room == 0) {
      ++index;
      at = 0;
      continue;
    }
    char* dst = static_cast<char*>(iov[index].iov_base) + at;
    size_t take;
    if (begin_ < end_) {
      // Payload bytes that came in with the reply header.
      take = static_cast<size_t>(std::min<uint64_t>({room, left, end_ - begin_}));
      std::memcpy(dst, buf_.data() + begin_, take);
      begin_ += take;
    } else {
      ssize_t r = recv_(dst, static_cast<size_t>(std::min<uint64_t>(room, left)));
      if (r == 0) return Status::IoError("the server closed the connection", ECONNRESET);
      if (r < 0) {
        if (errno == EINTR) continue;
        int err = (errno == EAGAIN || errno == EWOULDBLOCK) ? ETIMEDOUT : errno;
        return Status::FromErrno("receiving", err);
      }
      take = static_cast<size_t>(r);
    }
    at += take;
    left -= take;
    *got += take;
  }
  char crlf[2];
  TZR_RETURN_IF_ERROR(ReadExact(crlf, 2));
  if (crlf[0] != '\r' || crlf[1] != '\n') {
    return Status::FormatError("a bulk string not followed by CRLF");
  }
  return Status::Ok();
}

}  // namespace redis

namespace {

using internal::ByteRange;
using redis::Extent;
using redis::Piece;
using redis::RedisUri;
using redis::RespReader;
using redis::RespValue;

using Clock = std::chrono::steady_clock;

// Commands written before their replies are read: enough to hide the round
// trip behind many small keys, few enough to bound the server's output
// buffer for one client.
constexpr size_t kPipelineDepth = 64;
// STRLENs pipelined per round trip while measuring the keys.
constexpr size_t kStrlenBatch = 1000;
// What one SCAN page may take on the wire: its cursor and the names of the
// keys that matched (names are tensor names, which the format bounds at
// 64 KiB, with the prefix).
constexpr uint64_t kMaxScanPageBytes = uint64_t{64} << 20;
// The most keys a listing takes when the prefix holds no .tensors header
// to bound them (and DBSIZE does not bound them lower).
constexpr uint64_t kMaxKeysWithoutHeader = uint64_t{1} << 22;
// Keys beyond what the file can hold that a listing still takes in, so that
// a few stray keys under the prefix are named by the checks that follow
// (overlap, shape) rather than only counted.
constexpr uint64_t kStrayKeys = 1024;
// A retry starts the failure count afresh only after an attempt that moved
// this much (or the rest of the read): a server that drops every connection
// after a few bytes still runs out of retries.
constexpr uint64_t kProgressBytes = uint64_t{1} << 20;

// poll() for `events` in kCancelPollMs slices: > 0 ready, 0 after
// `timeout_ms`, -1 with errno on failure (ECANCELED when the calling
// thread is cancelled).
int PollUnlessCancelled(int fd, short events, uint32_t timeout_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    if (CancelRequested()) {
      errno = ECANCELED;
      return -1;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return 0;
    struct pollfd p = {fd, events, 0};
    int slice = static_cast<int>(std::min<int64_t>(left.count(), internal::kCancelPollMs));
    int ready = ::poll(&p, 1, slice);
    if (ready != 0 && !(ready < 0 && errno == EINTR)) return ready;
  }
}

// The limits of HttpOptions that mean the same for Redis: the connect
// timeout, the stall rule, the retry budget and backoff, and the deadline.
struct Limits {
  uint32_t connect_timeout_ms;
  uint32_t low_speed_timeout_ms;
  uint32_t min_speed_bytes_per_s;
  int max_retries;
  uint32_t retry_base_delay_ms;
  uint32_t retry_max_delay_ms;
  std::optional<Clock::time_point> deadline;
};

// One connection. Replies are received under the stall rule: from each
// command sent, every window of low_speed_timeout_ms must bring at least
// min_speed_bytes_per_s of the reply per second, so a server that trickles
// a byte at a time, or accepts and never answers, fails within one window
// (ETIMEDOUT, retried) however long the reply; past the deadline every wait
// fails at once.
class Connection {
 public:
  Connection(int fd, const Limits& limits)
      : fd_(fd), limits_(limits), reader_([this](void* dst, size_t n) { return Recv(dst, n); }) {}
  ~Connection() { ::close(fd_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Status Send(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = (errno == EAGAIN || errno == EWOULDBLOCK) ? ETIMEDOUT : errno;
        return Status::FromErrno("sending", err);
      }
      done += static_cast<size_t>(n);
    }
    window_start_ = Clock::now();
    window_bytes_ = 0;
    return Status::Ok();
  }

  RespReader& reader() { return reader_; }

 private:
  ssize_t Recv(void* dst, size_t n) {
    const auto window = std::chrono::milliseconds(limits_.low_speed_timeout_ms);
    const uint64_t need = uint64_t{limits_.min_speed_bytes_per_s} *
                          std::max<uint32_t>(1, limits_.low_speed_timeout_ms / 1000);
    while (true) {
      Clock::time_point now = Clock::now();
      if (limits_.deadline && now >= *limits_.deadline) {
        errno = ETIMEDOUT;
        return -1;
      }
      Clock::time_point until = Clock::time_point::max();
      if (limits_.low_speed_timeout_ms > 0) {
        if (now >= window_start_ + window) {
          if (window_bytes_ < need) {
            errno = ETIMEDOUT;
            return -1;
          }
          window_start_ = now;
          window_bytes_ = 0;
        }
        until = window_start_ + window;
      }
      if (limits_.deadline) until = std::min(until, *limits_.deadline);
      int64_t wait_ms = 60000;
      if (until != Clock::time_point::max()) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count();
        wait_ms = std::clamp<int64_t>(left + 1, 1, wait_ms);
      }
      int ready = PollUnlessCancelled(fd_, POLLIN, static_cast<uint32_t>(wait_ms));
      if (ready < 0) return -1;  // ECANCELED, or poll's own failure
      if (ready == 0) continue;
      ssize_t got = ::recv(fd_, dst, n, MSG_DONTWAIT);
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
      if (got > 0) window_bytes_ += static_cast<uint64_t>(got);
      return got;
    }
  }

  int fd_;
  const Limits& limits_;
  Clock::time_point window_start_ = Clock::now();
  uint64_t window_bytes_ = 0;
  RespReader reader_;
};

// A TCP connection to host:port, within the connect timeout (and the
// deadline), with the stall rule's window as the send timeout.
Result<std::unique_ptr<Connection>> Dial(const RedisUri& u, const Limits& limits) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* found = nullptr;
  std::string port = std::to_string(u.port);
  int rc = ::getaddrinfo(u.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return Status::IoError("resolving " + u.host + ": " + gai_strerror(rc), ENXIO);
  }
  std::unique_ptr<struct addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
  int64_t connect_ms = limits.connect_timeout_ms > 0 ? limits.connect_timeout_ms : 60000;
  if (limits.deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*limits.deadline -
                                                                      Clock::now())
                    .count();
    connect_ms = std::clamp<int64_t>(left, 0, connect_ms);
  }
  int last_err = ECONNREFUSED;
  for (struct addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      last_err = errno;
      continue;
    }
    int err = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        int ready = PollUnlessCancelled(fd, POLLOUT, static_cast<uint32_t>(connect_ms));
        socklen_t len = sizeof(err);
        if (ready == 0) {
          err = ETIMEDOUT;
        } else if (ready < 0 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err != 0) {
      ::close(fd);
      last_err = err;
      continue;
    }
    int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    if (limits.low_speed_timeout_ms > 0) {
      struct timeval tv = {static_cast<time_t>(limits.low_speed_timeout_ms / 1000),
                           static_cast<suseconds_t>((limits.low_speed_timeout_ms % 1000) * 1000)};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    return std::make_unique<Connection>(fd, limits);
  }
  return Status::FromErrno("connecting to " + u.host + ":" + port, last_err);
}

class RedisSource final : public internal::ScatterReadSource {
 public:
  RedisSource(RedisUri u, const HttpOptions& options)
      : u_(std::move(u)),
        limits_{options.connect_timeout_ms,
                options.low_speed_timeout_ms,
                options.min_speed_bytes_per_s,
                std::max(0, options.max_retries),
                options.retry_base_delay_ms,
                options.retry_max_delay_ms,
                std::nullopt} {
    if (options.deadline_ms > 0) {
      limits_.deadline = Clock::now() + std::chrono::milliseconds(options.deadline_ms);
    }
  }

  uint64_t size() const override { return size_; }
  // The URI with its password masked: it goes into error messages.
  const std::string& uri() const override { return u_.redacted; }
  int concurrency_hint() const override { return kMinRequestsInFlight; }

  Status Open() {
    uint64_t max_keys = 0;
    redis::ScanPlan plan;
    Status st = WithRetries([&](Connection& c) { return Survey(c, &max_keys, &plan); });
    if (!st.ok()) return st.WithContext("opening " + uri());
    std::vector<Extent> extents;
    st = WithRetries([&](Connection& c) { return ListKeys(c, max_keys, plan, &extents); });
    if (!st.ok()) return st.WithContext("opening " + uri());
    if (extents.empty()) {
      return Status::IoError(
          "opening " + uri() + ": no keys match '" + redis::EscapeGlob(u_.prefix) + ":*'", ENOENT);
    }
    TZR_ASSIGN_OR_RETURN(extents_, redis::BuildExtentMap(std::move(extents), uri()));
    size_ = extents_.empty() ? 0 : extents_.back().offset + extents_.back().length;
    return Status::Ok();
  }

  Status ReadRange(uint64_t offset, uint64_t total, const struct iovec* iov,
                   int iovcnt) const override {
    TZR_ASSIGN_OR_RETURN(std::vector<Piece> pieces,
                         redis::PlanPieces(extents_, offset, total, uri()));
    // Where each piece starts in the caller's buffers.
    std::vector<uint64_t> starts(pieces.size());
    uint64_t at = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      starts[i] = at;
      at += pieces[i].length;
    }
    // Progress survives a dropped connection: pieces before `next` are
    // complete, and `next_done` bytes of piece `next` are in place.
    size_t next = 0;
    uint64_t next_done = 0;
    Status st = WithRetries(
        [&](Connection& c) -> Status {
          std::vector<struct iovec> slice;
          while (next < pieces.size()) {
            size_t batch_end = std::min(pieces.size(), next + kPipelineDepth);
            std::string commands;
            for (size_t i = next; i < batch_end; ++i) {
              const Piece& p = pieces[i];
              uint64_t skip = i == next ? next_done : 0;
              uint64_t first = p.key_offset + skip;
              uint64_t last = p.key_offset + p.length - 1;
              commands += redis::EncodeCommand({"GETRANGE", extents_[p.extent].key,
                                                std::to_string(first), std::to_string(last)});
            }
            TZR_RETURN_IF_ERROR(c.Send(commands));
            for (size_t i = next; i < batch_end; ++i) {
              const Piece& p = pieces[i];
              uint64_t skip = i == next ? next_done : 0;
              Slice(iov, iovcnt, starts[i] + skip, p.length - skip, &slice);
              uint64_t got = 0;
              Status r = c.reader().ReadBulkInto(slice.data(), static_cast<int>(slice.size()),
                                                 p.length - skip, &got);
              if (!r.ok()) {
                next_done = skip + got;
                return r.WithContext("GETRANGE " + extents_[p.extent].key + " " +
                                     std::to_string(p.key_offset + skip) + " " +
                                     std::to_string(p.key_offset + p.length - 1));
              }
              next = i + 1;
              next_done = 0;
            }
          }
          return Status::Ok();
        },
        [&] { return next < pieces.size() ? starts[next] + next_done : total; }, total);
    if (!st.ok()) return st.WithContext("reading " + uri() + " " + ByteRange(offset, total));
    return Status::Ok();
  }

 private:
  std::string HeaderKey() const { return u_.prefix + ":header:0"; }

  // What the listing may hold, learned before it starts: the header key's
  // file header bounds the keys (redis::MaxKeysForFile; without one,
  // DBSIZE up to kMaxKeysWithoutHeader), DBSIZE the pages.
  Status Survey(Connection& c, uint64_t* max_keys, redis::ScanPlan* plan) const {
    TZR_RETURN_IF_ERROR(c.Send(
        redis::EncodeCommand({"GETRANGE", HeaderKey(), "0", std::to_string(kMetadataStart - 1)}) +
        redis::EncodeCommand({"STRLEN", HeaderKey()}) + redis::EncodeCommand({"DBSIZE"})));
    RespValue header, length, dbsize;
    TZR_RETURN_IF_ERROR(c.reader().ReadValue(&header, kMetadataStart + 64));
    TZR_RETURN_IF_ERROR(c.reader().ReadValue(&length, 64));
    TZR_RETURN_IF_ERROR(c.reader().ReadValue(&dbsize, 64));
    for (const RespValue* v : {&header, &length, &dbsize}) {
      if (v->type == RespValue::Type::kError) return redis::ErrorReply(v->str);
    }
    if (header.type != RespValue::Type::kBulk || length.type != RespValue::Type::kInteger ||
        dbsize.type != RespValue::Type::kInteger || length.integer < 0) {
      return Status::FormatError("GETRANGE/STRLEN/DBSIZE: an unexpected reply");
    }
    *plan = redis::PlanScan(dbsize.integer);
    // Keys that are not a .tensors file (a RedisStreamFile over any blob)
    // have no header to ask: the database's size bounds them instead.
    Result<uint64_t> from_header =
        length.integer == 0 ? Result<uint64_t>(Status::NotFound("no header key"))
                            : redis::MaxKeysForFile(header.str,
                                                    static_cast<uint64_t>(length.integer), uri());
    *max_keys = from_header.ok()
                    ? *from_header
                    : std::min<uint64_t>(kMaxKeysWithoutHeader,
                                         static_cast<uint64_t>(std::max<int64_t>(dbsize.integer, 0)));
    return Status::Ok();
  }

  // SCAN for the prefix's keys, then STRLEN of each, pipelined. A listing
  // that finds more distinct keys than the file can hold, or takes more
  // pages than the database's size explains, is an error: a server that
  // never ends its cursor, or invents keys on every page, cannot keep the
  // open going or grow its memory.
  Status ListKeys(Connection& c, uint64_t max_keys, const redis::ScanPlan& plan,
                  std::vector<Extent>* out) const {
    std::vector<std::string> keys;
    std::unordered_set<std::string> seen;
    std::string pattern = redis::EscapeGlob(u_.prefix) + ":*";
    std::string cursor = "0";
    uint64_t pages = 0;
    do {
      if (++pages > plan.max_pages) {
        return Status::FormatError("SCAN did not finish within " + std::to_string(plan.max_pages) +
                                   " pages, more than a database of its DBSIZE takes");
      }
      TZR_RETURN_IF_ERROR(c.Send(redis::EncodeCommand(
          {"SCAN", cursor, "MATCH", pattern, "COUNT", std::to_string(plan.count)})));
      RespValue v;
      TZR_RETURN_IF_ERROR(c.reader().ReadValue(&v, kMaxScanPageBytes));
      if (v.type == RespValue::Type::kError) return redis::ErrorReply(v.str).WithContext("SCAN");
      if (v.type != RespValue::Type::kArray || v.elements.size() != 2 ||
          v.elements[0].type != RespValue::Type::kBulk ||
          v.elements[1].type != RespValue::Type::kArray) {
        return Status::FormatError("SCAN: an unexpected reply");
      }
      cursor = v.elements[0].str;
      for (RespValue& k : v.elements[1].elements) {
        if (k.type != RespValue::Type::kBulk)
          return Status::FormatError("SCAN: a key not a string");
        // SCAN may return a key more than once.
        if (!seen.insert(k.str).second) continue;
        if (seen.size() > max_keys + kStrayKeys) {
          return Status::FormatError("more than " + std::to_string(max_keys + kStrayKeys) +
                                     " keys match '" + pattern + "', where the file's header" +
                                     " allows " + std::to_string(max_keys));
        }
        keys.push_back(std::move(k.str));
      }
    } while (cursor != "0");
    std::sort(keys.begin(), keys.end());

    std::vector<Extent> extents(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!redis::ParseKeyOffset(keys[i], u_.prefix, &extents[i].offset)) {
        return Status::FormatError("key '" + keys[i] + "' is not '" + u_.prefix +
                                   ":<name>:<byte offset>'");
      }
      extents[i].key = std::move(keys[i]);
    }
    for (size_t begin = 0; begin < extents.size(); begin += kStrlenBatch) {
      size_t end = std::min(extents.size(), begin + kStrlenBatch);
      std::string commands;
      for (size_t i = begin; i < end; ++i) {
        commands += redis::EncodeCommand({"STRLEN", extents[i].key});
      }
      TZR_RETURN_IF_ERROR(c.Send(commands));
      for (size_t i = begin; i < end; ++i) {
        RespValue v;
        TZR_RETURN_IF_ERROR(c.reader().ReadValue(&v, 1024));
        if (v.type == RespValue::Type::kError) {
          return redis::ErrorReply(v.str).WithContext("STRLEN " + extents[i].key);
        }
        if (v.type != RespValue::Type::kInteger || v.integer < 0) {
          return Status::FormatError("STRLEN " + extents[i].key + ": an unexpected reply");
        }
        // A key deleted since SCAN measures 0 and is dropped with the empty ones.
        extents[i].length = static_cast<uint64_t>(v.integer);
      }
    }
    *out = std::move(extents);
    return Status::Ok();
  }

  bool DeadlinePassed() const { return limits_.deadline && Clock::now() >= *limits_.deadline; }

  // Runs `attempt` on a pooled connection until it succeeds, fails in a way
  // no retry mends, or fails max_retries + 1 times in a row. `progress`
  // returns the bytes of a read in place so far (of `total`); an attempt
  // that added kProgressBytes, or the rest of the read, starts the count
  // afresh, smaller gains do not, so a trickle cannot retry forever. No
  // attempt starts past the deadline.
  template <typename Attempt, typename Progress>
  Status WithRetries(Attempt attempt, Progress progress, uint64_t total) const {
    int failures = 0;
    while (true) {
      uint64_t before = progress();
      Result<std::unique_ptr<Connection>> c = Acquire();
      Status st = c.ok() ? attempt(**c) : c.status();
      if (st.ok()) {
        Release(std::move(*c));
        return st;
      }
      // A connection that failed mid-exchange is out of step: close it.
      if (CancelRequested()) return CancelledStatus(uri());
      if (DeadlinePassed()) {
        return st.WithContext("the deadline of the load passed");
      }
      if (!redis::IsRetriable(st)) return st;
      uint64_t gained = progress() - before;
      failures = gained >= std::min(kProgressBytes, total - before) && gained > 0 ? 1 : failures + 1;
      if (failures > limits_.max_retries) {
        return st.WithContext("gave up after " + std::to_string(failures) +
                              " attempts without progress");
      }
      Backoff(failures - 1);
    }
  }

  template <typename Attempt>
  Status WithRetries(Attempt attempt) const {
    return WithRetries(attempt, [] { return uint64_t{0}; }, 0);
  }

  void Backoff(int attempt) const {
    uint64_t cap = limits_.retry_base_delay_ms;
    for (int i = 0; i < attempt && cap < limits_.retry_max_delay_ms; ++i) cap *= 2;
    cap = std::min<uint64_t>(cap, limits_.retry_max_delay_ms);
    thread_local std::minstd_rand rng(std::random_device{}());
    uint64_t delay_ms = std::uniform_int_distribution<uint64_t>(0, cap)(rng);
    if (limits_.deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*limits_.deadline -
                                                                        Clock::now())
                      .count();
      delay_ms = std::min<uint64_t>(delay_ms, static_cast<uint64_t>(std::max<int64_t>(left, 0)));
    }
    internal::SleepUnlessCancelled(delay_ms);  // cancelled: the next attempt stops
  }

  Result<std::unique_ptr<Connection>> Acquire() const {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        std::unique_ptr<Connection> c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    TZR_ASSIGN_OR_RETURN(std::unique_ptr<Connection> c, Dial(u_, limits_));
    if (u_.has_password) {
      std::vector<std::string> auth = {"AUTH"};
      if (!u_.user.empty()) auth.push_back(u_.user);
      auth.push_back(u_.password);
      TZR_RETURN_IF_ERROR(c->Send(redis::EncodeCommand(auth)));
      RespValue v;
      TZR_RETURN_IF_ERROR(c->reader().ReadValue(&v));
      if (v.type != RespValue::Type::kSimple) {
        // Never the password itself in the message.
        std::string why = v.type == RespValue::Type::kError ? v.str : "an unexpected reply";
        return Status::IoError(
            "AUTH as " + (u_.user.empty() ? "the default user" : u_.user) + " was refused: " + why,
            EACCES);
      }
    }
    return c;
  }

  void Release(std::unique_ptr<Connection> c) const {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(std::move(c));
  }

  // The part [start, start + length) of the caller's buffers.
  static void Slice(const struct iovec* iov, int iovcnt, uint64_t start, uint64_t length,
                    std::vector<struct iovec>* out) {
    out->clear();
    for (int i = 0; i < iovcnt && length > 0; ++i) {
      uint64_t len = iov[i].iov_len;
      if (start >= len) {
        start -= len;
        continue;
      }
      uint64_t take = std::min(len - start, length);
      out->push_back({static_cast<char*>(iov[i].iov_base) + start, static_cast<size_t>(take)});
      length -= take;
      start = 0;
    }
  }

  RedisUri u_;
  Limits limits_;
  std::vector<Extent> extents_;
  uint64_t size_ = 0;

  mutable std::mutex mu_;  // guards idle_
  mutable std::vector<std::unique_ptr<Connection>> idle_ TZR_GUARDED_BY(mu_);
};

}  // namespace

Result<std::unique_ptr<Source>> OpenRedisSource(const std::string& uri,
                                                const HttpOptions& options) {
  TZR_ASSIGN_OR_RETURN(RedisUri u, redis::ParseRedisUri(uri));
  auto source = std::make_unique<RedisSource>(std::move(u), options);
  TZR_RETURN_IF_ERROR(source->Open());
  return std::unique_ptr<Source>(std::move(source));
}

}  // namespace tensorizer
