#include "storage/direct_read.h"

namespace tensorizer::internal {

namespace {

struct Staged {  // a part of the request that goes through staging
  uint64_t file_offset;
  uint64_t length;
  uint8_t* dst;
};

}  // namespace

DirectReadPlan PlanDirectRead(uint64_t offset, const struct iovec* iov, int iovcnt, uint64_t block,
                              uint64_t min_direct_bytes) {
  DirectReadPlan plan;
  std::vector<DirectReadPlan::Piece> direct;  // file order; staging_offset holds the file offset
  std::vector<Staged> staged;
  uint64_t f = offset;
  for (int i = 0; i < iovcnt; ++i) {
    auto* p = static_cast<uint8_t*>(iov[i].iov_base);
    const uint64_t n = iov[i].iov_len;
    if (n == 0) continue;
    const uint64_t f1 = AlignUp(f, block);
    const uint64_t f2 = AlignDown(f + n, block);
    uint8_t* body = p + (f1 - f);
    if (f2 > f1 && f2 - f1 >= min_direct_bytes &&
        reinterpret_cast<uintptr_t>(body) % block == 0) {
      if (f1 > f) staged.push_back({f, f1 - f, p});
      direct.push_back({f2 - f1, false, f1, body});
      if (f + n > f2) staged.push_back({f2, f + n - f2, p + (f2 - f)});
    } else {
      staged.push_back({f, n, p});
    }
    f += n;
  }
  plan.file_offset = AlignDown(offset, block);
  const uint64_t hi = AlignUp(f, block);
  plan.length = hi - plan.file_offset;

  // The window is the direct pieces and the staged gaps between them.
  // gap_file[k] is where staged piece k begins in the file.
  std::vector<uint64_t> gap_file;
  std::vector<size_t> gap_piece;
  uint64_t cursor = plan.file_offset;
  auto add_gap = [&](uint64_t end) {
    if (end <= cursor) return;
    gap_file.push_back(cursor);
    gap_piece.push_back(plan.pieces.size());
    plan.pieces.push_back({end - cursor, true, plan.staging_bytes, nullptr});
    plan.staging_bytes += end - cursor;
  };
  for (const DirectReadPlan::Piece& d : direct) {
    add_gap(d.staging_offset);
    plan.pieces.push_back({d.length, false, 0, d.dst});
    plan.direct_bytes += d.length;
    cursor = d.staging_offset + d.length;
  }
  add_gap(hi);

  // Each staged part lies inside one gap; both lists are in file order.
  size_t g = 0;
  for (const Staged& s : staged) {
    while (g + 1 < gap_file.size() && gap_file[g + 1] <= s.file_offset) ++g;
    const uint64_t at = plan.pieces[gap_piece[g]].staging_offset + (s.file_offset - gap_file[g]);
    DirectReadPlan::Copy* last = plan.copies.empty() ? nullptr : &plan.copies.back();
    if (last && last->staging_offset + last->length == at && last->dst + last->length == s.dst) {
      last->length += s.length;
    } else {
      plan.copies.push_back({at, s.dst, s.length});
    }
  }
  return plan;
}

}  // namespace tensorizer::internal
