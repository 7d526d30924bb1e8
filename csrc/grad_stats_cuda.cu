// CUDA kernel of gradscope::grad_stats (schema declared in csrc/ops.cpp).
//
// Multi-tensor-apply design (after PyTorch's MultiTensorApply.cuh /
// ForeachReduceOp.cu and apex's multi_tensor_l2norm_kernel.cu):
//   * Every tensor is cut into fixed-size chunks (kChunkBytes of storage).
//     Tensor descriptors and a chunk -> tensor map are packed into one pinned
//     host buffer and copied to the device asynchronously.
//   * chunk_stats_kernel: one block per chunk (all tensors, one launch) writes
//     the chunk's 6 partial statistics to its own slot; no atomics.
//   * finalize_kernel: one warp per tensor combines its chunks' partials in a
//     fixed order, so results are bitwise reproducible from run to run.
//   * Small lists (up to kArgTensors tensors, the common call of a training
//     step's monitor) skip the staging buffer: their descriptors travel as a
//     kernel argument and a tensor of one chunk has its row written by its
//     block. A tensor of several chunks is combined by a second launch, or, in
//     the one-launch form, by its last block to finish (a per-tensor counter
//     tells) as finalize_kernel would. The chunk cut and the order of every
//     sum are the same on all paths, so they agree bitwise. Under CUDA graph
//     capture a longer list goes through this path too, kArgTensors tensors a
//     launch.

#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grad_stats.h"

namespace gradscope {
namespace {

// ---------------------------------------------------------------------------
// Tuning constants.

constexpr int kBlock = 256;                // threads per chunk block
constexpr int kWarpSize = 32;
constexpr int kWarps = kBlock / kWarpSize;
constexpr int kUnroll = 4;                 // independent 16-byte loads in flight per thread
constexpr int kVecBytes = 16;
// Same bytes per block for every dtype: 64K fp32, 128K fp16/bf16, 32K fp64
// elements.
constexpr int64_t kChunkBytes = 256 * 1024;

constexpr int kFinBlock = 256;             // finalize: one warp per tensor
constexpr int kFinWarps = kFinBlock / kWarpSize;
constexpr int kFinUnroll = 4;              // chunk rows in flight per lane

constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kBlock % kWarpSize == 0 && kWarps <= kWarpSize,
              "block reduction assumes <= 32 warps");
static_assert(kFinBlock % kWarpSize == 0, "finalize block must be whole warps");
static_assert(kWarps >= kNumStats, "the last chunk block combines each statistic with a warp of its own");
static_assert(kChunkBytes % kVecBytes == 0,
              "chunks must keep the 16-byte alignment phase of the tensor");
// Chunk-local indices and per-thread counters are int: a chunk of 2-byte
// elements must fit comfortably.
static_assert(kChunkBytes / 2 < (int64_t{1} << 30), "chunk too large for int indices");

// Descriptor dtype codes (host and device agree through the traits below).
enum DtypeCode : int32_t { kCodeF32 = 0, kCodeF16 = 1, kCodeBF16 = 2, kCodeF64 = 3 };

struct TensorDesc {
  const void* data;     // first element of the dense span
  int64_t numel;
  int64_t chunk_begin;  // global index of the tensor's first chunk
  int32_t num_chunks;
  int32_t dtype;        // DtypeCode
};
static_assert(sizeof(TensorDesc) == 32, "descriptor layout is shared by host and device");

// ---------------------------------------------------------------------------
// Per-thread accumulation.

template <typename Acc>
struct Partial {
  Acc sumsq;
  Acc sum;
  Acc sumabs;
  Acc maxabs;
  int nonfinite;
  int zeros;
};

template <typename Acc>
__device__ __forceinline__ Partial<Acc> zero_partial() {
  return Partial<Acc>{Acc(0), Acc(0), Acc(0), Acc(0), 0, 0};
}

__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }

// x is the element converted (exactly) to float or double; Inf/NaN survive the
// fp16/bf16 -> fp32 conversion, so the finiteness test is done on it.
template <typename Acc, typename Val>
__device__ __forceinline__ void add_elem(Partial<Acc>& p, Val x) {
  const bool finite = isfinite(x);
  p.nonfinite += finite ? 0 : 1;
  p.zeros += (x == Val(0)) ? 1 : 0;  // false for NaN, true for -0
  const Acc a = finite ? static_cast<Acc>(x) : Acc(0);
  const Acc m = abs_(a);
  p.sumsq = fma_(a, a, p.sumsq);
  p.sum += a;
  p.sumabs += m;
  p.maxabs = max_(p.maxabs, m);  // never NaN: non-finite elements became 0
}

// Element traits: storage type, 16-byte vector type, value type after exact
// conversion, and how to unpack a vector.

