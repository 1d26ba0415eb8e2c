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
    }
    last_tensor_ = t;
    plan_->segments.push_back(ReadSegment{t, header, dst, length});
    cur_.length += length;
    cur_.segment_count++;
    if (touched_.empty() || touched_.back() != t) touched_.push_back(t);
  }

  uint64_t open_length() const { return open_ ? cur_.length : 0; }

  void Flush() {
    if (!open_) return;
    for (uint32_t t : touched_) plan_->tensors[t].read_count++;
    touched_.clear();
    // With verification a new job may only begin where a tensor begins.
    if (!opt_.verify_hash || cur_starts_tensor_) {
      plan_->job_starts.push_back(static_cast<uint32_t>(plan_->reads.size()));
    }
    plan_->reads.push_back(cur_);
    open_ = false;
  }

 private:
  LoadPlan* plan_;
  const PlanOptions& opt_;
  ReadOp cur_;
  bool open_ = false;
  bool cur_starts_tensor_ = false;  // the open read begins with a tensor's first segment
  uint32_t last_tensor_ = UINT32_MAX;
  std::vector<uint32_t> touched_;
};

}  // namespace

Result<LoadPlan> MakeLoadPlan(const Index& index, const std::vector<size_t>& selected,
                              const PlanOptions& options) {
  if (options.chunk_bytes == 0 || options.alignment_bytes == 0 ||
      (options.alignment_bytes & (options.alignment_bytes - 1)) != 0 ||
      options.max_segments_per_read < 2) {
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
    if (!AlignUp(plan.arena_bytes, options.alignment_bytes, &plan.arena_bytes) ||
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
    const uint64_t record = e.header_length() + e.data_length;
    // Small records pack into one read; start afresh when this one would
    // overflow the open read.
    if (b.open_length() > 0 && b.open_length() + record > options.chunk_bytes) b.Flush();
    // Safetensors records have no header of their own.
    if (e.header_length() > 0) {
      b.Add(ti, true, e.header_offset, t.header_offset, e.header_length());
    }
    uint64_t done = 0;
    bool split = false;
    while (done < e.data_length) {
      uint64_t room =
          options.chunk_bytes > b.open_length() ? options.chunk_bytes - b.open_length() : 0;
      if (room == 0) {
        b.Flush();
        split = true;
        continue;
      }
      uint64_t n = std::min(room, e.data_length - done);
      b.Add(ti, false, e.data_offset + done, t.arena_offset + done, n);
      done += n;
    }
    // The tail of a split record ends its read, so the next read starts at a
    // tensor boundary and can begin a new job.
    if (split) b.Flush();
  }
  b.Flush();
  return plan;
}

}  // namespace tensorizer
