// What the machine lets a load use, and what it can do on its own.
//
// AvailableCores is the one count of cores the library, the CLI and the
// Python layer size their thread pools by. The rest is the machine's side of
// a benchmark, measured in the same run as the thing benchmarked (`tensorizer
// bench`, bench/pread_limit): the read limit is plain positional reads of the
// whole file into one fresh huge-page Arena, one thread per core, each taking
// the next chunk in turn: what a load would reach if it did nothing but move
// the bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace tensorizer {

// Cores this process may run on, at least 1: its CPU affinity, lowered to a
// cgroup v2 CPU quota (cpu.max of its own cgroup and the cgroups above it,
// rounded up) where one is set. A container limited to 2 CPUs on a 64-core
// host gets 2, not 64.
int AvailableCores();

// AvailableCores from its inputs, for tests: the affinity's CPU count and
// the cgroup files' "cpu.max" contents ("max 100000", "200000 100000"),
// innermost first.
int AvailableCoresFrom(int affinity_cpus, const std::vector<std::string>& cpu_max_lines);

// Seconds to read bytes [0, size) of `source` into a newly allocated arena
// with `threads` threads, in pieces of `chunk_bytes`. The arena's allocation
// and page faults count, as they do in a load.
Result<double> TimeReadIntoArena(const Source& source, int threads, uint64_t chunk_bytes);

// The fraction of a local file's pages in the page cache, or nothing when
// it cannot be told (not a local file, or mincore failed).
std::optional<double> PageCacheResidency(const std::string& path);

// The kernel's transparent huge page mode ("always", "madvise", "never"),
// or "unknown".
std::string TransparentHugePageMode();

}  // namespace tensorizer