struct F32 {
  using Storage = float;
  using Vec = float4;
  using Val = float;
  static constexpr int32_t kCode = kCodeF32;
  __device__ static Val load1(const Storage* p) { return __ldg(p); }
  template <typename Acc>
  __device__ static void add_vec(Partial<Acc>& p, const Vec& v) {
    add_elem(p, v.x);
    add_elem(p, v.y);
    add_elem(p, v.z);
    add_elem(p, v.w);
  }
};

struct F64 {
  using Storage = double;
  using Vec = double2;
  using Val = double;
  static constexpr int32_t kCode = kCodeF64;
  __device__ static Val load1(const Storage* p) { return __ldg(p); }
  template <typename Acc>
  __device__ static void add_vec(Partial<Acc>& p, const Vec& v) {
    add_elem(p, v.x);
    add_elem(p, v.y);
  }
};

struct F16 {
  using Storage = unsigned short;  // raw bits; 8 per uint4
  using Vec = uint4;
  using Val = float;
  static constexpr int32_t kCode = kCodeF16;
  __device__ static Val to_val(unsigned short bits) {
    return __half2float(__ushort_as_half(bits));
  }
  __device__ static Val load1(const Storage* p) { return to_val(__ldg(p)); }
  template <typename Acc>
  __device__ static void add_word(Partial<Acc>& p, unsigned w) {
    add_elem(p, to_val(static_cast<unsigned short>(w & 0xffffu)));
    add_elem(p, to_val(static_cast<unsigned short>(w >> 16)));
  }
  template <typename Acc>
  __device__ static void add_vec(Partial<Acc>& p, const Vec& v) {
    add_word(p, v.x);
    add_word(p, v.y);
    add_word(p, v.z);
    add_word(p, v.w);
  }
};

struct BF16 {
  using Storage = unsigned short;  // raw bits; 8 per uint4
  using Vec = uint4;
  using Val = float;
  static constexpr int32_t kCode = kCodeBF16;
  // bf16 is the high half of an fp32: widening is a shift (exact, keeps Inf/NaN).
  __device__ static Val to_val(unsigned short bits) {
    return __uint_as_float(static_cast<unsigned>(bits) << 16);
  }
  __device__ static Val load1(const Storage* p) { return to_val(__ldg(p)); }
  template <typename Acc>
  __device__ static void add_word(Partial<Acc>& p, unsigned w) {
    add_elem(p, __uint_as_float(w << 16));
    add_elem(p, __uint_as_float(w & 0xffff0000u));
  }
  template <typename Acc>
  __device__ static void add_vec(Partial<Acc>& p, const Vec& v) {
    add_word(p, v.x);
    add_word(p, v.y);
    add_word(p, v.z);
    add_word(p, v.w);
  }
};

template <typename E>
constexpr int64_t chunk_elems() {
  return kChunkBytes / static_cast<int64_t>(sizeof(typename E::Storage));
}

// Adds a run accumulated in Acc into the thread's fp64 total.
template <typename Acc>
__device__ __forceinline__ void add_run(Partial<double>& total, const Partial<Acc>& run) {
  total.sumsq += static_cast<double>(run.sumsq);
  total.sum += static_cast<double>(run.sum);
  total.sumabs += static_cast<double>(run.sumabs);
  total.maxabs = fmax(total.maxabs, static_cast<double>(run.maxabs));
  total.nonfinite += run.nonfinite;
  total.zeros += run.zeros;
}

// This thread's share of the n elements at p. p is element-aligned (checked on
// the host); a scalar head brings it to 16-byte alignment, then 16-byte vector
// loads, kUnroll of them issued before any is consumed, then a scalar tail.
//
// Values are summed in Acc over short runs (one loop iteration: kUnroll
// vectors, 16 fp32 or 32 fp16/bf16 elements) and the runs in fp64. Long fp32
// sums drift: on a constant tensor every thread rounds the same way, and 256
// terms already cost 2e-6 of relative error. An fp32 square that overflows
// still makes its run, and so the total, infinite: needs_fp64 sees it.
template <typename E, typename Acc>
__device__ __forceinline__ Partial<double> thread_reduce(const typename E::Storage* __restrict__ p,
                                                         int n) {
  using Storage = typename E::Storage;
  using Vec = typename E::Vec;
  constexpr int kPerVec = kVecBytes / static_cast<int>(sizeof(Storage));
  static_assert(sizeof(Vec) == kVecBytes, "vector type must be 16 bytes");

  const int tid = static_cast<int>(threadIdx.x);
  Partial<double> total = zero_partial<double>();

  const auto addr = reinterpret_cast<uintptr_t>(p);
  const int head = min(n, static_cast<int>(((kVecBytes - (addr & (kVecBytes - 1))) &
                                            (kVecBytes - 1)) / sizeof(Storage)));
  const Vec* __restrict__ vp = reinterpret_cast<const Vec*>(p + head);
  const int nvec = (n - head) / kPerVec;
  const int tail_begin = head + nvec * kPerVec;
  {
    Partial<Acc> ends = zero_partial<Acc>();
    if (tid < head) add_elem(ends, E::load1(p + tid));  // head < kPerVec <= kBlock
    if (tid < n - tail_begin) add_elem(ends, E::load1(p + tail_begin + tid));  // < kPerVec
    add_run(total, ends);
  }

  for (int i = tid; i < nvec; i += kBlock * kUnroll) {
    Vec v[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int k = i + j * kBlock;
      if (k < nvec) v[j] = __ldg(vp + k);
    }
    Partial<Acc> run = zero_partial<Acc>();
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      if (i + j * kBlock < nvec) E::add_vec(run, v[j]);
    }
    add_run(total, run);
  }
  return total;
}

