// Shared device code of every kernel: one 64×64 tile of cosines, the pair roles and the order keys.
//
// Every pass (Ring selection, forward rows, forward columns, backward dQ, backward dK) computes a
// tile with `tile_cosines` from the same (r0, c0) with the same code, so they all see bit-identical
// fp32 logits: the Ring band is exact on the values the loss uses, and the backward recomputes the
// forward's values exactly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "contrastive_cuda.h"

namespace contrastive_cuda {

constexpr int BM = kBlockRows;  // rows of a tile
constexpr int BN = 64;  // columns of a tile
constexpr int BK = 32;  // features per step of the tile product
constexpr int DC = 64;  // features per step of the backward products
constexpr int THREADS = 128;  // 4 warps
constexpr int LDS = BN + 4;  // row stride of the fp32 tile (a multiple of 4, as WMMA stores need)
constexpr float kNegInf = -__builtin_huge_valf();

// Operand row strides: 16-bit WMMA loads need a multiple of 8 elements; fp32 pads by one to keep
// the column reads of the FMA loop free of bank conflicts.
template <typename T>
struct Operand {
  static constexpr int LD = BK + 8;
};
template <>
struct Operand<float> {
  static constexpr int LD = BK + 1;
};

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Shared memory of one CTA. `s` comes first so that it and the operands stay 32-byte aligned.
template <typename T>
struct __align__(32) Smem {
  float s[BM][LDS];  // the tile: cosines, then (backward) dS
  union {
    struct {
      T a[BM][Operand<T>::LD];  // rows r0.. of Q, features k0..k0+BK
      T b[BN][Operand<T>::LD];  // columns c0.. (keys, then extra negatives)
    } mm;
    float chunk[BN][DC + 1];  // backward: features d0..d0+DC of the other side's 64 rows
  } u;
};

__device__ __forceinline__ int64_t num_cols(const CoreArgs& a) { return a.m + a.r; }

template <typename T>
__device__ __forceinline__ const T* col_row(const CoreArgs& a, int64_t j) {
  return j < a.m ? static_cast<const T*>(a.k) + j * a.d : static_cast<const T*>(a.e) + (j - a.m) * a.d;
}

__device__ __forceinline__ float row_inv(const CoreArgs& a, int64_t i) { return a.inv_q ? a.inv_q[i] : 1.f; }

__device__ __forceinline__ float col_inv(const CoreArgs& a, int64_t j) {
  if (j < a.m) return a.inv_k ? a.inv_k[j] : 1.f;
  return a.inv_e ? a.inv_e[j - a.m] : 1.f;
}

// Stage features [k0, k0 + BK) of rows r0.. and columns c0.. in shared memory, zero outside.
template <typename T>
__device__ void load_operands(const CoreArgs& a, Smem<T>& sm, int64_t r0, int64_t c0, int64_t k0) {
  const int64_t nc = num_cols(a);
  const T* q = static_cast<const T*>(a.q);
  for (int idx = threadIdx.x; idx < BM * BK; idx += THREADS) {
    const int i = idx / BK, kk = idx % BK;  // consecutive threads read consecutive features
    const int64_t r = r0 + i, f = k0 + kk;
    sm.u.mm.a[i][kk] = (r < a.n && f < a.d) ? q[r * a.d + f] : from_float<T>(0.f);
  }
  for (int idx = threadIdx.x; idx < BN * BK; idx += THREADS) {
    const int j = idx / BK, kk = idx % BK;
    const int64_t c = c0 + j, f = k0 + kk;
    sm.u.mm.b[j][kk] = (c < nc && f < a.d) ? col_row<T>(a, c)[f] : from_float<T>(0.f);
  }
}

// sm.s[i][j] = <q_{r0+i}, c_{c0+j}> · inv_q · inv_c in fp32 for the 64×64 tile at (r0, c0);
// entries outside [0, n) × [0, m + r) are 0 or garbage and must be masked by the caller.
// fp16/bf16 use WMMA tensor cores (fp32 accumulation); fp32 uses FMA in full fp32 (no TF32, to
// meet the 1e-5 target). Starts and ends with a barrier, so callers may reuse sm around it.
template <typename T>
__device__ void tile_cosines(const CoreArgs& a, Smem<T>& sm, int64_t r0, int64_t c0) {
  if constexpr (std::is_same<T, float>::value) {
    // each thread: rows tr*8 .. tr*8+7, columns tc + 16*cc (cc < 4)
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
    float acc[8][4];
#pragma unroll
    for (int rr = 0; rr < 8; ++rr)
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) acc[rr][cc] = 0.f;
    for (int64_t k0 = 0; k0 < a.d; k0 += BK) {
      __syncthreads();
      load_operands<T>(a, sm, r0, c0, k0);
      __syncthreads();
#pragma unroll 4
      for (int kk = 0; kk < BK; ++kk) {
        float av[8], bv[4];
#pragma unroll
        for (int rr = 0; rr < 8; ++rr) av[rr] = sm.u.mm.a[tr * 8 + rr][kk];
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) bv[cc] = sm.u.mm.b[tc + 16 * cc][kk];
#pragma unroll
        for (int rr = 0; rr < 8; ++rr)
#pragma unroll
          for (int cc = 0; cc < 4; ++cc) acc[rr][cc] = fmaf(av[rr], bv[cc], acc[rr][cc]);
      }
    }
#pragma unroll
    for (int rr = 0; rr < 8; ++rr)
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) sm.s[tr * 8 + rr][tc + 16 * cc] = acc[rr][cc];
  } else {
    namespace wmma = nvcuda::wmma;
    // each warp: rows warp*16 .. +16, all 64 columns as four 16×16 accumulators
    const int warp = threadIdx.x / 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) wmma::fill_fragment(acc[c], 0.f);
    for (int64_t k0 = 0; k0 < a.d; k0 += BK) {
      __syncthreads();
      load_operands<T>(a, sm, r0, c0, k0);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, &sm.u.mm.a[warp * 16][kk], Operand<T>::LD);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          // B = Cᵀ: element (k, j) sits at b[j][k], i.e. column-major with leading dimension LD
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, &sm.u.mm.b[c * 16][kk], Operand<T>::LD);
          wmma::mma_sync(acc[c], fa, fb, acc[c]);
        }
      }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) wmma::store_matrix_sync(&sm.s[warp * 16][c * 16], acc[c], LDS, wmma::mem_row_major);
  }
  __syncthreads();
  const int64_t nc = num_cols(a);
  for (int idx = threadIdx.x; idx < BM * BN; idx += THREADS) {
    const int i = idx / BN, j = idx % BN;
    const int64_t r = r0 + i, c = c0 + j;
    if (r < a.n && c < nc) sm.s[i][j] = (sm.s[i][j] * row_inv(a, r)) * col_inv(a, c);
  }
  __syncthreads();
}

