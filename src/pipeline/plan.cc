#include "tensorizer/plan.h"

#include <algorithm>

namespace tensorizer {

namespace {

// Rounds v up to a multiple of a (a power of two); false on overflow.
bool AlignUp(uint64_t v, uint64_t a, uint64_t* out) {
  uint64_t sum;
  if (__builtin_add_overflow(v, a - 1, &sum)) return false;
  *out = sum & ~(a - 1);
  return true;
}

// Moves `end` (the arena's end) to where tensor t's slot starts; false on
// overflow. For direct reads a large tensor whose file offset is a multiple
// of its element size goes where arena offset == file offset (mod block): a
// block-aligned file byte then lands on a block-aligned address, and the
// slot stays aligned to the element size.
bool PlaceSlot(const TensorEntry& e, const PlannedTensor& t, const PlanOptions& o, uint64_t* end) {
  const uint64_t block = o.direct_block_bytes;
  if (block != 0 && !t.meta && e.data_length >= kDirectPlacementMinBytes) {
    auto dtype = ParseDtype(e.dtype);
    if (dtype.ok() && dtype->itemsize > 0 && e.data_offset % dtype->itemsize == 0) {
      const uint64_t want = e.data_offset % block;
      uint64_t base;
      if (!AlignUp(*end, block, &base)) return false;
      // base + want is the first offset past base congruent to the file's;
      // the one before it may still be at or after end.
      if (base >= block && base - block + want >= *end) base -= block;
      return !__builtin_add_overflow(base, want, end);
    }
  }
  return AlignUp(*end, o.alignment_bytes, end);
}

// The first multiple of chunk_bytes after `offset` (UINT64_MAX past the
// last one).
uint64_t NextBoundary(uint64_t offset, const PlanOptions& o) {
  const uint64_t next = (offset / o.chunk_bytes + 1) * o.chunk_bytes;
  return next <= offset ? UINT64_MAX : next;
}

class PlanBuilder {
 public:
  PlanBuilder(LoadPlan* plan, const PlanOptions& o) : plan_(plan), opt_(o) {}

  // Adds [file_offset, +length) for tensor t, joining the open read when the
  // bytes follow it directly.
  void Add(uint32_t t, bool header, uint64_t file_offset, uint64_t dst, uint64_t length) {
    if (!open_ || cur_.file_offset + cur_.length != file_offset ||
        cur_.segment_count >= opt_.max_segments_per_read) {
      Flush();
      open_ = true;
      cur_ = ReadOp{file_offset, 0, static_cast<uint32_t>(plan_->segments.size()), 0};
      cur_starts_tensor_ = t != last_tensor_;
      // A header is never split, so a read that opens with one ends at the
      // first boundary at or after the header's end (it may run up to a
      // header's length past chunk_bytes); any other read ends at the first
      // boundary after its start.
      limit_ =
          header ? NextBoundary(file_offset + length - 1, opt_) : NextBoundary(file_offset, opt_);
    }
    last_tensor_ = t;
    plan_->segments.push_back(ReadSegment{t, header, dst, length});
    cur_.length += length;
    cur_.segment_count++;
    if (touched_.empty() || touched_.back() != t) touched_.push_back(t);
  }

  uint64_t open_length() const { return open_ ? cur_.length : 0; }
  uint64_t open_end() const { return cur_.file_offset + cur_.length; }
  // Where the open read must stop: a chunk boundary (a multiple of
  // chunk_bytes), see Add. Object stores keep large objects as
  // fixed-size chunks (4 or 8 MiB, or multipart parts), and a range that
  // straddles one more of them than it must costs a whole extra chunk fetch
  // on the server: 16 MiB reads on 16 MiB boundaries ran 1.2x faster than
  // the same reads shifted by the file header on SeaweedFS
  // (bench/bench_s3.py). Local files do not care either way.
  uint64_t open_limit() const { return limit_; }