// ---------------------------------------------------------------------------
// Deterministic block reduction: fixed shuffle tree per warp, then warp 0
// reduces the per-warp values from shared memory in warp order.

struct BlockScratch {
  double f[4][kWarps];
  int c[2][kWarps];
  int redo;
};

__device__ __forceinline__ void warp_reduce(Partial<double>& p) {
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
    p.sumsq += __shfl_down_sync(kFullMask, p.sumsq, off);
    p.sum += __shfl_down_sync(kFullMask, p.sum, off);
    p.sumabs += __shfl_down_sync(kFullMask, p.sumabs, off);
    p.maxabs = fmax(p.maxabs, __shfl_down_sync(kFullMask, p.maxabs, off));
    p.nonfinite += __shfl_down_sync(kFullMask, p.nonfinite, off);
    p.zeros += __shfl_down_sync(kFullMask, p.zeros, off);
  }
}

// Result is valid in thread 0 only. The caller must __syncthreads() before the
// scratch is written again.
__device__ __forceinline__ Partial<double> block_reduce(Partial<double> p, BlockScratch& s) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  warp_reduce(p);
  if (lane == 0) {
    s.f[0][warp] = p.sumsq;
    s.f[1][warp] = p.sum;
    s.f[2][warp] = p.sumabs;
    s.f[3][warp] = p.maxabs;
    s.c[0][warp] = p.nonfinite;
    s.c[1][warp] = p.zeros;
  }
  __syncthreads();
  if (warp == 0) {
    const bool valid = lane < kWarps;
    p.sumsq = valid ? s.f[0][lane] : 0.0;
    p.sum = valid ? s.f[1][lane] : 0.0;
    p.sumabs = valid ? s.f[2][lane] : 0.0;
    p.maxabs = valid ? s.f[3][lane] : 0.0;
    p.nonfinite = valid ? s.c[0][lane] : 0;
    p.zeros = valid ? s.c[1][lane] : 0;
    warp_reduce(p);
  }
  return p;
}

// fp32 accumulation is only trusted when the chunk's values stay in a safe
// range: squares overflow fp32 for |x| > ~1.8e19, and below kTinyMaxAbs
// (grad_stats.h says why) they lose their precision; vanishing gradients must
// not read as exactly 0. Only finite values were added, so a non-finite sum
// means overflow.
__device__ __forceinline__ bool needs_fp64(const Partial<double>& p) {
  return !isfinite(p.sumsq) || !isfinite(p.sum) || !isfinite(p.sumabs) ||
         (p.maxabs > 0.0 && p.maxabs < kTinyMaxAbs);
}

// Where a chunk's six statistics go: stat s to base[s * stride]. A chunk
// partial goes to column `chunk` of the stat-major partials (stride: the
// number of chunks), so finalize's per-stat loads are coalesced; the only
// chunk of a tensor goes straight to its row of the result (stride 1).
struct Slot {
  double* base;
  int64_t stride;
};

template <typename E>
__device__ __forceinline__ void reduce_chunk(const TensorDesc& d, int64_t chunk, Slot slot,
                                             BlockScratch& s) {
  using Storage = typename E::Storage;
  using Acc = typename E::Val;  // float for fp32/fp16/bf16, double for fp64
  constexpr int64_t kElems = chunk_elems<E>();

  const int64_t begin = (chunk - d.chunk_begin) * kElems;
  const int64_t left = d.numel - begin;
  // 0 only for the one chunk of an empty tensor (small-list path): zeros.
  const int n = static_cast<int>(left < kElems ? left : kElems);
  const Storage* p = static_cast<const Storage*>(d.data) + begin;

  Partial<double> r = block_reduce(thread_reduce<E, Acc>(p, n), s);
  if constexpr (!std::is_same_v<Acc, double>) {
    if (threadIdx.x == 0) s.redo = needs_fp64(r) ? 1 : 0;
    __syncthreads();  // also orders warp 0's scratch reads before the rewrite below
    if (s.redo) r = block_reduce(thread_reduce<E, double>(p, n), s);
  }
  if (threadIdx.x == 0) {
    slot.base[kSumSq * slot.stride] = r.sumsq;
    slot.base[kSum * slot.stride] = r.sum;
    slot.base[kSumAbs * slot.stride] = r.sumabs;
    slot.base[kMaxAbs * slot.stride] = r.maxabs;
    slot.base[kNonFinite * slot.stride] = static_cast<double>(r.nonfinite);
    slot.base[kZeros * slot.stride] = static_cast<double>(r.zeros);
  }
}

