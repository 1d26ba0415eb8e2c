// MakeLoadPlan: arena layout, read coalescing and splitting, and jobs.
//
// Plans are pure functions of an Index, so the indexes here are built as
// values, with records laid out back to back (or with gaps) after the
// standard 256 KiB metadata block. CheckInvariants states everything a plan
// promises; each test adds what its case is about.
#include "tensorizer/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tensorizer/format.h"

namespace tensorizer {
namespace {

struct RecordSpec {
  uint64_t header_bytes = 80;
  uint64_t data_bytes = 100;
  uint64_t gap_before = 0;  // unowned bytes before the record
  bool meta = false;        // no data stored; data_bytes is what it would need
};

// Records of "|u1" tensors with shape (data_bytes,), so dtype and shape agree
// with data_length as ParseIndex demands.
Index MakeIndex(const std::vector<RecordSpec>& records) {
  Index index;
  index.header.version = 4;
  index.header.metadata_length = kMetadataReserve;
  index.header.tensor_count = records.size();
  uint64_t pos = index.prefix_length();
  for (size_t i = 0; i < records.size(); ++i) {
    const RecordSpec& r = records[i];
    TensorEntry e;
    e.name = "t" + std::to_string(i);
    e.dtype = "|u1";
    e.shape = {r.data_bytes};
    pos += r.gap_before;
    e.header_offset = pos;
    e.data_offset = pos + r.header_bytes;
    e.data_length = r.meta ? 0 : r.data_bytes;
    pos = e.record_end();
    index.entries.push_back(e);
  }
  return index;
}

std::vector<size_t> All(const Index& index) {
  std::vector<size_t> v(index.entries.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}

// Reads of tensor t, as indices into plan.reads.
std::vector<size_t> ReadsOf(const LoadPlan& plan, uint32_t t) {
  std::vector<size_t> out;
  for (size_t r = 0; r < plan.reads.size(); ++r) {
    const ReadOp& op = plan.reads[r];
    for (uint32_t s = op.first_segment; s < op.first_segment + op.segment_count; ++s) {
      if (plan.segments[s].tensor == t) {
        out.push_back(r);
        break;
      }
    }
  }
  return out;
}

size_t JobOf(const LoadPlan& plan, size_t read) {
  for (size_t j = 0; j < plan.job_count(); ++j) {
    if (read >= plan.job_starts[j] && read < plan.job_end(j)) return j;
  }
  return SIZE_MAX;
}

// Everything a plan promises, whatever the input.
void CheckInvariants(const Index& index, const std::vector<size_t>& selected,
                     const PlanOptions& opt, const LoadPlan& plan) {
  ASSERT_EQ(plan.tensors.size(), selected.size());
  // Arena: aligned, in selection order, disjoint, inside arena_bytes.
  uint64_t arena_end = 0;
  uint64_t header_end = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    const TensorEntry& e = index.entries[selected[i]];
    EXPECT_EQ(t.entry, selected[i]);
    EXPECT_EQ(t.arena_offset % opt.alignment_bytes, 0u) << i;
    EXPECT_GE(t.arena_offset, arena_end) << "tensor " << i << " overlaps the previous one";
    EXPECT_LE(t.arena_bytes, plan.arena_bytes);
    EXPECT_LE(t.arena_offset, plan.arena_bytes - std::min(t.arena_bytes, plan.arena_bytes));
    arena_end = t.arena_offset + t.arena_bytes;
    auto meta = IsMetaTensor(e);
    ASSERT_TRUE(meta.ok());
    EXPECT_EQ(t.meta, *meta);
    if (t.meta) {
      EXPECT_EQ(t.arena_bytes, *ExpectedDataLength(e));
    } else {
      EXPECT_EQ(t.arena_bytes, e.data_length);
    }
    EXPECT_EQ(t.header_offset, header_end);
    header_end += e.header_length();
  }
  EXPECT_EQ(plan.header_bytes, header_end);

  // Reads: in file order; segments sum to the length and cover the file
  // range contiguously; each tensor's header and data are covered once.
  std::vector<uint64_t> header_seen(plan.tensors.size()), data_seen(plan.tensors.size());
  std::vector<uint32_t> touching(plan.tensors.size());
  uint64_t prev_end = 0;
  for (size_t r = 0; r < plan.reads.size(); ++r) {
    SCOPED_TRACE("read " + std::to_string(r));
    const ReadOp& op = plan.reads[r];
    ASSERT_GT(op.segment_count, 0u);
    ASSERT_LE(op.first_segment + op.segment_count, plan.segments.size());
    EXPECT_LE(op.segment_count, opt.max_segments_per_read);
    EXPECT_GE(op.file_offset, prev_end);
    prev_end = op.file_offset + op.length;
    // A read ends at the first chunk boundary after its start, except that
    // a read opening with a header (never split) may run on to the first
    // boundary at or after the header's end.
    {
      const ReadSegment& first = plan.segments[op.first_segment];
      const uint64_t from = first.header ? op.file_offset + first.length - 1 : op.file_offset;
      EXPECT_LE(op.file_offset + op.length, (from / opt.chunk_bytes + 1) * opt.chunk_bytes);
    }
    uint64_t at = op.file_offset;
    uint64_t sum = 0;
    uint32_t last = UINT32_MAX;
    for (uint32_t s = op.first_segment; s < op.first_segment + op.segment_count; ++s) {
      const ReadSegment& seg = plan.segments[s];
      ASSERT_LT(seg.tensor, plan.tensors.size());
      const PlannedTensor& t = plan.tensors[seg.tensor];
      const TensorEntry& e = index.entries[t.entry];
      EXPECT_GT(seg.length, 0u);
      if (seg.header) {
        EXPECT_EQ(at, e.header_offset);
        EXPECT_EQ(seg.length, e.header_length());
        EXPECT_EQ(seg.dst_offset, t.header_offset);
        header_seen[seg.tensor] += seg.length;
      } else {
        EXPECT_FALSE(t.meta);
        EXPECT_GE(at, e.data_offset);
        EXPECT_EQ(seg.dst_offset - t.arena_offset, at - e.data_offset);
        EXPECT_LE(at - e.data_offset + seg.length, e.data_length);
        data_seen[seg.tensor] += seg.length;
      }
      if (seg.tensor != last) touching[seg.tensor]++;
      last = seg.tensor;
      at += seg.length;
      sum += seg.length;
    }
    EXPECT_EQ(sum, op.length);
  }
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const TensorEntry& e = index.entries[plan.tensors[i].entry];
    EXPECT_EQ(header_seen[i], e.header_length()) << i;
    EXPECT_EQ(data_seen[i], plan.tensors[i].meta ? 0 : e.data_length) << i;
    EXPECT_EQ(plan.tensors[i].read_count, touching[i]) << i;
  }

