// Shared definitions of the gradscope::grad_stats op.
#pragma once

#include <cstdint>
#include <string>

namespace gradscope {

// Column order of the op's [N, kNumStats] float64 result. gradscope/stats.py
// (STAT_NAMES) mirrors it; change both together.
enum Stat : int {
  kSumSq = 0,     // sum of squares of the finite elements
  kSum = 1,       // sum of the finite elements
  kSumAbs = 2,    // sum of |x| over the finite elements
  kMaxAbs = 3,    // max |x| over the finite elements (0 when there are none)
  kNonFinite = 4, // count of NaN and +-Inf elements (exact: integers below 2^53)
  kZeros = 5,     // count of elements equal to zero (+0 and -0)
  kNumStats = 6,
};

// Which SIMD path the CPU kernel takes on this machine: "avx2" or "generic".
std::string cpu_simd_name();

}  // namespace gradscope
