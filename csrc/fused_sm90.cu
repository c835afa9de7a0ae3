// The fused sm_90a path of the plain roles (see contrastive_cuda.h, fused_forward / fused_backward):
// one kernel per chunk forms each 128 × 128 tile of cosines with wgmma from the bf16/fp16 unit rows
// and reduces it in registers, so no fp32 cosine is written or read back; the forward leaves per-tile
// partial accumulators (each tile row's and tile column's max and sum of exponentials), the backward
// writes dS (the GEMMs' dtype) and per-tile partial sums of dL/dx · cos for dL/dscale.
//
// Tiles: 256 threads (two warpgroups of 64 rows each, one shared 128-column operand), K in steps of
// 64 (one 128-byte swizzled row of bf16/fp16 per tile row), three cp.async stages; two CTAs per SM
// (≤ 128 registers, ≤ 99 KiB of shared memory), so one CTA's epilogue runs beside the other's MMAs.
// Reductions go in a fixed order (quad and butterfly shuffles, then shared memory in warp order) and
// the partials are merged in tile order (merge_partials): bitwise reproducible, no float atomics.
//
// The tile body exists only in the sm_90a machine code (wgmma is sm_90a-only); compiled for any
// other target the kernels are empty and fused_available() says no, so the glue takes the cuBLAS +
// epilogue path there.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>
#include <type_traits>

#include "contrastive_cuda.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CO_FUSED_BODY 1
#endif

// The static report (benchmarks/cuda_report.py) compiles the plain tiles' epilogue alone
// (-DCO_FUSED_REPORT_PLAIN=1): its instructions per tile are what a large plain batch runs.
#ifndef CO_FUSED_REPORT_PLAIN
#define CO_FUSED_REPORT_PLAIN 0
#endif

namespace contrastive_cuda {
namespace {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kTile = kFusedTile;  // 128 rows × 128 columns
constexpr int kTileK = 64;  // one 128-byte row of 16-bit operands
constexpr int kStages = 3;
constexpr int kOperandBytes = kTile * kTileK * 2;  // 16 KiB: one operand's tile of one stage
constexpr int kStageBytes = 2 * kOperandBytes;
constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + slack to align the stages to 1024 bytes

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

#ifdef CO_FUSED_BODY

// --- the mainloop's PTX -----------------------------------------------------------------------

// Copies the tile's rows [0, 128) × features [k0, k0 + 64) (row stride d, d % 8 == 0) into the
// stage's operand as the 128-byte swizzle of wgmma's K-major layout: the 16-byte chunk c of row r at
// chunk c ^ (r % 8). Rows at or past `valid_rows` and features past d are zero-filled.
template <typename T>
__device__ __forceinline__ void load_operand(uint32_t tile, const T* base, int64_t valid_rows, int64_t d, int64_t k0) {
  // thread t copies chunk t % 8 of the rows t / 8 + 32 k: one chunk column and one swizzle phase
  // (32 k keeps r % 8) for all four, so only the row offset changes between them
  const int row = threadIdx.x >> 3, chunk = threadIdx.x & 7;
  const bool col_ok = k0 + chunk * 8 < d;
  const T* src = base + row * d + k0 + chunk * 8;
  const uint32_t dst = tile + row * 128 + ((chunk ^ (row & 7)) << 4);
#pragma unroll
  for (int k = 0; k < kTile * kTileK / 8 / kThreads; ++k) {
    const bool ok = col_ok && row + 32 * k < valid_rows;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst + k * 32 * 128),
                 "l"(ok ? src + 32 * k * d : base), "r"(ok ? 16 : 0));
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// The matrix descriptor of a K-major operand in the 128-byte swizzle: start address, leading byte
// offset 1 (unused by this layout), stride 1024 bytes between groups of 8 rows, swizzle mode 1.
__device__ __forceinline__ uint64_t operand_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

#define CO_F8(i)                                                                                          \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define CO_WGMMA_REGS                                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d[64] (a 64 × 128 fp32 accumulator of the warpgroup) += A (64 × 16, K-major) · B (128 × 16, K-major)ᵀ
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t a, uint64_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " CO_WGMMA_REGS ", %64, %65, 1, 1, 1, 0, 0;\n"
                 : CO_F8(0), CO_F8(8), CO_F8(16), CO_F8(24), CO_F8(32), CO_F8(40), CO_F8(48), CO_F8(56)
                 : "l"(a), "l"(b));
  } else {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " CO_WGMMA_REGS ", %64, %65, 1, 1, 1, 0, 0;\n"
                 : CO_F8(0), CO_F8(8), CO_F8(16), CO_F8(24), CO_F8(32), CO_F8(40), CO_F8(48), CO_F8(56)
                 : "l"(a), "l"(b));
  }
}
#undef CO_WGMMA_REGS
#undef CO_F8

