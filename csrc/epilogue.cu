// The fused epilogues between torch's GEMMs (see contrastive_cuda.h): each reads one chunk of
// cosines once. Rows are owned by one warp each (lanes stride over the columns, then a butterfly
// reduction in a fixed order), key columns by one thread each (coalesced over the columns): no
// atomics on floats, so every result is bitwise reproducible. The arithmetic is epilogue.h's.
//
// Each kernel is compiled per feature set (hard negatives, pairwise sigmoid, column terms, Ring band,
// labels, guide): the switches are then constants, so a plain InfoNCE row carries no code of the
// others, not even the guide's load (F = -1 is the generic fallback that reads them at run time).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

// Every per-pair loop is unrolled 4 times (four independent loads in flight per lane); the static
// report (benchmarks/cuda_report.py) divides the unrolled body's instructions by this factor.
#define CO_PAIR_LOOP _Pragma("unroll 4")
// The plain-quad loops (a float4 of four pairs per lane and step) are unrolled twice: 8 pairs per
// iteration, which the report divides by.
#define CO_QUAD_LOOP _Pragma("unroll 2")

#include "contrastive_cuda.h"

namespace contrastive_cuda {
namespace {

constexpr int kWarps = 8;  // rows per block (one warp each)
constexpr int kColThreads = 256;  // key columns per block (one thread each)

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

enum Feature : int { kHard = 1, kSigmoid = 2, kColumns = 4, kBand = 8, kLabels = 16, kGuide = 32 };

int features(const Roles& ro, const Terms& t, bool columns) {
  return (t.hard ? kHard : 0) | (t.sigmoid ? kSigmoid : 0) | (columns ? kColumns : 0) |
         (ro.band_lo != nullptr ? kBand : 0) | (ro.row_labels != nullptr ? kLabels : 0) |
         (ro.guide_max != nullptr ? kGuide : 0);
}

// The switches of feature set F as constants (F < 0: left as given).
template <int F>
__device__ __forceinline__ void specialize(Roles& ro, Terms& t) {
  if constexpr (F >= 0) {
    t.hard = (F & kHard) != 0;
    t.sigmoid = (F & kSigmoid) != 0;
    if (!(F & kBand)) ro.band_lo = ro.band_hi = nullptr;
    if (!(F & kLabels)) ro.row_labels = ro.col_labels = nullptr;
    if (!(F & kGuide)) ro.guide_max = nullptr;
  }
}

// fn(std::integral_constant<int, F>) for the compiled feature sets: one of {plain, hard negatives,
// pairwise sigmoid, column terms} with or without a band and labels, and a guide alone (GISTEmbed's
// rows); any other mix is generic.
template <typename Fn>
void with_features(int f, Fn&& fn) {
#define CO_CASE(v) \
  case v:          \
    fn(std::integral_constant<int, v>{}); \
    return;
#define CO_CASES(kind) CO_CASE(kind) CO_CASE(kind | kBand) CO_CASE(kind | kLabels) CO_CASE(kind | kBand | kLabels)
  switch (f) {
    CO_CASES(0)
    CO_CASES(kHard)
    CO_CASES(kSigmoid)
    CO_CASES(kColumns)
    CO_CASE(kGuide)
    default:
      fn(std::integral_constant<int, -1>{});
  }
}

// The same for the passes that only the band, the labels and the guide change (column terms, Ring
// histograms); with a guide they are generic.
template <typename Fn>
void with_role_features(int f, Fn&& fn) {
  switch (f & (kBand | kLabels | kGuide)) {
    CO_CASES(0)
    default:
      fn(std::integral_constant<int, -1>{});
  }
}
#undef CO_CASES
#undef CO_CASE

int last_error() { return static_cast<int>(cudaGetLastError()); }

__device__ __forceinline__ Lse shfl_lse(Lse a, int offset) {
  Lse b;
  b.m = __shfl_xor_sync(0xFFFFFFFFu, a.m, offset);
  b.l = __shfl_xor_sync(0xFFFFFFFFu, a.l, offset);
  return b;
}

// The warp's merged accumulator (every lane gets it; the butterfly's order is fixed).
__device__ Acc warp_merge(Acc a) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Acc b;
    b.lse = shfl_lse(a.lse, offset);
    b.lse_beta = shfl_lse(a.lse_beta, offset);
    b.pos_sum = __shfl_xor_sync(0xFFFFFFFFu, a.pos_sum, offset);
    b.pair = __shfl_xor_sync(0xFFFFFFFFu, a.pair, offset);
    b.pos_n = __shfl_xor_sync(0xFFFFFFFFu, a.pos_n, offset);
    b.den_n = __shfl_xor_sync(0xFFFFFFFFu, a.den_n, offset);
    // merge in lane order so that both lanes of a pair compute the same value
    a = (threadIdx.x & offset) ? acc_merge(b, a) : acc_merge(a, b);
  }
  return a;
}

