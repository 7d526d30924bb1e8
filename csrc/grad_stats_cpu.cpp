// CPU kernel of gradscope::grad_stats.
//
// The work is cut into items of kItemElems elements: a large tensor gives many
// items, small tensors are packed together into one. The threads of
// at::parallel_for (so torch.set_num_threads applies) each read their own
// contiguous share of the items, then take what is left of the others'
// shares, so a thread whose core another process is using holds up nobody
// (for_each_item). Each segment of an item writes its partial statistics into
// a slot of its own, and a serial pass combines each tensor's partials in
// order. The cut depends on the inputs only, never on the thread count or on
// which thread read an item, so results are bitwise identical for any number
// of threads and any load.
//
// Inside a segment, values are accumulated in fp32 SIMD lanes over blocks of
// kBlockElems elements and each block's sums are added into fp64, so the error
// stays near fp64's however long the tensor. A block is first summed without
// masking (the common case: all finite); a NaN or Inf makes its sums
// non-finite, and the block is summed again with non-finite lanes masked and
// counted. A block whose masked fp32 sums still overflow (finite values above
// ~1e19) is summed a third time, in fp64.
//
// A torch extension is compiled for baseline x86-64, so the AVX2 path is
// compiled with a function target attribute and chosen at run time.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "grad_stats.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define GRADSCOPE_X86 1
#include <immintrin.h>
#define GS_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define GRADSCOPE_X86 0
#endif

namespace gradscope {
namespace {

constexpr int64_t kItemElems = int64_t{1} << 16;  // elements per parallel work item
constexpr int64_t kBlockElems = 1024;             // elements per fp32 block
constexpr int64_t kParallelGrain = 2;             // items per thread at least (128K elements)

// Runs work(item) for every item in [0, n): serially for one grain of items or
// fewer (starting threads would cost more than the split saves), else on the
// threads of at::parallel_for. Each thread owns a contiguous share of the items
// and reads it front to back (what a static split does: sequential memory per
// thread); a thread that finishes its share takes the remaining items of the
// others' shares from their counters, so one slowed by another process on its
// core holds up nobody. Every item is taken exactly once (fetch_add), and what
// it computes does not depend on who takes it.
template <typename Work>
void for_each_item(int64_t n, int64_t grain, const Work& work) {
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / grain);
  if (workers < 2 || at::in_parallel_region()) {
    for (int64_t item = 0; item < n; ++item) {
      work(item);
    }
    return;
  }
  struct alignas(64) Share {  // a cache line each: the owners' counters do not share one
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  std::vector<Share> shares(workers);
  for (int64_t w = 0; w < workers; ++w) {
    shares[w].next.store(n * w / workers, std::memory_order_relaxed);
    shares[w].end = n * (w + 1) / workers;
  }
  at::parallel_for(0, workers, 1, [&](int64_t first, int64_t last) {  // one index per thread
    for (int64_t own = first; own < last; ++own) {
      for (int64_t k = 0; k < workers; ++k) {  // its own share first, then the others' in turn
        Share& share = shares[(own + k) % workers];
        for (int64_t item = share.next.fetch_add(1, std::memory_order_relaxed); item < share.end;
             item = share.next.fetch_add(1, std::memory_order_relaxed)) {
          work(item);
        }
      }
    }
  });
}

struct Partial {
  double sumsq = 0, sum = 0, sumabs = 0, maxabs = 0;
  int64_t nonfinite = 0, zeros = 0;

  void merge(const Partial& other) {
    sumsq += other.sumsq;
    sum += other.sum;
    sumabs += other.sumabs;
    maxabs = std::max(maxabs, other.maxabs);
    nonfinite += other.nonfinite;
    zeros += other.zeros;
  }
};

template <typename T>
inline double as_double(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<float>(v);
  }
}

// Exact-as-fp64 scalar path: the tail of a segment, and blocks whose fp32 sums
// overflowed (then `count` is false: the block's counts are already taken).
template <typename T>
void scalar_stats(const T* p, int64_t n, Partial& out, bool count) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = as_double(p[i]);
    if (std::isfinite(v)) {
      out.sumsq += v * v;
      out.sum += v;
      out.sumabs += std::fabs(v);
      out.maxabs = std::max(out.maxabs, std::fabs(v));
    } else if (count) {
      ++out.nonfinite;
    }
    if (count && v == 0) {
      ++out.zeros;
    }
  }
}

