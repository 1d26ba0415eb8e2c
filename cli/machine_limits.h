// The machine's side of a benchmark: what it can do on its own, measured in
// the same run as the thing benchmarked, and the conditions it ran under.
//
// The read limit is plain positional reads of the whole file into one fresh
// huge-page Arena, one thread per core, each taking the next chunk in turn:
// what a load would reach if it did nothing but move the bytes. It belongs
// in the library beside Load (bench/ wants it too); it lives here until then.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace tensorizer::cli {

// Seconds to read bytes [0, size) of `source` into a newly allocated arena
// with `threads` threads, in pieces of `chunk_bytes`. The arena's allocation
// and page faults count, as they do in a load.
Result<double> TimeReadIntoArena(const Source& source, int threads, uint64_t chunk_bytes);

// Cores this process may run on (its CPU affinity), at least 1.
int AvailableCores();

// The fraction of a local file's pages in the page cache, or nothing when
// it cannot be told (not a local file, or mincore failed).
std::optional<double> PageCacheResidency(const std::string& path);

// The kernel's transparent huge page mode ("always", "madvise", "never"),
// or "unknown".
std::string TransparentHugePageMode();

}  // namespace tensorizer::cli