  // Jobs: they partition the reads in order.
  if (plan.reads.empty()) {
    EXPECT_EQ(plan.job_count(), 0u);
    return;
  }
  ASSERT_GT(plan.job_count(), 0u);
  EXPECT_EQ(plan.job_starts[0], 0u);
  for (size_t j = 0; j < plan.job_count(); ++j) EXPECT_LT(plan.job_starts[j], plan.job_end(j));
  if (!opt.whole_tensor_jobs) {
    EXPECT_EQ(plan.job_count(), plan.reads.size());
    return;
  }
  // With verification: a job starts at a tensor's header, and all reads of
  // a tensor are in one job.
  for (size_t j = 0; j < plan.job_count(); ++j) {
    EXPECT_TRUE(plan.segments[plan.reads[plan.job_starts[j]].first_segment].header) << j;
  }
  for (uint32_t t = 0; t < plan.tensors.size(); ++t) {
    std::vector<size_t> reads = ReadsOf(plan, t);
    ASSERT_FALSE(reads.empty());
    for (size_t r : reads) EXPECT_EQ(JobOf(plan, r), JobOf(plan, reads[0])) << "tensor " << t;
  }
}

LoadPlan PlanOrDie(const Index& index, const std::vector<size_t>& selected,
                   const PlanOptions& opt) {
  auto plan = MakeLoadPlan(index, selected, opt);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  if (!plan.ok()) return {};
  CheckInvariants(index, selected, opt, *plan);
  return std::move(plan).value();
}

TEST(PlanTest, ArenaOffsetsAlignedAndDisjoint) {
  Index index = MakeIndex({{80, 1}, {80, 63}, {80, 64}, {80, 65}, {80, 0}, {80, 1000}, {80, 7}});
  for (uint64_t align : {uint64_t{1}, uint64_t{64}, uint64_t{4096}}) {
    SCOPED_TRACE(align);
    PlanOptions opt;
    opt.alignment_bytes = align;
    LoadPlan plan = PlanOrDie(index, All(index), opt);
    ASSERT_EQ(plan.tensors.size(), 7u);
    if (align == 64) {
      const uint64_t expected[] = {0, 64, 128, 192, 320, 320, 1344};
      for (size_t i = 0; i < 7; ++i) EXPECT_EQ(plan.tensors[i].arena_offset, expected[i]) << i;
      EXPECT_EQ(plan.arena_bytes, 1344u + 7u);
    }
    for (const PlannedTensor& t : plan.tensors) EXPECT_EQ(t.arena_offset % align, 0u);
  }
}

TEST(PlanTest, SmallAdjacentRecordsCoalesceIntoOneRead) {
  Index index = MakeIndex(std::vector<RecordSpec>(5, RecordSpec{80, 100}));
  for (bool verify : {false, true}) {
    SCOPED_TRACE(verify);
    PlanOptions opt;
    opt.whole_tensor_jobs = verify;
    LoadPlan plan = PlanOrDie(index, All(index), opt);
    ASSERT_EQ(plan.reads.size(), 1u);
    EXPECT_EQ(plan.job_count(), 1u);
    const ReadOp& op = plan.reads[0];
    EXPECT_EQ(op.file_offset, index.entries[0].header_offset);
    EXPECT_EQ(op.length, 5u * 180u);
    ASSERT_EQ(op.segment_count, 10u);
    for (uint32_t s = 0; s < 10; ++s) {
      const ReadSegment& seg = plan.segments[op.first_segment + s];
      EXPECT_EQ(seg.tensor, s / 2);
      EXPECT_EQ(seg.header, s % 2 == 0) << "header and data segments alternate";
      EXPECT_EQ(seg.length, s % 2 == 0 ? 80u : 100u);
    }
    for (const PlannedTensor& t : plan.tensors) EXPECT_EQ(t.read_count, 1u);
  }
}

TEST(PlanTest, ReadsEndOnChunkBoundaries) {
  // Records of 180 bytes from the prefix end (262217, not a multiple of
  // 400): reads pack them but never run past a multiple of chunk_bytes, and
  // a header that does not fit before the boundary starts the next read.
  Index index = MakeIndex(std::vector<RecordSpec>(12, RecordSpec{80, 100}));
  PlanOptions opt;
  opt.chunk_bytes = 400;
  LoadPlan plan = PlanOrDie(index, All(index), opt);
  uint64_t covered = 0;
  for (const ReadOp& op : plan.reads) {
    const ReadSegment& first = plan.segments[op.first_segment];
    // A read ends on the first boundary after its start, or, when it opens
    // with a header, at or after the header's end; a read that does not
    // open with a header continues a record across a boundary: it starts
    // exactly on it.
    const uint64_t from = first.header ? op.file_offset + first.length - 1 : op.file_offset;
    EXPECT_LE(op.file_offset + op.length, (from / 400 + 1) * 400) << op.file_offset;
    if (!first.header) EXPECT_EQ(op.file_offset % 400, 0u) << op.file_offset;
    covered += op.length;
  }
  EXPECT_EQ(covered, 12u * 180u);
}

TEST(PlanTest, BigRecordsAreReadInChunkAlignedPieces) {
  // One 10000-byte record after the 262217-byte prefix: the first read runs
  // to the next 1 KiB boundary, every later one is a whole aligned chunk but
  // the last.
  Index index = MakeIndex({{80, 10000}});
  PlanOptions opt;
  opt.chunk_bytes = 1024;
  LoadPlan plan = PlanOrDie(index, All(index), opt);
  ASSERT_GE(plan.reads.size(), 3u);
  EXPECT_EQ(plan.reads[0].file_offset, index.entries[0].header_offset);
  EXPECT_EQ((plan.reads[0].file_offset + plan.reads[0].length) % 1024, 0u);
  for (size_t r = 1; r + 1 < plan.reads.size(); ++r) {
    EXPECT_EQ(plan.reads[r].file_offset % 1024, 0u);
    EXPECT_EQ(plan.reads[r].length, 1024u);
  }
  EXPECT_EQ(plan.reads.back().file_offset + plan.reads.back().length,
            index.entries[0].record_end());
}

TEST(PlanTest, LargeRecordIsSplitIntoChunks) {
  Index index = MakeIndex({{80, 100}, {80, 10000}, {80, 100}});
  for (bool verify : {false, true}) {
    SCOPED_TRACE(verify);
    PlanOptions opt;
    opt.chunk_bytes = 1024;
    opt.whole_tensor_jobs = verify;
    LoadPlan plan = PlanOrDie(index, All(index), opt);
    for (const ReadOp& op : plan.reads) EXPECT_LE(op.length, 1024u);
    // The big tensor's reads: contiguous, covering header and data.
    std::vector<size_t> reads = ReadsOf(plan, 1);
    EXPECT_EQ(plan.tensors[1].read_count, reads.size());
    EXPECT_GE(reads.size(), (80u + 10000u + 1023u) / 1024u);
    uint64_t at = index.entries[1].header_offset;
    uint64_t covered = 0;
    for (size_t r : reads) {
      const ReadOp& op = plan.reads[r];
      for (uint32_t s = op.first_segment; s < op.first_segment + op.segment_count; ++s) {
        const ReadSegment& seg = plan.segments[s];
        if (seg.tensor != 1) continue;
        if (!seg.header) EXPECT_EQ(seg.dst_offset - plan.tensors[1].arena_offset, covered);
        if (!seg.header) covered += seg.length;
        at += seg.length;
      }
    }
    EXPECT_EQ(at, index.entries[1].record_end());
    EXPECT_EQ(covered, 10000u);
    std::vector<size_t> next = ReadsOf(plan, 2);
    ASSERT_EQ(next.size(), 1u);
    if (verify) {
      // The split record's tail ends its read, so the next tensor starts a
      // read and can start a job.
      EXPECT_TRUE(plan.segments[plan.reads[next[0]].first_segment].header);
      EXPECT_GT(next[0], reads.back());
    } else {
      // Without jobs to keep apart, the next record shares the tail's read.
      EXPECT_EQ(next[0], reads.back());
    }
  }
}

TEST(PlanTest, HeaderLongerThanAChunkIsReadWhole) {
  Index index = MakeIndex({{300, 1000}, {300, 10}});
  PlanOptions opt;
  opt.chunk_bytes = 128;
  LoadPlan plan = PlanOrDie(index, All(index), opt);
  for (const ReadOp& op : plan.reads) {
    const ReadSegment& first = plan.segments[op.first_segment];
    if (first.header) {
      // The whole header, then data up to the first boundary at or after
      // the header's end.
      EXPECT_EQ(first.length, 300u);
      EXPECT_LE(op.file_offset + op.length, (op.file_offset + 299) / 128 * 128 + 128);
    } else {
      EXPECT_LE(op.length, 128u);
      EXPECT_EQ(op.file_offset % 128, 0u);
    }
  }
}

TEST(PlanTest, GapsBreakReads) {
  {
    SCOPED_TRACE("an unselected tensor between two selected ones");
    Index index = MakeIndex(std::vector<RecordSpec>(3, RecordSpec{80, 100}));
    LoadPlan plan = PlanOrDie(index, {0, 2}, PlanOptions{});
    ASSERT_EQ(plan.reads.size(), 2u);
    EXPECT_EQ(plan.reads[0].file_offset, index.entries[0].header_offset);
    EXPECT_EQ(plan.reads[0].length, 180u);
    EXPECT_EQ(plan.reads[1].file_offset, index.entries[2].header_offset);
    EXPECT_EQ(plan.tensors[1].entry, 2u);
    EXPECT_EQ(plan.arena_bytes, 128u + 100u);
  }
  {
    SCOPED_TRACE("bytes between records in the file");
    Index index = MakeIndex({{80, 100}, {80, 100, 16}, {80, 100}});
    LoadPlan plan = PlanOrDie(index, All(index), PlanOptions{});
    ASSERT_EQ(plan.reads.size(), 2u);
    EXPECT_EQ(plan.reads[0].length, 180u);
    EXPECT_EQ(plan.reads[1].length, 360u);
  }
}

TEST(PlanTest, WithVerificationJobsFollowTensors) {
  std::vector<RecordSpec> specs;
  for (int i = 0; i < 12; ++i) specs.push_back({80, static_cast<uint64_t>(37 + 311 * i)});
  Index index = MakeIndex(specs);
  PlanOptions opt;
  opt.chunk_bytes = 512;
  opt.whole_tensor_jobs = true;
  LoadPlan plan = PlanOrDie(index, All(index), opt);
  EXPECT_GT(plan.reads.size(), plan.job_count());
  EXPECT_GT(plan.job_count(), 1u);
  opt.whole_tensor_jobs = false;
  LoadPlan unverified = PlanOrDie(index, All(index), opt);
  EXPECT_EQ(unverified.job_count(), unverified.reads.size());
  // Verification may cut reads at more places (after a split record), but
  // reads the same bytes.
  auto bytes_read = [](const LoadPlan& p) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const ReadOp& op : p.reads) {
      if (!ranges.empty() && ranges.back().second == op.file_offset) {
        ranges.back().second += op.length;
      } else {
        ranges.push_back({op.file_offset, op.file_offset + op.length});
      }
    }
    return ranges;
  };
  EXPECT_EQ(bytes_read(unverified), bytes_read(plan));
  EXPECT_GE(plan.reads.size(), unverified.reads.size());
}

