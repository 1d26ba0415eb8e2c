// libFuzzer target for the Redis source's protocol code
// (src/storage/redis_protocol.h): replies come from a server and are
// untrusted, and so are the key names and lengths it lists.
//
// The first byte picks a mode; the rest is its input:
//   0: a stream of RESP replies read with ReadValue until it fails. The same
//      bytes are read twice, delivered by recv in one piece and in small
//      uneven pieces (the sizes from the mode byte); both runs must give the
//      same values and the same final status.
//   1: replies read with ReadBulkInto into scattered buffers of exactly the
//      expected length (ASan sees any write outside them). Expected length
//      and buffer split come from the next two bytes. `got` never exceeds
//      the length and equals it on success, where ReadValue on the same
//      bytes must give a bulk string with the same bytes.
//   2: text: the first line is a key prefix, then lines "<key>\t<length>"
//      and "?<offset> <length>" (a read). Keys go through ParseKeyOffset,
//      checked against an independent reading of the digits, then
//      BuildExtentMap, whose result must be sorted, disjoint, without empty
//      extents and exactly the non-empty keys, and whose refusals must be
//      real overlaps or overflows. Each read goes through PlanPieces: the
//      pieces must tile the range in order, each inside its key; a refusal
//      must be ENODATA over a range with a byte that no key holds.
//
// Seeds: fuzz/corpus_redis_reply/ (one per mode). Replayed by ctest
// (fuzz_redis_reply_replay), with fuzz/regressions_redis/.
// Run:   build/fuzz/fuzz_redis_reply -max_total_time=300 -rss_limit_mb=2048
//        build/fuzz-run/redis fuzz/corpus_redis_reply
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "storage/redis_protocol.h"

using namespace tensorizer;
using namespace tensorizer::redis;

