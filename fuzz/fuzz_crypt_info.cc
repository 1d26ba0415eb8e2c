// libFuzzer target for the crypt-info parser (the block inside each tensor
// header of an encrypted file). Invariants: parsing never crashes; what
// parses re-encodes to the same bytes (the format has one encoding); and the
// chunk layout derived from it for any data length stays within that data.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tensorizer/crypto.h"

using namespace tensorizer;

namespace {

[[noreturn]] void Violated(const char* what) {
  std::fprintf(stderr, "fuzz_crypt_info: invariant violated: %s\n", what);
  std::abort();
}

#define CHECK(cond)               \
  do {                            \
    if (!(cond)) Violated(#cond); \
  } while (0)

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  // The first 8 bytes choose a data length to lay chunks over.
  uint64_t data_bytes = 0;
  std::memcpy(&data_bytes, data, 8);
  data_bytes %= 1ull << 40;
  auto info = ParseCryptInfo(data + 8, size - 8);
  if (!info.ok()) return 0;
  auto encoded = EncodeCryptInfo(*info, /*with_length_prefix=*/false);
  CHECK(encoded.ok());
  CHECK(encoded->size() == size - 8 && std::memcmp(encoded->data(), data + 8, size - 8) == 0);
  CHECK(EncodedCryptInfoBytes(*info) == size - 8 + 8);
  if (!info->encrypted()) return 0;
  auto layout = SealedChunksOf(*info, data_bytes);
  if (!layout.ok()) return 0;
  CHECK(layout->data_bytes == data_bytes);
  uint64_t covered = 0;
  for (size_t i = 0; i < layout->count(); ++i) {
    CHECK(layout->offset(i) == covered);
    CHECK(layout->length(i) <= data_bytes - covered);
    covered += layout->length(i);
  }
  CHECK(layout->count() == 0 ? data_bytes == 0 : covered == data_bytes);
  return 0;
}