// acc = the tile's cosines: rows [tile_r0, +128) of q × rows [tile_c0, +128) of c, K = d. Thread t of
// warpgroup g holds rows 64 g + 16 (t / 32 % 4) + t % 32 / 4 (+ 8) at columns 8 b + 2 (t % 4) (+ 1):
// acc[4 b + 2 h + e] is (row + 8 h, column 8 b + 2 (t % 4) + e), b in [0, 16).
template <typename T>
__device__ __forceinline__ void tile_cosines(float (&acc)[64], uint32_t stages, const T* q, int64_t q_rows,
                                             const T* c, int64_t c_rows, int64_t d) {
  const int ktiles = static_cast<int>((d + kTileK - 1) / kTileK);
  const uint32_t wg_rows = (threadIdx.x / 128) * 64 * 128;  // the warpgroup's 64 rows of 128 bytes
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) {
      load_operand(stages + s * kStageBytes, q, q_rows, d, s * kTileK);
      load_operand(stages + s * kStageBytes + kOperandBytes, c, c_rows, d, s * kTileK);
    }
    cp_async_commit();
  }
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of step kt have landed
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // ... and are visible to wgmma
    __syncthreads();  // everyone's, and every wgmma of step kt - 1 is done: its stage may be refilled
    const int next = kt + kStages - 1;
    if (next < ktiles) {
      const uint32_t st = stages + (next % kStages) * kStageBytes;
      load_operand(st, q, q_rows, d, static_cast<int64_t>(next) * kTileK);
      load_operand(st + kOperandBytes, c, c_rows, d, static_cast<int64_t>(next) * kTileK);
    }
    cp_async_commit();
    const uint32_t st = stages + (kt % kStages) * kStageBytes;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk)  // 16 features = 32 bytes along the swizzled rows
      wgmma_m64n128k16<T>(acc, operand_desc(st + wg_rows + 32 * kk), operand_desc(st + kOperandBytes + 32 * kk));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages are free: the epilogue's shared scratch reuses them
}

// --- the epilogues ----------------------------------------------------------------------------

// Where the thread's accumulator sits in the tile (tile_cosines' layout).
struct Frag {
  int row;  // tile row of acc[4 b + e]; acc[4 b + 2 + e] is row + 8
  int col;  // tile column of acc[4 b]; acc[4 b + e] is col + 8 b + e
  int warp;  // the block's warp, 0..7 (each owns 16 tile rows)
  int lane;
};

__device__ __forceinline__ Frag frag() {
  const int t = threadIdx.x;
  return {(t / 128) * 64 + (t / 32 % 4) * 16 + t % 32 / 4, 2 * (t % 4), t / 32, t % 32};
}

__device__ __forceinline__ int acc_col(const Frag& f, int k) { return f.col + 8 * (k / 4) + (k & 1); }
__device__ __forceinline__ int acc_half(int k) { return (k >> 1) & 1; }  // 0: f.row, 1: f.row + 8