// One block's statistics, sums in fp64 from fp32 lanes.
struct BlockSums {
  double sumsq, sum, sumabs, maxabs;
  int64_t nonfinite;

  bool finite() const { return std::isfinite(sumsq) && std::isfinite(sum) && std::isfinite(sumabs); }
};

// Adds a block into the partial. Sums that overflowed fp32, or whose squares
// underflowed it, are taken again in fp64.
template <typename T>
void add_block(const T* block, int64_t len, const BlockSums& b, Partial& out) {
  const bool tiny = !std::is_same_v<T, double> && b.maxabs > 0 && b.maxabs < kTinyMaxAbs;
  if (b.finite() && !tiny) {
    out.sumsq += b.sumsq;
    out.sum += b.sum;
    out.sumabs += b.sumabs;
  } else {
    Partial exact;
    scalar_stats(block, len, exact, /*count=*/false);
    out.sumsq += exact.sumsq;
    out.sum += exact.sum;
    out.sumabs += exact.sumabs;
  }
  out.maxabs = std::max(out.maxabs, b.maxabs);
  out.nonfinite += b.nonfinite;
}

// Portable path: kLanes independent accumulators the compiler can vectorize.
template <typename T>
void reduce_generic(const T* p, int64_t n, Partial& out) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr int kLanes = 8;
  const Acc inf = std::numeric_limits<Acc>::infinity();
  const int64_t n_vec = n / kLanes * kLanes;
  for (int64_t i = 0; i < n_vec; i += kBlockElems) {
    const int64_t len = std::min(kBlockElems, n_vec - i);
    Acc sq[kLanes] = {}, s[kLanes] = {}, sa[kLanes] = {}, mx[kLanes] = {};
    int32_t finite[kLanes] = {}, zeros[kLanes] = {};
    for (int64_t k = i; k < i + len; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        const Acc x = static_cast<Acc>(as_double(p[k + j]));
        const Acc ax = std::fabs(x);
        const bool is_finite = ax < inf;  // false for NaN too
        const Acc xf = is_finite ? x : Acc(0);
        const Acc axf = is_finite ? ax : Acc(0);
        sq[j] += xf * xf;
        s[j] += xf;
        sa[j] += axf;
        mx[j] = std::max(mx[j], axf);
        finite[j] += is_finite;
        zeros[j] += (x == 0);
      }
    }
    BlockSums b = {0, 0, 0, 0, len};
    for (int j = 0; j < kLanes; ++j) {
      b.sumsq += sq[j];
      b.sum += s[j];
      b.sumabs += sa[j];
      b.maxabs = std::max(b.maxabs, static_cast<double>(mx[j]));
      b.nonfinite -= finite[j];
      out.zeros += zeros[j];
    }
    add_block(p + i, len, b, out);
  }
  scalar_stats(p + n_vec, n - n_vec, out, /*count=*/true);
}

#if GRADSCOPE_X86

GS_AVX2 inline __m256 load8(const float* p) {
  return _mm256_loadu_ps(p);
}

GS_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

GS_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place.
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

GS_AVX2 inline double hsum(__m256 v) {
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

GS_AVX2 inline int64_t hsum(__m256i v) {
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
  int64_t total = 0;
  for (int32_t lane : lanes) {
    total += lane;
  }
  return total;
}

GS_AVX2 inline float hmax(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  return *std::max_element(lanes, lanes + 8);
}

constexpr int kPrefetchBytes = 1024;

GS_AVX2 inline __m256 abs8(__m256 x) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}

// Counts zeros: comparison masks are all ones, -1 as int32, so subtract them.
GS_AVX2 inline __m256i count_zeros(__m256 x, __m256i zeros) {
  return _mm256_sub_epi32(zeros, _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ)));
}

