// Encryption building blocks: crypt-info parsing and encoding, chunked
// XSalsa20-Poly1305, Argon2id key derivation.
//
// Vectors come from tensorizer 2.12.1 (tests/data/crypto/make_vectors.py):
// two encrypted files it wrote, crypt-info blocks its encoder produced, keys
// its PWHash derived, and secretboxes sealed by libsodium through libnacl.
// The rest is round trips and hostile input that must fail with a specific
// status code and leave no data behind.
#include "tensorizer/crypto.h"

#include <gtest/gtest.h>
#include <sodium.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "format/hash.h"
#include "tensorizer/format.h"
#include "test_files.h"

namespace tensorizer {
namespace {

using testing::Hex;
using testing::Unhex;

// --- vectors ------------------------------------------------------------

std::string DataDir() {
  std::string here = __FILE__;  // .../tests/cpp/crypto_test.cc
  here.resize(here.rfind('/'));
  here.resize(here.rfind('/'));
  return here + "/data/crypto/";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Bytes(const std::string& hex) { return hex == "-" ? std::string() : Unhex(hex); }

const std::vector<std::vector<std::string>>& Vectors() {
  static const auto* records = [] {
    auto* out = new std::vector<std::vector<std::string>>;
    std::istringstream in(ReadFile(DataDir() + "vectors.txt"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream fields(line);
      std::vector<std::string> record;
      for (std::string f; fields >> f;) record.push_back(f);
      out->push_back(record);
    }
    return out;
  }();
  return *records;
}

std::vector<std::vector<std::string>> VectorsOf(const std::string& kind) {
  std::vector<std::vector<std::string>> out;
  for (const auto& r : Vectors()) {
    if (r[0] == kind) out.push_back(r);
  }
  return out;
}

std::string CryptInfoVector(const std::string& label) {
  for (const auto& r : VectorsOf("cryptinfo")) {
    if (r[1] == label) return Bytes(r[2]);
  }
  ADD_FAILURE() << "no cryptinfo vector " << label;
  return {};
}

template <typename A>
A ToArray(const std::string& bytes) {
  A a{};
  EXPECT_EQ(bytes.size(), a.size());
  std::copy_n(bytes.begin(), std::min(bytes.size(), a.size()), a.begin());
  return a;
}

std::string Str(const uint8_t* p, size_t n) {
  return std::string(reinterpret_cast<const char*>(p), n);
}
template <typename A>
std::string Str(const A& a) {
  return Str(a.data(), a.size());
}
const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }
uint8_t* U8(std::string& s) { return reinterpret_cast<uint8_t*>(s.data()); }

Result<CryptInfo> ParseBlock(const std::string& block_with_prefix) {
  return ParseCryptInfo(U8(block_with_prefix) + 8, block_with_prefix.size() - 8);
}

bool AllZero(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == 0; });
}

CryptKey TestKey(uint8_t seed) {
  CryptKey key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(seed + 3 * i);
  return key;
}

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 17) >> 3);
  return s;
}

// --- crypt-info: the reference's own encodings ---------------------------

TEST(CryptInfo, ReferenceBlocksParseAndReencodeExactly) {
  const auto records = VectorsOf("cryptinfo");
  ASSERT_EQ(records.size(), 8u);
  for (const auto& r : records) {
    SCOPED_TRACE(r[1]);
    const std::string block = Bytes(r[2]);
    auto info = ParseBlock(block);
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    auto again = EncodeCryptInfo(*info);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(Hex(*again), Hex(block));
    auto bare = EncodeCryptInfo(*info, /*with_length_prefix=*/false);
    ASSERT_TRUE(bare.ok());
    EXPECT_EQ(Hex(*bare), Hex(block.substr(8)));
    EXPECT_EQ(EncodedCryptInfoBytes(*info), block.size());
  }
}

TEST(CryptInfo, EmptyIsTwoZeroBytes) {
  auto encoded = EncodeCryptInfo(CryptInfo{});
  ASSERT_TRUE(encoded.ok());
  EXPECT_EQ(Hex(*encoded),
            "0200000000000000"
            "0000");
  EXPECT_EQ(Hex(*encoded), Hex(CryptInfoVector("empty")));
  auto info = ParseBlock(*encoded);
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->encrypted());
  EXPECT_EQ(info->parallel(), nullptr);
  EXPECT_EQ(info->key_derivation(), nullptr);
}

