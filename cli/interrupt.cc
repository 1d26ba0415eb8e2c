// See interrupt.h. The handler does only what a signal handler may: an
// atomic exchange, an atomic store (CancelFlag::Cancel) and _exit.
#include "interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>

namespace tensorizer::cli {
namespace {

std::atomic<int> g_signal{0};
// Set once before the handlers are installed, and never freed.
CancelFlag* g_flag = nullptr;

void OnSignal(int sig) {
  if (g_signal.exchange(sig) != 0) _exit(128 + sig);
  g_flag->Cancel();
}

}  // namespace

std::shared_ptr<const CancelFlag> InstallInterruptHandlers() {
  static_assert(std::atomic<int>::is_always_lock_free, "the handler needs a lock-free atomic");
  static const auto flag = std::make_shared<CancelFlag>();
  g_flag = flag.get();
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  return flag;
}

int InterruptSignal() { return g_signal.load(); }

}  // namespace tensorizer::cli