// The four lanes of a quad hold one row: a fixed-order sum / max (both lanes of a pair compute the
// same value: float addition is commutative).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
  return v + __shfl_xor_sync(0xFFFFFFFFu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, 2));
}
__device__ __forceinline__ int quad_sum_int(int v) {
  v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
  return v + __shfl_xor_sync(0xFFFFFFFFu, v, 2);
}
// The eight quads of a warp hold a column's 16 rows (lanes l, l ^ 4, l ^ 8, ...).
__device__ __forceinline__ float column_sum(float v) {
  for (int o = 4; o < 32; o <<= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}
__device__ __forceinline__ float column_max(float v) {
  for (int o = 4; o < 32; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}
__device__ __forceinline__ int column_sum_int(int v) {
  for (int o = 4; o < 32; o <<= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// Whether every pair of the thread's two rows in this tile is a plain candidate (plain_span over the
// tile's 128 columns, all inside the chunk): the block takes the role-free epilogue when all are.
__device__ __forceinline__ bool rows_plain(const Chunk& c, const Roles& roles, const Frag& f, int64_t tile_r0,
                                           int64_t tile_c0) {
  if (tile_c0 + kTile > c.cols) return false;
  bool plain = true;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = tile_r0 + f.row + 8 * h;
    if (i >= c.rows) return false;
    const QuadRoles q = quad_roles(roles, row_roles(roles, c.r0 + i), c.c0, c.cols);
    plain = plain && plain_span(q, static_cast<int>(tile_c0), kTile);
  }
  return plain;
}

// The roles of the thread's 64 pairs as bit masks (bit k: acc[k]): in the denominator, positive.
// Pairs outside the chunk are neither. (The fused path has no band: in_denominator ignores x.)
__device__ __forceinline__ void pair_masks(const Chunk& c, const Roles& roles, const Frag& f, int64_t tile_r0,
                                           int64_t tile_c0, uint64_t* den, uint64_t* pos) {
  *den = 0, *pos = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = tile_r0 + f.row + 8 * h;
    if (i >= c.rows) continue;
    const RowRoles rr = row_roles(roles, c.r0 + i);
#pragma unroll
    for (int k = 0; k < 64; ++k) {
      if (acc_half(k) != h) continue;
      const int64_t j = tile_c0 + acc_col(f, k);
      if (j >= c.cols) continue;
      const Pair p = pair_role(roles, rr, c.c0 + j, 0.0f);
      if (in_denominator(roles, rr, p, 0.0f)) *den |= 1ull << k;
      if (p.positive) *pos |= 1ull << k;
    }
  }
}

__device__ __forceinline__ bool bit(uint64_t mask, int k) { return (mask >> k) & 1ull; }

// Shared scratch of the column reduction: per warp and tile column, then per tile column.
struct ColumnScratch {
  float max[8][kTile];
  float sum[8][kTile];
  float pos_sum[8][kTile];
  int den_n[8][kTile];
  int pos_n[8][kTile];
  float col_max[kTile];
};
static_assert(sizeof(ColumnScratch) <= kStages * kStageBytes, "the column scratch reuses the stages");

// The tile's row partials (and, with col_part, its column partials) from the logits x = s · acc.
template <bool PLAIN>
__device__ __forceinline__ void forward_epilogue(const float (&x)[64], const Chunk& c, const Roles& roles,
                                                 const Frag& f, int64_t tile_r0, int64_t tile_c0, Acc* row_part,
                                                 Acc* col_part, ColumnScratch* scratch) {
  const int64_t tiles_n = fused_tile_count(c.cols), tiles_m = fused_tile_count(c.rows);
  uint64_t den = ~0ull, pos = 0ull;
  if constexpr (!PLAIN) pair_masks(c, roles, f, tile_r0, tile_c0, &den, &pos);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < 64; ++k)
      if (acc_half(k) == h && (PLAIN || bit(den, k))) mx = fmaxf(mx, x[k]);
    mx = quad_max(mx);
    float l = 0.0f, ps = 0.0f;
    int dn = 0, pn = 0;
#pragma unroll
    for (int k = 0; k < 64; ++k) {
      if (acc_half(k) != h) continue;
      if (PLAIN || bit(den, k)) l += exp_term(x[k] - mx);
      if constexpr (!PLAIN) {
        dn += bit(den, k);
        if (bit(pos, k)) ps += x[k], ++pn;
      }
    }
    l = quad_sum(l);
    if constexpr (PLAIN) {
      dn = kTile;
    } else {
      ps = quad_sum(ps), dn = quad_sum_int(dn), pn = quad_sum_int(pn);
    }
    const int64_t i = tile_r0 + f.row + 8 * h;
    if (f.lane % 4 == 0 && i < c.rows) {
      Acc a;
      a.lse = {mx, l};
      a.pos_sum = ps, a.pos_n = pn, a.den_n = dn;
      row_part[i * tiles_n + tile_c0 / kTile] = a;
    }
  }
  if (col_part == nullptr) return;
  // columns: the max over the tile's rows first (warp butterflies, then the 8 warps in order), then
  // the sums of exponentials against it
#pragma unroll
  for (int k = 0; k < 64; k += 4) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float a = (PLAIN || bit(den, k + e)) ? x[k + e] : -INFINITY;
      const float b = (PLAIN || bit(den, k + 2 + e)) ? x[k + 2 + e] : -INFINITY;
      const float m = column_max(fmaxf(a, b));
      if (f.lane < 4) scratch->max[f.warp][acc_col(f, k + e)] = m;
    }
  }
  __syncthreads();
  if (threadIdx.x < kTile) {
    float m = scratch->max[0][threadIdx.x];
    for (int w = 1; w < 8; ++w) m = fmaxf(m, scratch->max[w][threadIdx.x]);
    scratch->col_max[threadIdx.x] = m;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < 64; k += 4) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = acc_col(f, k + e);
      const float m = scratch->col_max[col];
      float l = 0.0f, ps = 0.0f;
      int dn = 0, pn = 0;