TEST(CryptInfo, ReferenceBlocksHaveTheExpectedFields) {
  Nonce nonce;
  for (size_t i = 0; i < nonce.size(); ++i) nonce[i] = static_cast<uint8_t>(i);

  auto kdf_parallel = ParseBlock(CryptInfoVector("kdf_parallel"));
  ASSERT_TRUE(kdf_parallel.ok());
  ASSERT_EQ(kdf_parallel->chunks.size(), 2u);
  ASSERT_NE(kdf_parallel->key_derivation(), nullptr);
  const PwhashParams& pw = kdf_parallel->key_derivation()->pwhash;
  EXPECT_EQ(pw.opslimit, 3u);
  EXPECT_EQ(pw.memlimit, 268435456u);
  EXPECT_EQ(pw.alg, kPwhashAlgArgon2id13);
  EXPECT_EQ(Hex(pw.salt), "404142434445464748494a4b4c4d4e4f");
  ASSERT_NE(kdf_parallel->parallel(), nullptr);
  EXPECT_EQ(kdf_parallel->parallel()->chunk_bytes, kCryptChunkBytes);
  EXPECT_EQ(kdf_parallel->parallel()->nonce0, nonce);
  ASSERT_EQ(kdf_parallel->parallel()->macs.size(), 1u);
  EXPECT_EQ(Hex(Str(kdf_parallel->parallel()->macs[0])), Hex(std::string(16, '\xa0')));

  auto three = ParseBlock(CryptInfoVector("parallel_3macs"));
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(three->parallel()->chunk_bytes, 1024u);
  ASSERT_EQ(three->parallel()->macs.size(), 3u);
  EXPECT_EQ(Hex(Str(three->parallel()->macs[2])), Hex(std::string(16, '\xa2')));

  auto zero = ParseBlock(CryptInfoVector("parallel_0macs"));
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->encrypted());
  EXPECT_TRUE(zero->parallel()->macs.empty());

  // Stored order is kept, so a block written [cipher, KDF] re-encodes as is.
  auto reversed = ParseBlock(CryptInfoVector("parallel_kdf"));
  ASSERT_TRUE(reversed.ok());
  EXPECT_TRUE(std::holds_alternative<XSalsa20ParallelChunk>(reversed->chunks[0]));
  EXPECT_TRUE(std::holds_alternative<KeyDerivationChunk>(reversed->chunks[1]));

  auto seq = ParseBlock(CryptInfoVector("kdf_sequential"));
  ASSERT_TRUE(seq.ok());
  ASSERT_NE(seq->sequential(), nullptr);
  EXPECT_EQ(seq->parallel(), nullptr);
  EXPECT_EQ(seq->sequential()->nonce, nonce);
  EXPECT_EQ(Hex(Str(seq->sequential()->mac)), Hex(std::string(16, '\xa1')));
}

// --- crypt-info: hostile and malformed blocks ----------------------------

TEST(CryptInfo, EveryTruncationFailsCleanly) {
  for (const char* label : {"parallel_3macs", "kdf_parallel", "kdf_sequential", "empty"}) {
    const std::string body = CryptInfoVector(label).substr(8);
    for (size_t n = 0; n < body.size(); ++n) {
      auto info = ParseCryptInfo(U8(body), n);
      EXPECT_FALSE(info.ok()) << label << " cut to " << n << " bytes";
      if (!info.ok()) {
        EXPECT_EQ(info.status().code(), StatusCode::kFormatError) << label << " " << n;
      }
    }
  }
}

// A block built field by field, to break one field at a time.
struct Block {
  std::string bytes;
  template <typename T>
  Block& Put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Block& Raw(const std::string& s) {
    bytes += s;
    return *this;
  }
};

std::string ParallelChunk(uint64_t chunk_bytes, uint64_t claimed_macs, size_t stored_macs) {
  Block c;
  c.Put<uint16_t>(2)
      .Put<uint64_t>(chunk_bytes)
      .Raw(std::string(24, 'n'))
      .Put<uint64_t>(claimed_macs);
  c.Raw(std::string(16 * stored_macs, 'm'));
  return c.bytes;
}
std::string SequentialChunk() { return Block().Put<uint16_t>(3).Raw(std::string(40, 's')).bytes; }
std::string KdfChunk(uint16_t method = 1, uint16_t salt_len = 16, size_t salt_stored = 16) {
  Block c;
  c.Put<uint16_t>(1).Put<uint16_t>(method).Put<uint64_t>(1).Put<uint64_t>(8192).Put<int32_t>(2);
  c.Put<uint16_t>(salt_len).Raw(std::string(salt_stored, 's'));
  return c.bytes;
}
std::string Sized(const std::string& chunk) {
  return Block().Put<uint64_t>(chunk.size()).Raw(chunk).bytes;
}
std::string Body(const std::vector<std::string>& chunks, uint16_t count_override = 0xffff) {
  Block b;
  b.Put<uint16_t>(count_override == 0xffff ? chunks.size() : count_override);
  for (const auto& c : chunks) b.Raw(Sized(c));
  return b.bytes;
}

