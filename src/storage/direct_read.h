// Alignment arithmetic for O_DIRECT reads: how one scatter read of an
// arbitrary byte range into arbitrary buffers becomes one preadv that
// O_DIRECT accepts.
//
// O_DIRECT wants the file offset, every buffer's address and every buffer's
// length to be multiples of the file's direct-I/O block (statx's
// STATX_DIOALIGN; 512 or 4096). A request [offset, offset + total) is widened
// to the aligned window [lo, hi). Each destination buffer's middle part,
// whose first byte falls on a block boundary of the file and whose address is
// block-aligned, is read straight into the buffer (a "direct" piece); the rest
// of the window (heads, tails, unaligned buffers, the widening itself) goes to
// a block-aligned staging buffer, packed in file order, and is copied out
// afterwards. The pieces alternate between staging and destinations and all
// have block-multiple lengths, so one preadv reads the whole window.
//
// Pure: no I/O; file_source.cc executes it, direct_read_test.cc checks it.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <vector>

namespace tensorizer::internal {

struct DirectReadPlan {
  uint64_t file_offset = 0;    // lo: block-aligned
  uint64_t length = 0;         // hi - lo: a multiple of the block
  uint64_t staging_bytes = 0;  // a multiple of the block
  // The preadv vector in file order: staged pieces point into staging at
  // staging_offset, direct ones at their destination.
  struct Piece {
    uint64_t length = 0;
    bool staged = true;
    uint64_t staging_offset = 0;
    uint8_t* dst = nullptr;
  };
  std::vector<Piece> pieces;
  // After the read: staging[staging_offset, + length) -> dst.
  struct Copy {
    uint64_t staging_offset = 0;
    uint8_t* dst = nullptr;
    uint64_t length = 0;
  };
  std::vector<Copy> copies;
  uint64_t direct_bytes = 0;  // requested bytes that land without a copy
};

// Plans the read of [offset, offset + sum of iov lengths) into `iov`.
// `block` is a power of two. A buffer's aligned middle is read directly only
// when it is at least `min_direct_bytes` long (smaller ones are not worth a
// separate piece).
DirectReadPlan PlanDirectRead(uint64_t offset, const struct iovec* iov, int iovcnt, uint64_t block,
                              uint64_t min_direct_bytes);

inline uint64_t AlignDown(uint64_t v, uint64_t block) { return v & ~(block - 1); }
inline uint64_t AlignUp(uint64_t v, uint64_t block) { return (v + block - 1) & ~(block - 1); }

}  // namespace tensorizer::internal