__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float o = __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    v = (threadIdx.x & offset) ? o + v : v + o;
  }
  return v;
}

__global__ void acc_init_kernel(Acc* acc, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) acc[i] = Acc();
}

__device__ __forceinline__ float4 scaled(float4 v, float s) { return make_float4(s * v.x, s * v.y, s * v.z, s * v.w); }

template <int F>
__global__ void rows_forward_kernel(Chunk c, Roles roles, Terms terms, const float* scale, const float* bias,
                                    Acc* acc) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= c.rows) return;  // whole warps leave together
  specialize<F>(roles, terms);
  const float s = *scale;
  if (terms.sigmoid) terms.bias = *bias;
  const int64_t row = c.r0 + i;
  const RowRoles rr = row_roles(roles, row);
  const float* __restrict__ srow = c.s + i * c.ld;
  Acc a;
  auto push_pair = [&](int64_t j) {
    const float x = s * srow[j];
    const Pair p = pair_role(roles, rr, c.c0 + j, chunk_guide(c, roles, i, j));
    acc_push(a, terms, p, in_denominator(roles, rr, p, x), x);
  };
  int64_t rest = 0;  // the pairs from here on go one by one
  if constexpr (F == 0) {
    if (quads(c, terms)) {  // lane l takes the quads 4l, 4l + 128, ...: whole 512-byte lines per warp step
      const QuadRoles q = quad_roles(roles, rr, c.c0, c.cols);
      const int end = static_cast<int>(c.cols / 4 * 4);
      int j = 4 * lane;
      while (j < end) {
        // the plain quads in a loop of their own; a quad that is not plain leaves it, goes pair by
        // pair, and the loop resumes after it
        CO_QUAD_LOOP for (; j < end; j += 128) {
          if (!plain_quad(q, j)) break;
          const float4 x = scaled(*reinterpret_cast<const float4*>(srow + j), s);
          acc_push_plain4(a, x.x, x.y, x.z, x.w);
        }
        if (j < end) {
          for (int k = 0; k < 4; ++k) push_pair(j + k);
          j += 128;
        }
      }
      rest = end;
    }
  }
  CO_PAIR_LOOP for (int64_t j = rest + lane; j < c.cols; j += 32) push_pair(j);
  a = warp_merge(a);
  if (lane == 0) acc[row] = acc_merge(acc[row], a);
}

template <int F>
__global__ void cols_forward_kernel(Chunk c, Roles roles, Terms terms, const float* scale, Acc* acc) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kColThreads) + threadIdx.x;
  if (j >= c.cols) return;
  specialize<F>(roles, terms);
  const float s = *scale;
  const int64_t col = c.c0 + j;
  const Terms plain;  // the column terms are plain softmax terms
  Acc a;
  CO_PAIR_LOOP for (int64_t i = 0; i < c.rows; ++i) {
    const float x = s * c.s[i * c.ld + j];
    const RowRoles rr = row_roles(roles, c.r0 + i);
    const Pair p = pair_role(roles, rr, col, chunk_guide(c, roles, i, j));
    acc_push(a, plain, p, in_denominator(roles, rr, p, x), x);
  }
  acc[col] = acc_merge(acc[col], a);
}