TEST(CryptInfo, HostileBlocksFailWithTheRightCode) {
  struct Case {
    const char* what;
    std::string body;
    StatusCode code;
  };
  const std::string ok_parallel = ParallelChunk(1024, 2, 2);
  std::string chunk_overflows = Block().Put<uint16_t>(1).Put<uint64_t>(UINT64_MAX).bytes;
  std::string chunk_too_short = Block().Put<uint16_t>(1).Put<uint64_t>(1).Raw("x").bytes;
  const std::vector<Case> cases = {
      {"count larger than the chunks", Body({ok_parallel}, 2), StatusCode::kFormatError},
      {"chunk length past the block", chunk_overflows, StatusCode::kFormatError},
      {"chunk too short for its type", chunk_too_short, StatusCode::kFormatError},
      {"trailing bytes after the chunks", Body({ok_parallel}) + "x", StatusCode::kFormatError},
      {"trailing bytes inside a chunk", Body({ok_parallel + "x"}), StatusCode::kFormatError},
      {"MAC count beyond the chunk", Body({ParallelChunk(1024, 3, 2)}), StatusCode::kFormatError},
      {"huge MAC count", Body({ParallelChunk(1024, UINT64_MAX, 2)}), StatusCode::kFormatError},
      {"MAC count short of the chunk", Body({ParallelChunk(1024, 1, 2)}), StatusCode::kFormatError},
      {"chunk size not a multiple of 64", Body({ParallelChunk(1088 + 1, 2, 2)}),
       StatusCode::kFormatError},
      {"chunk size below 1024", Body({ParallelChunk(960, 2, 2)}), StatusCode::kFormatError},
      {"chunk size zero", Body({ParallelChunk(0, 0, 0)}), StatusCode::kFormatError},
      {"salt past the chunk", Body({KdfChunk(1, 17, 16), ok_parallel}), StatusCode::kFormatError},
      {"sequential chunk truncated", Body({SequentialChunk().substr(0, 30)}),
       StatusCode::kFormatError},
      {"unknown chunk type", Body({Block().Put<uint16_t>(9).Raw("abcd").bytes}),
       StatusCode::kCryptography},
      {"unknown key derivation method", Body({KdfChunk(2), ok_parallel}),
       StatusCode::kCryptography},
      {"no cipher chunk", Body({KdfChunk()}), StatusCode::kCryptography},
      {"two cipher chunks", Body({ok_parallel, SequentialChunk()}), StatusCode::kCryptography},
      {"two parallel chunks", Body({ok_parallel, ok_parallel}), StatusCode::kCryptography},
      {"two key derivations", Body({KdfChunk(), ok_parallel, KdfChunk()}),
       StatusCode::kCryptography},
  };
  for (const Case& c : cases) {
    auto info = ParseCryptInfo(U8(c.body), c.body.size());
    ASSERT_FALSE(info.ok()) << c.what;
    EXPECT_EQ(info.status().code(), c.code) << c.what << ": " << info.status().ToString();
  }
  // The same builders make blocks that do parse.
  for (const std::string& body :
       {Body({ok_parallel}), Body({KdfChunk(), SequentialChunk()}),
        Body({KdfChunk(1, 5, 5), ParallelChunk(kCryptChunkBytes, 0, 0)}), Body({})}) {
    auto info = ParseCryptInfo(U8(body), body.size());
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    auto again = EncodeCryptInfo(*info, false);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(Hex(*again), Hex(body));
  }
}

TEST(CryptInfo, EncodeRefusesWhatParseWouldRefuse) {
  CryptInfo bad_size;
  bad_size.chunks.emplace_back(XSalsa20ParallelChunk{1000, {}, {}});
  EXPECT_EQ(EncodeCryptInfo(bad_size).status().code(), StatusCode::kFormatError);
  CryptInfo two;
  two.chunks.emplace_back(XSalsa20ParallelChunk{});
  two.chunks.emplace_back(XSalsa20SequentialChunk{});
  EXPECT_EQ(EncodeCryptInfo(two).status().code(), StatusCode::kCryptography);
  CryptInfo kdf_only;
  kdf_only.chunks.emplace_back(KeyDerivationChunk{});
  EXPECT_EQ(EncodeCryptInfo(kdf_only).status().code(), StatusCode::kCryptography);
}

// --- the sealed layout of a tensor ----------------------------------------

TEST(SealedChunks, FollowsTheReferenceRules) {
  auto with_macs = [](uint64_t chunk_bytes, size_t n) {
    CryptInfo info;
    XSalsa20ParallelChunk p;
    p.chunk_bytes = chunk_bytes;
    p.macs.resize(n);
    info.chunks.emplace_back(p);
    return info;
  };
  // Three chunks of 1024: the last one short.
  auto three = SealedChunksOf(with_macs(1024, 3), 3000);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(three->count(), 3u);
  EXPECT_EQ(three->offset(2), 2048u);
  EXPECT_EQ(three->length(0), 1024u);
  EXPECT_EQ(three->length(2), 952u);
  // Exactly two full chunks.
  auto two = SealedChunksOf(with_macs(1024, 2), 2048);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->length(1), 1024u);
  // One MAC: one secretbox over all the data, whatever the chunk size says.
  auto one = SealedChunksOf(with_macs(1024, 1), 5000);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->count(), 1u);
  EXPECT_EQ(one->length(0), 5000u);
  // No data, no MACs: nothing to open.
  auto none = SealedChunksOf(with_macs(kCryptChunkBytes, 0), 0);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->count(), 0u);

  for (auto [macs, bytes] :
       std::vector<std::pair<size_t, uint64_t>>{{2, 3000}, {4, 3000}, {0, 1}, {3, 2048}, {2, 0}}) {
    auto bad = SealedChunksOf(with_macs(1024, macs), bytes);
    ASSERT_FALSE(bad.ok()) << macs << " MACs for " << bytes << " bytes";
    EXPECT_EQ(bad.status().code(), StatusCode::kFormatError);
  }
  auto empty = SealedChunksOf(CryptInfo{}, 12);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kCryptography);

  CryptInfo seq;
  seq.chunks.emplace_back(XSalsa20SequentialChunk{});
  auto s = SealedChunksOf(seq, 10 << 20);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->count(), 1u);
  EXPECT_EQ(s->length(0), uint64_t{10} << 20);
}

