// LoadPlan: which bytes a load reads, where each lands, and in what units of
// work. A pure function of (index, selection, options); no I/O, so it is
// unit-tested and fuzzed on its own.
//
// Layout: each selected tensor's data gets a slot in one destination arena,
// aligned to `alignment_bytes` (tensor data in .tensors files is unaligned,
// so the file cannot simply be mapped), or, for direct reads, placed where
// the file's blocks land on aligned memory (see direct_block_bytes).
// Tensor headers go to a separate header buffer. Reads: the file ranges of the selected records, coalesced
// while adjacent in the file, each read at most `chunk_bytes` long (a record
// larger than that is split) and scattered by one preadv into header buffer
// and arena.
//
// Jobs: a job is a run of consecutive reads that one worker performs in
// order. Normally every read is its own job. With whole_tensor_jobs (hash
// checks, decryption), all reads of one tensor stay in one job, so the worker
// can hash each piece right after reading it, while it is still in cache, in
// the order the hash needs.
#pragma once

#include <cstdint>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/status.h"

namespace tensorizer {

struct PlanOptions {
  uint64_t chunk_bytes = 16ull << 20;
  uint64_t alignment_bytes = 64;
  // When the source may read with O_DIRECT: its block (a power of two, a
  // multiple of alignment_bytes). A tensor of at least
  // kDirectPlacementMinBytes whose file offset is a multiple of its element
  // size is then placed at an arena offset congruent to its file offset
  // modulo the block, so its aligned middle can be read straight into the
  // arena; such a slot is aligned to the tensor's element size rather than
  // to alignment_bytes. Other tensors keep alignment_bytes. 0: off.
  uint64_t direct_block_bytes = 0;
  // Every read of one tensor in one job, in file order: hash checks and
  // decryption consume a tensor's bytes in order as they arrive.
  bool whole_tensor_jobs = false;
  uint32_t max_segments_per_read = 256;
};

struct PlannedTensor {
  size_t entry = 0;            // index into Index::entries
  uint64_t arena_offset = 0;   // where its data goes
  uint64_t arena_bytes = 0;    // data bytes it occupies (meta: zero-filled size)
  uint64_t header_offset = 0;  // where its header goes in the header buffer
  uint32_t read_count = 0;     // reads that touch this tensor
  bool meta = false;           // stored without data; reads as zeros
};

struct ReadSegment {
  uint32_t tensor = 0;  // index into LoadPlan::tensors
  bool header = false;  // header bytes (to the header buffer) or data (to the arena)
  uint64_t dst_offset = 0;
  uint64_t length = 0;
};

struct ReadOp {
  uint64_t file_offset = 0;
  uint64_t length = 0;
  uint32_t first_segment = 0;
  uint32_t segment_count = 0;
};

struct LoadPlan {
  std::vector<PlannedTensor> tensors;  // in the order of `selected`
  std::vector<ReadSegment> segments;
  std::vector<ReadOp> reads;         // in file order
  std::vector<uint32_t> job_starts;  // job j = reads[job_starts[j], job_starts[j+1])
  uint64_t arena_bytes = 0;
  uint64_t header_bytes = 0;

  size_t job_count() const { return job_starts.size(); }
  uint32_t job_end(size_t j) const {
    return j + 1 < job_starts.size() ? job_starts[j + 1] : static_cast<uint32_t>(reads.size());
  }
};

constexpr uint64_t kDirectPlacementMinBytes = 64 << 10;

// `selected` lists entry indices in strictly increasing (file) order.
Result<LoadPlan> MakeLoadPlan(const Index& index, const std::vector<size_t>& selected,
                              const PlanOptions& options);

}  // namespace tensorizer