// The column pass of a plain feature set on 16-byte aligned rows: a thread per quad of key columns
// (positions 4t .. 4t + 3, coalesced float4 loads down the rows), the quads of a row that are plain
// (plain_quad) without role tests.
__global__ void cols_forward_quads_kernel(Chunk c, Roles roles, const float* scale, Acc* acc) {
  const int j = 4 * static_cast<int>(blockIdx.x * kColThreads + threadIdx.x);
  if (j >= c.cols) return;
  Terms plain;  // the column terms are plain softmax terms
  specialize<0>(roles, plain);
  const float s = *scale;
  const int width = static_cast<int>(c.cols - j < 4 ? c.cols - j : 4);
  Acc a[4];
  int64_t i = 0;
  while (i < c.rows) {
    // the rows whose quad here is plain in a loop of their own (a plain candidate's push is
    // acc_push's, without the role test); another row's quad leaves it and goes pair by pair
    if (width == 4) {
      CO_QUAD_LOOP for (; i < c.rows; ++i) {
        if (!plain_quad(quad_roles(roles, row_roles(roles, c.r0 + i), c.c0, c.cols), j)) break;
        const float4 x = scaled(*reinterpret_cast<const float4*>(c.s + i * c.ld + j), s);
        lse_push(a[0].lse, x.x);
        lse_push(a[1].lse, x.y);
        lse_push(a[2].lse, x.z);
        lse_push(a[3].lse, x.w);
        for (int k = 0; k < 4; ++k) a[k].den_n += 1;
      }
    }
    if (i < c.rows) {
      const RowRoles rr = row_roles(roles, c.r0 + i);
      for (int k = 0; k < width; ++k) {
        const float x = s * c.s[i * c.ld + j + k];
        const Pair p = pair_role(roles, rr, c.c0 + j + k, 0.0f);
        acc_push(a[k], plain, p, in_denominator(roles, rr, p, x), x);
      }
      ++i;
    }
  }
  for (int k = 0; k < width; ++k) acc[c.c0 + j + k] = acc_merge(acc[c.c0 + j + k], a[k]);
}

__global__ void acc_finish_kernel(const Acc* acc, int64_t count, float* lse, float* pos, int64_t* den_n,
                                  int64_t* pos_n, float* lse_beta, float* pair) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  acc_finish_one(acc[i], lse + i, pos + i, den_n + i, pos_n + i, lse_beta ? lse_beta + i : nullptr,
                 pair ? pair + i : nullptr);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Four dS values at once (8 bytes for fp16/bf16, 16 for fp32: the row is 4-aligned with the quads).
template <typename T>
__device__ __forceinline__ void store_quad(T* out, float4 v) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(out) = v;
  } else {
    struct alignas(4 * sizeof(T)) Quad { T v[4]; };
    *reinterpret_cast<Quad*>(out) = Quad{{from_float<T>(v.x), from_float<T>(v.y), from_float<T>(v.z),
                                          from_float<T>(v.w)}};
  }
}

// dL/dx of a plain quad's pairs (plain_grad), with the key columns' terms where COLUMNS.
template <bool COLUMNS>
__device__ __forceinline__ float4 plain_quad_grad(const RowGrad& g, const GradVecs& grads, int64_t col, float4 x) {
  if constexpr (COLUMNS) {
    const ColGrad c0 = col_grad(grads, col), c1 = col_grad(grads, col + 1), c2 = col_grad(grads, col + 2),
                   c3 = col_grad(grads, col + 3);
    return make_float4(plain_grad(g, &c0, x.x), plain_grad(g, &c1, x.y), plain_grad(g, &c2, x.z),
                       plain_grad(g, &c3, x.w));
  } else {
    return make_float4(plain_grad(g, nullptr, x.x), plain_grad(g, nullptr, x.y), plain_grad(g, nullptr, x.z),
                       plain_grad(g, nullptr, x.w));
  }
}