// --- nonces -----------------------------------------------------------------

TEST(Nonce, ChunkNonceIsSodiumIncrementRepeated) {
  ASSERT_GE(sodium_init(), 0);
  for (int start : {0x00, 0xfe, 0xff}) {
    Nonce nonce0;
    nonce0.fill(static_cast<uint8_t>(start));
    nonce0[23] = 0x7f;
    Nonce counted = nonce0;
    for (uint64_t i = 0; i < 70000; ++i) {
      ASSERT_EQ(NonceForChunk(nonce0, i), counted) << "start " << start << " index " << i;
      sodium_increment(counted.data(), counted.size());
    }
  }
  // Wraps around all 24 bytes, as sodium_increment does.
  Nonce all_ff;
  all_ff.fill(0xff);
  Nonce expected{};
  expected[0] = 1;
  EXPECT_EQ(NonceForChunk(all_ff, 2), expected);
  // A large index carries through its eight bytes and beyond.
  Nonce n0{};
  n0[8] = 0xff;
  Nonce big = NonceForChunk(n0, UINT64_MAX);
  EXPECT_EQ(Hex(Str(big)), "ffffffffffffffffff" + std::string(30, '0'));
}

// --- the primitive against libsodium via libnacl ----------------------------

TEST(Secretbox, MatchesLibnaclVectors) {
  const auto records = VectorsOf("secretbox");
  ASSERT_EQ(records.size(), 5u);
  for (const auto& r : records) {
    const CryptKey key = ToArray<CryptKey>(Bytes(r[1]));
    const Nonce nonce = ToArray<Nonce>(Bytes(r[2]));
    const std::string plain = Bytes(r[3]);
    const std::string mac = Bytes(r[4]);
    const std::string cipher = Bytes(r[5]);
    SCOPED_TRACE(plain.size());

    std::string buf = plain;
    Mac got_mac;
    ASSERT_TRUE(EncryptChunk(key, nonce, 0, U8(buf), buf.size(), &got_mac).ok());
    EXPECT_EQ(Hex(buf), Hex(cipher));
    EXPECT_EQ(Hex(Str(got_mac)), Hex(mac));

    ASSERT_TRUE(DecryptChunk(key, nonce, 0, U8(buf), buf.size(), got_mac).ok());
    EXPECT_EQ(Hex(buf), Hex(plain));
  }
}

// --- the reference's encrypted files ----------------------------------------

struct RefTensor {
  TensorEntry entry;
  TensorHeader header;
  std::string header_bytes;
  CryptInfo crypt_info;
  std::string crypt_block;  // with its u64 length
  std::string stored;       // data as stored (ciphertext)
};

std::vector<RefTensor> ReadRefFile(const std::string& file) {
  const std::string bytes = ReadFile(DataDir() + file);
  std::vector<RefTensor> out;
  auto fh = ParseFileHeader(U8(bytes), bytes.size(), bytes.size());
  EXPECT_TRUE(fh.ok()) << fh.status().ToString();
  if (!fh.ok()) return out;
  EXPECT_TRUE(fh->has_crypt_info());
  auto index = ParseIndex(U8(bytes), bytes.size(), bytes.size());
  EXPECT_TRUE(index.ok()) << index.status().ToString();
  if (!index.ok()) return out;
  for (const TensorEntry& e : index->entries) {
    RefTensor t;
    t.entry = e;
    t.header_bytes = bytes.substr(e.header_offset, e.header_length());
    auto h = ParseTensorHeader(U8(t.header_bytes), t.header_bytes.size(), e.metadata_version == 5,
                               fh->has_crypt_info());
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    if (!h.ok()) continue;
    t.header = *h;
    EXPECT_GE(h->crypt_info_size, 10u);
    t.crypt_block = t.header_bytes.substr(h->crypt_info_offset, h->crypt_info_size);
    auto info = ParseBlock(t.crypt_block);
    EXPECT_TRUE(info.ok()) << e.name << ": " << info.status().ToString();
    if (info.ok()) t.crypt_info = *info;
    t.stored = bytes.substr(e.data_offset, e.data_length);
    out.push_back(std::move(t));
  }
  return out;
}

CryptKey KeyOf(const std::string& file) {
  for (const auto& r : VectorsOf("key")) {
    if (r[1] == file) return ToArray<CryptKey>(Bytes(r[2]));
  }
  ADD_FAILURE() << "no key for " << file;
  return {};
}

