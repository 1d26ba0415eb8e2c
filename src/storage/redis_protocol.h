// The pure parts of the Redis source (src/storage/redis_source.cc): URI
// parsing, the key layout of tensorizer's to_redis, read planning over that
// layout, and a RESP reader that can put a bulk string straight into the
// caller's buffers. None of it touches a socket, so all of it is tested in
// tests/cpp/redis_source_test.cc and fuzzed by fuzz/fuzz_redis_reply.cc
// (RespReader reads from any RecvFn, there a buffer handed out in pieces).
//
// Key layout (tensorizer 2.12.1 TensorDeserializer.to_redis): a "file" is the
// set of keys `<prefix>:<name>:<offset>`; each key's value is the bytes of the
// file at [offset, offset + STRLEN). `<prefix>:header:0` holds the magic, the
// file header and the whole metadata block; each tensor has one key for its
// header and one for its data.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tensorizer/status.h"

namespace tensorizer::redis {

// redis://[user:password@]host[:port]/prefix
struct RedisUri {
  std::string host;  // without the brackets of an IPv6 literal
  uint16_t port = 6379;
  std::string user;  // empty: AUTH with the password alone (the default user)
  std::string password;
  bool has_password = false;  // "redis://:@host/p" sends AUTH with ""
  std::string prefix;         // the path without its leading '/'s, as the reference takes it
  std::string redacted;       // the URI with the password as "***", for messages
};

// User and password are percent-decoded (as redis-py's from_url does); the
// prefix is taken verbatim, as tensorizer's _parse_redis_uri does.
Result<RedisUri> ParseRedisUri(const std::string& uri);

// A SCAN MATCH pattern that matches `s` literally: glob characters
// (* ? [ ] \) are backslash-escaped.
std::string EscapeGlob(const std::string& s);

// One command as a RESP array of bulk strings (binary-safe, unlike the
// inline commands the reference sends).
std::string EncodeCommand(const std::vector<std::string>& args);

// For a key `<prefix>:<name>:<digits>`, the offset the digits spell. False
// for a key of another shape (or an offset past 2^64 - 1).
bool ParseKeyOffset(const std::string& key, const std::string& prefix, uint64_t* offset);

// One key: the file's bytes [offset, offset + length).
struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  std::string key;
};

// Sorts the keys by offset, drops empty ones (a zero-length tensor's data key
// shares its offset with the next record's header key) and rejects two keys
// claiming the same byte, or an extent past 2^64, with a FormatError naming
// `uri`, both keys and their byte ranges.
Result<std::vector<Extent>> BuildExtentMap(std::vector<Extent> extents, const std::string& uri);

// One GETRANGE of a read: `length` bytes of extents[extent] from byte
// `key_offset` of its value.
struct Piece {
  size_t extent = 0;
  uint64_t key_offset = 0;
  uint64_t length = 0;
};

// The pieces covering [offset, offset + length) of a sorted, non-overlapping
// extent map, in order. Bytes that no key holds are an IoError (ENODATA)
// naming `uri` and the uncovered byte range: those keys are missing, and
// their bytes are unknown. A range that ends past 2^64 is an
// InvalidArgument.
Result<std::vector<Piece>> PlanPieces(const std::vector<Extent>& extents, uint64_t offset,
                                      uint64_t length, const std::string& uri);

// The most keys `prefix:*` that one file can justify: the header key
// `prefix:header:0` and, per tensor, a header key and a data key. `header`
// is the header key's first kMetadataStart (73) bytes and `header_length`
// the key's length. The tensor count comes from the file header, and is
// believed only as far as the metadata block the key holds can carry it
// (every entry takes at least 29 bytes), so a listing that a hostile server
// pads with keys, or with pages, is bounded by bytes it had to store. A key
// too short for a file header, or without the magic, is a FormatError naming
// `uri`.
Result<uint64_t> MaxKeysForFile(const std::string& header, uint64_t header_length,
                                const std::string& uri);

// How to list a database of `dbsize` keys: the SCAN COUNT per page, and the
// most pages a listing may take. COUNT grows with the database so that the
// number of round trips stays small, and the page bound leaves room for a
// hash table that is rehashing (SCAN may then visit buckets twice) and for
// keys added during the scan. A DBSIZE past 2^32 (Redis's own limit) is
// believed only up to that.
struct ScanPlan {
  uint64_t count = 0;
  uint64_t max_pages = 0;
};
ScanPlan PlanScan(int64_t dbsize);

// A RESP2 reply read whole.
struct RespValue {
  enum class Type { kSimple, kError, kInteger, kBulk, kNull, kArray };
  Type type = Type::kNull;
  std::string str;  // simple string, error text, bulk string
  int64_t integer = 0;
  std::vector<RespValue> elements;
};

// Whether a Status from RespReader (or the socket under it) means the
// connection is gone or the server is briefly unable to answer: worth a new
// connection and another attempt.
bool IsRetriable(const Status& st);

// Reads RESP replies from a byte stream. Connection failures are IoErrors
// with the errno (ECONNRESET for an unexpected end of stream); a malformed
// reply is a FormatError. Error replies are values (ReadValue) or IoErrors
// with the server's text (ReadBulkInto): LOADING, BUSY, TRYAGAIN and
// MASTERDOWN as EAGAIN (retriable), NOAUTH and WRONGPASS as EACCES, the rest
// as EIO.
class RespReader {
 public:
  // Reads up to n bytes into dst: the count, 0 at end of stream, or -1 with
  // errno set.
  using RecvFn = std::function<ssize_t(void* dst, size_t n)>;

  explicit RespReader(RecvFn recv, size_t buffer_bytes = 16 * 1024);

  Status ReadValue(RespValue* out);
  // As ReadValue, but a reply of more than `max_bytes` on the wire (lines
  // and payloads together) is a FormatError, found before the excess is
  // stored: a hostile page of a listing cannot cost more than its budget.
  Status ReadValue(RespValue* out, uint64_t max_bytes);

  // Reads one bulk-string reply that must be exactly `length` bytes into the
  // buffers `iov` (which hold exactly `length` bytes). Only bytes that
  // arrived together with the reply's header pass through the reader's own
  // buffer; the rest is received straight into `iov`. `*got` counts the
  // payload bytes placed so far, also when the connection drops midway, so a
  // caller can resume after them. A reply of another length (the key was
  // changed or deleted since it was measured) is an IoError with ESTALE.
  Status ReadBulkInto(const struct iovec* iov, int iovcnt, uint64_t length, uint64_t* got);

 private:
  Status Fill();
  Status ReadLine(std::string* line);
  Status ReadExact(char* dst, size_t n);
  Status ReadValueDepth(RespValue* out, int depth);
  Status Spend(uint64_t n);

  // Bytes the reply being read may still take (ReadValue's budget).
  uint64_t budget_ = UINT64_MAX;

  RecvFn recv_;
  std::vector<char> buf_;
  size_t begin_ = 0, end_ = 0;
};

}  // namespace tensorizer::redis
