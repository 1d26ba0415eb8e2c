// The descriptor behind a local file source, for code that uses the file
// itself rather than reads of it (mapped loads, tensorizer/mapped.h).
#pragma once

#include "tensorizer/source.h"

namespace tensorizer::internal {

// The source's read descriptor (owned by the source, valid while it lives),
// or -1 for a source that is not a local file or descriptor.
int LocalFileDescriptor(const Source& source);

}  // namespace tensorizer::internal
