// Checking tensors one at a time, so that every failing tensor is found.
//
// A Load stops at its first error, which is right for loading and wrong for
// a report. This loads each tensor on its own (several at once, one worker
// each) and collects every failure. It belongs in the library as a
// `VerifyTensors(source, index, check)` returning per-tensor statuses, next
// to Load; it lives here until a second user appears.
#pragma once

#include <cstddef>
#include <vector>

#include "command.h"
#include "tensorizer/load.h"

namespace tensorizer::cli {

struct TensorFailure {
  size_t entry = 0;  // index into Index::entries
  Status status;
};

struct TensorChecks {
  std::vector<TensorFailure> failures;  // in file order
  std::vector<size_t> unhashed;         // loaded, but store no hash; in file order
};

// Loads every tensor of `file` on its own with `options` (its hash check
// and decryption; one thread per load).
TensorChecks CheckEachTensor(const OpenedFile& file, const LoadOptions& options);

}  // namespace tensorizer::cli