#pragma unroll
      for (int hk = k + e; hk <= k + 2 + e; hk += 2) {
        if (PLAIN || bit(den, hk)) l += exp_term(x[hk] - m);
        if constexpr (!PLAIN) {
          dn += bit(den, hk);
          if (bit(pos, hk)) ps += x[hk], ++pn;
        }
      }
      l = column_sum(l);
      if constexpr (!PLAIN) ps = column_sum(ps), dn = column_sum_int(dn), pn = column_sum_int(pn);
      if (f.lane < 4) {
        scratch->sum[f.warp][col] = l;
        if constexpr (!PLAIN) {
          scratch->pos_sum[f.warp][col] = ps;
          scratch->den_n[f.warp][col] = dn;
          scratch->pos_n[f.warp][col] = pn;
        }
      }
    }
  }
  __syncthreads();
  const int64_t j = tile_c0 + threadIdx.x;
  if (threadIdx.x < kTile && j < c.cols) {
    Acc a;
    a.lse.m = scratch->col_max[threadIdx.x];
    float l = 0.0f, ps = 0.0f;
    int dn = 0, pn = 0;
    for (int w = 0; w < 8; ++w) {
      l += scratch->sum[w][threadIdx.x];
      if constexpr (!PLAIN) {
        ps += scratch->pos_sum[w][threadIdx.x];
        dn += scratch->den_n[w][threadIdx.x];
        pn += scratch->pos_n[w][threadIdx.x];
      }
    }
    if constexpr (PLAIN) dn = kTile;
    a.lse.l = l;
    a.pos_sum = ps, a.pos_n = pn, a.den_n = dn;
    col_part[j * tiles_m + tile_r0 / kTile] = a;
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// dS = s · dL/dx of the tile's pairs into ds (row stride ld, even; the pad column past an odd
// width gets 0) and the tile rows' partial sums of dL/dx · cos.
template <typename T, bool PLAIN, bool COLUMNS>
__device__ __forceinline__ void backward_epilogue(const float (&cosine)[64], float s, const Chunk& c,
                                                  const Roles& roles, const GradVecs& grads, const Frag& f,
                                                  int64_t tile_r0, int64_t tile_c0, T* ds, int64_t ld,
                                                  float* dscale_part) {
  const int64_t tiles_n = fused_tile_count(c.cols);
  const Terms plain_terms;
  uint64_t den = ~0ull, pos = 0ull;
  if constexpr (!PLAIN) pair_masks(c, roles, f, tile_r0, tile_c0, &den, &pos);
  const int64_t i0 = tile_r0 + f.row;
  const bool valid[2] = {i0 < c.rows, i0 + 8 < c.rows};
  const RowGrad g[2] = {valid[0] ? row_grad(grads, c.r0 + i0) : RowGrad(),
                        valid[1] ? row_grad(grads, c.r0 + i0 + 8) : RowGrad()};
  float dscale[2] = {0.0f, 0.0f};
  // a column pair at a time, both rows: each column's gradient vectors are read once
#pragma unroll
  for (int k = 0; k < 64; k += 4) {
    const int64_t j0 = tile_c0 + acc_col(f, k);
    float dx[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t j = j0 + e;
      if (j >= c.cols) continue;
      ColGrad cg;
      if constexpr (COLUMNS) cg = col_grad(grads, c.c0 + j);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int kk = k + 2 * h + e;
        if (!valid[h]) continue;
        const float x = s * cosine[kk];
        float dl;
        if constexpr (PLAIN) {
          dl = plain_grad(g[h], COLUMNS ? &cg : nullptr, x);
        } else {
          const Pair p{bit(pos, kk), bit(den, kk) && !bit(pos, kk)};  // no band: a candidate is in the denominator
          float unused = 0.0f;
          dl = pair_grad(plain_terms, p, bit(den, kk), x, g[h], COLUMNS ? &cg : nullptr, &unused);
        }
        dx[h][e] = dl;
        dscale[h] += dl * cosine[kk];
      }
    }
    struct alignas(2 * sizeof(T)) Two { T v[2]; };
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (valid[h] && j0 < c.cols)
        *reinterpret_cast<Two*>(ds + (i0 + 8 * h) * ld + j0) =
            Two{{from_float<T>(s * dx[h][0]), from_float<T>(s * dx[h][1])}};
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float total = quad_sum(dscale[h]);
    if (f.lane % 4 == 0 && valid[h]) dscale_part[(i0 + 8 * h) * tiles_n + tile_c0 / kTile] = total;
  }
}