GS_AVX2 inline double hsum(__m256d v) {
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

// acc + v, with v's eight fp32 lanes widened to fp64.
GS_AVX2 inline __m256d widen_add(__m256d acc, __m256 v) {
  acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

GS_AVX2 inline bool all_finite(__m256 v) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  return _mm256_movemask_ps(_mm256_cmp_ps(abs8(v), inf, _CMP_LT_OQ)) == 0xff;  // NaN compares false
}

// A segment's sums in fp64 lanes; the max stays fp32, where it is exact.
struct WideSums {
  __m256d sumsq, sum, sumabs;
  __m256 maxabs;
};

// The common case: every value finite and not tiny. Nothing is masked; a NaN
// or Inf (or an fp32 overflow) makes the block's sums non-finite. Then, or if
// the block's max |x| is tiny, nothing is added and false is returned, so the
// caller sums the block again, masked (add_block decides whether in fp64).
// Zeros are counted either way.
template <typename T>
GS_AVX2 inline bool block_unmasked(const T* p, int64_t len, __m256i& zeros, WideSums& w) {
  __m256 sq0 = _mm256_setzero_ps(), s0 = _mm256_setzero_ps(), sa0 = _mm256_setzero_ps(), mx0 = _mm256_setzero_ps();
  __m256 sq1 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), sa1 = _mm256_setzero_ps(), mx1 = _mm256_setzero_ps();
  for (int64_t k = 0; k < len; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(p + k) + kPrefetchBytes, _MM_HINT_T0);
    const __m256 x0 = load8(p + k);
    const __m256 x1 = load8(p + k + 8);
    const __m256 a0 = abs8(x0);
    const __m256 a1 = abs8(x1);
    sq0 = _mm256_fmadd_ps(x0, x0, sq0);
    sq1 = _mm256_fmadd_ps(x1, x1, sq1);
    s0 = _mm256_add_ps(s0, x0);
    s1 = _mm256_add_ps(s1, x1);
    sa0 = _mm256_add_ps(sa0, a0);
    sa1 = _mm256_add_ps(sa1, a1);
    mx0 = _mm256_max_ps(mx0, a0);
    mx1 = _mm256_max_ps(mx1, a1);
    zeros = count_zeros(x1, count_zeros(x0, zeros));
  }
  const __m256 any = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(sq0, sq1), _mm256_add_ps(sa0, sa1)),
                                   _mm256_add_ps(abs8(s0), abs8(s1)));
  const __m256 mx = _mm256_max_ps(mx0, mx1);
  const bool below_tiny = _mm256_movemask_ps(_mm256_cmp_ps(mx, _mm256_set1_ps(kTinyMaxAbs), _CMP_LT_OQ)) == 0xff;
  const bool all_zero = _mm256_movemask_ps(_mm256_cmp_ps(mx, _mm256_setzero_ps(), _CMP_GT_OQ)) == 0;
  if (!all_finite(any) || (below_tiny && !all_zero)) {
    return false;
  }
  w.sumsq = widen_add(widen_add(w.sumsq, sq0), sq1);
  w.sum = widen_add(widen_add(w.sum, s0), s1);
  w.sumabs = widen_add(widen_add(w.sumabs, sa0), sa1);
  w.maxabs = _mm256_max_ps(w.maxabs, mx);
  return true;
}

// A block with non-finite values: those lanes are masked to zero and counted.
// The max is exact; only the sums can still overflow (add_block handles it).
template <typename T>
GS_AVX2 inline BlockSums block_masked(const T* p, int64_t len) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 sq = _mm256_setzero_ps(), s = _mm256_setzero_ps(), sa = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
  __m256i finite = _mm256_setzero_si256();
  for (int64_t k = 0; k < len; k += 8) {
    const __m256 x = load8(p + k);
    const __m256 a = abs8(x);
    const __m256 is_finite = _mm256_cmp_ps(a, inf, _CMP_LT_OQ);  // false for NaN too
    const __m256 xf = _mm256_and_ps(x, is_finite);
    const __m256 af = _mm256_and_ps(a, is_finite);
    sq = _mm256_fmadd_ps(xf, xf, sq);
    s = _mm256_add_ps(s, xf);
    sa = _mm256_add_ps(sa, af);
    mx = _mm256_max_ps(mx, af);
    finite = _mm256_sub_epi32(finite, _mm256_castps_si256(is_finite));
  }
  return {hsum(sq), hsum(s), hsum(sa), hmax(mx), len - hsum(finite)};
}

