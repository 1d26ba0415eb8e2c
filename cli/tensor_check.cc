// See tensor_check.h.
#include "tensor_check.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "tensorizer/cancel.h"

namespace tensorizer::cli {

TensorChecks CheckEachTensor(const OpenedFile& file, const LoadOptions& base) {
  const size_t count = file.index->entries.size();
  TensorChecks checks;
  std::mutex mu;
  std::atomic<size_t> next{0};
  // The pool's loads stop with the caller's (a Ctrl-C: interrupt.h).
  const std::shared_ptr<const CancelFlag> cancel = CurrentCancelFlag();
  auto work = [&] {
    CancelScope scope(cancel);
    LoadOptions options = base;
    options.num_threads = 1;
    for (size_t i = next++; i < count; i = next++) {
      Status st;
      auto load = Load::Start(file.source, file.index, {i}, options);
      st = load.ok() ? (*load)->Wait() : load.status();
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        checks.failures.push_back({i, st});
      } else if ((*load)->header(0).hashes.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        checks.unhashed.push_back(i);
      }
    }
  };
  // Each worker holds at most one tensor's arena at a time.
  const int workers = ResolveLoadOptions(LoadOptions(), LoadContextOf(*file.source, *file.index)).threads;
  size_t threads = std::min<size_t>(static_cast<size_t>(workers), count);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  std::sort(checks.failures.begin(), checks.failures.end(),
            [](const TensorFailure& a, const TensorFailure& b) { return a.entry < b.entry; });
  std::sort(checks.unhashed.begin(), checks.unhashed.end());
  return checks;
}

}  // namespace tensorizer::cli
