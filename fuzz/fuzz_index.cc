// Fuzz target: a whole .tensors file from hostile bytes.
//
// Steps: ReadIndex over an in-memory source; for an index that parses, check
// the invariants ParseIndex promises, plan a load of every tensor (with and
// without hash verification) and check the plan's invariants, then run the
// load with small chunks and verify_hash on, so every tensor header is parsed
// and hashed. A load that reports success must have put each tensor's exact
// file bytes in its arena slot. Any violated invariant aborts, so the fuzzer
// records it as a crash, like a sanitizer report.
//
// Seeds: fuzz/corpus/ (regenerate with fuzz/make_corpus.py). Inputs that
// once crashed it: fuzz/regressions/ (run them: fuzz_index fuzz/regressions/*).
// Build: CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DTENSORIZER_BUILD_FUZZERS=ON
//        -DTENSORIZER_BUILD_TESTS=OFF
//        -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all"
// (the flags instrument the library too: without them the fuzzer sees no
// coverage inside it and ASan does not check its memory accesses).
// Run:   build/fuzz/fuzz_index -max_len=300000 -rss_limit_mb=2048 fuzz/corpus-work fuzz/corpus
// (new inputs go to the first directory; fuzz/corpus-work is git-ignored).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/load.h"
#include "tensorizer/plan.h"
#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace {

using namespace tensorizer;