// Block-uniform branch: every thread of the block reads the same descriptor.
__device__ __forceinline__ void reduce_chunk_any(const TensorDesc& d, int64_t chunk, Slot slot,
                                                 BlockScratch& s) {
  switch (d.dtype) {
    case kCodeF32:
      return reduce_chunk<F32>(d, chunk, slot, s);
    case kCodeF16:
      return reduce_chunk<F16>(d, chunk, slot, s);
    case kCodeBF16:
      return reduce_chunk<BF16>(d, chunk, slot, s);
    case kCodeF64:
      return reduce_chunk<F64>(d, chunk, slot, s);
    default:
      return;  // unreachable: the host only writes the codes above
  }
}

// One warp combines the `count` chunk partials of one tensor, starting at
// chunk `first`: lane l adds chunks l, l+32, l+64, ... in increasing order,
// then a fixed shuffle tree; max is combined with max. Counts are exact in
// fp64 (integers < 2^53). The caller keeps the whole warp here.
__device__ __forceinline__ void finalize_tensor(int64_t first, int64_t count,
                                                const double* __restrict__ partials,
                                                int64_t num_chunks_total, double* __restrict__ row) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  double acc[kNumStats];
#pragma unroll
  for (int s = 0; s < kNumStats; ++s) acc[s] = 0.0;

  for (int64_t c = lane; c < count; c += kWarpSize * kFinUnroll) {
    double vals[kFinUnroll][kNumStats];
#pragma unroll
    for (int j = 0; j < kFinUnroll; ++j) {
      const int64_t cj = c + j * kWarpSize;
#pragma unroll
      for (int s = 0; s < kNumStats; ++s) {
        vals[j][s] = cj < count ? partials[s * num_chunks_total + first + cj] : 0.0;
      }
    }
#pragma unroll
    for (int j = 0; j < kFinUnroll; ++j) {
      if (c + j * kWarpSize < count) {
#pragma unroll
        for (int s = 0; s < kNumStats; ++s) {
          acc[s] = (s == kMaxAbs) ? fmax(acc[s], vals[j][s]) : acc[s] + vals[j][s];
        }
      }
    }
  }

#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int s = 0; s < kNumStats; ++s) {
      const double o = __shfl_down_sync(kFullMask, acc[s], off);
      acc[s] = (s == kMaxAbs) ? fmax(acc[s], o) : acc[s] + o;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int s = 0; s < kNumStats; ++s) row[s] = acc[s];
  }
}

// One warp combines statistic s of the `count` chunk partials of one tensor,
// exactly as finalize_tensor combines each of the six (lane l adds chunks l,
// l+32, ... in increasing order, then the same shuffle tree), so the two give
// the same bits. Loads go through L2 (__ldcg), never a stale L1 line: the
// caller is the last chunk block of the tensor, and other blocks of the same
// launch wrote the partials. The result is valid in lane 0.
__device__ __forceinline__ double combine_stat(int s, int64_t first, int64_t count, const double* partials,
                                               int64_t num_chunks_total) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const double* p = partials + s * num_chunks_total + first;
  double acc = 0.0;
  for (int64_t c = lane; c < count; c += kWarpSize * kFinUnroll) {
    double vals[kFinUnroll];
#pragma unroll
    for (int j = 0; j < kFinUnroll; ++j) {
      const int64_t cj = c + j * kWarpSize;
      vals[j] = cj < count ? __ldcg(p + cj) : 0.0;
    }
#pragma unroll
    for (int j = 0; j < kFinUnroll; ++j) {
      if (c + j * kWarpSize < count) acc = (s == kMaxAbs) ? fmax(acc, vals[j]) : acc + vals[j];
    }
  }
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
    const double o = __shfl_down_sync(kFullMask, acc, off);
    acc = (s == kMaxAbs) ? fmax(acc, o) : acc + o;
  }
  return acc;
}

// --- Large lists: descriptors in device memory ------------------------------

// One block per chunk of all tensors; each writes its partials, no atomics.
__global__ void __launch_bounds__(kBlock)
chunk_stats_kernel(const TensorDesc* __restrict__ descs,
                   const int32_t* __restrict__ chunk_to_tensor,
                   double* __restrict__ partials) {
  __shared__ BlockScratch scratch;
  const int64_t chunk = blockIdx.x;
  const TensorDesc d = descs[chunk_to_tensor[chunk]];
  reduce_chunk_any(d, chunk, Slot{partials + chunk, static_cast<int64_t>(gridDim.x)}, scratch);
}

