// Forward of the generic core: inverse norms, per-row and per-column terms, and the normalization
// backward (a per-row pass like the norms). See contrastive_cuda.h for the contracts.
#include "tile.cuh"

namespace contrastive_cuda {

// One warp per row: inv[i] = 1 / max(||x_i||, 1e-12), as F.normalize. Butterfly sums give every
// lane the same, deterministic value.
template <typename T>
__global__ void __launch_bounds__(THREADS) _inv_norm_kernel(const T* x, int64_t rows, int64_t d, float* inv) {
  const int64_t row = blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float ss = 0.f;
  for (int64_t f = lane; f < d; f += 32) {
    const float v = to_float(x[row * d + f]);
    ss = fmaf(v, v, ss);
  }
  for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (lane == 0) inv[row] = 1.f / fmaxf(sqrtf(ss), 1e-12f);
}

// One warp per row: out = s·(g - x̂<x̂, g>) / max(||x||, eps) with normalization, else s·g.
template <typename T>
__global__ void __launch_bounds__(THREADS) _normalize_bwd_kernel(const T* x, const float* g, int64_t rows, int64_t d,
                                                                const float* scale, bool normalize, T* out) {
  const int64_t row = blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float s = *scale;
  const T* xr = x + row * d;
  const float* gr = g + row * d;
  T* outr = out + row * d;
  if (!normalize) {
    for (int64_t f = lane; f < d; f += 32) outr[f] = from_float<T>(s * gr[f]);
    return;
  }
  float ss = 0.f, dot = 0.f;
  for (int64_t f = lane; f < d; f += 32) {
    const float v = to_float(xr[f]);
    ss = fmaf(v, v, ss);
    dot = fmaf(v, gr[f], dot);
  }
  for (int off = 16; off > 0; off /= 2) {
    ss += __shfl_xor_sync(0xffffffffu, ss, off);
    dot += __shfl_xor_sync(0xffffffffu, dot, off);
  }
  const float norm = sqrtf(ss);
  const float denom = fmaxf(norm, 1e-12f);
  // <x̂, g> with x̂ = x / denom; a (near-)zero row has no radial part, as chunked._normalize_backward
  const float radial = norm > 1e-12f ? dot / denom : 0.f;
  for (int64_t f = lane; f < d; f += 32) {
    const float unit = to_float(xr[f]) / denom;
    outr[f] = from_float<T>(s * (gr[f] - unit * radial) / denom);
  }
}

// Terms of one home block (64 rows, or with COLS 64 key columns), walking every tile of the other
// side in order. Thread t reduces home entry t/2 over half t%2 of each tile's 64 other entries;
// the two halves are merged at the end (fixed order, so the result is deterministic).
template <typename T, bool COLS>
__global__ void __launch_bounds__(THREADS)
    _terms_fwd_kernel(CoreArgs a, float* lse_out, float* pos_out, int64_t* den_out, int64_t* pos_n_out) {
  __shared__ Smem<T> sm;
  const int64_t home0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t home_count = COLS ? a.m : a.n;
  const int64_t other_count = COLS ? a.n : num_cols(a);
  const int h = threadIdx.x / 2, half = threadIdx.x % 2;
  const int64_t hi = home0 + h;
  const float scale = *a.scale;
  Lse lse;
  float pos_sum = 0.f;
  long long den_n = 0, pos_n = 0;
  for (int64_t o0 = 0; o0 < other_count; o0 += BN) {
    const int64_t r0 = COLS ? o0 : home0, c0 = COLS ? home0 : o0;
    tile_cosines<T>(a, sm, r0, c0);
    if (hi < home_count) {
      for (int t = half * (BN / 2); t < (half + 1) * (BN / 2); ++t) {
        const int64_t oi = o0 + t;
        if (oi >= other_count) break;
        const int64_t i = COLS ? oi : hi, j = COLS ? hi : oi;
        const float logit = logit_of(COLS ? sm.s[t][h] : sm.s[h][t], scale);
        const Role ro = pair_role(a, i, j);
        if (ro.pos) {
          pos_sum += logit;
          ++pos_n;
        }
        if (in_denominator(a, ro, i, logit)) {
          lse.add(logit);
          ++den_n;
        }
      }
    }
  }
  // merge the two halves (lanes t and t^1 of the same warp); every lane takes part in the shuffles
  const float other_max = __shfl_xor_sync(0xffffffffu, lse.max, 1);
  const float other_sum = __shfl_xor_sync(0xffffffffu, lse.sum, 1);
  const float other_pos = __shfl_xor_sync(0xffffffffu, pos_sum, 1);
  const long long other_den = __shfl_xor_sync(0xffffffffu, den_n, 1);
  const long long other_pos_n = __shfl_xor_sync(0xffffffffu, pos_n, 1);
  if (half == 0 && hi < home_count) {
    lse.merge(other_max, other_sum);
    den_n += other_den;
    pos_n += other_pos_n;
    pos_sum += other_pos;
    lse_out[hi] = den_n > 0 ? lse.max + logf(lse.sum) : 0.f;  // an empty denominator gives 0
    pos_out[hi] = pos_sum / static_cast<float>(pos_n > 0 ? pos_n : 1);
    den_out[hi] = den_n;
    pos_n_out[hi] = pos_n;
  }
}

int inverse_norms(DType dtype, const void* x, int64_t rows, int64_t d, float* out, void* stream) {
  if (rows == 0) return 0;
  const int grid = grid_for(rows, THREADS / 32);
  CONTRASTIVE_DISPATCH(dtype, (_inv_norm_kernel<T><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  static_cast<const T*>(x), rows, d, out)));
  return static_cast<int>(cudaGetLastError());
}

int normalize_backward(DType dtype, const void* x, const float* grad_unit, int64_t rows, int64_t d,
                       const float* scale, bool normalize, void* out, void* stream) {
  if (rows == 0) return 0;
  const int grid = grid_for(rows, THREADS / 32);
  CONTRASTIVE_DISPATCH(dtype, (_normalize_bwd_kernel<T><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  static_cast<const T*>(x), grad_unit, rows, d, scale, normalize, static_cast<T*>(out))));
  return static_cast<int>(cudaGetLastError());
}

int forward_rows(DType dtype, const CoreArgs& a, float* lse, float* pos, int64_t* den_count, int64_t* pos_count,
                 void* stream) {
  if (a.n == 0) return 0;
  const int grid = grid_for(a.n, BM);
  CONTRASTIVE_DISPATCH(dtype, (_terms_fwd_kernel<T, false><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  a, lse, pos, den_count, pos_count)));
  return static_cast<int>(cudaGetLastError());
}

int forward_cols(DType dtype, const CoreArgs& a, float* lse, float* pos, int64_t* den_count, int64_t* pos_count,
                 void* stream) {
  if (a.m == 0) return 0;
  const int grid = grid_for(a.m, BN);
  CONTRASTIVE_DISPATCH(dtype, (_terms_fwd_kernel<T, true><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  a, lse, pos, den_count, pos_count)));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace contrastive_cuda
