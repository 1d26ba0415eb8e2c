// The crypt-info block of a tensor header (docs/format.md §16).
//
// Layout: u16 chunk count, then per chunk a u64 length (of type + body), a
// u16 type and the body. Parsing reads each chunk inside its own declared
// span, so a chunk can never read into the next one, and then requires the
// span to be consumed exactly; the block as a whole must be consumed too.
// tensorizer 2.12.1 ignores trailing bytes in either place, but it never
// writes any, and refusing them keeps "parse then encode" the identity.
//
// Semantic rules (shared by the parser and the encoder): a non-empty block
// has exactly one cipher chunk (type 2 or 3) and at most one key-derivation
// chunk; type-2 chunk sizes are multiples of 64 of at least 1024 bytes.
#include <algorithm>
#include <string>
#include <variant>

#include "format/bytes.h"
#include "tensorizer/crypto.h"

namespace tensorizer {
namespace {

using internal::ByteReader;
using internal::ByteWriter;

// Chunk sizes, type field included, without the u64 length.
constexpr uint64_t kKeyDerivationFixedBytes = 2 + 2 + 8 + 8 + 4 + 2;  // + salt
constexpr uint64_t kParallelFixedBytes = 2 + 8 + kNonceBytes + 8;     // + 16 per MAC
constexpr uint64_t kSequentialBytes = 2 + kNonceBytes + kMacBytes;

std::string ChunkName(size_t index, size_t count) {
  return "crypt-info chunk " + std::to_string(index) + " of " + std::to_string(count);
}

Status CheckChunkBytes(uint64_t chunk_bytes) {
  if (chunk_bytes % kCryptChunkQuantum != 0 || chunk_bytes < kMinCryptChunkBytes) {
    return Status::FormatError("invalid XSalsa20 chunk size " + std::to_string(chunk_bytes) +
                               ": must be a multiple of 64 and at least 1024");
  }
  return Status::Ok();
}

// The rules a parsed or to-be-encoded block must satisfy.
Status Validate(const CryptInfo& info) {
  if (info.chunks.size() > UINT16_MAX) {
    return Status::FormatError("crypt-info has " + std::to_string(info.chunks.size()) +
                               " chunks; at most 65535 fit its u16 count");
  }
  if (info.chunks.empty()) return Status::Ok();
  size_t ciphers = 0, derivations = 0;
  for (const CryptInfoChunk& chunk : info.chunks) {
    if (std::holds_alternative<KeyDerivationChunk>(chunk)) {
      ++derivations;
      if (std::get<KeyDerivationChunk>(chunk).pwhash.salt.size() > UINT16_MAX) {
        return Status::FormatError("key-derivation salt longer than 65535 bytes");
      }
    } else {
      ++ciphers;
      if (auto* p = std::get_if<XSalsa20ParallelChunk>(&chunk)) {
        TZR_RETURN_IF_ERROR(CheckChunkBytes(p->chunk_bytes));
      }
    }
  }
  if (ciphers == 0) {
    return Status::Cryptography(
        "No known encryption method found in file: the crypt-info block has no"
        " XSalsa20 chunk");
  }
  if (ciphers > 1) {
    return Status::Cryptography("Could not interpret encryption method of the file: " +
                                std::to_string(ciphers) + " XSalsa20 chunks in one crypt-info");
  }
  if (derivations > 1) {
    return Status::Cryptography(
        "Could not interpret encryption key derivation method of the file: " +
        std::to_string(derivations) + " key-derivation chunks in one crypt-info");
  }
  return Status::Ok();
}

// One chunk from exactly its declared span (type + body).
Result<CryptInfoChunk> ParseChunk(const uint8_t* data, size_t size, const std::string& what) {
  ByteReader r(data, size);
  const uint16_t type = r.Read<uint16_t>();
  if (!r.ok()) return Status::FormatError(what + " is too short to hold its type");
  auto truncated = [&](const char* kind) {
    return Status::FormatError(what + " (" + kind + ") is truncated: " + std::to_string(size) +
                               " bytes");
  };
  auto exact = [&](const char* kind) -> Status {
    if (r.remaining() != 0) {
      return Status::FormatError(what + " (" + kind + ") has " + std::to_string(r.remaining()) +
                                 " unexpected bytes after its body");
    }
    return Status::Ok();
  };
  switch (static_cast<CryptChunkType>(type)) {
    case CryptChunkType::kKeyDerivation: {
      const uint16_t method = r.Read<uint16_t>();
      if (!r.ok()) return truncated("key derivation");
      if (method != kKeyDerivationPwhash) {
        return Status::Cryptography("Unknown key derivation method (" + std::to_string(method) +
                                    ") in " + what);
      }
      KeyDerivationChunk kd;
      kd.pwhash.opslimit = r.Read<uint64_t>();
      kd.pwhash.memlimit = r.Read<uint64_t>();
      kd.pwhash.alg = r.Read<int32_t>();
      const uint16_t salt_len = r.Read<uint16_t>();
      kd.pwhash.salt = r.ReadString(salt_len);
      if (!r.ok()) return truncated("key derivation");
      TZR_RETURN_IF_ERROR(exact("key derivation"));
      return CryptInfoChunk(std::move(kd));
    }
    case CryptChunkType::kXSalsa20Parallel: {
      XSalsa20ParallelChunk p;
      p.chunk_bytes = r.Read<uint64_t>();
      const std::string nonce = r.ReadString(kNonceBytes);
      const uint64_t num_macs = r.Read<uint64_t>();
      if (!r.ok()) return truncated("XSalsa20Parallel");
      std::copy(nonce.begin(), nonce.end(), p.nonce0.begin());
      TZR_RETURN_IF_ERROR(CheckChunkBytes(p.chunk_bytes).WithContext(what));
      if (num_macs > r.remaining() / kMacBytes) {
        return Status::FormatError(what + " (XSalsa20Parallel) claims " + std::to_string(num_macs) +
                                   " MACs but has room for " +
                                   std::to_string(r.remaining() / kMacBytes));
      }
      p.macs.resize(num_macs);
      for (Mac& mac : p.macs) {
        const std::string bytes = r.ReadString(kMacBytes);
        std::copy(bytes.begin(), bytes.end(), mac.begin());
      }
      TZR_RETURN_IF_ERROR(exact("XSalsa20Parallel"));
      return CryptInfoChunk(std::move(p));
    }
    case CryptChunkType::kXSalsa20Sequential: {
      XSalsa20SequentialChunk s;
      const std::string nonce = r.ReadString(kNonceBytes);
      const std::string mac = r.ReadString(kMacBytes);
      if (!r.ok()) return truncated("XSalsa20Sequential");
      std::copy(nonce.begin(), nonce.end(), s.nonce.begin());
      std::copy(mac.begin(), mac.end(), s.mac.begin());
      TZR_RETURN_IF_ERROR(exact("XSalsa20Sequential"));
      return CryptInfoChunk(s);
    }
  }
  return Status::Cryptography("Unknown crypt-info chunk type " + std::to_string(type) + " in " +
                              what);
}

uint64_t ChunkBytes(const CryptInfoChunk& chunk) {
  if (auto* kd = std::get_if<KeyDerivationChunk>(&chunk)) {
    return kKeyDerivationFixedBytes + kd->pwhash.salt.size();
  }
  if (auto* p = std::get_if<XSalsa20ParallelChunk>(&chunk)) {
    return kParallelFixedBytes + kMacBytes * p->macs.size();
  }
  return kSequentialBytes;
}

void EncodeChunk(const CryptInfoChunk& chunk, ByteWriter& w) {
  w.Write<uint64_t>(ChunkBytes(chunk));
  if (auto* kd = std::get_if<KeyDerivationChunk>(&chunk)) {
    w.Write<uint16_t>(static_cast<uint16_t>(CryptChunkType::kKeyDerivation));
    w.Write<uint16_t>(kKeyDerivationPwhash);
    w.Write<uint64_t>(kd->pwhash.opslimit);
    w.Write<uint64_t>(kd->pwhash.memlimit);
    w.Write<int32_t>(kd->pwhash.alg);
    w.Write<uint16_t>(static_cast<uint16_t>(kd->pwhash.salt.size()));
    w.WriteBytes(kd->pwhash.salt);
  } else if (auto* p = std::get_if<XSalsa20ParallelChunk>(&chunk)) {
    w.Write<uint16_t>(static_cast<uint16_t>(CryptChunkType::kXSalsa20Parallel));
    w.Write<uint64_t>(p->chunk_bytes);
    w.WriteBytes({reinterpret_cast<const char*>(p->nonce0.data()), kNonceBytes});
    w.Write<uint64_t>(p->macs.size());
    for (const Mac& mac : p->macs) {
      w.WriteBytes({reinterpret_cast<const char*>(mac.data()), kMacBytes});
    }
  } else {
    const auto& s = std::get<XSalsa20SequentialChunk>(chunk);
    w.Write<uint16_t>(static_cast<uint16_t>(CryptChunkType::kXSalsa20Sequential));
    w.WriteBytes({reinterpret_cast<const char*>(s.nonce.data()), kNonceBytes});
    w.WriteBytes({reinterpret_cast<const char*>(s.mac.data()), kMacBytes});
  }
}

template <typename T>
const T* Find(const CryptInfo& info) {
  for (const CryptInfoChunk& chunk : info.chunks) {
    if (auto* found = std::get_if<T>(&chunk)) return found;
  }
  return nullptr;
}

}  // namespace

const KeyDerivationChunk* CryptInfo::key_derivation() const {
  return Find<KeyDerivationChunk>(*this);
}
const XSalsa20ParallelChunk* CryptInfo::parallel() const {
  return Find<XSalsa20ParallelChunk>(*this);
}
const XSalsa20SequentialChunk* CryptInfo::sequential() const {
  return Find<XSalsa20SequentialChunk>(*this);
}

Result<CryptInfo> ParseCryptInfo(const uint8_t* data, size_t size) {
  ByteReader r(data, size);
  const uint16_t count = r.Read<uint16_t>();
  if (!r.ok()) {
    return Status::FormatError("crypt-info block of " + std::to_string(size) +
                               " bytes is too short for its chunk count");
  }
  CryptInfo info;
  // Every chunk takes at least 10 bytes, so a hostile count cannot make
  // this reserve more than the block justifies.
  info.chunks.reserve(std::min<size_t>(count, r.remaining() / 10));
  for (size_t i = 0; i < count; ++i) {
    const std::string what = ChunkName(i, count);
    const uint64_t length = r.Read<uint64_t>();
    if (!r.ok()) return Status::FormatError(what + " starts past the end of the block");
    if (length > r.remaining()) {
      return Status::FormatError(what + " claims " + std::to_string(length) + " bytes but " +
                                 std::to_string(r.remaining()) + " remain in the block");
    }
    TZR_ASSIGN_OR_RETURN(CryptInfoChunk chunk, ParseChunk(data + r.pos(), length, what));
    info.chunks.push_back(std::move(chunk));
    r.Skip(length);
  }
  if (r.remaining() != 0) {
    return Status::FormatError("crypt-info block has " + std::to_string(r.remaining()) +
                               " unexpected bytes after its " + std::to_string(count) + " chunks");
  }
  TZR_RETURN_IF_ERROR(Validate(info));
  return info;
}

uint64_t EncodedCryptInfoBytes(const CryptInfo& info) {
  uint64_t n = 8 + 2;
  for (const CryptInfoChunk& chunk : info.chunks) n += 8 + ChunkBytes(chunk);
  return n;
}

Result<std::string> EncodeCryptInfo(const CryptInfo& info, bool with_length_prefix) {
  TZR_RETURN_IF_ERROR(Validate(info));
  ByteWriter w;
  if (with_length_prefix) w.Write<uint64_t>(EncodedCryptInfoBytes(info) - 8);
  w.Write<uint16_t>(static_cast<uint16_t>(info.chunks.size()));
  for (const CryptInfoChunk& chunk : info.chunks) EncodeChunk(chunk, w);
  return std::move(w.str());
}

uint64_t CryptChunkCount(uint64_t data_bytes, uint64_t chunk_bytes) {
  if (chunk_bytes == 0) return data_bytes == 0 ? 0 : 1;
  return data_bytes / chunk_bytes + (data_bytes % chunk_bytes != 0);
}

Result<SealedChunks> SealedChunksOf(const CryptInfo& info, uint64_t data_bytes) {
  if (!info.encrypted()) {
    return Status::Cryptography("Tensor is not encrypted: its crypt-info block is empty");
  }
  TZR_RETURN_IF_ERROR(Validate(info));
  SealedChunks layout;
  layout.data_bytes = data_bytes;
  if (const XSalsa20SequentialChunk* s = info.sequential()) {
    layout.chunk_bytes = data_bytes;
    layout.nonce0 = s->nonce;
    layout.macs = {s->mac};
    return layout;
  }
  const XSalsa20ParallelChunk& p = *info.parallel();
  layout.nonce0 = p.nonce0;
  layout.macs = p.macs;
  if (p.macs.size() == 1) {
    // tensorizer opens a single-MAC block as one secretbox over all the
    // data, whatever chunk size it states.
    layout.chunk_bytes = data_bytes;
    return layout;
  }
  const uint64_t needed = CryptChunkCount(data_bytes, p.chunk_bytes);
  if (p.macs.size() != needed) {
    return Status::FormatError("crypt-info has " + std::to_string(p.macs.size()) + " MACs, but " +
                               std::to_string(data_bytes) + " bytes of data in chunks of " +
                               std::to_string(p.chunk_bytes) + " bytes need " +
                               std::to_string(needed));
  }
  layout.chunk_bytes = p.chunk_bytes;
  return layout;
}

}  // namespace tensorizer
