// Ring band selection (DESIGN.md §5): per row, the logits of descending ranks lo and hi - 1 among
// the row's candidate negatives, found by a radix select over order keys of the fp32 logits,
// 4 bits per pass from the most significant, each pass recomputing the row block's tiles.
#include "tile.cuh"

namespace contrastive_cuda {

constexpr int kDigitBits = 4;
constexpr int kDigits = 1 << kDigitBits;

template <typename T>
__global__ void __launch_bounds__(THREADS)
    _ring_band_kernel(CoreArgs a, double outer, double inner, float* v_lo, float* v_hi) {
  __shared__ Smem<T> sm;
  __shared__ int hist[BM][2][kDigits];  // per row and wanted rank: candidates per digit value
  __shared__ unsigned prefix[BM][2];  // the key bits chosen so far
  __shared__ long long rank[BM][2];  // ranks still to skip among keys matching the prefix
  __shared__ bool nonempty[BM];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t nc = num_cols(a);
  const float scale = *a.scale;

  // Pass 0: candidate counts (roles only, no logits), merged over the two threads of a row.
  {
    const int h = threadIdx.x / 2, half = threadIdx.x % 2;
    const int64_t i = r0 + h;
    long long count = 0;
    if (i < a.n)
      for (int64_t j = half; j < nc; j += 2) count += pair_role(a, i, j).cand ? 1 : 0;
    count += __shfl_xor_sync(0xffffffffu, count, 1);
    if (half == 0) {
      // the same float64 arithmetic as core.ring_ranks, so every backend agrees on the ranks
      const long long hi = static_cast<long long>(floor(static_cast<double>(count) * outer));
      const long long lo = static_cast<long long>(floor(static_cast<double>(hi) * inner));
      nonempty[h] = i < a.n && hi > lo;
      rank[h][0] = lo;  // gives v_hi
      rank[h][1] = hi > 0 ? hi - 1 : 0;  // gives v_lo
      prefix[h][0] = prefix[h][1] = 0u;
    }
  }
  __syncthreads();

  for (int shift = 32 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    for (int idx = threadIdx.x; idx < BM * 2 * kDigits; idx += THREADS) (&hist[0][0][0])[idx] = 0;
    for (int64_t c0 = 0; c0 < nc; c0 += BN) {
      tile_cosines<T>(a, sm, r0, c0);  // its leading barrier also orders the zeroing above
      for (int idx = threadIdx.x; idx < BM * BN; idx += THREADS) {
        const int il = idx / BN, jl = idx % BN;
        const int64_t i = r0 + il, j = c0 + jl;
        if (i >= a.n || j >= nc || !nonempty[il] || !pair_role(a, i, j).cand) continue;
        const unsigned key = order_key(logit_of(sm.s[il][jl], scale));
        const int digit = (key >> shift) & (kDigits - 1);
        for (int t = 0; t < 2; ++t) {
          // only keys whose bits above this digit match the prefix chosen so far
          const bool match = shift + kDigitBits >= 32 || ((key ^ prefix[il][t]) >> (shift + kDigitBits)) == 0u;
          if (match) atomicAdd(&hist[il][t][digit], 1);  // integer counts: order does not matter
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 2 * BM) {
      const int h = threadIdx.x / 2, t = threadIdx.x % 2;
      if (nonempty[h]) {
        long long left = rank[h][t];
        for (int digit = kDigits - 1; digit >= 0; --digit) {  // descending: largest keys first
          const int c = hist[h][t][digit];
          if (left < c) {
            prefix[h][t] |= static_cast<unsigned>(digit) << shift;
            break;
          }
          left -= c;
        }
        rank[h][t] = left;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x < BM) {
    const int h = threadIdx.x;
    const int64_t i = r0 + h;
    if (i < a.n) {
      const float inf = __int_as_float(0x7f800000);
      v_hi[i] = nonempty[h] ? key_value(prefix[h][0]) : -inf;  // an empty ring selects nothing
      v_lo[i] = nonempty[h] ? key_value(prefix[h][1]) : inf;
    }
  }
}

int ring_band(DType dtype, const CoreArgs& a, double outer, double inner, float* v_lo, float* v_hi, void* stream) {
  if (a.n == 0) return 0;
  const int grid = grid_for(a.n, BM);
  CONTRASTIVE_DISPATCH(dtype, (_ring_band_kernel<T><<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
                                  a, outer, inner, v_lo, v_hi)));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace contrastive_cuda
