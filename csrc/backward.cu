// Backward of the generic core, deterministic: a dQ pass over row blocks and a dK pass over
// column blocks, each CTA owning its output rows (no atomics). Each tile is recomputed, turned
// into dS in shared memory, and multiplied by the other side's rows one feature slice at a time.
#include "tile.cuh"

namespace contrastive_cuda {

// dS_ij of one pair (chunked._backward): softmax over the row's denominator times g_lse, plus
// g_pos / |P_i| on positives, plus the same per key column with column terms.
__device__ __forceinline__ float d_logit(const CoreArgs& a, const GradArgs& g, int64_t i, int64_t j, float logit) {
  const Role ro = pair_role(a, i, j);
  const bool den = in_denominator(a, ro, i, logit);
  float d = 0.f;
  if (den) d += g.g_row_lse[i] * expf(logit - g.row_lse[i]);  // logit <= lse: no overflow
  if (ro.pos) d += g.g_row_pos_w[i];
  if (g.column_terms && j < a.m) {
    if (den) d += g.g_col_lse[j] * expf(logit - g.col_lse[j]);
    if (ro.pos) d += g.g_col_pos_w[j];
  }
  return d;
}

// grad[home rows] += dS (·ᵀ with COLS) · diag(inv_other) · other rows, for one home block of 64.
// Without COLS the home is 64 anchors and the other side every column (keys, then extra
// negatives); with COLS the home is 64 columns and the other side the n anchors. The row pass
// also writes its block's Σ dS_ij · cos_ij (the scale's gradient) to scale_partials[blockIdx.x].
template <typename T, bool COLS>
__global__ void __launch_bounds__(THREADS)
    _terms_bwd_kernel(CoreArgs a, GradArgs g, float* grad, float* scale_partials) {
  __shared__ Smem<T> sm;
  __shared__ float warp_sums[THREADS / 32];
  const int64_t home0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t home_count = COLS ? num_cols(a) : a.n;
  const int64_t other_count = COLS ? a.n : num_cols(a);
  const float scale = *a.scale;
  const T* q = static_cast<const T*>(a.q);
  float ds_sum = 0.f;  // this thread's share of Σ dS·cos, summed in a fixed order
  for (int64_t o0 = 0; o0 < other_count; o0 += BN) {
    const int64_t r0 = COLS ? o0 : home0, c0 = COLS ? home0 : o0;
    tile_cosines<T>(a, sm, r0, c0);
    // the tile of cosines becomes dS, folded with the other side's inverse norm
    for (int idx = threadIdx.x; idx < BM * BN; idx += THREADS) {
      const int il = idx / BN, jl = idx % BN;
      const int64_t i = r0 + il, j = c0 + jl;
      float d = 0.f;
      if (i < a.n && j < num_cols(a)) {
        const float cosine = sm.s[il][jl];
        d = d_logit(a, g, i, j, logit_of(cosine, scale));
        if (!COLS) ds_sum = fmaf(d, cosine, ds_sum);
        d *= COLS ? row_inv(a, i) : col_inv(a, j);
      }
      sm.s[il][jl] = d;
    }
    __syncthreads();
    for (int64_t d0 = 0; d0 < a.d; d0 += DC) {
      // features d0 .. d0+DC of the other side's 64 rows, as fp32
      for (int idx = threadIdx.x; idx < BN * DC; idx += THREADS) {
        const int o = idx / DC, f = idx % DC;
        const int64_t oi = o0 + o, fi = d0 + f;
        float v = 0.f;
        if (oi < other_count && fi < a.d) v = to_float(COLS ? q[oi * a.d + fi] : col_row<T>(a, oi)[fi]);
        sm.u.chunk[o][f] = v;
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < BM * DC; idx += THREADS) {
        const int hl = idx / DC, f = idx % DC;
        const int64_t hg = home0 + hl, fi = d0 + f;
        if (hg >= home_count || fi >= a.d) continue;
        float acc = 0.f;
#pragma unroll 8
        for (int o = 0; o < BN; ++o) acc = fmaf(COLS ? sm.s[o][hl] : sm.s[hl][o], sm.u.chunk[o][f], acc);
        grad[hg * a.d + fi] += acc;  // this CTA alone owns row hg: no atomics needed
      }
      __syncthreads();
    }
  }
  if (!COLS) {
    // block sum in a fixed tree order: warps by shuffles, then the warp sums by thread 0
    for (int off = 16; off > 0; off /= 2) ds_sum += __shfl_down_sync(0xffffffffu, ds_sum, off);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ds_sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.f;
      for (int w = 0; w < THREADS / 32; ++w) total += warp_sums[w];
      scale_partials[blockIdx.x] = total;
    }
  }
}

int backward_rows(DType dtype, const CoreArgs& a, const GradArgs& g, float* grad_q, float* scale_partials,
                  void* stream) {
  if (a.n == 0) return 0;
  const int grid = grid_for(a.n, BM);
  CONTRASTIVE_DISPATCH(dtype, (_terms_bwd_kernel<T, false><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  a, g, grad_q, scale_partials)));
  return static_cast<int>(cudaGetLastError());
}

int backward_cols(DType dtype, const CoreArgs& a, const GradArgs& g, float* grad_c, void* stream) {
  if (a.m + a.r == 0) return 0;
  const int grid = grid_for(a.m + a.r, BN);
  CONTRASTIVE_DISPATCH(dtype, (_terms_bwd_kernel<T, true><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  a, g, grad_c, nullptr)));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace contrastive_cuda