// fp32, fp16 and bf16 input. A segment is at most kItemElems long, so the
// int32 zero counts cannot overflow.
template <typename T>
GS_AVX2 void reduce_avx2(const T* p, int64_t n, Partial& out) {
  const int64_t n_vec = n / 16 * 16;
  __m256i zeros = _mm256_setzero_si256();
  WideSums wide = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_ps()};
  for (int64_t i = 0; i < n_vec; i += kBlockElems) {
    const int64_t len = std::min(kBlockElems, n_vec - i);
    if (!block_unmasked(p + i, len, zeros, wide)) {
      add_block(p + i, len, block_masked(p + i, len), out);
    }
  }
  out.sumsq += hsum(wide.sumsq);
  out.sum += hsum(wide.sum);
  out.sumabs += hsum(wide.sumabs);
  out.maxabs = std::max(out.maxabs, static_cast<double>(hmax(wide.maxabs)));
  out.zeros += hsum(zeros);
  scalar_stats(p + n_vec, n - n_vec, out, /*count=*/true);
}

#endif  // GRADSCOPE_X86

enum class Simd { kGeneric, kAvx2 };

Simd detect_simd() {
  // GRADSCOPE_CPU_SIMD=generic forces the portable path (tests compare both).
  const char* forced = std::getenv("GRADSCOPE_CPU_SIMD");
  if (forced != nullptr && std::strcmp(forced, "generic") == 0) {
    return Simd::kGeneric;
  }
#if GRADSCOPE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Simd::kAvx2;
  }
#endif
  return Simd::kGeneric;
}

Simd simd() {
  static const Simd chosen = detect_simd();
  return chosen;
}

template <typename T>
void reduce_range(const T* p, int64_t n, Partial& out) {
#if GRADSCOPE_X86
  if constexpr (!std::is_same_v<T, double>) {
    if (simd() == Simd::kAvx2) {
      reduce_avx2(p, n, out);
      return;
    }
  }
#endif
  reduce_generic(p, n, out);
}

// Elements [begin, begin + len) of tensor `tensor`, in storage order.
struct Segment {
  int64_t tensor;
  int64_t begin;
  int64_t len;
};

void reduce_segment(const at::Tensor& t, const Segment& seg, Partial& out) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return reduce_range(t.const_data_ptr<float>() + seg.begin, seg.len, out);
    case at::kHalf:
      return reduce_range(t.const_data_ptr<c10::Half>() + seg.begin, seg.len, out);
    case at::kBFloat16:
      return reduce_range(t.const_data_ptr<c10::BFloat16>() + seg.begin, seg.len, out);
    case at::kDouble:
      return reduce_range(t.const_data_ptr<double>() + seg.begin, seg.len, out);
    default:
      TORCH_INTERNAL_ASSERT(false, "unchecked dtype ", t.scalar_type());
  }
}