#if !CO_FUSED_REPORT_PLAIN
// The tiles holding a positive, a self column, the key/extra boundary or the chunk's edge (a few of
// a large batch) take the role-testing epilogues out of line: their accumulator goes through local
// memory, so that the plain tiles' code keeps every value in registers.
__device__ __noinline__ void forward_general(const float (&x)[64], const Chunk& c, const Roles& roles, const Frag& f,
                                             int64_t tile_r0, int64_t tile_c0, Acc* row_part, Acc* col_part,
                                             ColumnScratch* scratch) {
  forward_epilogue<false>(x, c, roles, f, tile_r0, tile_c0, row_part, col_part, scratch);
}

template <typename T, bool COLUMNS>
__device__ __noinline__ void backward_general(const float (&cosine)[64], float s, const Chunk& c, const Roles& roles,
                                              const GradVecs& grads, const Frag& f, int64_t tile_r0, int64_t tile_c0,
                                              T* ds, int64_t ld, float* dscale_part) {
  backward_epilogue<T, false, COLUMNS>(cosine, s, c, roles, grads, f, tile_r0, tile_c0, ds, ld, dscale_part);
}
#endif

#endif  // CO_FUSED_BODY

__device__ __forceinline__ uint32_t aligned_stages(uint8_t* smem) {
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return (raw + 1023u) & ~1023u;
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    fused_forward_kernel(Operands o, Chunk c, Roles roles, const float* scale, Acc* row_part, Acc* col_part) {
#ifdef CO_FUSED_BODY
  extern __shared__ uint8_t smem[];
  const uint32_t stages = aligned_stages(smem);
  const int64_t tile_r0 = static_cast<int64_t>(blockIdx.y) * kTile, tile_c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const T* q = static_cast<const T*>(o.q) + tile_r0 * o.d;
  const T* k = static_cast<const T*>(o.c) + tile_c0 * o.d;
  float acc[64];
  tile_cosines<T>(acc, stages, q, c.rows - tile_r0, k, c.cols - tile_c0, o.d);
  const float s = *scale;
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] *= s;
  const Frag f = frag();
  auto* scratch = reinterpret_cast<ColumnScratch*>(smem + (stages - static_cast<uint32_t>(__cvta_generic_to_shared(smem))));
  if (CO_FUSED_REPORT_PLAIN || __syncthreads_and(rows_plain(c, roles, f, tile_r0, tile_c0)))
    forward_epilogue<true>(acc, c, roles, f, tile_r0, tile_c0, row_part, col_part, scratch);
#if !CO_FUSED_REPORT_PLAIN
  else
    forward_general(acc, c, roles, f, tile_r0, tile_c0, row_part, col_part, scratch);
#endif
#endif
}