// The logit of a cosine. __fmul_rn keeps the product from being fused into a later add, so that
// every pass rounds it the same way.
__device__ __forceinline__ float logit_of(float cosine, float scale) { return __fmul_rn(cosine, scale); }

// Role of pair (i, j) by the core's rules (core.pair_roles): `cand` is a candidate negative before
// any Ring band.
struct Role {
  bool pos;
  bool cand;
};

__device__ __forceinline__ Role pair_role(const CoreArgs& a, int64_t i, int64_t j) {
  const bool is_key = j < a.m;
  const bool is_self = a.self_index != nullptr && a.self_index[i] == j;
  bool pos = false;
  if (a.pos_index != nullptr) {
    pos = a.pos_index[i] == j;
  } else if (a.row_labels != nullptr) {
    pos = is_key && a.row_labels[i] == a.col_labels[j];
  }
  pos = pos && !is_self;
  const bool cand = !pos && !is_self && (a.key_negatives || !is_key);
  return {pos, cand};
}

// Whether (i, j) with this role and logit is in row i's denominator (core.denominator).
__device__ __forceinline__ bool in_denominator(const CoreArgs& a, Role ro, int64_t i, float logit) {
  bool cand = ro.cand;
  if (a.band_lo != nullptr) cand = cand && logit >= a.band_lo[i] && logit <= a.band_hi[i];
  return a.decoupled ? cand : (cand || ro.pos);
}

// Unsigned keys that sort like the floats, -0.0 and +0.0 alike (as chunked._order_bits).
__device__ __forceinline__ unsigned order_key(float v) {
  const unsigned u = __float_as_uint(v + 0.0f);  // + 0.0f turns -0.0 into +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Online log-sum-exp state: running max and the sum of exp(x - max).
struct Lse {
  float max = kNegInf;
  float sum = 0.f;
  __device__ __forceinline__ void add(float x) {
    if (x > max) {
      sum = sum * expf(max - x) + 1.f;  // max = -inf at first: exp(-inf) = 0
      max = x;
    } else {
      sum += expf(x - max);
    }
  }
  __device__ __forceinline__ void merge(float other_max, float other_sum) {
    const float m = fmaxf(max, other_max);
    sum = (m == kNegInf) ? 0.f : sum * expf(max - m) + other_sum * expf(other_max - m);
    max = m;
  }
};

inline int grid_for(int64_t count, int block) { return static_cast<int>((count + block - 1) / block); }

}  // namespace contrastive_cuda

// Runs BODY with T bound to the element type of `dtype`.
#define CONTRASTIVE_DISPATCH(dtype, BODY)              \
  switch (dtype) {                                     \
    case ::contrastive_cuda::DType::kFloat32: {        \
      using T = float;                                 \
      BODY;                                            \
      break;                                           \
    }                                                  \
    case ::contrastive_cuda::DType::kFloat16: {        \
      using T = __half;                                \
      BODY;                                            \
      break;                                           \
    }                                                  \
    case ::contrastive_cuda::DType::kBFloat16: {       \
      using T = __nv_bfloat16;                         \
      BODY;                                            \
      break;                                           \
    }                                                  \
  }
