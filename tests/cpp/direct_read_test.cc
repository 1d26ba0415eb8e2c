// PlanDirectRead: the O_DIRECT window, which bytes land straight in their
// buffers, and the staging copies; and the planner's placement of slots for
// direct reads. Simulated against a byte pattern: executing a plan on a
// "file" (pieces filled from the window, then the copies) must give exactly
// the bytes a buffered read gives, and obey O_DIRECT's alignment rules.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "storage/direct_read.h"
#include "tensorizer/plan.h"

namespace tensorizer {
namespace {

using internal::DirectReadPlan;
using internal::PlanDirectRead;

uint8_t FileByte(uint64_t at) { return static_cast<uint8_t>(at * 131 + (at >> 9)); }

// A block-aligned region standing for destination memory.
struct Memory {
  explicit Memory(size_t n) : bytes(n + 8192) {
    base = bytes.data() + (4096 - reinterpret_cast<uintptr_t>(bytes.data()) % 4096);
  }
  std::vector<uint8_t> bytes;
  uint8_t* base;
};

// Runs the plan as the kernel would (every piece gets its window bytes),
// checking O_DIRECT's rules, then the copies; file_size cuts the window.
void Execute(const DirectReadPlan& plan, uint64_t block, uint64_t file_size) {
  ASSERT_EQ(plan.file_offset % block, 0u);
  ASSERT_EQ(plan.length % block, 0u);
  ASSERT_EQ(plan.staging_bytes % block, 0u);
  std::vector<uint8_t> raw(plan.staging_bytes + block);
  uint8_t* staging = raw.data() + (block - reinterpret_cast<uintptr_t>(raw.data()) % block) % block;
  uint64_t at = plan.file_offset;
  uint64_t staged = 0;
  for (const DirectReadPlan::Piece& p : plan.pieces) {
    ASSERT_GT(p.length, 0u);
    ASSERT_EQ(p.length % block, 0u);
    uint8_t* dst = p.staged ? staging + p.staging_offset : p.dst;
    if (p.staged) {
      EXPECT_EQ(p.staging_offset, staged);  // packed in file order
      staged += p.length;
    }
    ASSERT_EQ(reinterpret_cast<uintptr_t>(dst) % block, 0u);
    for (uint64_t i = 0; i < p.length && at + i < file_size; ++i) dst[i] = FileByte(at + i);
    at += p.length;
  }
  EXPECT_EQ(at, plan.file_offset + plan.length);
  EXPECT_EQ(staged, plan.staging_bytes);
  for (const DirectReadPlan::Copy& c : plan.copies) {
    ASSERT_LE(c.staging_offset + c.length, plan.staging_bytes);
    std::memcpy(c.dst, staging + c.staging_offset, c.length);
  }
}

struct Buf {
  uint64_t mem_offset;  // where in Memory
  uint64_t length;
};

// Reads [offset, +sum) into the buffers and checks every byte; returns the
// plan for further checks.
DirectReadPlan CheckRead(uint64_t offset, const std::vector<Buf>& bufs, uint64_t block,
                         uint64_t min_direct, uint64_t file_size = UINT64_MAX) {
  uint64_t mem_end = 0;
  for (const Buf& b : bufs) mem_end = std::max(mem_end, b.mem_offset + b.length);
  Memory mem(mem_end);
  std::memset(mem.bytes.data(), 0xEE, mem.bytes.size());
  std::vector<struct iovec> iov;
  for (const Buf& b : bufs) iov.push_back({mem.base + b.mem_offset, b.length});
  DirectReadPlan plan =
      PlanDirectRead(offset, iov.data(), static_cast<int>(iov.size()), block, min_direct);
  Execute(plan, block, file_size);
  uint64_t f = offset;
  for (const Buf& b : bufs) {
    for (uint64_t i = 0; i < b.length; ++i) {
      EXPECT_EQ(mem.base[b.mem_offset + i], FileByte(f + i)) << "file byte " << f + i;
      if (mem.base[b.mem_offset + i] != FileByte(f + i)) return plan;
    }
    f += b.length;
  }
  // Nothing outside the buffers was written.
  std::vector<bool> owned(mem_end, false);
  for (const Buf& b : bufs) {
    for (uint64_t i = 0; i < b.length; ++i) owned[b.mem_offset + i] = true;
  }
  for (uint64_t i = 0; i < mem_end; ++i) {
    if (!owned[i]) EXPECT_EQ(mem.base[i], 0xEE) << "memory byte " << i;
  }
  return plan;
}

TEST(DirectReadTest, WindowIsTheRequestWidenedToBlocks) {
  DirectReadPlan p = CheckRead(1000, {{0, 3000}}, 512, 1 << 20);
  EXPECT_EQ(p.file_offset, 512u);
  EXPECT_EQ(p.length, 3584u);  // [512, 4096)
  EXPECT_EQ(p.direct_bytes, 0u);
  ASSERT_EQ(p.pieces.size(), 1u);
  EXPECT_TRUE(p.pieces[0].staged);
  ASSERT_EQ(p.copies.size(), 1u);
  EXPECT_EQ(p.copies[0].staging_offset, 488u);
}

TEST(DirectReadTest, AlignedRequestIntoAlignedBufferIsReadInPlace) {
  DirectReadPlan p = CheckRead(4096, {{0, 8192}}, 512, 512);
  EXPECT_EQ(p.direct_bytes, 8192u);
  EXPECT_EQ(p.staging_bytes, 0u);
  EXPECT_TRUE(p.copies.empty());
  ASSERT_EQ(p.pieces.size(), 1u);
  EXPECT_FALSE(p.pieces[0].staged);
}

TEST(DirectReadTest, CongruentBufferGetsItsMiddleDirectAndHeadAndTailStaged) {
  // File offset 1000 lands at memory 488 (1000 % 512 == 488): the bytes from
  // file 1024 on land at memory 512, aligned.
  DirectReadPlan p = CheckRead(1000, {{488, 10000}}, 512, 512);
  EXPECT_EQ(p.direct_bytes, 10752u - 1024u);  // [1024, 10752)
  ASSERT_EQ(p.pieces.size(), 3u);
  EXPECT_TRUE(p.pieces[0].staged);
  EXPECT_FALSE(p.pieces[1].staged);
  EXPECT_TRUE(p.pieces[2].staged);
  EXPECT_EQ(p.staging_bytes, 1024u);
  EXPECT_EQ(p.copies.size(), 2u);
}

TEST(DirectReadTest, MisalignedBufferIsStagedWhole) {
  DirectReadPlan p = CheckRead(1000, {{489, 10000}}, 512, 512);
  EXPECT_EQ(p.direct_bytes, 0u);
  EXPECT_EQ(p.pieces.size(), 1u);
}

TEST(DirectReadTest, ShortMiddlesAreStaged) {
  DirectReadPlan p = CheckRead(1000, {{488, 10000}}, 512, 64 << 10);
  EXPECT_EQ(p.direct_bytes, 0u);
}

TEST(DirectReadTest, MixedBuffersAlternateStagingAndDestinations) {
  // header-like buffer, congruent data, odd buffer, congruent data.
  const uint64_t b = 4096;
  uint64_t off = 300000;  // 300000 % 4096 == 992
  std::vector<Buf> bufs = {{0, 80},                     // file [300000, 300080)
                           {(300080 % b) + b, 70000},   // congruent
                           {200003, 17},                // misaligned, small
                           {((300080 + 70017) % b) + 300 * 1024, 90001}};
  DirectReadPlan p = CheckRead(off, bufs, b, b);
  EXPECT_GT(p.direct_bytes, 70000u + 90001u - 4 * b);
  size_t direct = 0;
  for (const auto& piece : p.pieces) direct += !piece.staged;
  EXPECT_EQ(direct, 2u);
}

TEST(DirectReadTest, ContiguousStagedCopiesMerge) {
  std::vector<Buf> bufs = {{1, 10}, {11, 20}, {31, 5}};
  DirectReadPlan p = CheckRead(7, bufs, 512, 512);
  EXPECT_EQ(p.copies.size(), 1u);
  EXPECT_EQ(p.copies[0].length, 35u);
}

TEST(DirectReadTest, TailPastTheEndOfAFileThatIsNotABlockMultiple) {
  // The file ends at 5000; the window reaches 5120, whose last bytes the
  // kernel never fills: the request stops at the end of the file.
  DirectReadPlan p = CheckRead(4000, {{4000 % 512, 1000}}, 512, 1, 5000);
  EXPECT_EQ(p.file_offset + p.length, 5120u);
}

TEST(DirectReadTest, RandomRequestsAreByteExact) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE(trial);
    const uint64_t block = uint64_t{512} << (rng() % 4);
    const uint64_t offset = rng() % 100000;
    std::vector<Buf> bufs;
    uint64_t mem = 0;
    uint64_t f = offset;
    const int n = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < n; ++i) {
      const uint64_t len = (rng() % 3 == 0) ? rng() % 100 : rng() % 40000;
      // Often congruent with the file (as the planner places large slots).
      uint64_t at = mem + rng() % 200;
      if (rng() % 2) at = mem + ((f % block) + block - mem % block) % block;
      bufs.push_back({at, len});
      mem = at + len;
      f += len;
    }
    CheckRead(offset, bufs, block, rng() % 2 ? 1 : 4096);
  }
}

