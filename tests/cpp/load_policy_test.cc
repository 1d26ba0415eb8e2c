// ResolveLoadOptions and AvailableCoresFrom: the load policy every caller
// (Python, the CLI, C++) gets, as tables of inputs and answers.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tensorizer/load.h"
#include "tensorizer/machine.h"
#include "tensorizer/source.h"

namespace tensorizer {
namespace {

TEST(ResolveLoadOptions, Threads) {
  struct Case {
    int requested, cores, hint, want;
  };
  const Case cases[] = {
      {0, 2, 0, 2},                     // local buffered: one per core
      {0, 2, kMinRequestsInFlight, 4},  // remote or direct: at least 4
      {0, 16, kMinRequestsInFlight, 16},
      {0, 0, 0, 1},  // never none
      {3, 16, kMinRequestsInFlight, 3},  // asked for: taken as is
      {1, 2, 0, 1},
  };
  for (const Case& c : cases) {
    LoadOptions o;
    o.num_threads = c.requested;
    LoadContext ctx;
    ctx.available_cores = c.cores;
    ctx.source_concurrency = c.hint;
    EXPECT_EQ(ResolveLoadOptions(o, ctx).threads, c.want)
        << "requested " << c.requested << ", cores " << c.cores << ", hint " << c.hint;
  }
}

TEST(ResolveLoadOptions, HashChecksAndDecryptionNeedWholeTensorJobsInSmallPieces) {
  struct Case {
    HashCheck verify;
    FileFormat format;
    bool encrypted;
    HashCheck want_verify;
    bool want_whole;
    uint64_t want_chunk;
  };
  const uint64_t big = 16ull << 20;
  const Case cases[] = {
      {HashCheck::kNone, FileFormat::kTensorizer, false, HashCheck::kNone, false, big},
      {HashCheck::kFast, FileFormat::kTensorizer, false, HashCheck::kFast, true, kHashedChunkBytes},
      {HashCheck::kAll, FileFormat::kTensorizer, false, HashCheck::kAll, true, kHashedChunkBytes},
      {HashCheck::kNone, FileFormat::kTensorizer, true, HashCheck::kNone, true, kHashedChunkBytes},
      // Safetensors stores no hashes: nothing to check, no reason for small pieces.
      {HashCheck::kAll, FileFormat::kSafetensors, false, HashCheck::kNone, false, big},
  };
  for (const Case& c : cases) {
    LoadOptions o;
    o.verify = c.verify;
    o.chunk_bytes = big;
    LoadContext ctx;
    ctx.format = c.format;
    ctx.encrypted = c.encrypted;
    ResolvedLoadOptions r = ResolveLoadOptions(o, ctx);
    EXPECT_EQ(r.verify, c.want_verify);
    EXPECT_EQ(r.whole_tensor_jobs, c.want_whole);
    EXPECT_EQ(r.chunk_bytes, c.want_chunk);
  }
  // A chunk smaller than the hashed piece is kept.
  LoadOptions o;
  o.verify = HashCheck::kFast;
  o.chunk_bytes = 4096;
  EXPECT_EQ(ResolveLoadOptions(o, LoadContext()).chunk_bytes, 4096u);
}

TEST(AvailableCores, AffinityLoweredToTheTightestCgroupQuota) {
  struct Case {
    int affinity;
    std::vector<std::string> cpu_max;
    int want;
  };
  const Case cases[] = {
      {8, {}, 8},
      {8, {"max 100000"}, 8},
      {8, {"200000 100000"}, 2},
      {8, {"150000 100000"}, 2},  // 1.5 CPUs round up
      {8, {"max 100000", "300000 100000"}, 3},  // a parent's limit counts
      {2, {"800000 100000"}, 2},                // affinity is tighter
      {8, {"garbage"}, 8},
      {8, {"-1 100000"}, 8},
      {8, {"100000 0"}, 8},
      {0, {}, 1},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(AvailableCoresFrom(c.affinity, c.cpu_max), c.want) << c.affinity;
  }
  EXPECT_GE(AvailableCores(), 1);
}

TEST(ConcurrencyHint, FilesAskForFourRequestsOnlyWhenReadDirect) {
  auto memory = MakeMemorySource(std::string(10, 'x'), "mem");
  EXPECT_EQ(memory->concurrency_hint(), 0);
  const std::string path = "load_policy_test.bin";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::string bytes(1 << 16, 'y');
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  FileOptions off;
  off.direct_io = DirectIo::kOff;
  auto buffered = OpenFileSource(path, off);
  ASSERT_TRUE(buffered.ok());
  EXPECT_EQ((*buffered)->concurrency_hint(), 0);
  FileOptions on;
  on.direct_io = DirectIo::kOn;
  auto direct = OpenFileSource(path, on);
  ASSERT_TRUE(direct.ok());
  // A file system without O_DIRECT (tmpfs) reads buffered and asks for nothing.
  const bool reads_direct = FileReadStatsOf(**direct)->direct_block_bytes != 0;
  EXPECT_EQ((*direct)->concurrency_hint(), reads_direct ? kMinRequestsInFlight : 0);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace tensorizer
