// Ctrl-C for the `tensorizer` tool: SIGINT and SIGTERM cancel the running
// command through the engine's cancellation (tensorizer/cancel.h), so that a
// load stops its transfers and a save removes its temporary file (or aborts
// its upload) before the tool exits with 128 + the signal's number (130 for
// SIGINT, 143 for SIGTERM) and one line saying it was interrupted. A second
// signal exits at once, cleaning up nothing.
#pragma once

#include <memory>

#include "tensorizer/cancel.h"

namespace tensorizer::cli {

// Installs the handlers; the flag they cancel, for the command's CancelScope.
// Call once, before any thread starts.
std::shared_ptr<const CancelFlag> InstallInterruptHandlers();

// The signal that interrupted the command; 0 while none has arrived.
int InterruptSignal();

}  // namespace tensorizer::cli