TEST(PlanTest, ReadCountIsTheNumberOfReadsTouchingATensor) {
  Index index = MakeIndex({{80, 10}, {80, 2000}, {80, 10}, {80, 10}, {80, 5000}});
  PlanOptions opt;
  opt.chunk_bytes = 700;
  LoadPlan plan = PlanOrDie(index, All(index), opt);
  for (uint32_t t = 0; t < plan.tensors.size(); ++t) {
    EXPECT_EQ(plan.tensors[t].read_count, ReadsOf(plan, t).size()) << t;
  }
  EXPECT_GT(plan.tensors[1].read_count, 1u);
  EXPECT_GT(plan.tensors[4].read_count, 1u);
}

TEST(PlanTest, MetaTensorsGetArenaSpaceButNoDataSegment) {
  Index index = MakeIndex({{80, 100}, {80, 4096, 0, true}, {80, 100}});
  // A float meta tensor: 6 elements of 4 bytes.
  index.entries[1].dtype = "<f4";
  index.entries[1].shape = {2, 3};
  for (bool verify : {false, true}) {
    SCOPED_TRACE(verify);
    PlanOptions opt;
    opt.whole_tensor_jobs = verify;
    LoadPlan plan = PlanOrDie(index, All(index), opt);
    const PlannedTensor& m = plan.tensors[1];
    EXPECT_TRUE(m.meta);
    EXPECT_EQ(m.arena_bytes, 24u);
    EXPECT_FALSE(plan.tensors[0].meta);
    for (const ReadSegment& seg : plan.segments) {
      if (seg.tensor == 1) EXPECT_TRUE(seg.header);
    }
    EXPECT_EQ(m.read_count, 1u);
    // Meta records are adjacent to their neighbours, so one read still.
    EXPECT_EQ(plan.reads.size(), 1u);
  }
}