std::map<std::string, std::string> PlaintextsOf(const std::string& file) {
  std::map<std::string, std::string> out;
  for (const auto& r : VectorsOf("tensor")) {
    if (r[1] == file) out[r[2]] = Bytes(r[3]);
  }
  return out;
}

// SHA-256 over the header (hash values zeroed, crypt info cut out) and the
// plaintext: what the reference stores for encrypted tensors.
std::string Sha256Of(const RefTensor& t, const std::string& plain) {
  internal::Sha256 sha;
  const std::string hashed = HashedHeaderBytes(U8(t.header_bytes), t.header);
  sha.Update(hashed.data(), hashed.size());
  sha.Update(plain.data(), plain.size());
  return sha.Finish();
}

void CheckRefFile(const std::string& file) {
  const CryptKey key = KeyOf(file);
  const auto plaintexts = PlaintextsOf(file);
  const auto tensors = ReadRefFile(file);
  ASSERT_EQ(tensors.size(), plaintexts.size());
  for (const RefTensor& t : tensors) {
    SCOPED_TRACE(file + " " + t.entry.name);
    ASSERT_EQ(plaintexts.count(t.entry.name), 1u);
    const std::string& plain = plaintexts.at(t.entry.name);

    // The block re-encodes to the reference's exact bytes.
    auto again = EncodeCryptInfo(t.crypt_info);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(Hex(*again), Hex(t.crypt_block));

    if (t.entry.name == "meta") {
      EXPECT_FALSE(t.crypt_info.encrypted());
      EXPECT_EQ(t.entry.data_length, 0u);
      continue;
    }
    ASSERT_TRUE(t.crypt_info.encrypted());
    ASSERT_NE(t.crypt_info.parallel(), nullptr);
    EXPECT_EQ(t.crypt_info.sequential(), nullptr);
    const size_t expect_macs = t.entry.name == "chunked" ? 3 : t.entry.name == "empty" ? 0 : 1;
    EXPECT_EQ(t.crypt_info.parallel()->macs.size(), expect_macs);
    EXPECT_EQ(t.crypt_info.parallel()->chunk_bytes,
              t.entry.name == "chunked" ? 1024u : kCryptChunkBytes);
    // Encrypted tensors store SHA-256 only.
    ASSERT_EQ(t.header.hashes.size(), 1u);
    EXPECT_EQ(t.header.hashes[0].type, HashType::kSha256);

    auto layout = SealedChunksOf(t.crypt_info, t.stored.size());
    ASSERT_TRUE(layout.ok()) << layout.status().ToString();
    ASSERT_EQ(t.stored.size(), plain.size());
    if (!plain.empty()) {
      EXPECT_NE(t.stored, plain);
    }

    // All at once.
    std::string buf = t.stored;
    Status st = DecryptSealedChunks(key, *layout, U8(buf));
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(Hex(buf), Hex(plain));
    EXPECT_EQ(Hex(Sha256Of(t, buf)), Hex(t.header.hashes[0].value));

    // Chunk by chunk, last first, as a pipeline might as they arrive.
    std::string buf2 = t.stored;
    for (size_t i = layout->count(); i-- > 0;) {
      ASSERT_TRUE(DecryptChunk(key, layout->nonce0, i, U8(buf2) + layout->offset(i),
                               layout->length(i), layout->macs[i])
                      .ok());
    }
    EXPECT_EQ(Hex(buf2), Hex(plain));

    // A wrong key never yields data.
    if (layout->count() > 0) {
      std::string buf3 = t.stored;
      CryptKey wrong = key;
      wrong[5] ^= 1;
      Status bad = DecryptSealedChunks(wrong, *layout, U8(buf3));
      EXPECT_EQ(bad.code(), StatusCode::kCryptography);
      EXPECT_NE(bad.message().find("Tensor decryption failed"), std::string::npos) << bad.message();
      EXPECT_TRUE(AllZero(buf3));
    }
  }
}

TEST(ReferenceFiles, RandomKeyFileDecrypts) { CheckRefFile("ref_random_key.bin"); }

TEST(ReferenceFiles, PassphraseFileDecryptsWithTheDerivedKey) {
  CheckRefFile("ref_passphrase.bin");
  std::string passphrase;
  for (const auto& r : VectorsOf("passphrase")) passphrase = Bytes(r[2]);
  ASSERT_FALSE(passphrase.empty());
  for (const RefTensor& t : ReadRefFile("ref_passphrase.bin")) {
    SCOPED_TRACE(t.entry.name);
    const KeyDerivationChunk* kd = t.crypt_info.key_derivation();
    ASSERT_NE(kd, nullptr);
    EXPECT_TRUE(std::holds_alternative<KeyDerivationChunk>(t.crypt_info.chunks[0]));
    EXPECT_EQ(kd->pwhash.opslimit, static_cast<uint64_t>(OpsLimit::kMin));
    EXPECT_EQ(kd->pwhash.memlimit, static_cast<uint64_t>(MemLimit::kMin));
    auto key = DeriveKey(passphrase, kd->pwhash);
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    EXPECT_EQ(*key, KeyOf("ref_passphrase.bin"));
  }
}

