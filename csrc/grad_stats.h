// Shared definitions of the gradscope::grad_stats op.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace gradscope {

// Column order of the op's [N, kNumStats] float64 result. gradscope/_reference.py
// (Stat, STAT_NAMES) mirrors it; change both together.
enum Stat : int {
  kSumSq = 0,     // sum of squares of the finite elements
  kSum = 1,       // sum of the finite elements
  kSumAbs = 2,    // sum of |x| over the finite elements
  kMaxAbs = 3,    // max |x| over the finite elements (0 when there are none)
  kNonFinite = 4, // count of NaN and +-Inf elements (exact: integers below 2^53)
  kZeros = 5,     // count of elements equal to zero (+0 and -0)
  kNumStats = 6,
};

// The dtypes the op reads. gradscope/stats.py (FLOAT_DTYPES) mirrors it, and
// tests/test_ext.py holds the two together.
inline bool is_stat_dtype(c10::ScalarType st) {
  switch (st) {
    case c10::ScalarType::Float:
    case c10::ScalarType::Half:
    case c10::ScalarType::BFloat16:
    case c10::ScalarType::Double:
      return true;
    default:
      return false;
  }
}

// What an error about another dtype says the op reads.
constexpr const char* kStatDtypes = "float32, float16, bfloat16 or float64";

// Both kernels accumulate float32, float16 and bfloat16 in fp32 lanes where the
// values allow it. Below this max |x|, fp32 squares fall into the subnormal
// range (or flush to 0) and lose their precision, and vanishing gradients live
// there: such a block or chunk is summed again in fp64. Above it, the subnormal
// rounding of the smaller elements' squares (at most 2^17 * 2^-150 per block)
// stays below fp32's epsilon relative to max^2.
constexpr double kTinyMaxAbs = 0x1p-54;  // ~5.6e-17

// Which SIMD path the CPU kernel takes on this machine: "avx2" or "generic"
// (gradscope._C.cpu_simd(), a diagnostic: not part of the op library).
std::string cpu_simd_name();

}  // namespace gradscope