namespace {

[[noreturn]] void Violated(const char* what) {
  std::fprintf(stderr, "fuzz_redis_reply: invariant violated: %s\n", what);
  std::abort();
}

#define CHECK(cond)               \
  do {                            \
    if (!(cond)) Violated(#cond); \
  } while (0)

// A byte stream handed out in pieces: chunk sizes cycle through `sizes`
// (0 in there means "all that is left").
struct Stream {
  const std::string* bytes;
  size_t at = 0;
  std::vector<size_t> sizes;
  size_t turn = 0;

  ssize_t operator()(void* dst, size_t n) {
    if (at == bytes->size()) return 0;
    size_t want = sizes.empty() ? 0 : sizes[turn++ % sizes.size()];
    size_t take = std::min(n, bytes->size() - at);
    if (want > 0) take = std::min(take, want);
    std::memcpy(dst, bytes->data() + at, take);
    at += take;
    return static_cast<ssize_t>(take);
  }
};

RespReader ReaderOver(Stream* s, size_t buffer_bytes) {
  return RespReader([s](void* dst, size_t n) { return (*s)(dst, n); }, buffer_bytes);
}

void Describe(const RespValue& v, std::string* out) {
  *out += std::to_string(static_cast<int>(v.type)) + ":";
  switch (v.type) {
    case RespValue::Type::kInteger:
      *out += std::to_string(v.integer);
      break;
    case RespValue::Type::kArray:
      *out += "[" + std::to_string(v.elements.size());
      for (const RespValue& e : v.elements) Describe(e, out);
      *out += "]";
      break;
    default:
      *out += std::to_string(v.str.size()) + "=" + v.str;
  }
  *out += ";";
}

std::string StatusKey(const Status& st) {
  return std::to_string(static_cast<int>(st.code())) + "/" + std::to_string(st.sys_errno()) + "/" +
         st.message();
}

// All values ReadValue gets from `bytes`, then its final status.
std::string ReadAll(const std::string& bytes, std::vector<size_t> sizes, size_t buffer_bytes) {
  Stream s{&bytes, 0, std::move(sizes)};
  RespReader r = ReaderOver(&s, buffer_bytes);
  std::string out;
  for (;;) {
    RespValue v;
    Status st = r.ReadValue(&v);
    if (!st.ok()) {
      out += "!" + StatusKey(st);
      return out;
    }
    Describe(v, &out);
  }
}

void ModeValues(uint8_t mode, const std::string& bytes) {
  std::string whole = ReadAll(bytes, {}, 16 * 1024);
  std::vector<size_t> sizes = {1u + (mode >> 2) % 7, 1, 2u + (mode >> 5), 3};
  std::string pieces = ReadAll(bytes, sizes, 64);
  CHECK(whole == pieces);
}

void ModeBulk(const std::string& in) {
  if (in.size() < 2) return;
  const uint64_t length = static_cast<uint8_t>(in[0]);
  const uint8_t split = static_cast<uint8_t>(in[1]);
  const std::string bytes = in.substr(2);
  // Up to four buffers, some empty, each its own allocation.
  std::vector<size_t> lens;
  uint64_t left = length;
  for (int i = 0; i < 3; ++i) {
    size_t n = std::min<uint64_t>(left, (split >> (2 * i)) & 3 ? (split >> (2 * i)) * 7 % 61 : 0);
    lens.push_back(n);
    left -= n;
  }
  lens.push_back(left);
  std::vector<std::unique_ptr<char[]>> bufs;
  std::vector<struct iovec> iov;
  for (size_t n : lens) {
    bufs.emplace_back(new char[n > 0 ? n : 1]);
    iov.push_back({bufs.back().get(), n});
  }
  Stream s{&bytes, 0, {1u + split % 5, 2, 0}};
  RespReader r = ReaderOver(&s, 64);
  Stream s2{&bytes, 0, {}};
  RespReader check = ReaderOver(&s2, 16 * 1024);
  for (int round = 0; round < 64; ++round) {
    uint64_t got = 0;
    Status st = r.ReadBulkInto(iov.data(), static_cast<int>(iov.size()), length, &got);
    CHECK(got <= length);
    RespValue v;
    Status vst = check.ReadValue(&v);
    if (!st.ok()) {
      CHECK(st.code() == StatusCode::kIoError || st.code() == StatusCode::kFormatError);
      return;
    }
    CHECK(got == length);
    CHECK(vst.ok());
    CHECK(v.type == RespValue::Type::kBulk && v.str.size() == length);
    std::string placed;
    for (const struct iovec& b : iov) placed.append(static_cast<char*>(b.iov_base), b.iov_len);
    CHECK(placed == v.str);
  }
}

// Independent reading of a key's offset: digits after the last ':' of what
// follows "<prefix>:".
bool ExpectedOffset(const std::string& key, const std::string& prefix, uint64_t* out) {
  if (key.size() <= prefix.size() + 1 || key.compare(0, prefix.size(), prefix) != 0 ||
      key[prefix.size()] != ':')
    return false;
  const std::string rest = key.substr(prefix.size() + 1);
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  const std::string digits = rest.substr(colon + 1);
  if (digits.empty()) return false;
  unsigned __int128 v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
    if (v > UINT64_MAX) return false;
  }
  *out = static_cast<uint64_t>(v);
  return true;
}

uint64_t ParseNumber(const std::string& s) {
  unsigned __int128 v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') break;
    v = v * 10 + static_cast<unsigned>(c - '0');
    if (v > UINT64_MAX) return UINT64_MAX;
  }
  return static_cast<uint64_t>(v);
}

// Whether byte range [offset, offset + length) has a byte in no extent.
bool HasGap(const std::vector<Extent>& map, uint64_t offset, uint64_t length) {
  unsigned __int128 pos = offset, end = static_cast<unsigned __int128>(offset) + length;
  for (const Extent& e : map) {
    if (pos >= end) return false;
    unsigned __int128 b = e.offset, x = static_cast<unsigned __int128>(e.offset) + e.length;
    if (x <= pos) continue;
    if (b > pos) return true;
    pos = x;
  }
  return pos < end;
}

