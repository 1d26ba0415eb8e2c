// The pure parts of the Redis source (src/storage/redis_protocol.h): URI
// parsing, glob escaping, command encoding, the key layout, extent maps, read
// planning and the RESP reader. The source itself runs against a real
// redis-server in tests/test_redis.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "storage/redis_protocol.h"
#include "tensorizer/format.h"

namespace tensorizer::redis {
namespace {

TEST(RedisUri, HostPortPrefix) {
  auto u = ParseRedisUri("redis://localhost:6380/models/gpt:v1");
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->host, "localhost");
  EXPECT_EQ(u->port, 6380);
  EXPECT_EQ(u->prefix, "models/gpt:v1");
  EXPECT_FALSE(u->has_password);
  EXPECT_EQ(u->redacted, "redis://localhost:6380/models/gpt:v1");
}

TEST(RedisUri, DefaultsAndReferenceQuirks) {
  // As urlparse(...).path.lstrip("/"): every leading slash goes, and the
  // query and fragment are not part of the prefix; the port defaults to 6379.
  auto u = ParseRedisUri("REDIS://h//p?x=1#f");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, 6379);
  EXPECT_EQ(u->prefix, "p");
  auto empty = ParseRedisUri("redis://h");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->prefix, "");
  auto colon = ParseRedisUri("redis://h:/p");
  ASSERT_TRUE(colon.ok());
  EXPECT_EQ(colon->port, 6379);
}

TEST(RedisUri, CredentialsAreDecodedAndMasked) {
  auto u = ParseRedisUri("redis://alice:p%40ss%3Aw@127.0.0.1:7000/m");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->user, "alice");
  EXPECT_EQ(u->password, "p@ss:w");
  EXPECT_TRUE(u->has_password);
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->redacted, "redis://alice:***@127.0.0.1:7000/m");
  auto only = ParseRedisUri("redis://:secret@h/m");
  ASSERT_TRUE(only.ok());
  EXPECT_EQ(only->user, "");
  EXPECT_EQ(only->password, "secret");
  EXPECT_EQ(only->redacted.find("secret"), std::string::npos);
}

TEST(RedisUri, Ipv6) {
  auto u = ParseRedisUri("redis://[::1]:6390/p");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 6390);
}