TEST(PlanTest, ZeroSizeTensorIsNotMeta) {
  Index index = MakeIndex({{80, 0}, {80, 8}});
  index.entries[0].shape = {0, 4};
  LoadPlan plan = PlanOrDie(index, All(index), PlanOptions{});
  EXPECT_FALSE(plan.tensors[0].meta);
  EXPECT_EQ(plan.tensors[0].arena_bytes, 0u);
}

TEST(PlanTest, SelectionMustBeIncreasing) {
  Index index = MakeIndex(std::vector<RecordSpec>(4, RecordSpec{}));
  const std::vector<std::vector<size_t>> bad = {{1, 0}, {0, 0}, {0, 2, 1}, {4}, {0, 99}};
  for (const auto& sel : bad) {
    auto plan = MakeLoadPlan(index, sel, PlanOptions{});
    ASSERT_FALSE(plan.ok());
    EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  }
  LoadPlan empty = PlanOrDie(index, {}, PlanOptions{});
  EXPECT_TRUE(empty.reads.empty());
  EXPECT_EQ(empty.arena_bytes, 0u);
  PlanOrDie(index, {3}, PlanOptions{});
  PlanOrDie(index, {0, 3}, PlanOptions{});
}

TEST(PlanTest, InvalidOptions) {
  Index index = MakeIndex({RecordSpec{}});
  PlanOptions opt;
  opt.chunk_bytes = 0;
  EXPECT_EQ(MakeLoadPlan(index, {0}, opt).status().code(), StatusCode::kInvalidArgument);
  opt = PlanOptions{};
  opt.alignment_bytes = 0;
  EXPECT_EQ(MakeLoadPlan(index, {0}, opt).status().code(), StatusCode::kInvalidArgument);
  opt.alignment_bytes = 48;
  EXPECT_EQ(MakeLoadPlan(index, {0}, opt).status().code(), StatusCode::kInvalidArgument);
  opt = PlanOptions{};
  opt.max_segments_per_read = 1;
  EXPECT_EQ(MakeLoadPlan(index, {0}, opt).status().code(), StatusCode::kInvalidArgument);
}

