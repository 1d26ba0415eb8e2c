// `tensorizer bench FILE [--threads N] [--repeat N] [--verify] [--mmap]`: time whole
// loads of a file and print the best beside the machine's read limit,
// measured in the same run (tensorizer/machine.h), and their ratio.
//
// Each repetition measures the limit and then the load, so both see the
// same page cache state; the first repetition may read from storage while
// the later ones read from the cache, and the best of each is reported.
// A load is timed from reading the index to the last tensor in place. A
// mapped load (--mmap) is timed until every page of every tensor has been
// touched once, on one thread: mapping is nearly free, the page faults of
// first use are what it costs, and the tensors are not usable any sooner.
//
// For a remote FILE (http(s)://, s3://, redis://) the limit is the same
// measurement through the same Source: raw parallel range reads of the
// whole object into a fresh arena, no parsing, with as many threads as the
// load uses (the network, not the cores, is what bounds it, and the same
// number of requests in flight makes the two comparable).
#include <chrono>
#include <cstdio>

#include "command.h"
#include "remote_options.h"
#include "tensor_display.h"
#include "tensorizer/convert.h"
#include "tensorizer/load.h"
#include "tensorizer/machine.h"
#include "tensorizer/mapped.h"

namespace tensorizer::cli {
namespace {

const std::string kHelp =
    std::string(
        "usage: tensorizer bench [--threads N] [--repeat N] [--verify] [--mmap] [REMOTE OPTIONS] "
        "FILE\n"
        "\n"
        "Loads every tensor of a .tensors file N times and prints the best\n"
        "throughput beside the machine's limit, measured in the same run: reading\n"
        "the same file with plain positional reads into a fresh huge-page arena,\n"
        "one thread per core. Prints the ratio of the two, whether the file was in\n"
        "the page cache before the first run, and the conditions measured under.\n"
        "GB/s is 10^9 bytes per second.\n"
        "\n"
        "FILE may be a URI (http(s)://, s3://bucket/key, redis://host/prefix): the\n"
        "limit is then raw parallel range reads of the whole object through the\n"
        "same connection settings into memory, without parsing, with as many\n"
        "threads as the load.\n"
        "\n"
        "options:\n"
        "  --threads N  load with N threads (default: one per core, at least 4 for a\n"
        "               remote file or one read with O_DIRECT)\n"
        "  --repeat N   load N times and keep the best (default: 3)\n"
        "  --verify     check each tensor's CRC32 while loading\n"
        "  --mmap       load mapped (tensors as views on a private mapping of a local\n"
        "               file), timed until every page of the tensors was touched once\n"
        "  -h, --help   show this help\n"
        "\n") +
    kRemoteOptionsHelp +
    "\n"
    "exit status: 0 measured, 1 the file cannot be read or is invalid, 2 usage error\n";

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// One load of the whole file, timed from reading the index.
Result<double> TimeLoad(const std::shared_ptr<const Source>& source, const LoadOptions& options) {
  auto start = std::chrono::steady_clock::now();
  auto index = ReadIndex(*source);
  if (!index.ok()) return index.status();
  auto shared = std::make_shared<const Index>(std::move(index).value());
  std::vector<size_t> all(shared->entries.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  auto load = Load::Start(source, shared, all, options);
  if (!load.ok()) return load.status();
  TZR_RETURN_IF_ERROR((*load)->Wait());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct MappedTimes {
  double mapped = 0;   // index, mapping, header checks and copies
  double touched = 0;  // and then one read of every page of every tensor
  size_t copied = 0;   // tensors copied because their data is unaligned
};

// One mapped load of the whole file, timed from reading the index.
Result<MappedTimes> TimeMappedLoad(const Source& source, const MappedLoadOptions& options) {
  auto start = std::chrono::steady_clock::now();
  auto index = ReadIndex(source);
  if (!index.ok()) return index.status();
  auto mapping = FileMapping::Map(source);
  if (!mapping.ok()) return mapping.status();
  std::vector<size_t> all(index->entries.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  auto load = MappedLoad::Run(source, *index, *mapping, all, options);
  if (!load.ok()) return load.status();
  MappedTimes t;
  t.mapped = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  t.copied = load->copied_count();
  uint64_t sum = 0;
  for (const MappedTensor& m : load->tensors()) {
    const uint8_t* base = m.mapped ? load->mapping()->data() : load->arena()->data();
    for (uint64_t off = 0; off < m.bytes; off += 4096) sum += base[m.offset + off];
  }
  volatile uint64_t sink = sum;  // keeps the reads
  (void)sink;
  t.touched = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return t;
}

int RunBench(const std::vector<std::string>& args) {
  const Command& self = kBenchCommand;
  int exit_code = kExitOk;
  OptionSpec spec{{"--verify", "--mmap"}, {"--threads", "--repeat"}};
  AddRemoteOptions(&spec);
  auto parsed = ParseCommand(self, args, spec, {"FILE"}, &exit_code);
  if (!parsed) return exit_code;
  std::string usage_error;
  auto remote = RemoteOptionsFromArgs(*parsed, &usage_error);
  if (!remote) return UsageError(self, usage_error);
  const int cores = AvailableCores();
  int threads = 0;  // the load's own choice (ResolveLoadOptions), known once the file is open
  if (auto v = parsed->value("--threads")) {
    auto n = ParseCount(*v, 1, 4096);
    if (!n) return UsageError(self, "--threads needs a whole number from 1 to 4096");
    threads = static_cast<int>(*n);
  }
  uint64_t repeat = 3;
  if (auto v = parsed->value("--repeat")) {
    auto n = ParseCount(*v, 1, 1000);
    if (!n) return UsageError(self, "--repeat needs a whole number from 1 to 1000");
    repeat = *n;
  }
  const bool verify = parsed->has("--verify");
  const bool mapped = parsed->has("--mmap");

  const std::string& file = parsed->positional[0];
  auto opened = OpenTensorsFile(file, remote->source);
  if (!opened.ok()) return Failure(self, opened.status().message());
  const uint64_t size = opened->source->size();
  const bool is_remote = IsRemoteUri(file);
  if (mapped && is_remote) return UsageError(self, "--mmap needs a local file");
  std::optional<double> cached;
  if (!is_remote) {
    cached = PageCacheResidency(file.rfind("file://", 0) == 0 ? file.substr(7) : file);
  }
  LoadOptions options;
  options.num_threads = threads;
  if (threads == 0) {
    threads = ResolveLoadOptions(options, LoadContextOf(*opened->source, *opened->index)).threads;
  }
  const int limit_threads = is_remote ? threads : cores;
  options.verify = verify ? HashCheck::kFast : HashCheck::kNone;
  MappedLoadOptions mapped_options;
  mapped_options.num_threads = threads;
  mapped_options.verify = options.verify;
  double best_load = 0, best_limit = 0;
  MappedTimes best_mapped;
  for (uint64_t r = 0; r < repeat; ++r) {
    auto limit = TimeReadIntoArena(*opened->source, limit_threads, options.chunk_bytes);
    if (!limit.ok()) return Failure(self, limit.status().message());
    double seconds = 0;
    if (mapped) {
      auto m = TimeMappedLoad(*opened->source, mapped_options);
      if (!m.ok()) return Failure(self, m.status().message());
      if (r == 0 || m->touched < best_mapped.touched) best_mapped = *m;
      seconds = m->touched;
    } else {
      auto load = TimeLoad(opened->source, options);
      if (!load.ok()) return Failure(self, load.status().message());
      seconds = *load;
    }
    if (r == 0 || *limit < best_limit) best_limit = *limit;
    if (r == 0 || seconds < best_load) best_load = seconds;
  }

  const double gb = static_cast<double>(size) / 1e9;
  const double load_gbs = best_load > 0 ? gb / best_load : 0;
  const double limit_gbs = best_limit > 0 ? gb / best_limit : 0;
  const std::string best = "best of " + std::to_string(repeat);
  std::string out;
  out += "file:       " + DisplayUri(file) + ", " + std::to_string(size) + " bytes, " +
         Plural(opened->index->entries.size(), "tensor") + ", " + DescribeFormat(*opened->index) +
         "\n";
  out += "page cache: " +
         (is_remote ? std::string("not applicable (remote source)")
          : cached  ? Fixed(*cached * 100, 0) + "% of the file resident before the first run"
                    : std::string("unknown")) +
         "\n";
  out += "load:       " + Fixed(load_gbs, 2) + " GB/s  " + best + " (" + Fixed(best_load * 1e3, 3) +
         " ms), " + std::to_string(threads) +
         " threads, hash check: " + (verify ? "fast (CRC32)" : "none") + "\n";
  if (mapped) {
    out += "mapped:     " + Fixed(best_mapped.mapped * 1e3, 3) +
           " ms to map and check (in that run), then " +
           Fixed((best_mapped.touched - best_mapped.mapped) * 1e3, 3) +
           " ms to touch every page once on one thread; " +
           Plural(best_mapped.copied, "tensor") + " copied (data not aligned for its dtype)\n";
  }
  out += "limit:      " + Fixed(limit_gbs, 2) + " GB/s  " + best + " (" +
         Fixed(best_limit * 1e3, 3) + " ms), " +
         (is_remote ? "range reads through the same source into a huge-page arena, "
                    : "pread into a huge-page arena, ") +
         std::to_string(limit_threads) + " threads\n";
  if (auto file = FileReadStatsOf(*opened->source)) {
    out += "reads:      " + Fixed(static_cast<double>(file->direct_bytes) / 1e9, 2) +
           " GB direct, " + Fixed(static_cast<double>(file->buffered_bytes) / 1e9, 2) +
           " GB buffered" +
           (file->direct_block_bytes
                ? " (O_DIRECT block " + std::to_string(file->direct_block_bytes) + " bytes)"
                : " (" + file->buffered_reason + ")") +
           ", limit and loads together\n";
  }
  out += "ratio:      " + (limit_gbs > 0 ? Fixed(load_gbs / limit_gbs, 2) : std::string("n/a")) +
         " of the limit\n";
  out += "machine:    " + std::to_string(cores) +
         " cores, transparent huge pages: " + TransparentHugePageMode() +
         ", tensorizer " TENSORIZER_VERSION "\n";
  Print(out);
  return kExitOk;
}

}  // namespace

const Command kBenchCommand = {"bench", "time loading a file beside the machine's read limit",
                               kHelp.c_str(), RunBench};

}  // namespace tensorizer::cli
