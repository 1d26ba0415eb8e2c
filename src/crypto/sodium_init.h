// libsodium must be initialised once before use; every entry point in
// src/crypto/ that calls into it goes through here first.
#pragma once

#include "tensorizer/status.h"

namespace tensorizer::internal {

// Initialises libsodium on the first call (thread-safe); later calls only
// return the result of that first one.
Status InitSodium();

}  // namespace tensorizer::internal