TEST(ReferenceFiles, TamperedCiphertextOrMacNeverYieldsData) {
  const CryptKey key = KeyOf("ref_random_key.bin");
  for (const RefTensor& t : ReadRefFile("ref_random_key.bin")) {
    if (t.entry.name != "chunked" && t.entry.name != "small") continue;
    SCOPED_TRACE(t.entry.name);
    auto layout = SealedChunksOf(t.crypt_info, t.stored.size());
    ASSERT_TRUE(layout.ok());
    // Flip one bit in each chunk's data in turn, then in each MAC.
    for (size_t i = 0; i < layout->count(); ++i) {
      std::string buf = t.stored;
      buf[layout->offset(i) + layout->length(i) / 2] ^= 0x10;
      Status st = DecryptSealedChunks(key, *layout, U8(buf));
      EXPECT_EQ(st.code(), StatusCode::kCryptography) << "data of chunk " << i;
      EXPECT_TRUE(AllZero(buf));

      SealedChunks bad_mac = *layout;
      bad_mac.macs[i][0] ^= 1;
      std::string buf2 = t.stored;
      st = DecryptSealedChunks(key, bad_mac, U8(buf2));
      EXPECT_EQ(st.code(), StatusCode::kCryptography) << "MAC of chunk " << i;
      EXPECT_TRUE(AllZero(buf2));

      // The single chunk that fails is zeroed on its own too.
      std::string buf3 = t.stored;
      uint8_t* chunk = U8(buf3) + layout->offset(i);
      chunk[0] ^= 1;
      st = DecryptChunk(key, layout->nonce0, i, chunk, layout->length(i), layout->macs[i]);
      EXPECT_EQ(st.code(), StatusCode::kCryptography);
      EXPECT_TRUE(AllZero(std::string(reinterpret_cast<char*>(chunk), layout->length(i))));
    }
    if (layout->count() > 1) {
      // Swapping two chunks' MACs (a reordering attack) fails as well.
      SealedChunks swapped = *layout;
      std::swap(swapped.macs[0], swapped.macs[1]);
      std::string buf = t.stored;
      EXPECT_EQ(DecryptSealedChunks(key, swapped, U8(buf)).code(), StatusCode::kCryptography);
    }
  }
}

// --- our own sealing ---------------------------------------------------------

