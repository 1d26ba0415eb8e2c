// Loads every tensor of a .tensors file with hash verification and prints
// what it found and how fast: the C++ API without Python.
#include <tensorizer/load.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FILE.tensors\n", argv[0]);
    return 2;
  }
  auto source = tensorizer::OpenSource(argv[1]);
  if (!source.ok()) {
    std::fprintf(stderr, "%s\n", source.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<const tensorizer::Source> src = std::move(source).value();
  auto index = tensorizer::ReadIndex(*src);
  if (!index.ok()) {
    std::fprintf(stderr, "%s\n", index.status().ToString().c_str());
    return 1;
  }
  auto shared_index = std::make_shared<const tensorizer::Index>(std::move(index).value());
  std::vector<size_t> all(shared_index->entries.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  tensorizer::LoadOptions options;
  options.verify = tensorizer::HashCheck::kAll;
  auto t0 = std::chrono::steady_clock::now();
  auto load = tensorizer::Load::Start(src, shared_index, all, options);
  if (!load.ok()) {
    std::fprintf(stderr, "%s\n", load.status().ToString().c_str());
    return 1;
  }
  tensorizer::Status st = (*load)->Wait();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return 1;
  }
  uint64_t bytes = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const auto& e = (*load)->entry(i);
    bytes += e.data_length;
    std::printf("%-40s %-8s %10llu bytes\n", e.name.c_str(),
                e.dtype.substr(0, e.dtype.find('\0')).c_str(),
                static_cast<unsigned long long>(e.data_length));
  }
  std::printf("loaded %zu tensors, %llu bytes, hashes verified, in %.3f ms (data version %u)\n",
              all.size(), static_cast<unsigned long long>(bytes), secs * 1e3,
              shared_index->header.version);
  return 0;
}