template <typename T, bool COLUMNS>
__global__ void __launch_bounds__(kThreads, 2)
    fused_backward_kernel(Operands o, Chunk c, Roles roles, const float* scale, GradVecs grads, T* ds, int64_t ld,
                          float* dscale_part) {
#ifdef CO_FUSED_BODY
  extern __shared__ uint8_t smem[];
  const uint32_t stages = aligned_stages(smem);
  const int64_t tile_r0 = static_cast<int64_t>(blockIdx.y) * kTile, tile_c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const T* q = static_cast<const T*>(o.q) + tile_r0 * o.d;
  const T* k = static_cast<const T*>(o.c) + tile_c0 * o.d;
  float acc[64];
  tile_cosines<T>(acc, stages, q, c.rows - tile_r0, k, c.cols - tile_c0, o.d);
  const float s = *scale;
  const Frag f = frag();
  if (CO_FUSED_REPORT_PLAIN || __syncthreads_and(rows_plain(c, roles, f, tile_r0, tile_c0)))
    backward_epilogue<T, true, COLUMNS>(acc, s, c, roles, grads, f, tile_r0, tile_c0, ds, ld, dscale_part);
#if !CO_FUSED_REPORT_PLAIN
  else
    backward_general<T, COLUMNS>(acc, s, c, roles, grads, f, tile_r0, tile_c0, ds, ld, dscale_part);
#endif
#endif
}

// acc[i] = its merge with part[i · tiles + t] for t = 0, 1, ... in order (a thread per row)
__global__ void merge_partials_kernel(const Acc* part, int64_t count, int64_t tiles, Acc* acc) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  Acc a = acc[i];
  for (int64_t t = 0; t < tiles; ++t) a = acc_merge(a, part[i * tiles + t]);
  acc[i] = a;
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

dim3 tile_grid(const Chunk& c) {
  return dim3(static_cast<unsigned>(fused_tile_count(c.cols)), static_cast<unsigned>(fused_tile_count(c.rows)));
}

template <typename Kernel>
int set_shared(Kernel kernel) {
  return static_cast<int>(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
}

}  // namespace

bool fused_available(int device) {
  // the sm_90a machine code is the only one with the tile body; the runtime picks it on an sm_90
  // device when no plain sm_90 code competes
  const char* built = built_archs();
  if (std::strstr(built, "sm_90a") == nullptr || std::strstr(built, "sm_90 ") != nullptr) return false;
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

int fused_forward(const Operands& o, const Chunk& c, const Roles& roles, const float* scale, Acc* row_part,
                  Acc* col_part, void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  auto launch = [&](auto kernel) {
    if (const int err = set_shared(kernel)) return err;
    kernel<<<tile_grid(c), kThreads, kSmemBytes, as_stream(stream)>>>(o, c, roles, scale, row_part, col_part);
    return last_error();
  };
  return o.dtype == DType::kBFloat16 ? launch(fused_forward_kernel<__nv_bfloat16>) : launch(fused_forward_kernel<__half>);
}

int fused_backward(const Operands& o, const Chunk& c, const Roles& roles, const float* scale, const GradVecs& grads,
                   void* ds, int64_t ld, float* dscale_part, void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  auto launch = [&](auto kernel, auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    if (const int err = set_shared(kernel)) return err;
    kernel<<<tile_grid(c), kThreads, kSmemBytes, as_stream(stream)>>>(o, c, roles, scale, grads, static_cast<T*>(ds),
                                                                       ld, dscale_part);
    return last_error();
  };
  const bool columns = grads.col_g_lse != nullptr;
  if (o.dtype == DType::kBFloat16) {
    auto* t = static_cast<__nv_bfloat16*>(nullptr);
    return columns ? launch(fused_backward_kernel<__nv_bfloat16, true>, t)
                   : launch(fused_backward_kernel<__nv_bfloat16, false>, t);
  }
  auto* t = static_cast<__half*>(nullptr);
  return columns ? launch(fused_backward_kernel<__half, true>, t) : launch(fused_backward_kernel<__half, false>, t);
}

int merge_partials(const Acc* part, int64_t count, int64_t tiles, Acc* acc, void* stream) {
  if (count == 0 || tiles == 0) return 0;
  merge_partials_kernel<<<static_cast<unsigned>((count + 255) / 256), 256, 0, as_stream(stream)>>>(part, count, tiles,
                                                                                                   acc);
  return last_error();
}

}  // namespace contrastive_cuda