template <typename T, int F>
__global__ void rows_backward_kernel(Chunk c, Roles roles, Terms terms, const float* scale, const float* bias,
                                     GradVecs grads, T* ds, float* row_dscale, float* row_dbias) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= c.rows) return;
  specialize<F>(roles, terms);
  const bool columns = F >= 0 ? (F & kColumns) != 0 : grads.col_g_lse != nullptr;
  const float s = *scale;
  if (terms.sigmoid) terms.bias = *bias;
  const int64_t row = c.r0 + i;
  const RowGrad g = row_grad(grads, row);
  const RowRoles rr = row_roles(roles, row);
  const float* __restrict__ srow = c.s + i * c.ld;
  T* __restrict__ drow = ds + i * c.cols;
  float dscale = 0.0f, dbias = 0.0f;
  auto pair = [&](int64_t j) {
    const float cosine = srow[j];
    const float d = pair_dlogit(roles, rr, terms, grads, g, columns, c.c0 + j, s * cosine,
                                chunk_guide(c, roles, i, j), &dbias);
    drow[j] = from_float<T>(s * d);
    dscale += d * cosine;
  };
  int64_t rest = 0;  // the pairs from here on go one by one
  if constexpr (F == 0 || F == kColumns) {
    if (quads(c, terms)) {  // as the forward: lane l takes the quads 4l, 4l + 128, ...
      const QuadRoles q = quad_roles(roles, rr, c.c0, c.cols);
      const int end = static_cast<int>(c.cols / 4 * 4);
      int j = 4 * lane;
      while (j < end) {
        CO_QUAD_LOOP for (; j < end; j += 128) {  // the plain quads (as the forward)
          if (!plain_quad(q, j)) break;
          const float4 cos4 = *reinterpret_cast<const float4*>(srow + j);
          const float4 d = plain_quad_grad<F == kColumns>(g, grads, c.c0 + j, scaled(cos4, s));
          store_quad(drow + j, scaled(d, s));
          dscale += (d.x * cos4.x + d.y * cos4.y) + (d.z * cos4.z + d.w * cos4.w);
        }
        if (j < end) {
          for (int k = 0; k < 4; ++k) pair(j + k);
          j += 128;
        }
      }
      rest = end;
    }
  }
  CO_PAIR_LOOP for (int64_t j = rest + lane; j < c.cols; j += 32) pair(j);
  dscale = warp_sum(dscale);
  dbias = warp_sum(dbias);
  if (lane == 0) {
    row_dscale[row] += dscale;
    row_dbias[row] += dbias;
  }
}

// SigLIP's forward with its unit-weight gradient: rows_forward_kernel's accumulator and
// rows_backward_kernel's dS, dL/dscale and dL/dbias partials from one read of the chunk (a warp per
// row, lanes over the columns, fixed-order merges).
template <typename T, int F>
__global__ void rows_pair_forward_kernel(Chunk c, Roles roles, Terms terms, const float* scale, const float* bias,
                                         Acc* acc, T* ds, float* row_dscale, float* row_dbias) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= c.rows) return;
  specialize<F>(roles, terms);
  const float s = *scale;
  terms.bias = *bias;
  const int64_t row = c.r0 + i;
  const RowRoles rr = row_roles(roles, row);
  const float* __restrict__ srow = c.s + i * c.ld;
  T* __restrict__ drow = ds + i * c.cols;
  Acc a;
  float dscale = 0.0f, dbias = 0.0f;
  CO_PAIR_LOOP for (int64_t j = lane; j < c.cols; j += 32) {
    const float cosine = srow[j];
    const float x = s * cosine;
    const Pair p = pair_role(roles, rr, c.c0 + j, chunk_guide(c, roles, i, j));
    const float d = acc_push_pair_grad(a, terms, p, in_denominator(roles, rr, p, x), x);
    drow[j] = from_float<T>(s * d);
    dscale += d * cosine;
    dbias += d;
  }
  a = warp_merge(a);
  dscale = warp_sum(dscale);
  dbias = warp_sum(dbias);
  if (lane == 0) {
    acc[row] = acc_merge(acc[row], a);
    row_dscale[row] += dscale;
    row_dbias[row] += dbias;
  }
}