  void Flush() {
    if (!open_) return;
    for (uint32_t t : touched_) plan_->tensors[t].read_count++;
    touched_.clear();
    // With verification a new job may only begin where a tensor begins.
    if (!opt_.whole_tensor_jobs || cur_starts_tensor_) {
      plan_->job_starts.push_back(static_cast<uint32_t>(plan_->reads.size()));
    }
    plan_->reads.push_back(cur_);
    open_ = false;
  }

 private:
  LoadPlan* plan_;
  const PlanOptions& opt_;
  ReadOp cur_;
  uint64_t limit_ = 0;  // where the open read ends at the latest
  bool open_ = false;
  bool cur_starts_tensor_ = false;  // the open read begins with a tensor's first segment
  uint32_t last_tensor_ = UINT32_MAX;
  std::vector<uint32_t> touched_;
};

}  // namespace

Result<LoadPlan> MakeLoadPlan(const Index& index, const std::vector<size_t>& selected,
                              const PlanOptions& options) {
  const uint64_t block = options.direct_block_bytes;
  if (options.chunk_bytes == 0 || options.alignment_bytes == 0 ||
      (options.alignment_bytes & (options.alignment_bytes - 1)) != 0 ||
      options.max_segments_per_read < 2 || (block & (block - 1)) != 0 ||
      (block != 0 && block % options.alignment_bytes != 0)) {
    return Status::InvalidArgument("invalid plan options");
  }
  LoadPlan plan;
  plan.tensors.reserve(selected.size());
  for (size_t i = 0; i < selected.size(); ++i) {
    size_t e = selected[i];
    if (e >= index.entries.size() || (i > 0 && e <= selected[i - 1])) {
      return Status::InvalidArgument("selection must be increasing entry indices");
    }
    const TensorEntry& entry = index.entries[e];
    PlannedTensor t;
    t.entry = e;
    auto meta = IsMetaTensor(entry);
    if (!meta.ok()) return meta.status();
    t.meta = *meta;
    if (t.meta) {
      auto expected = ExpectedDataLength(entry);
      t.arena_bytes = *expected;
    } else {
      t.arena_bytes = entry.data_length;
    }
    if (!PlaceSlot(entry, t, options, &plan.arena_bytes) ||
        (t.arena_offset = plan.arena_bytes,
         __builtin_add_overflow(plan.arena_bytes, t.arena_bytes, &plan.arena_bytes))) {
      return Status::ResourceExhausted("selected tensors exceed the address space");
    }
    t.header_offset = plan.header_bytes;
    plan.header_bytes += entry.header_length();
    plan.tensors.push_back(t);
  }

  PlanBuilder b(&plan, options);
  for (uint32_t ti = 0; ti < plan.tensors.size(); ++ti) {
    const PlannedTensor& t = plan.tensors[ti];
    const TensorEntry& e = index.entries[t.entry];
    // Records pack into reads that end on chunk boundaries. A header that
    // does not fit before the open read's boundary starts a new read.
    // Safetensors records have no header of their own.
    if (e.header_length() > 0) {
      if (b.open_length() > 0 &&
          (b.open_end() != e.header_offset || b.open_end() >= b.open_limit() ||
           e.header_length() > b.open_limit() - b.open_end())) {
        b.Flush();
      }
      b.Add(ti, true, e.header_offset, t.header_offset, e.header_length());
    }
    uint64_t done = 0;
    bool split = false;
    while (done < e.data_length) {
      const uint64_t at = e.data_offset + done;
      if (b.open_length() > 0 && (b.open_end() != at || at >= b.open_limit())) {
        b.Flush();
        split = split || done > 0 || e.header_length() > 0;
      }
      // (A read this piece opens ends at the first boundary after `at`.)
      const uint64_t limit = b.open_length() > 0 ? b.open_limit() : NextBoundary(at, options);
      const uint64_t n = std::min(limit - at, e.data_length - done);
      b.Add(ti, false, at, t.arena_offset + done, n);
      done += n;
    }
    // With verification, the tail of a split record ends its read, so the
    // next read starts at a tensor boundary and can begin a new job (a job
    // runs until a read that starts a tensor).
    if (split && options.whole_tensor_jobs) b.Flush();
  }
  b.Flush();
  return plan;
}

}  // namespace tensorizer