TEST(PlanTest, SegmentsPerReadAreCapped) {
  Index index = MakeIndex(std::vector<RecordSpec>(300, RecordSpec{30, 2}));
  for (uint32_t cap : {2u, 3u, 256u}) {
    SCOPED_TRACE(cap);
    PlanOptions opt;
    opt.max_segments_per_read = cap;
    opt.whole_tensor_jobs = true;
    LoadPlan plan = PlanOrDie(index, All(index), opt);
    EXPECT_GE(plan.reads.size(), 600u / cap);
  }
}

TEST(PlanTest, ArenaSizeOverflowIsAnError) {
  // Two meta tensors of "|u1" whose sizes add up past 2^64 once aligned:
  // 3*5*17*257*641*65537*6700417 = 2^64 - 1 bytes, then one more tensor.
  const std::vector<uint64_t> huge = {3, 5, 17, 257, 641, 65537, 6700417};
  Index index = MakeIndex({{80, 0, 0, true}, {80, 100}});
  index.entries[0].shape = huge;
  ASSERT_EQ(*ExpectedDataLength(index.entries[0]), std::numeric_limits<uint64_t>::max());
  auto plan = MakeLoadPlan(index, All(index), PlanOptions{});
  if (plan.ok()) {
    // If it plans at all, the layout must still hold.
    CheckInvariants(index, All(index), PlanOptions{}, *plan);
    ADD_FAILURE() << "planned an arena of " << plan->arena_bytes << " bytes for a tensor of 2^64-1";
  } else {
    EXPECT_EQ(plan.status().code(), StatusCode::kResourceExhausted);
  }
  // The same with the huge one last: the sum itself overflows.
  Index index2 = MakeIndex({{80, 100}, {80, 0, 0, true}});
  index2.entries[1].shape = huge;
  auto plan2 = MakeLoadPlan(index2, All(index2), PlanOptions{});
  ASSERT_FALSE(plan2.ok());
  EXPECT_EQ(plan2.status().code(), StatusCode::kResourceExhausted);
}

TEST(PlanTest, RandomIndexesKeepEveryInvariant) {
  std::mt19937_64 rng(20240601);
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  for (int round = 0; round < 300; ++round) {
    SCOPED_TRACE(round);
    std::vector<RecordSpec> specs(1 + pick(40));
    for (RecordSpec& s : specs) {
      s.header_bytes = 27 + pick(200);
      s.data_bytes = pick(4) == 0 ? pick(5000) : pick(200);
      s.gap_before = pick(5) == 0 ? pick(64) : 0;
      s.meta = pick(8) == 0 && s.data_bytes > 0;
    }
    Index index = MakeIndex(specs);
    std::vector<size_t> selected;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (pick(4) != 0) selected.push_back(i);
    }
    PlanOptions opt;
    opt.chunk_bytes = 1 + pick(3000);
    opt.alignment_bytes = uint64_t{1} << pick(13);
    opt.whole_tensor_jobs = pick(2) == 0;
    opt.max_segments_per_read = static_cast<uint32_t>(2 + pick(20));
    PlanOrDie(index, selected, opt);
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace tensorizer