[[noreturn]] void Violated(const char* what) {
  std::fprintf(stderr, "fuzz_index: invariant violated: %s\n", what);
  std::abort();
}
#define CHECK(cond)               \
  do {                            \
    if (!(cond)) Violated(#cond); \
  } while (0)

// What ParseIndex promises about an index it accepts.
void CheckIndex(const Index& index, uint64_t file_size) {
  if (index.format == FileFormat::kSafetensors) {
    // Records without headers that tile the data section exactly.
    CHECK(index.header.version == 0);
    CHECK(index.entries.size() == index.header.tensor_count);
    uint64_t at = index.prefix_length();
    for (const TensorEntry& e : index.entries) {
      CHECK(e.header_offset == e.data_offset && e.data_offset == at);
      auto expected = ExpectedDataLength(e);
      CHECK(expected.ok() && *expected == e.data_length);
      at = e.record_end();
    }
    CHECK(at == file_size);
    CHECK(CheckLoadableIndex(index).ok());
    return;
  }
  CHECK(index.header.version >= kMinDataVersion && index.header.version <= kMaxDataVersion);
  CHECK(index.entries.size() == index.header.tensor_count);
  CHECK(!index.entries.empty());
  CHECK(index.prefix_length() <= file_size);
  uint64_t prev_end = index.prefix_length();
  for (const TensorEntry& e : index.entries) {
    CHECK(e.header_offset >= prev_end);
    CHECK(e.data_offset > e.header_offset);
    CHECK(e.data_offset <= file_size);
    CHECK(e.data_length <= file_size - e.data_offset);
    auto expected = ExpectedDataLength(e);
    CHECK(expected.ok());
    CHECK(e.data_length == 0 || e.data_length == *expected);
    // The loader's rules hold for every entry it accepts.
    CHECK(DecodeTensorName(e.name).ok());
    CHECK(CheckLoadableDtype(e.dtype).ok());
    prev_end = e.record_end();
  }
}

// What MakeLoadPlan promises: arena slots aligned, in bounds and disjoint;
// reads in file order, each covered exactly by its segments, the segments of
// each tensor covering its header and data once; jobs that respect tensors.
void CheckPlan(const Index& index, const std::vector<size_t>& selected, const PlanOptions& opt,
               const LoadPlan& plan) {
  CHECK(plan.tensors.size() == selected.size());
  uint64_t prev_end = 0;
  for (const PlannedTensor& t : plan.tensors) {
    CHECK(t.arena_offset % opt.alignment_bytes == 0);
    CHECK(t.arena_offset >= prev_end);
    CHECK(t.arena_bytes <= plan.arena_bytes && t.arena_offset <= plan.arena_bytes - t.arena_bytes);
    prev_end = t.arena_offset + t.arena_bytes;
  }
  std::vector<uint64_t> header_seen(plan.tensors.size()), data_seen(plan.tensors.size());
  std::vector<uint32_t> reads_touching(plan.tensors.size());
  uint64_t prev_read_end = 0;
  for (size_t r = 0; r < plan.reads.size(); ++r) {
    const ReadOp& op = plan.reads[r];
    CHECK(op.segment_count > 0 && op.segment_count <= opt.max_segments_per_read);
    CHECK(op.first_segment + static_cast<uint64_t>(op.segment_count) <= plan.segments.size());
    CHECK(op.file_offset >= prev_read_end);
    prev_read_end = op.file_offset + op.length;
    uint64_t at = op.file_offset;
    uint64_t sum = 0;
    uint32_t last = UINT32_MAX;
    for (uint32_t s = op.first_segment; s < op.first_segment + op.segment_count; ++s) {
      const ReadSegment& seg = plan.segments[s];
      CHECK(seg.tensor < plan.tensors.size());
      const PlannedTensor& t = plan.tensors[seg.tensor];
      const TensorEntry& e = index.entries[t.entry];
      if (seg.header) {
        CHECK(at == e.header_offset && seg.length == e.header_length());
        CHECK(seg.dst_offset == t.header_offset);
        CHECK(t.header_offset + seg.length <= plan.header_bytes);
        header_seen[seg.tensor] += seg.length;
      } else {
        CHECK(!t.meta);
        CHECK(at >= e.data_offset && at - e.data_offset == seg.dst_offset - t.arena_offset);
        CHECK(seg.dst_offset >= t.arena_offset);
        CHECK(seg.dst_offset - t.arena_offset + seg.length <= t.arena_bytes);
        data_seen[seg.tensor] += seg.length;
      }
      if (seg.tensor != last) reads_touching[seg.tensor]++;
      last = seg.tensor;
      at += seg.length;
      sum += seg.length;
    }
    CHECK(sum == op.length);
  }
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const TensorEntry& e = index.entries[plan.tensors[i].entry];
    CHECK(header_seen[i] == e.header_length());
    CHECK(data_seen[i] == (plan.tensors[i].meta ? 0 : e.data_length));
    CHECK(reads_touching[i] == plan.tensors[i].read_count);
  }
  CHECK(plan.reads.empty() || (!plan.job_starts.empty() && plan.job_starts[0] == 0));
  for (size_t j = 0; j < plan.job_count(); ++j) {
    CHECK(plan.job_starts[j] < plan.job_end(j));
    if (opt.whole_tensor_jobs) {
      // A job starts with a tensor's first bytes: its header, or for
      // headerless (safetensors) records the start of its data.
      const ReadOp& op = plan.reads[plan.job_starts[j]];
      const ReadSegment& first = plan.segments[op.first_segment];
      CHECK(first.header || (index.entries[plan.tensors[first.tensor].entry].header_length() == 0 &&
                             first.dst_offset == plan.tensors[first.tensor].arena_offset));
    }
  }
  if (!opt.whole_tensor_jobs) CHECK(plan.job_count() == plan.reads.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<const Source> source =
      MakeMemorySource(std::string(reinterpret_cast<const char*>(data), size), "fuzz-input");
  auto parsed = ReadIndex(*source);
  if (!parsed.ok()) return 0;
  auto index = std::make_shared<const Index>(std::move(parsed).value());
  CheckIndex(*index, size);

  std::vector<size_t> all(index->entries.size());
  std::iota(all.begin(), all.end(), size_t{0});
  // Chunk size from the input, so both whole and split records get planned.
  const uint64_t chunk_bytes = 16 + data[size - 1] % 256;
  for (bool verify : {false, true}) {
    PlanOptions po;
    po.chunk_bytes = chunk_bytes;
    po.whole_tensor_jobs = verify;
    auto plan = MakeLoadPlan(*index, all, po);
    if (plan.ok()) CheckPlan(*index, all, po, *plan);
  }

  LoadOptions lo;
  lo.num_threads = 2;
  lo.verify = HashCheck::kAll;
  lo.chunk_bytes = chunk_bytes;
  auto load = Load::Start(source, index, all, lo);
  if (!load.ok()) return 0;
  Status st = (*load)->Wait();
  if (!st.ok()) {
    CHECK(st.code() != StatusCode::kOk);
    return 0;
  }
  const Arena& arena = *(*load)->arena();
  for (size_t i = 0; i < (*load)->tensor_count(); ++i) {
    CHECK((*load)->WaitTensor(i).ok());
    const TensorEntry& e = (*load)->entry(i);
    uint64_t off = (*load)->arena_offset(i);
    uint64_t n = (*load)->arena_bytes(i);
    CHECK(n <= arena.size() && off <= arena.size() - n);
    if (n == 0) continue;
    // A consumer maps [off, off + n): its first and last bytes must be there.
    volatile uint8_t first = arena.data()[off];
    volatile uint8_t last = arena.data()[off + n - 1];
    (void)first;
    (void)last;
    if (e.data_length > 0) {
      CHECK(n == e.data_length);
      CHECK(std::memcmp(arena.data() + off, data + e.data_offset, n) == 0);
    } else {
      CHECK(first == 0 && last == 0);  // meta tensors read as zeros
    }
    if (index->format == FileFormat::kTensorizer) {
      const TensorHeader& h = (*load)->header(i);
      CHECK(h.name == e.name && h.dtype == e.dtype && h.shape == e.shape);
    }
  }
  return 0;
}