// One warp per tensor. Tensors without chunks (empty) get zeros.
__global__ void __launch_bounds__(kFinBlock)
finalize_kernel(const TensorDesc* __restrict__ descs, int64_t num_tensors,
                const double* __restrict__ partials, int64_t num_chunks_total,
                double* __restrict__ out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kFinWarps +
                    static_cast<int64_t>(threadIdx.x) / kWarpSize;
  if (t >= num_tensors) return;  // warp-uniform, so the shuffles inside are safe
  finalize_tensor(descs[t].chunk_begin, descs[t].num_chunks, partials, num_chunks_total,
                  out + t * kNumStats);
}

// --- Small lists: descriptors as a kernel argument ---------------------------
//
// Up to kArgTensors tensors travel in the launch itself: no staging buffer and
// no host-to-device copy. Every tensor has at least one chunk here (an empty
// tensor's chunk writes its row of zeros). A tensor of one chunk: its block
// writes the result row. A tensor of several chunks: each block writes its
// partial column, then counts itself done in the tensor's counter; the last
// block to finish combines the partials into the row, in finalize_kernel's
// order, and sets the counter back to zero for the next launch. One launch in
// all. With counters == nullptr the blocks stop at their partials and
// small_finalize_kernel combines them: the two-launch form. Both give the
// same bits.

constexpr int kArgTensors = 224;

struct SmallList {
  const void* data[kArgTensors];
  int32_t numel[kArgTensors];
  int32_t chunk_end[kArgTensors];  // chunks of tensors 0..i together
  int8_t dtype[kArgTensors];       // DtypeCode
};
// Kernel arguments are limited to 4 KiB (before sm_70 / CUDA 12.1).
static_assert(sizeof(SmallList) + 64 <= 4096, "the small-list argument must fit the 4 KiB limit");

__device__ __forceinline__ TensorDesc small_desc(const SmallList& list, int t) {
  const int first = t == 0 ? 0 : list.chunk_end[t - 1];
  return TensorDesc{list.data[t], list.numel[t], first, list.chunk_end[t] - first, list.dtype[t]};
}

// partials: stat-major, one column per chunk of the launch (gridDim.x columns);
// read only for tensors of several chunks. counters: one per tensor, zero on
// entry and on exit; nullptr leaves those tensors to small_finalize_kernel.
// At most 64 registers, so 4 blocks fit an SM, as for chunk_stats_kernel.
__global__ void __launch_bounds__(kBlock, 4)
small_list_kernel(const __grid_constant__ SmallList list, int num_tensors, double* __restrict__ out,
                  double* partials, int32_t* counters) {
  __shared__ BlockScratch scratch;
  __shared__ int last;
  const int chunk = static_cast<int>(blockIdx.x);
  // The tensor of this chunk: the first whose chunk_end exceeds it.
  int lo = 0;
  int hi = num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (list.chunk_end[mid] > chunk) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const TensorDesc d = small_desc(list, lo);
  double* row = out + static_cast<int64_t>(lo) * kNumStats;
  if (d.num_chunks == 1) {
    reduce_chunk_any(d, chunk, Slot{row, 1}, scratch);
    return;
  }
  reduce_chunk_any(d, chunk, Slot{partials + chunk, static_cast<int64_t>(gridDim.x)}, scratch);
  if (counters == nullptr) return;
  // Thread 0 wrote the partial column: make it visible device-wide before counting it.
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(counters + lo, 1) == d.num_chunks - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();  // every other block's partials were published before its count
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  if (warp < kNumStats) {  // one warp per statistic: a short tail even for a tensor of many chunks
    const double v = combine_stat(warp, d.chunk_begin, d.num_chunks, partials, gridDim.x);
    if (threadIdx.x % kWarpSize == 0) row[warp] = v;
  }
  if (threadIdx.x == 0) counters[lo] = 0;  // every block of this tensor has counted
}

// The two-launch path's second launch: the rows of tensors of several chunks.
__global__ void __launch_bounds__(kFinBlock)
small_finalize_kernel(const __grid_constant__ SmallList list, int num_tensors,
                      const double* __restrict__ partials, int num_chunks_total,
                      double* __restrict__ out) {
  const int t = static_cast<int>(blockIdx.x) * kFinWarps + static_cast<int>(threadIdx.x) / kWarpSize;
  if (t >= num_tensors) return;  // warp-uniform
  const TensorDesc d = small_desc(list, t);
  if (d.num_chunks == 1) return;  // written by its chunk block
  finalize_tensor(d.chunk_begin, d.num_chunks, partials, num_chunks_total,
                  out + static_cast<int64_t>(t) * kNumStats);
}

// ---------------------------------------------------------------------------
// Host side.

// One input as the kernels read it.
struct Input {
  const void* data;  // nullptr when empty
  int64_t numel;
  int32_t code;
  int64_t per_chunk;  // elements per chunk for its dtype