TEST(RedisUri, Rejects) {
  for (const char* bad :
       {"http://h/p", "rediss://h/p", "redis:///p", "redis://h:0/p", "redis://h:65536/p",
        "redis://h:x/p", "redis://[::1/p", "redis://u:%zz@h/p"}) {
    auto u = ParseRedisUri(bad);
    EXPECT_FALSE(u.ok()) << bad;
    if (!u.ok()) EXPECT_EQ(u.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RedisGlob, EscapesEveryGlobCharacter) {
  EXPECT_EQ(EscapeGlob("plain/name:v1"), "plain/name:v1");
  EXPECT_EQ(EscapeGlob("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
}

TEST(RedisCommand, EncodesBinarySafeArrays) {
  EXPECT_EQ(EncodeCommand({"GETRANGE", "k y", "0", "9"}),
            "*4\r\n$8\r\nGETRANGE\r\n$3\r\nk y\r\n$1\r\n0\r\n$1\r\n9\r\n");
  EXPECT_EQ(EncodeCommand({"SET", std::string("a\r\n\0b", 5)}),
            std::string("*2\r\n$3\r\nSET\r\n$5\r\na\r\n\0b\r\n", 24));
}

TEST(RedisKeys, ParsesOffsets) {
  uint64_t off = 1;
  EXPECT_TRUE(ParseKeyOffset("m:header:0", "m", &off));
  EXPECT_EQ(off, 0u);
  // Names may hold colons: the offset is after the last one.
  EXPECT_TRUE(ParseKeyOffset("m:a:b.c:262217", "m", &off));
  EXPECT_EQ(off, 262217u);
  EXPECT_TRUE(ParseKeyOffset("m:x:18446744073709551615", "m", &off));
  EXPECT_EQ(off, UINT64_MAX);
  EXPECT_FALSE(ParseKeyOffset("m:x:18446744073709551616", "m", &off));
  EXPECT_FALSE(ParseKeyOffset("m:x:", "m", &off));
  EXPECT_FALSE(ParseKeyOffset("m:x:-1", "m", &off));
  EXPECT_FALSE(ParseKeyOffset("m:x:1a", "m", &off));
  EXPECT_FALSE(ParseKeyOffset("m:lock", "m", &off));
  EXPECT_FALSE(ParseKeyOffset("mm:x:1", "m", &off));
  EXPECT_FALSE(ParseKeyOffset("m", "m", &off));
}

// The keys tensorizer 2.12.1's to_redis writes for a three-tensor file (seen
// against a real server): a zero-length data key shares its offset with the
// next record's header key.
std::vector<Extent> ReferenceLayout() {
  return {{262217, 74, "p:a:262217"},  {262291, 24, "p:a:262291"}, {262315, 80, "p:b.c:262315"},
          {262395, 0, "p:b.c:262395"}, {0, 262217, "p:header:0"},  {262395, 70, "p:s:262395"},
          {262465, 8, "p:s:262465"}};
}

TEST(RedisExtents, ReferenceLayoutIsContiguous) {
  auto m = BuildExtentMap(ReferenceLayout(), "redis://h/p");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ(m->size(), 6u);  // the empty key is dropped
  uint64_t end = 0;
  for (const Extent& e : *m) {
    EXPECT_EQ(e.offset, end) << e.key;
    end = e.offset + e.length;
  }
  EXPECT_EQ(m->front().key, "p:header:0");
  EXPECT_EQ(end, 262473u);
}

TEST(RedisExtents, OverlapNamesUriKeysAndRanges) {
  auto m = BuildExtentMap({{0, 100, "p:header:0"}, {90, 20, "p:old:90"}}, "redis://h/p");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kFormatError);
  const std::string& msg = m.status().message();
  EXPECT_NE(msg.find("redis://h/p"), std::string::npos) << msg;
  EXPECT_NE(msg.find("p:header:0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("p:old:90"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bytes [90, 110)"), std::string::npos) << msg;
}

TEST(RedisExtents, ExtentPast2To64IsRejected) {
  auto m = BuildExtentMap({{UINT64_MAX - 1, 5, "p:x:18446744073709551614"}}, "u");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kFormatError);
}

TEST(RedisPlan, SplitsAtKeysAndOffsetsIntoValues) {
  auto m = BuildExtentMap(ReferenceLayout(), "u");
  ASSERT_TRUE(m.ok());
  // From inside the header key to inside tensor s's header key.
  auto p = PlanPieces(*m, 262200, 262400 - 262200, "u");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->size(), 5u);
  EXPECT_EQ((*p)[0].extent, 0u);
  EXPECT_EQ((*p)[0].key_offset, 262200u);
  EXPECT_EQ((*p)[0].length, 17u);
  EXPECT_EQ((*p)[1].length, 74u);
  EXPECT_EQ((*p)[2].length, 24u);
  EXPECT_EQ((*p)[3].length, 80u);
  EXPECT_EQ((*p)[4].key_offset, 0u);
  EXPECT_EQ((*p)[4].length, 5u);
  uint64_t total = 0;
  for (const Piece& piece : *p) total += piece.length;
  EXPECT_EQ(total, 200u);
  // A read inside one key is one piece.
  auto one = PlanPieces(*m, 262300, 10, "u");
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].key_offset, 262300u - 262291u);
}