at::Tensor grad_stats_cpu(at::TensorList tensors) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  // dense[i] is the tensor read for input i: the input itself (no reference
  // count traffic), or a copy kept in `copies` (reserved, so never moved).
  std::vector<const at::Tensor*> dense(n);
  std::vector<at::Tensor> copies;
  copies.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.layout() == at::kStrided, "gradscope::grad_stats: tensor ", i, " has layout ", t.layout(),
                "; pass dense tensors (gradscope.grad_stats accepts sparse COO and converts it)");
    TORCH_CHECK(t.device().is_cpu(), "gradscope::grad_stats: tensor ", i, " is on ", t.device(),
                " while others are on the CPU; pass one device per call (gradscope.grad_stats groups them)");
    const auto dtype = t.scalar_type();
    TORCH_CHECK(is_stat_dtype(dtype), "gradscope::grad_stats: tensor ", i, " has dtype ", dtype, "; expected ",
                kStatDtypes, " (convert with .float())");
    // A dense layout (contiguous, channels_last, any permutation) is read as
    // its flat storage span, with no copy; only gappy views are copied. A
    // negative view's storage holds -x, so it is resolved first.
    if (!t.is_neg() && t.is_non_overlapping_and_dense()) {
      dense[i] = &t;
      continue;
    }
    const at::Tensor resolved = t.is_neg() ? t.resolve_neg() : t;
    copies.push_back(resolved.is_non_overlapping_and_dense() ? resolved : resolved.contiguous());
    dense[i] = &copies.back();
  }

  // Cut the tensors into segments of at most kItemElems and pack consecutive
  // segments into items of at most kItemElems elements.
  std::vector<Segment> segments;
  std::vector<int64_t> item_starts;      // item k: segments [item_starts[k], item_starts[k + 1])
  std::vector<int64_t> first_segment(n + 1);  // tensor i: segments [first_segment[i], first_segment[i + 1])
  int64_t item_fill = kItemElems;        // full, so the first segment opens an item
  for (int64_t i = 0; i < n; ++i) {
    first_segment[i] = static_cast<int64_t>(segments.size());
    const int64_t numel = dense[i]->numel();
    for (int64_t begin = 0; begin < numel; begin += kItemElems) {
      const int64_t len = std::min(kItemElems, numel - begin);
      if (item_fill + len > kItemElems) {
        item_starts.push_back(static_cast<int64_t>(segments.size()));
        item_fill = 0;
      }
      segments.push_back({i, begin, len});
      item_fill += len;
    }
  }
  first_segment[n] = static_cast<int64_t>(segments.size());
  item_starts.push_back(static_cast<int64_t>(segments.size()));
  const int64_t n_items = static_cast<int64_t>(item_starts.size()) - 1;

  std::vector<Partial> partials(segments.size());
  for_each_item(n_items, kParallelGrain, [&](int64_t item) {
    for (int64_t s = item_starts[item]; s < item_starts[item + 1]; ++s) {
      reduce_segment(*dense[segments[s].tensor], segments[s], partials[s]);
    }
  });

  at::Tensor out = at::empty({n, kNumStats}, at::TensorOptions().dtype(at::kDouble));  // every row is written below
  double* rows = out.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    Partial total;
    for (int64_t s = first_segment[i]; s < first_segment[i + 1]; ++s) {
      total.merge(partials[s]);
    }
    double* row = rows + i * kNumStats;
    row[kSumSq] = total.sumsq;
    row[kSum] = total.sum;
    row[kSumAbs] = total.sumabs;
    row[kMaxAbs] = total.maxabs;
    row[kNonFinite] = static_cast<double>(total.nonfinite);
    row[kZeros] = static_cast<double>(total.zeros);
  }
  return out;
}

// --- diff_sumsq: the update of an optimizer step ---------------------------
//
// sum((a - b)^2) per pair of tensors, in one pass that reads both and writes
// nothing: what the training monitor's update ratios need (a: the weights
// kept before the step, b: the weights after it), where a subtraction into a
// buffer and a reduction of it would read and write the weights three times
// more. The difference is taken in the tensors' dtype for float32 (exact for
// the small updates of a step: Sterbenz's lemma) and in fp64 otherwise; its
// squares are accumulated in fp64. Work is cut into items of kItemElems as
// above, so the result does not depend on the thread count.

template <typename T>
double diff_sumsq_generic(const T* a, const T* b, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    acc += d * d;
  }
  return acc;
}

#if GRADSCOPE_X86
GS_AVX2 double diff_sumsq_f32_avx2(const float* a, const float* b, int64_t n) {
  __m256d acc_lo = _mm256_setzero_pd(), acc_hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(d));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1));
    acc_lo = _mm256_fmadd_pd(lo, lo, acc_lo);
    acc_hi = _mm256_fmadd_pd(hi, hi, acc_hi);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc_lo, acc_hi));
  double acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) {
    const double d = static_cast<double>(a[i] - b[i]);
    acc += d * d;
  }
  return acc;
}
#endif