void ModeExtents(const std::string& in) {
  const std::string uri = "redis://host/fuzz";
  size_t eol = in.find('\n');
  const std::string prefix = in.substr(0, eol);
  std::vector<Extent> extents;
  std::vector<std::pair<uint64_t, uint64_t>> reads;
  size_t at = eol == std::string::npos ? in.size() : eol + 1;
  while (at < in.size()) {
    size_t end = in.find('\n', at);
    if (end == std::string::npos) end = in.size();
    const std::string line = in.substr(at, end - at);
    at = end + 1;
    if (!line.empty() && line[0] == '?') {
      size_t sp = line.find(' ');
      if (sp == std::string::npos) continue;
      reads.emplace_back(ParseNumber(line.substr(1, sp - 1)), ParseNumber(line.substr(sp + 1)));
      continue;
    }
    size_t tab = line.rfind('\t');
    if (tab == std::string::npos) continue;
    Extent e;
    e.key = line.substr(0, tab);
    e.length = ParseNumber(line.substr(tab + 1));
    uint64_t want = 0;
    bool want_ok = ExpectedOffset(e.key, prefix, &want);
    bool ok = ParseKeyOffset(e.key, prefix, &e.offset);
    CHECK(ok == want_ok);
    if (!ok) continue;
    CHECK(e.offset == want);
    extents.push_back(std::move(e));
    if (extents.size() >= 256) break;
  }

  auto built = BuildExtentMap(extents, uri);
  if (!built.ok()) {
    CHECK(built.status().code() == StatusCode::kFormatError);
    bool overflow = false, overlap = false;
    for (const Extent& a : extents) {
      if (a.length == 0) continue;
      if (a.offset > UINT64_MAX - a.length) overflow = true;
      for (const Extent& b : extents) {
        if (&a == &b || b.length == 0) continue;
        if (a.offset <= b.offset && b.offset - a.offset < a.length) overlap = true;
      }
    }
    CHECK(overflow || overlap);
    return;
  }
  const std::vector<Extent>& map = *built;
  size_t non_empty = 0;
  for (const Extent& e : extents) non_empty += e.length > 0;
  CHECK(map.size() == non_empty);
  for (size_t i = 0; i < map.size(); ++i) {
    CHECK(map[i].length > 0 && map[i].offset <= UINT64_MAX - map[i].length);
    if (i > 0) CHECK(map[i - 1].offset + map[i - 1].length <= map[i].offset);
  }
  const uint64_t size = map.empty() ? 0 : map.back().offset + map.back().length;
  for (auto [offset, length] : reads) {
    auto planned = PlanPieces(map, offset, length, uri);
    if (!planned.ok()) {
      CHECK(planned.status().code() == StatusCode::kIoError ||
            planned.status().code() == StatusCode::kInvalidArgument);
      if (planned.status().code() == StatusCode::kIoError) {
        CHECK(planned.status().sys_errno() == ENODATA);
        CHECK(HasGap(map, offset, length));
      } else {
        CHECK(offset > UINT64_MAX - length);
      }
      CHECK(planned.status().message().find(uri) != std::string::npos);
      continue;
    }
    CHECK(offset <= UINT64_MAX - length);
    CHECK(!HasGap(map, offset, length));
    if (length > 0) CHECK(offset + length <= size);
    uint64_t pos = offset;
    size_t prev = 0;
    for (size_t k = 0; k < planned->size(); ++k) {
      const Piece& p = (*planned)[k];
      CHECK(p.extent < map.size());
      if (k > 0) CHECK(p.extent > prev);
      prev = p.extent;
      const Extent& e = map[p.extent];
      CHECK(p.length > 0);
      CHECK(p.key_offset < e.length && p.length <= e.length - p.key_offset);
      CHECK(e.offset + p.key_offset == pos);
      pos += p.length;
    }
    CHECK(pos - offset == length);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (mode % 3) {
    case 0:
      ModeValues(mode, rest);
      break;
    case 1:
      ModeBulk(rest);
      break;
    default:
      ModeExtents(rest);
  }
  return 0;
}