TEST(RedisPlan, GapIsAnErrorNamingTheUncoveredRange) {
  // Tensor a's data key is missing (a to_redis after filter_func).
  std::vector<Extent> keys = {{0, 100, "p:header:0"}, {100, 20, "p:a:100"}, {150, 10, "p:b:150"}};
  auto m = BuildExtentMap(keys, "redis://h/p");
  ASSERT_TRUE(m.ok());
  auto p = PlanPieces(*m, 110, 45, "redis://h/p");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kIoError);
  EXPECT_EQ(p.status().sys_errno(), ENODATA);
  const std::string& msg = p.status().message();
  EXPECT_NE(msg.find("redis://h/p"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bytes [120, 150)"), std::string::npos) << msg;
  // Before the first key, and after the last (within a range the caller
  // asked for), too.
  std::vector<Extent> late = {{10, 10, "p:x:10"}};
  auto m2 = BuildExtentMap(late, "u");
  ASSERT_TRUE(m2.ok());
  auto before = PlanPieces(*m2, 0, 15, "u");
  ASSERT_FALSE(before.ok());
  EXPECT_NE(before.status().message().find("bytes [0, 10)"), std::string::npos);
  auto after = PlanPieces(*m2, 15, 10, "u");
  ASSERT_FALSE(after.ok());
  EXPECT_NE(after.status().message().find("bytes [20, 25)"), std::string::npos);
}

// A byte stream handing out `data` in pieces of random sizes (1 to 7 bytes),
// then end of stream.
struct ChoppyStream {
  std::string data;
  size_t at = 0;
  std::mt19937 rng{42};
  size_t max_piece = 7;
  ssize_t operator()(void* dst, size_t n) {
    if (at == data.size()) return 0;
    size_t take =
        std::min({n, data.size() - at, std::uniform_int_distribution<size_t>(1, max_piece)(rng)});
    std::memcpy(dst, data.data() + at, take);
    at += take;
    return static_cast<ssize_t>(take);
  }
};

RespReader ReaderOver(ChoppyStream* s, size_t buffer_bytes = 64) {
  return RespReader([s](void* dst, size_t n) { return (*s)(dst, n); }, buffer_bytes);
}

TEST(RedisResp, ReadsEveryReplyType) {
  ChoppyStream s;
  s.data =
      "+OK\r\n-ERR boom\r\n:-42\r\n$5\r\nab\r\nc\r\n$-1\r\n*2\r\n$1\r\n7\r\n*1\r\n$3\r\nk:0\r\n";
  RespReader r = ReaderOver(&s);
  RespValue v;
  ASSERT_TRUE(r.ReadValue(&v).ok());
  EXPECT_EQ(v.type, RespValue::Type::kSimple);
  EXPECT_EQ(v.str, "OK");
  ASSERT_TRUE(r.ReadValue(&v).ok());
  EXPECT_EQ(v.type, RespValue::Type::kError);
  EXPECT_EQ(v.str, "ERR boom");
  ASSERT_TRUE(r.ReadValue(&v).ok());
  EXPECT_EQ(v.type, RespValue::Type::kInteger);
  EXPECT_EQ(v.integer, -42);
  ASSERT_TRUE(r.ReadValue(&v).ok());
  EXPECT_EQ(v.type, RespValue::Type::kBulk);
  EXPECT_EQ(v.str, "ab\r\nc");  // binary-safe: CRLF inside a bulk string
  ASSERT_TRUE(r.ReadValue(&v).ok());
  EXPECT_EQ(v.type, RespValue::Type::kNull);
  // A SCAN reply: [cursor, [keys]].
  ASSERT_TRUE(r.ReadValue(&v).ok());
  ASSERT_EQ(v.type, RespValue::Type::kArray);
  ASSERT_EQ(v.elements.size(), 2u);
  EXPECT_EQ(v.elements[0].str, "7");
  ASSERT_EQ(v.elements[1].elements.size(), 1u);
  EXPECT_EQ(v.elements[1].elements[0].str, "k:0");
  Status end = r.ReadValue(&v);
  EXPECT_EQ(end.sys_errno(), ECONNRESET);
  EXPECT_TRUE(IsRetriable(end));
}

TEST(RedisResp, BulkGoesIntoScatteredBuffersAfterPipelinedReplies) {
  std::string payload;
  for (int i = 0; i < 1000; ++i) payload += static_cast<char>(i * 7);
  ChoppyStream s;
  s.max_piece = 300;
  s.data = "$3\r\nxyz\r\n$1000\r\n" + payload + "\r\n";
  RespReader r = ReaderOver(&s);
  char small[3];
  struct iovec one = {small, 3};
  uint64_t got = 0;
  ASSERT_TRUE(r.ReadBulkInto(&one, 1, 3, &got).ok());
  EXPECT_EQ(std::string(small, 3), "xyz");
  EXPECT_EQ(got, 3u);
  std::vector<char> a(1), b(0), c(600), d(399);
  struct iovec iov[4] = {{a.data(), 1}, {b.data(), 0}, {c.data(), 600}, {d.data(), 399}};
  got = 0;
  ASSERT_TRUE(r.ReadBulkInto(iov, 4, 1000, &got).ok());
  EXPECT_EQ(got, 1000u);
  std::string joined = std::string(a.begin(), a.end()) + std::string(c.begin(), c.end()) +
                       std::string(d.begin(), d.end());
  EXPECT_EQ(joined, payload);
}

TEST(RedisResp, DroppedConnectionReportsBytesPlaced) {
  ChoppyStream s;
  s.data = "$10\r\n0123";  // the server went away after 4 payload bytes
  RespReader r = ReaderOver(&s);
  char dst[10];
  struct iovec iov = {dst, 10};
  uint64_t got = 0;
  Status st = r.ReadBulkInto(&iov, 1, 10, &got);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(IsRetriable(st));
  EXPECT_EQ(got, 4u);
  EXPECT_EQ(std::string(dst, 4), "0123");
}

TEST(RedisResp, WrongLengthAndErrorReplies) {
  ChoppyStream s;
  s.data = "$0\r\n\r\n";  // GETRANGE on a key that is gone
  RespReader r = ReaderOver(&s);
  char dst[8];
  struct iovec iov = {dst, 8};
  uint64_t got = 0;
  Status st = r.ReadBulkInto(&iov, 1, 8, &got);
  EXPECT_EQ(st.sys_errno(), ESTALE);
  EXPECT_FALSE(IsRetriable(st));

  struct Case {
    const char* reply;
    int err;
    bool retriable;
  };
  for (const Case& c : {Case{"-LOADING Redis is loading\r\n", EAGAIN, true},
                        Case{"-NOAUTH Authentication required.\r\n", EACCES, false},
                        Case{"-WRONGTYPE Operation against a key\r\n", EIO, false}}) {
    ChoppyStream e;
    e.data = c.reply;
    RespReader re = ReaderOver(&e);
    Status es = re.ReadBulkInto(&iov, 1, 8, &got);
    EXPECT_EQ(es.code(), StatusCode::kIoError) << c.reply;
    EXPECT_EQ(es.sys_errno(), c.err) << c.reply;
    EXPECT_EQ(IsRetriable(es), c.retriable) << c.reply;
  }
}

TEST(RedisResp, MalformedRepliesAreFormatErrors) {
  for (const char* bad : {"?what\r\n", ":12x\r\n", "$-2\r\n", "$3\r\nabcXY", "*-5\r\n",
                          "$99999999999999999999\r\n", "\r\n"}) {
    ChoppyStream s;
    s.data = bad;
    RespReader r = ReaderOver(&s);
    RespValue v;
    Status st = r.ReadValue(&v);
    EXPECT_EQ(st.code(), StatusCode::kFormatError) << bad << ": " << st.ToString();
  }
  // Nesting is bounded.
  ChoppyStream deep;
  for (int i = 0; i < 20; ++i) deep.data += "*1\r\n";
  deep.data += ":1\r\n";
  RespReader r = ReaderOver(&deep);
  RespValue v;
  EXPECT_EQ(r.ReadValue(&v).code(), StatusCode::kFormatError);
}

TEST(RedisResp, LongLinesGrowTheBuffer) {
  ChoppyStream s;
  s.max_piece = 1000;
  std::string text(5000, 'x');
  s.data = "+" + text + "\r\n";
  RespReader r = ReaderOver(&s, 64);
  RespValue v;
  ASSERT_TRUE(r.ReadValue(&v).ok());
  EXPECT_EQ(v.str, text);
}

TEST(RedisResp, BudgetBoundsAWholeReplyBeforeItIsStored) {
  // A SCAN page of 3 keys of 10 bytes: 49 bytes on the wire.
  std::string page = "*2\r\n$1\r\n7\r\n*3\r\n";
  for (int i = 0; i < 3; ++i) page += "$10\r\n" + std::string(10, 'k') + "\r\n";
  ChoppyStream fits;
  fits.data = page;
  RespReader a = ReaderOver(&fits);
  RespValue v;
  ASSERT_TRUE(a.ReadValue(&v, page.size()).ok());
  EXPECT_EQ(v.elements[1].elements.size(), 3u);
  ChoppyStream over;
  over.data = page + page;
  RespReader b = ReaderOver(&over);
  EXPECT_EQ(b.ReadValue(&v, page.size() - 1).code(), StatusCode::kFormatError);
  // A huge claimed bulk length is refused by the budget before any byte of
  // it is awaited.
  ChoppyStream claim;
  claim.data = "$500000000\r\n";
  RespReader c = ReaderOver(&claim);
  Status st = c.ReadValue(&v, 1 << 20);
  EXPECT_EQ(st.code(), StatusCode::kFormatError) << st.ToString();
  // The budget is per call: the next reply has the default bound again.
  ChoppyStream two;
  two.data = page + "$20\r\n" + std::string(20, 'z') + "\r\n";
  RespReader d = ReaderOver(&two);
  ASSERT_TRUE(d.ReadValue(&v, page.size()).ok());
  ASSERT_TRUE(d.ReadValue(&v).ok());
  EXPECT_EQ(v.str.size(), 20u);
}

std::string HeaderBytes(uint64_t tensor_count, uint64_t metadata_length) {
  FileHeader h;
  h.tensor_count = tensor_count;
  h.metadata_length = metadata_length;
  return EncodeFileHeader(h);
}

TEST(RedisListing, KeysAreBoundedByTheHeaderKeysBytes) {
  // 10 tensors in a 262144-byte metadata block: the header key, and a header
  // and a data key per tensor.
  std::string header = HeaderBytes(10, 262144);
  ASSERT_EQ(header.size(), kMetadataStart);
  auto max = MaxKeysForFile(header, kMetadataStart + 262144, "redis://h/m");
  ASSERT_TRUE(max.ok()) << max.status().ToString();
  EXPECT_EQ(*max, 21u);
  // A forged count that the stored metadata bytes cannot carry.
  auto forged = MaxKeysForFile(HeaderBytes(uint64_t{1} << 40, 1000), kMetadataStart + 1000,
                               "redis://h/m");
  ASSERT_FALSE(forged.ok());
  EXPECT_EQ(forged.status().code(), StatusCode::kFormatError);
  EXPECT_NE(forged.status().message().find("redis://h/m"), std::string::npos);
  // A metadata length past what the key holds.
  EXPECT_FALSE(MaxKeysForFile(HeaderBytes(1, 262144), kMetadataStart + 100, "u").ok());
  // Not a tensorizer header at all.
  EXPECT_FALSE(MaxKeysForFile(std::string(kMetadataStart, 'x'), 1000, "u").ok());
  EXPECT_FALSE(MaxKeysForFile("|TZR|", 5, "u").ok());
}

TEST(RedisListing, PagesAreBoundedByTheDatabasesSize) {
  ScanPlan small = PlanScan(50);
  EXPECT_EQ(small.count, 1000u);
  EXPECT_GE(small.max_pages, 256u);
  EXPECT_LE(small.max_pages, 300u);
  // Ten million keys: bigger pages, so the round trips stay few.
  ScanPlan big = PlanScan(10'000'000);
  EXPECT_GT(big.count, 100'000u);
  EXPECT_LE(big.max_pages, 1000u);
  EXPECT_GE(big.max_pages * big.count, uint64_t{4} * 10'000'000);
  // A DBSIZE no Redis can have is believed only up to 2^32 keys.
  ScanPlan lie = PlanScan(INT64_MAX);
  EXPECT_EQ(lie.count, uint64_t{1} << 20);
  EXPECT_LE(lie.max_pages, 256u + 8 * 4096);
  EXPECT_EQ(PlanScan(-5).count, 1000u);
}

}  // namespace
}  // namespace tensorizer::redis