  int64_t chunks() const { return (numel + per_chunk - 1) / per_chunk; }
};

// The kernel's code for a dtype is_stat_dtype accepts (grad_stats.h).
void dtype_code(at::ScalarType st, int32_t* code, int64_t* elem_size, int64_t* per_chunk) {
  switch (st) {
    case at::kFloat:
      *code = F32::kCode;
      *elem_size = sizeof(F32::Storage);
      *per_chunk = chunk_elems<F32>();
      return;
    case at::kHalf:
      *code = F16::kCode;
      *elem_size = sizeof(F16::Storage);
      *per_chunk = chunk_elems<F16>();
      return;
    case at::kBFloat16:
      *code = BF16::kCode;
      *elem_size = sizeof(BF16::Storage);
      *per_chunk = chunk_elems<BF16>();
      return;
    case at::kDouble:
      *code = F64::kCode;
      *elem_size = sizeof(F64::Storage);
      *per_chunk = chunk_elems<F64>();
      return;
    default:
      TORCH_INTERNAL_ASSERT(false, "dtype_code: unchecked dtype ", st);
  }
}

at::TensorOptions f64_on(at::Device device) {
  return at::TensorOptions().dtype(at::kDouble).device(device);
}

// --- The small-list kernel's scratch -----------------------------------------
//
// One float64 tensor: kArgTensors int32 counters (zero between launches), then
// kNumStats partials per chunk. Each stream keeps its own between calls, so the
// common call allocates nothing: launches on one stream run one after another,
// never two on one workspace at once. It stays allocated: 48 bytes per chunk
// of the largest call on that stream, rounded up to a power of two. Under CUDA
// graph capture (a replay may run on another stream, beside eager calls) and
// on the per-thread default stream (one handle, many streams), each launch
// gets a fresh one instead.

constexpr int64_t kCounterSlots = kArgTensors * sizeof(int32_t) / sizeof(double);
static_assert(kArgTensors * sizeof(int32_t) % sizeof(double) == 0, "counters must end on a double");

struct Workspace {
  double* partials;
  int32_t* counters;

  explicit Workspace(const at::Tensor& buffer)
      : partials(buffer.mutable_data_ptr<double>() + kCounterSlots),
        counters(reinterpret_cast<int32_t*>(buffer.mutable_data_ptr<double>())) {}
};

at::Tensor new_workspace(int64_t chunks, at::Device device) {
  return at::zeros({kCounterSlots + kNumStats * chunks}, f64_on(device));  // zeros on the current stream
}

// The workspace `stream` keeps, holding at least `chunks` chunks, locked: hold
// the lock through the launch, so that a workspace grown by another thread is
// freed only after this launch is enqueued.
std::pair<Workspace, std::unique_lock<std::mutex>> kept_workspace(int32_t chunks, at::Device device,
                                                                  cudaStream_t stream) {
  struct Kept {
    std::mutex mutex;
    at::Tensor buffer;
  };
  // One entry per (device, stream), never erased. Leaked on purpose: freeing CUDA memory after the
  // runtime has shut down at exit would fail.
  static auto* kept = new std::map<std::pair<c10::DeviceIndex, cudaStream_t>, std::unique_ptr<Kept>>();
  static auto* kept_mutex = new std::mutex();
  Kept* entry = nullptr;
  {
    const std::lock_guard<std::mutex> lock(*kept_mutex);
    std::unique_ptr<Kept>& slot = (*kept)[{device.index(), stream}];
    if (!slot) slot = std::make_unique<Kept>();
    entry = slot.get();
  }
  std::unique_lock<std::mutex> lock(entry->mutex);
  if (!entry->buffer.defined() || entry->buffer.numel() < kCounterSlots + kNumStats * static_cast<int64_t>(chunks)) {
    int64_t capacity = 64;
    while (capacity < chunks) capacity *= 2;
    entry->buffer = new_workspace(capacity, device);
  }
  return {Workspace(entry->buffer), std::move(lock)};
}

// Whether a small list's multi-chunk tensors are combined in their last chunk
// block (one launch) or by a second launch: the same bits either way. The
// default is the two-launch form; gradscope._C_cuda._set_one_launch(True)
// selects the other, which benchmarks/gpu_check.sh tests and times beside it.
std::atomic<bool> g_one_launch{false};