double diff_sumsq_range(const at::Tensor& a, const at::Tensor& b, int64_t begin, int64_t len) {
  switch (a.scalar_type()) {
    case at::kFloat: {
      const float* pa = a.const_data_ptr<float>() + begin;
      const float* pb = b.const_data_ptr<float>() + begin;
#if GRADSCOPE_X86
      if (simd() == Simd::kAvx2) {
        return diff_sumsq_f32_avx2(pa, pb, len);
      }
#endif
      double acc = 0;  // the generic path takes the float32 difference too, as the AVX2 one does
      for (int64_t i = 0; i < len; ++i) {
        const double d = static_cast<double>(pa[i] - pb[i]);
        acc += d * d;
      }
      return acc;
    }
    case at::kHalf:
      return diff_sumsq_generic(a.const_data_ptr<c10::Half>() + begin, b.const_data_ptr<c10::Half>() + begin, len);
    case at::kBFloat16:
      return diff_sumsq_generic(a.const_data_ptr<c10::BFloat16>() + begin, b.const_data_ptr<c10::BFloat16>() + begin,
                                len);
    case at::kDouble:
      return diff_sumsq_generic(a.const_data_ptr<double>() + begin, b.const_data_ptr<double>() + begin, len);
    default:
      TORCH_INTERNAL_ASSERT(false, "unchecked dtype ", a.scalar_type());
  }
}

// The pairs of tensors diff_sumsq and copy_sumsq read, checked and cut into
// items of kItemElems, and the per-tensor sums of the items' partial results.
struct PairItems {
  std::vector<at::Tensor> left, right;  // contiguous views (a copy only for a gappy or permuted input)
  std::vector<Segment> segments;
  std::vector<int64_t> first_segment;  // tensor i's items: [first_segment[i], first_segment[i + 1])

  // ``a_name``, ``b_name``: the lists' names in the op's schema. ``writes_right``: the op writes into b,
  // which must then be contiguous itself (a contiguous copy of it would take the writes instead).
  PairItems(at::TensorList a, at::TensorList b, const char* op, const char* a_name, const char* b_name,
            bool writes_right) {
    TORCH_CHECK(a.size() == b.size(), "gradscope::", op, ": ", a.size(), " tensors in ", a_name, " but ",
                b.size(), " in ", b_name);
    const int64_t n = static_cast<int64_t>(a.size());
    left.resize(n);
    right.resize(n);
    first_segment.resize(n + 1);
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(a[i].layout() == at::kStrided && b[i].layout() == at::kStrided, "gradscope::", op, ": pair ",
                  i, " is not dense");
      TORCH_CHECK(a[i].device().is_cpu() && b[i].device().is_cpu(), "gradscope::", op, ": pair ", i,
                  " is not on the CPU");
      TORCH_CHECK(a[i].sizes() == b[i].sizes() && a[i].scalar_type() == b[i].scalar_type(), "gradscope::", op,
                  ": pair ", i, " differs in shape or dtype (", a[i].sizes(), " ", a[i].scalar_type(), " against ",
                  b[i].sizes(), " ", b[i].scalar_type(), ")");
      TORCH_CHECK(is_stat_dtype(a[i].scalar_type()), "gradscope::", op, ": pair ", i, " has dtype ",
                  a[i].scalar_type(), "; expected ", kStatDtypes);
      TORCH_CHECK(!writes_right || (b[i].is_contiguous() && !b[i].is_neg()), "gradscope::", op,
                  ": the destination of pair ", i, " is not contiguous; write into a contiguous tensor");
      left[i] = a[i].resolve_neg().contiguous();
      right[i] = writes_right ? b[i] : b[i].resolve_neg().contiguous();
      first_segment[i] = static_cast<int64_t>(segments.size());
      for (int64_t begin = 0; begin < left[i].numel(); begin += kItemElems) {
        segments.push_back({i, begin, std::min(kItemElems, left[i].numel() - begin)});
      }
    }
    first_segment[n] = static_cast<int64_t>(segments.size());
  }

  // [N] float64: per tensor, the sum of its items' ``partials`` in item order (the same under any threads).
  at::Tensor sums(const std::vector<double>& partials) const {
    const int64_t n = static_cast<int64_t>(left.size());
    at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
    double* sums = out.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) {
      double total = 0;
      for (int64_t s = first_segment[i]; s < first_segment[i + 1]; ++s) {
        total += partials[s];
      }
      sums[i] = total;
    }
    return out;
  }
};

at::Tensor diff_sumsq_cpu(at::TensorList a, at::TensorList b) {
  const PairItems items(a, b, "diff_sumsq", "a", "b", /*writes_right=*/false);
  std::vector<double> partials(items.segments.size());
  for_each_item(static_cast<int64_t>(items.segments.size()), kParallelGrain, [&](int64_t s) {
    const Segment& seg = items.segments[s];
    partials[s] = diff_sumsq_range(items.left[seg.tensor], items.right[seg.tensor], seg.begin, seg.len);
  });
  return items.sums(partials);
}

