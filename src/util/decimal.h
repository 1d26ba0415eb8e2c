// The one parser of unsigned decimals: ports, Content-Length and
// Content-Range, Redis key offsets and reply lengths, pids in temporary names.
#pragma once

#include <cstdint>
#include <string_view>

namespace tensorizer::internal {

// `s` as a uint64_t: one or more ASCII digits and nothing else (no sign, no
// space); leading zeros are allowed. False, leaving *out alone, for anything
// else and for a value past UINT64_MAX.
inline bool ParseDecimal(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const auto d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

}  // namespace tensorizer::internal