// The kernel on the n <= kArgTensors inputs of `list`, rows into `result`.
void run_small_list(const SmallList& list, int n, int32_t chunks, double* result, at::Device device,
                    cudaStream_t stream) {
  const auto launch = [&](double* partials, int32_t* counters) {
    small_list_kernel<<<static_cast<unsigned>(chunks), kBlock, 0, stream>>>(list, n, result, partials, counters);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (chunks == n) {  // one chunk per tensor: every block writes its row
    launch(nullptr, nullptr);
    return;
  }
  if (!g_one_launch.load(std::memory_order_relaxed)) {
    // Freed on return: the caching allocator orders its reuse after these kernels on this stream.
    at::Tensor partials = at::empty({kNumStats * static_cast<int64_t>(chunks)}, f64_on(device));
    launch(partials.mutable_data_ptr<double>(), nullptr);
    small_finalize_kernel<<<static_cast<unsigned>((n + kFinWarps - 1) / kFinWarps), kFinBlock, 0, stream>>>(
        list, n, partials.const_data_ptr<double>(), chunks, result);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone || stream == cudaStreamPerThread) {
    const at::Tensor fresh = new_workspace(chunks, device);  // under capture: the graph's pool keeps it
    const Workspace ws(fresh);
    launch(ws.partials, ws.counters);
    return;
  }
  const auto [ws, lock] = kept_workspace(chunks, device, stream);
  launch(ws.partials, ws.counters);
}

// Statistics of inputs[0, n) (n <= kArgTensors, each under 2^31 elements) into
// the n rows at `result` (row-major, kNumStats doubles a row).
void launch_small(const Input* inputs, int n, double* result, at::Device device, cudaStream_t stream) {
  SmallList list{};
  int32_t chunks = 0;
  for (int i = 0; i < n; ++i) {
    const Input& in = inputs[i];
    list.data[i] = in.data;
    list.numel[i] = static_cast<int32_t>(in.numel);
    list.dtype[i] = static_cast<int8_t>(in.code);
    chunks += static_cast<int32_t>(std::max<int64_t>(1, in.chunks()));
    list.chunk_end[i] = chunks;
  }
  run_small_list(list, n, chunks, result, device, stream);
}

void launch_large(const std::vector<Input>& inputs, const at::Tensor& out, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(inputs.size());
  int64_t total_chunks = 0;
  for (const Input& in : inputs) total_chunks += in.chunks();
  TORCH_CHECK(total_chunks <= std::numeric_limits<int32_t>::max(),
              "gradscope::grad_stats: the tensors need ", total_chunks,
              " chunks, more than one launch allows; split the list");

  // Pinned staging buffer: [TensorDesc x n][int32 chunk -> tensor x total_chunks].
  const int64_t desc_bytes = n * static_cast<int64_t>(sizeof(TensorDesc));
  const int64_t bytes = desc_bytes + total_chunks * static_cast<int64_t>(sizeof(int32_t));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* host_base = static_cast<uint8_t*>(host.mutable_data_ptr());
  auto* host_descs = reinterpret_cast<TensorDesc*>(host_base);
  auto* host_map = reinterpret_cast<int32_t*>(host_base + desc_bytes);
  int64_t chunk_begin = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Input& in = inputs[static_cast<size_t>(i)];
    const int64_t num_chunks = in.chunks();
    host_descs[i] = TensorDesc{in.data, in.numel, chunk_begin, static_cast<int32_t>(num_chunks), in.code};
    std::fill_n(host_map + chunk_begin, num_chunks, static_cast<int32_t>(i));
    chunk_begin += num_chunks;
  }
  // non_blocking from pinned memory: the host allocator records the stream, so
  // the staging block is not reused before the copy has run.
  const at::Tensor meta = host.to(at::TensorOptions().device(out.device()).dtype(at::kByte), /*non_blocking=*/true);
  const auto* dev_base = static_cast<const uint8_t*>(meta.const_data_ptr());
  const auto* dev_descs = reinterpret_cast<const TensorDesc*>(dev_base);
  const auto* dev_map = reinterpret_cast<const int32_t*>(dev_base + desc_bytes);

  at::Tensor partials = at::empty({kNumStats * total_chunks}, f64_on(out.device()));
  if (total_chunks > 0) {
    chunk_stats_kernel<<<static_cast<unsigned>(total_chunks), kBlock, 0, stream>>>(
        dev_descs, dev_map, partials.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  finalize_kernel<<<static_cast<unsigned>((n + kFinWarps - 1) / kFinWarps), kFinBlock, 0, stream>>>(
      dev_descs, n, partials.const_data_ptr<double>(), total_chunks, out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A dense copy of t to read when t itself cannot be read as its flat span.
at::Tensor dense_copy(const at::Tensor& t) {
  at::Tensor r = t.is_neg() ? t.resolve_neg() : t;  // storage holds -x for a neg view
  return r.is_non_overlapping_and_dense() ? r : r.contiguous();
}

}  // namespace

at::Tensor grad_stats_cuda(at::TensorList tensors) {
  const int64_t n = static_cast<int64_t>(tensors.size());
  if (n == 0) {
    // Dispatch never gets here without a tensor; stay total anyway.
    return at::empty({0, kNumStats}, f64_on(at::kCUDA));
  }
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max(),
              "gradscope::grad_stats: got ", n, " tensors, at most ",
              std::numeric_limits<int32_t>::max(), " are supported per call; split the list");
  TORCH_CHECK(tensors[0].defined(),
              "gradscope::grad_stats: tensors[0] is undefined (None); pass only defined tensors");
  const at::Device device = tensors[0].device();
  TORCH_CHECK(device.is_cuda(), "gradscope::grad_stats (CUDA): tensors[0] is on ", device,
              "; move all tensors to one CUDA device");
  c10::cuda::CUDAGuard guard(device);

  // Dense views are read in place as their flat storage span (the statistics
  // do not depend on element order); anything else is read from a copy. The
  // copies stay alive until the kernels are enqueued; the caching allocator's
  // stream ordering covers the rest.
  std::vector<Input> inputs(static_cast<size_t>(n));
  std::vector<at::Tensor> copies;
  // The first tensor of 2^31 elements or more, if any: the small-list path's descriptors
  // hold int32 counts.
  int64_t first_huge = -1;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), "gradscope::grad_stats: tensors[", i,
                "] is undefined (None); pass only defined tensors");
    TORCH_CHECK(t.layout() == at::kStrided, "gradscope::grad_stats: tensors[", i,
                "] has layout ", t.layout(),
                "; only strided tensors are supported, convert it with .to_dense()");
    TORCH_CHECK(t.device() == device, "gradscope::grad_stats: tensors[", i, "] is on ",
                t.device(), " but tensors[0] is on ", device,
                "; move all tensors to the same CUDA device");
    int32_t code = 0;
    int64_t elem_size = 0;
    int64_t per_chunk = 0;
    TORCH_CHECK(is_stat_dtype(t.scalar_type()), "gradscope::grad_stats: tensors[", i, "] has dtype ",
                t.scalar_type(), "; expected ", kStatDtypes, " (convert with .float())");
    dtype_code(t.scalar_type(), &code, &elem_size, &per_chunk);
    const at::Tensor* read = &t;
    if (t.is_neg() || !t.is_non_overlapping_and_dense()) {
      copies.push_back(dense_copy(t));
      read = &copies.back();
    }
    const int64_t numel = read->numel();
    if (numel > 0 && reinterpret_cast<uintptr_t>(read->const_data_ptr()) % elem_size != 0) {
      copies.push_back(read->clone(at::MemoryFormat::Contiguous));  // fresh, aligned storage
      read = &copies.back();
    }
    inputs[static_cast<size_t>(i)] = Input{numel > 0 ? read->const_data_ptr() : nullptr, numel, code, per_chunk};
    if (first_huge < 0 && numel > std::numeric_limits<int32_t>::max()) first_huge = i;
  }

  at::Tensor out = at::empty({n, kNumStats}, f64_on(device));  // every row is written
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (n <= kArgTensors && first_huge < 0) {
    launch_small(inputs.data(), static_cast<int>(n), out.mutable_data_ptr<double>(), device, stream);
    return out;
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone) {
    launch_large(inputs, out, stream);
    return out;
  }
  // Captured into a CUDA graph (torch.compile's "reduce-overhead", torch.cuda.graph): a
  // replay would read the staging buffer long after it was reused, so the list goes
  // through the small-list path, kArgTensors tensors per launch, descriptors in the graph.
  TORCH_CHECK(first_huge < 0, "gradscope::grad_stats: under CUDA graph capture each tensor must have fewer "
              "than 2^31 elements, but tensors[", first_huge, "] has ", inputs[static_cast<size_t>(first_huge)].numel,
              "; call it outside the capture for larger tensors");
  for (int64_t first = 0; first < n; first += kArgTensors) {
    const int count = static_cast<int>(std::min<int64_t>(kArgTensors, n - first));
    launch_small(inputs.data() + first, count, out.mutable_data_ptr<double>() + first * kNumStats, device, stream);
  }
  return out;
}

}  // namespace gradscope

TORCH_LIBRARY_IMPL(gradscope, CUDA, m) {
  m.impl("grad_stats", &gradscope::grad_stats_cuda);
}

namespace gradscope {
namespace {

// _set_one_launch(flag: bool) -> bool: the previous setting. For benchmarks and
// tests that compare the one-launch small-list path with the two-launch one.
PyObject* set_one_launch(PyObject* /*self*/, PyObject* arg) {
  const int flag = PyObject_IsTrue(arg);
  if (flag < 0) return nullptr;
  return PyBool_FromLong(g_one_launch.exchange(flag != 0));
}

PyMethodDef cuda_methods[] = {
    {"_set_one_launch", set_one_launch, METH_O,
     "Combine a small list's multi-chunk tensors in the same launch (True) or a second one (False); "
     "returns the previous setting."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace gradscope

// gradscope._C_cuda: importing it loads this library, which registers the CUDA
// kernel above; its one function is the switch above.
PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef def = {
      PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, gradscope::cuda_methods, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