TEST(DirectPlacementTest, LargeTensorsLandCongruentToTheirFileOffsets) {
  Index index;
  index.header.version = 4;
  index.header.metadata_length = kMetadataReserve;
  const char* dtypes[] = {"<f4", "<f4", "<f2", "|u1", "<f4"};
  const uint64_t sizes[] = {100000, 1 << 20, 300000, 70001, 100};
  uint64_t pos = index.prefix_length();
  for (int i = 0; i < 5; ++i) {
    TensorEntry e;
    e.name = "t" + std::to_string(i);
    e.dtype = dtypes[i];
    uint64_t item = dtypes[i][2] - '0';
    e.shape = {sizes[i] / item};
    e.header_offset = pos;
    e.data_offset = pos + 77 + i;  // odd offsets: some multiples of the item size
    e.data_length = sizes[i] / item * item;
    pos = e.record_end();
    index.entries.push_back(e);
  }
  std::vector<size_t> all = {0, 1, 2, 3, 4};
  PlanOptions o;
  o.direct_block_bytes = 4096;
  auto plan = MakeLoadPlan(index, all, o);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  uint64_t prev_end = 0;
  int placed = 0;
  for (size_t i = 0; i < 5; ++i) {
    const PlannedTensor& t = plan->tensors[i];
    const TensorEntry& e = index.entries[i];
    const uint64_t item = e.dtype[2] - '0';
    EXPECT_GE(t.arena_offset, prev_end);
    EXPECT_EQ(t.arena_offset % item, 0u);
    const bool congruent = t.arena_offset % 4096 == e.data_offset % 4096;
    const bool eligible = e.data_length >= kDirectPlacementMinBytes && e.data_offset % item == 0;
    if (eligible) {
      EXPECT_TRUE(congruent) << i;
      ++placed;
      EXPECT_LT(t.arena_offset - prev_end, 4096u) << i;  // no more than a block of padding
    } else {
      EXPECT_EQ(t.arena_offset % 64, 0u) << i;
    }
    prev_end = t.arena_offset + t.arena_bytes;
  }
  EXPECT_GE(plan->arena_bytes, prev_end);
  EXPECT_GE(placed, 2);
  // Without direct placement every slot is 64-aligned.
  o.direct_block_bytes = 0;
  auto plain = MakeLoadPlan(index, all, o);
  ASSERT_TRUE(plain.ok());
  for (const PlannedTensor& t : plain->tensors) EXPECT_EQ(t.arena_offset % 64, 0u);
  // A block that is not a power of two, or smaller than the slot
  // alignment, is refused.
  o.direct_block_bytes = 3000;
  EXPECT_FALSE(MakeLoadPlan(index, all, o).ok());
  o.direct_block_bytes = 32;
  EXPECT_FALSE(MakeLoadPlan(index, all, o).ok());
}

}  // namespace
}  // namespace tensorizer