// --- copy_sumsq: the weights kept before an optimizer step -----------------
//
// dst[i] = src[i], and sum(src[i]^2) per tensor, in one pass: what the
// training monitor's update ratios keep before the step, with the weight norms
// of that step read on the way (a copy and a separate reduction read the
// weights twice). float32 is written with non-temporal stores where AVX2 runs:
// the copy is read back only after the optimizer step, so it bypasses the
// caches, and the stores skip the read a cached store makes of each line
// first. Squares accumulate in fp64 as grad_stats does; a non-finite value
// makes its tensor's sum inf or NaN. Items as above: the sums do not depend on
// the thread count.

template <typename T>
double copy_sumsq_generic(const T* src, T* dst, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = src[i];
    const double v = static_cast<double>(src[i]);
    acc += v * v;
  }
  return acc;
}

#if GRADSCOPE_X86
GS_AVX2 double copy_sumsq_f32_avx2(const float* src, float* dst, int64_t n) {
  double acc = 0;
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) % 32) != 0; ++i) {  // up to a 32-byte boundary
    dst[i] = src[i];
    acc += static_cast<double>(src[i]) * static_cast<double>(src[i]);
  }
  __m256d acc_lo = _mm256_setzero_pd(), acc_hi = _mm256_setzero_pd();
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    _mm256_stream_ps(dst + i, v);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    acc_lo = _mm256_fmadd_pd(lo, lo, acc_lo);
    acc_hi = _mm256_fmadd_pd(hi, hi, acc_hi);
  }
  _mm_sfence();  // the streamed stores are visible before anyone reads the copy
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc_lo, acc_hi));
  acc += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) {
    dst[i] = src[i];
    acc += static_cast<double>(src[i]) * static_cast<double>(src[i]);
  }
  return acc;
}
#endif

double copy_sumsq_range(const at::Tensor& src, at::Tensor& dst, int64_t begin, int64_t len) {
  switch (src.scalar_type()) {
    case at::kFloat:
#if GRADSCOPE_X86
      if (simd() == Simd::kAvx2) {
        return copy_sumsq_f32_avx2(src.const_data_ptr<float>() + begin, dst.data_ptr<float>() + begin, len);
      }
#endif
      return copy_sumsq_generic(src.const_data_ptr<float>() + begin, dst.data_ptr<float>() + begin, len);
    case at::kHalf:
      return copy_sumsq_generic(src.const_data_ptr<c10::Half>() + begin, dst.data_ptr<c10::Half>() + begin, len);
    case at::kBFloat16:
      return copy_sumsq_generic(src.const_data_ptr<c10::BFloat16>() + begin, dst.data_ptr<c10::BFloat16>() + begin,
                                len);
    case at::kDouble:
      return copy_sumsq_generic(src.const_data_ptr<double>() + begin, dst.data_ptr<double>() + begin, len);
    default:
      TORCH_INTERNAL_ASSERT(false, "unchecked dtype ", src.scalar_type());
  }
}

at::Tensor copy_sumsq_cpu(at::TensorList src, at::TensorList dst) {
  PairItems items(src, dst, "copy_sumsq", "src", "dst", /*writes_right=*/true);
  std::vector<double> partials(items.segments.size());
  for_each_item(static_cast<int64_t>(items.segments.size()), kParallelGrain, [&](int64_t s) {
    const Segment& seg = items.segments[s];
    partials[s] = copy_sumsq_range(items.left[seg.tensor], items.right[seg.tensor], seg.begin, seg.len);
  });
  return items.sums(partials);
}

}  // namespace

std::string cpu_simd_name() {
  return simd() == Simd::kAvx2 ? "avx2" : "generic";
}

TORCH_LIBRARY_IMPL(gradscope, CPU, m) {
  m.impl("grad_stats", &grad_stats_cpu);
  m.impl("diff_sumsq", &diff_sumsq_cpu);
  m.impl("copy_sumsq", &copy_sumsq_cpu);
}

}  // namespace gradscope