// one warp per row; a shared histogram of 2 × 256 counts per warp (integer atomics: exact)
template <int F>
__global__ void ring_histogram_kernel(Chunk c, Roles roles, const float* scale, const uint32_t* prefix, int shift,
                                      int32_t* hist) {
  __shared__ int32_t shared[kWarps][2][256];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + warp;
  for (int k = lane; k < 512; k += 32) shared[warp][k / 256][k % 256] = 0;
  __syncwarp();
  if (i < c.rows) {
    Terms unused;
    specialize<F>(roles, unused);
    const float s = *scale;
    const int64_t row = c.r0 + i;
    const RowRoles rr = row_roles(roles, row);
    const float* srow = c.s + i * c.ld;
    const bool first = shift >= 24;
    const uint32_t p0 = first ? 0u : prefix[2 * i], p1 = first ? 0u : prefix[2 * i + 1];
    CO_PAIR_LOOP for (int64_t j = lane; j < c.cols; j += 32) {
      if (!pair_role(roles, rr, c.c0 + j, chunk_guide(c, roles, i, j)).candidate) continue;
      const uint32_t key = order_key(s * srow[j]);
      const uint32_t digit = (key >> shift) & 255u;
      if (matches_prefix(key, p0, shift)) atomicAdd(&shared[warp][0][digit], 1);
      if (!first && matches_prefix(key, p1, shift)) atomicAdd(&shared[warp][1][digit], 1);
    }
    __syncwarp();
    int32_t* out = hist + i * 512;
    for (int k = lane; k < 512; k += 32) out[k] += shared[warp][k / 256][k % 256];
  }
}

__global__ void ring_step_kernel(const int32_t* hist, int64_t rows, int shift, double outer, double inner,
                                 uint32_t* prefix, int64_t* rank, uint8_t* nonempty) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows) ring_step_row(hist + i * 512, shift, outer, inner, prefix + 2 * i, rank + 2 * i, nonempty + i);
}

__global__ void ring_finish_kernel(const uint32_t* prefix, const uint8_t* nonempty, int64_t rows, float* v_lo,
                                   float* v_hi) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows) ring_band_row(prefix + 2 * i, nonempty[i] != 0, v_lo + i, v_hi + i);
}

unsigned blocks_of(int64_t count, int per_block) { return static_cast<unsigned>((count + per_block - 1) / per_block); }

}  // namespace

int acc_init(Acc* acc, int64_t count, void* stream) {
  if (count == 0) return 0;
  acc_init_kernel<<<blocks_of(count, 256), 256, 0, as_stream(stream)>>>(acc, count);
  return last_error();
}

int rows_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias, Acc* acc,
                 void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  with_features(features(roles, terms, false), [&](auto f) {
    rows_forward_kernel<decltype(f)::value>
        <<<blocks_of(c.rows, kWarps), 32 * kWarps, 0, as_stream(stream)>>>(c, roles, terms, scale, bias, acc);
  });
  return last_error();
}

int cols_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, Acc* acc, void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  // the column pass knows nothing of hard negatives or the sigmoid: only the band and labels vary
  const int f = features(roles, terms, false) & (kBand | kLabels | kGuide);
  if (f == 0 && c.ld % 4 == 0) {  // plain roles on aligned rows: a thread per quad of columns
    cols_forward_quads_kernel<<<blocks_of((c.cols + 3) / 4, kColThreads), kColThreads, 0, as_stream(stream)>>>(
        c, roles, scale, acc);
    return last_error();
  }
  with_role_features(f, [&](auto fv) {
    cols_forward_kernel<decltype(fv)::value>
        <<<blocks_of(c.cols, kColThreads), kColThreads, 0, as_stream(stream)>>>(c, roles, terms, scale, acc);
  });
  return last_error();
}