TEST(Seal, RoundTripsAtTheWrittenChunkSizeInParallel) {
  const CryptKey key = TestKey(7);
  const std::string plain = Pattern(2 * kCryptChunkBytes + 5);
  std::string buf = plain;
  auto info = SealTensorData(key, nullptr, U8(buf), buf.size());
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ASSERT_EQ(info->chunks.size(), 1u);
  const XSalsa20ParallelChunk* p = info->parallel();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->chunk_bytes, kCryptChunkBytes);
  EXPECT_EQ(p->macs.size(), 3u);
  EXPECT_NE(buf, plain);

  // Through the encoder and parser, as through a file header.
  auto block = EncodeCryptInfo(*info);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(block->size(), 8 + 2 + 8 + 42 + 3 * 16u);  // CL = 100, as in the research notes
  auto parsed = ParseBlock(*block);
  ASSERT_TRUE(parsed.ok());
  auto layout = SealedChunksOf(*parsed, buf.size());
  ASSERT_TRUE(layout.ok());

  std::vector<std::thread> threads;
  std::vector<Status> results(layout->count());
  for (size_t i = 0; i < layout->count(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = DecryptChunk(key, layout->nonce0, i, U8(buf) + layout->offset(i),
                                layout->length(i), layout->macs[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& st : results) EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(buf == plain);
}

TEST(Seal, ChunksCanBeSealedOneByOneInAnyOrder) {
  const CryptKey key = TestKey(9);
  const std::string plain = Pattern(5000);
  Nonce nonce0;
  nonce0.fill(0xff);  // the first increment carries through every byte
  std::string serial = plain;
  auto macs = EncryptChunks(key, nonce0, U8(serial), serial.size(), 1024);
  ASSERT_TRUE(macs.ok());
  ASSERT_EQ(macs->size(), 5u);
  std::string scattered = plain;
  for (size_t i : {4, 0, 3, 1, 2}) {
    Mac mac;
    const size_t len = std::min<size_t>(1024, plain.size() - i * 1024);
    ASSERT_TRUE(EncryptChunk(key, nonce0, i, U8(scattered) + i * 1024, len, &mac).ok());
    EXPECT_EQ(mac, (*macs)[i]);
  }
  EXPECT_TRUE(scattered == serial);
  // Chunks are distinct secretboxes: chunk 1 does not open as chunk 2.
  std::string chunk1 = serial.substr(1024, 1024);
  EXPECT_EQ(DecryptChunk(key, nonce0, 2, U8(chunk1), chunk1.size(), (*macs)[1]).code(),
            StatusCode::kCryptography);
}

TEST(Seal, OneMacMeansOneSecretboxOverAllTheData) {
  // What tensorizer reads for a single-MAC block: a secretbox over all
  // 5000 bytes, although the block says 1024-byte chunks.
  const CryptKey key = TestKey(11);
  const std::string plain = Pattern(5000);
  std::string buf = plain;
  Nonce nonce0{};
  Mac mac;
  ASSERT_TRUE(EncryptChunk(key, nonce0, 0, U8(buf), buf.size(), &mac).ok());
  CryptInfo info;
  info.chunks.emplace_back(XSalsa20ParallelChunk{1024, nonce0, {mac}});
  auto layout = SealedChunksOf(info, buf.size());
  ASSERT_TRUE(layout.ok());
  ASSERT_TRUE(DecryptSealedChunks(key, *layout, U8(buf)).ok());
  EXPECT_TRUE(buf == plain);
}

TEST(Seal, ZeroLengthDataGetsAParallelChunkWithNoMacs) {
  const CryptKey key = TestKey(13);
  KeyDerivationChunk kd;
  kd.pwhash.salt = std::string(16, 'x');
  auto info = SealTensorData(key, &kd, nullptr, 0);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ASSERT_EQ(info->chunks.size(), 2u);
  EXPECT_TRUE(std::holds_alternative<KeyDerivationChunk>(info->chunks[0]));
  ASSERT_NE(info->parallel(), nullptr);
  EXPECT_TRUE(info->parallel()->macs.empty());
  auto block = EncodeCryptInfo(*info);
  ASSERT_TRUE(block.ok());
  // The same shape as the reference-encoded zero-MAC block, apart from the
  // KDF chunk in front (and the nonce).
  EXPECT_EQ(block->size(), 8 + 2 + (8 + 42) + (8 + 42u));
  auto parsed = ParseBlock(*block);
  ASSERT_TRUE(parsed.ok());
  auto layout = SealedChunksOf(*parsed, 0);
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->count(), 0u);
  EXPECT_TRUE(DecryptSealedChunks(key, *layout, nullptr).ok());
}

TEST(Seal, EmptySingleMacBoxIsStillVerified) {
  // A type-3 block (or a one-MAC type-2 block) over zero bytes is a real
  // secretbox: its MAC still proves the key.
  const CryptKey key = TestKey(15);
  Nonce nonce{};
  Mac mac;
  ASSERT_TRUE(EncryptChunk(key, nonce, 0, nullptr, 0, &mac).ok());
  CryptInfo info;
  info.chunks.emplace_back(XSalsa20SequentialChunk{nonce, mac});
  auto layout = SealedChunksOf(info, 0);
  ASSERT_TRUE(layout.ok());
  EXPECT_TRUE(DecryptSealedChunks(key, *layout, nullptr).ok());
  EXPECT_EQ(DecryptSealedChunks(TestKey(16), *layout, nullptr).code(), StatusCode::kCryptography);
}

TEST(Seal, RefusesBadChunkSizes) {
  const CryptKey key = TestKey(1);
  std::string buf(100, 'a');
  for (uint64_t bad : {0ull, 64ull, 1000ull, 1025ull, 2ull * 1024 * 1024 + 1}) {
    EXPECT_EQ(EncryptChunks(key, Nonce{}, U8(buf), buf.size(), bad).status().code(),
              StatusCode::kInvalidArgument)
        << bad;
    EXPECT_EQ(SealTensorData(key, nullptr, U8(buf), buf.size(), bad).status().code(),
              StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(buf, std::string(100, 'a'));  // untouched
}

TEST(Random, KeysNoncesAndSaltsDiffer) {
  auto a = RandomKey();
  auto b = RandomKey();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  auto n1 = RandomNonce();
  auto n2 = RandomNonce();
  ASSERT_TRUE(n1.ok() && n2.ok());
  EXPECT_NE(*n1, *n2);
  auto salt = RandomSalt();
  ASSERT_TRUE(salt.ok());
  EXPECT_EQ(salt->size(), kSaltBytes);
}

// --- key derivation ------------------------------------------------------------

TEST(DeriveKey, MatchesTheReference) {
  const auto records = VectorsOf("pwhash");
  ASSERT_EQ(records.size(), 4u);
  for (const auto& r : records) {
    PwhashParams params;
    params.opslimit = std::stoull(r[2]);
    params.memlimit = std::stoull(r[3]);
    params.salt = Bytes(r[4]);
    SCOPED_TRACE(r[1] + " ops " + r[2] + " mem " + r[3]);
    auto key = DeriveKey(Bytes(r[1]), params);
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    EXPECT_EQ(Hex(Str(*key)), r[5]);
  }
}

TEST(DeriveKey, RefusesWhatTheReferenceRefuses) {
  PwhashParams ok;
  ok.opslimit = 1;
  ok.memlimit = 8192;
  ok.salt = std::string(16, 's');
  ASSERT_TRUE(DeriveKey("pw", ok).ok());
  ASSERT_TRUE(DeriveKey("", ok).ok());  // the Python API refuses empty ones, not this

  PwhashParams p = ok;
  p.alg = 1;  // Argon2i: libsodium has it, tensorizer refuses it
  auto st = DeriveKey("pw", p).status();
  EXPECT_EQ(st.code(), StatusCode::kCryptography);
  EXPECT_EQ(st.message(), "Unsupported pwhash algorithm (1)");

  p = ok;
  p.salt = std::string(15, 's');
  EXPECT_EQ(DeriveKey("pw", p).status().code(), StatusCode::kInvalidArgument);
  p = ok;
  p.opslimit = 0;
  EXPECT_EQ(DeriveKey("pw", p).status().code(), StatusCode::kInvalidArgument);
  p = ok;
  p.opslimit = kOpsLimitMax + 1;
  EXPECT_EQ(DeriveKey("pw", p).status().code(), StatusCode::kInvalidArgument);
  p = ok;
  p.memlimit = 8191;
  EXPECT_EQ(DeriveKey("pw", p).status().code(), StatusCode::kInvalidArgument);
  p = ok;
  p.memlimit = kMemLimitMax + 1;
  EXPECT_EQ(DeriveKey("pw", p).status().code(), StatusCode::kInvalidArgument);
}

TEST(DeriveKey, PresetsAreLibsodiumsValues) {
  EXPECT_EQ(static_cast<uint64_t>(OpsLimit::kInteractive), 2u);
  EXPECT_EQ(static_cast<uint64_t>(MemLimit::kModerate), 268435456u);
  EXPECT_EQ(static_cast<uint64_t>(OpsLimit::kSensitive), crypto_pwhash_OPSLIMIT_SENSITIVE);
  EXPECT_EQ(static_cast<uint64_t>(MemLimit::kSensitive), crypto_pwhash_MEMLIMIT_SENSITIVE);
  PwhashParams defaults;
  EXPECT_EQ(defaults.opslimit, static_cast<uint64_t>(OpsLimit::kModerate));
  EXPECT_EQ(defaults.memlimit, static_cast<uint64_t>(MemLimit::kModerate));
}

// Issue 12 #19: the file chooses the Argon2id cost, so a reader caps it.
TEST(DeriveKey, CostAboveTheCapsIsRefusedBeforeDeriving) {
  EXPECT_EQ(kDefaultMaxPwhashOpsLimit, crypto_pwhash_OPSLIMIT_SENSITIVE);
  EXPECT_EQ(kDefaultMaxPwhashMemLimit, crypto_pwhash_MEMLIMIT_SENSITIVE);
  PwhashParams p;
  p.salt = std::string(16, 's');
  p.opslimit = kDefaultMaxPwhashOpsLimit;
  p.memlimit = kDefaultMaxPwhashMemLimit;
  EXPECT_TRUE(CheckPwhashCost(p, kDefaultMaxPwhashOpsLimit, kDefaultMaxPwhashMemLimit).ok());

  DerivedKeyCache cache;
  p.opslimit = kOpsLimitMax;  // hours of work
  p.memlimit = 8192;
  auto start = std::chrono::steady_clock::now();
  auto key = cache.Get("pw", p, kDefaultMaxPwhashOpsLimit, kDefaultMaxPwhashMemLimit);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().code(), StatusCode::kCryptography);
  EXPECT_NE(key.status().message().find("opslimit 4294967295, more than the allowed 4"),
            std::string::npos)
      << key.status().message();

  p.opslimit = 1;
  p.memlimit = 4ull << 30;  // 4 GiB allocated
  key = cache.Get("pw", p, kDefaultMaxPwhashOpsLimit, kDefaultMaxPwhashMemLimit);
  ASSERT_FALSE(key.ok());
  EXPECT_NE(key.status().message().find("4294967296 bytes of memory, more than the allowed "
                                        "1073741824"),
            std::string::npos)
      << key.status().message();

  // A caller that trusts the file raises the cap.
  p.opslimit = 5;
  p.memlimit = 8192;
  EXPECT_FALSE(cache.Get("pw", p, 4, kDefaultMaxPwhashMemLimit).ok());
  auto raised = cache.Get("pw", p, 5, kDefaultMaxPwhashMemLimit);
  ASSERT_TRUE(raised.ok()) << raised.status().ToString();
  EXPECT_EQ(*raised, *DeriveKey("pw", p));
}

TEST(DeriveKey, CacheKeepsOneKeyPerPassphraseAndParameters) {
  PwhashParams p;
  p.salt = std::string(16, 's');
  p.opslimit = 1;
  p.memlimit = 8192;
  DerivedKeyCache cache;
  auto a = cache.Get("pw", p, 4, 1 << 30);
  auto b = cache.Get("other", p, 4, 1 << 30);
  auto a2 = cache.Get("pw", p, 4, 1 << 30);
  ASSERT_TRUE(a.ok() && b.ok() && a2.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(*a, *a2);
}

}  // namespace
}  // namespace tensorizer