int acc_finish(const Acc* acc, int64_t count, float* lse, float* pos, int64_t* den_n, int64_t* pos_n, float* lse_beta,
               float* pair, void* stream) {
  if (count == 0) return 0;
  acc_finish_kernel<<<blocks_of(count, 256), 256, 0, as_stream(stream)>>>(acc, count, lse, pos, den_n, pos_n,
                                                                          lse_beta, pair);
  return last_error();
}

int rows_backward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias,
                  const GradVecs& grads, DType ds_dtype, void* ds, float* row_dscale, float* row_dbias,
                  void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  const dim3 grid(blocks_of(c.rows, kWarps)), block(32 * kWarps);
  const int f = features(roles, terms, grads.col_g_lse != nullptr);
  auto launch = [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    with_features(f, [&](auto feat) {
      rows_backward_kernel<T, decltype(feat)::value><<<grid, block, 0, as_stream(stream)>>>(
          c, roles, terms, scale, bias, grads, static_cast<T*>(ds), row_dscale, row_dbias);
    });
  };
  switch (ds_dtype) {
    case DType::kFloat32:
      launch(static_cast<float*>(nullptr));
      break;
    case DType::kFloat16:
      launch(static_cast<__half*>(nullptr));
      break;
    case DType::kBFloat16:
      launch(static_cast<__nv_bfloat16*>(nullptr));
      break;
  }
  return last_error();
}

int rows_pair_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias, Acc* acc,
                      DType ds_dtype, void* ds, float* row_dscale, float* row_dbias, void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  const dim3 grid(blocks_of(c.rows, kWarps)), block(32 * kWarps);
  // SigLIP's own feature set compiled; any other mix (a band, labels, a guide) the generic kernel
  const bool plain = features(roles, terms, false) == kSigmoid;
  auto launch = [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    if (plain)
      rows_pair_forward_kernel<T, kSigmoid><<<grid, block, 0, as_stream(stream)>>>(
          c, roles, terms, scale, bias, acc, static_cast<T*>(ds), row_dscale, row_dbias);
    else
      rows_pair_forward_kernel<T, -1><<<grid, block, 0, as_stream(stream)>>>(
          c, roles, terms, scale, bias, acc, static_cast<T*>(ds), row_dscale, row_dbias);
  };
  switch (ds_dtype) {
    case DType::kFloat32:
      launch(static_cast<float*>(nullptr));
      break;
    case DType::kFloat16:
      launch(static_cast<__half*>(nullptr));
      break;
    case DType::kBFloat16:
      launch(static_cast<__nv_bfloat16*>(nullptr));
      break;
  }
  return last_error();
}

int ring_histogram(const Chunk& c, const Roles& roles, const float* scale, const uint32_t* prefix, int shift,
                   int32_t* hist, void* stream) {
  if (c.rows == 0 || c.cols == 0) return 0;
  with_role_features(features(roles, Terms(), false), [&](auto f) {
    ring_histogram_kernel<decltype(f)::value>
        <<<blocks_of(c.rows, kWarps), 32 * kWarps, 0, as_stream(stream)>>>(c, roles, scale, prefix, shift, hist);
  });
  return last_error();
}

int ring_step(const int32_t* hist, int64_t rows, int shift, double outer, double inner, uint32_t* prefix,
              int64_t* rank, uint8_t* nonempty, void* stream) {
  if (rows == 0) return 0;
  ring_step_kernel<<<blocks_of(rows, 128), 128, 0, as_stream(stream)>>>(hist, rows, shift, outer, inner, prefix,
                                                                        rank, nonempty);
  return last_error();
}

int ring_finish(const uint32_t* prefix, const uint8_t* nonempty, int64_t rows, float* v_lo, float* v_hi,
                void* stream) {
  if (rows == 0) return 0;
  ring_finish_kernel<<<blocks_of(rows, 256), 256, 0, as_stream(stream)>>>(prefix, nonempty, rows, v_lo, v_hi);
  return last_error();
}

}  // namespace contrastive_cuda
