// Plain C++ interface between the torch glue (ops.cpp) and the CUDA kernels (*.cu).
//
// Deliberately free of torch and CUDA headers: the CPU build of torch cannot compile torch's CUDA
// headers (DESIGN.md §7), so the kernels take raw pointers and the caller's stream as `void*`.
// Every launcher returns a cudaError_t as an int (0 = success) for the glue to turn into an error.
#pragma once

#include <cstdint>

namespace contrastive_cuda {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// The generic core's inputs (DESIGN.md §3). Columns are the keys [0, m) then the extra negatives
// [m, m + r). All feature tensors are row-major and contiguous with `d` features; index tensors
// are int64. A null pointer means "absent".
struct CoreArgs {
  const void* q = nullptr;  // [n, d] anchors
  const void* k = nullptr;  // [m, d] in-batch keys
  const void* e = nullptr;  // [r, d] extra negatives (may be null when r == 0)
  const float* inv_q = nullptr;  // [n] 1 / max(||q_i||, 1e-12), or null (no normalization)
  const float* inv_k = nullptr;  // [m]
  const float* inv_e = nullptr;  // [r]
  int64_t n = 0, m = 0, r = 0, d = 0;
  const float* scale = nullptr;  // device scalar s: logits are s * <q̂_i, k̂_j>
  const int64_t* pos_index = nullptr;  // [n] column of row i's single positive
  const int64_t* row_labels = nullptr;  // [n] positives share a label with a key column ...
  const int64_t* col_labels = nullptr;  // [m] ... (extra negatives are never positives)
  const int64_t* self_index = nullptr;  // [n] column excluded from row i
  const float* band_lo = nullptr;  // [n] Ring band: candidates need band_lo <= logit <= band_hi
  const float* band_hi = nullptr;
  bool key_negatives = true;  // in-batch keys other than positives are candidates
  bool decoupled = false;  // positives are left out of the denominator
};

// Upstream gradients of the forward outputs, fp32. `*_pos_w` is g_pos / max(pos_count, 1).
struct GradArgs {
  const float* g_row_lse = nullptr;  // [n]
  const float* g_row_pos_w = nullptr;  // [n]
  const float* row_lse = nullptr;  // [n] saved forward output
  const float* g_col_lse = nullptr;  // [m], only with column terms
  const float* g_col_pos_w = nullptr;
  const float* col_lse = nullptr;
  bool column_terms = false;
};

// Tile geometry shared by every kernel; the glue sizes its partial buffers with it.
constexpr int kBlockRows = 64;

// out[i] = 1 / max(||x_i||, 1e-12) in fp32 (x: [rows, d]).
int inverse_norms(DType dtype, const void* x, int64_t rows, int64_t d, float* out, void* stream);

// Per-row terms (one CTA per block of 64 rows, walking every column tile): lse (0 where the
// denominator is empty), mean positive logit (0 without positives) and both counts.
int forward_rows(DType dtype, const CoreArgs& a, float* lse, float* pos, int64_t* den_count,
                 int64_t* pos_count, void* stream);

// The same per key column (anchors = the m keys, reduced over the n rows).
int forward_cols(DType dtype, const CoreArgs& a, float* lse, float* pos, int64_t* den_count,
                 int64_t* pos_count, void* stream);

// grad_q [n, d] (fp32, zero-filled by the caller) += dS · diag(inv_k) · K, without the scale
// factor; scale_partials [ceil(n / 64)] gets each row block's sum of dS_ij · cos_ij.
int backward_rows(DType dtype, const CoreArgs& a, const GradArgs& g, float* grad_q,
                  float* scale_partials, void* stream);

// grad_c [m + r, d] (fp32, zero-filled) += dSᵀ · diag(inv_q) · Q, without the scale factor.
int backward_cols(DType dtype, const CoreArgs& a, const GradArgs& g, float* grad_c, void* stream);

// out [rows, d] (input dtype) = the gradient of x given g = s · grad_unit [rows, d] (fp32):
// with normalization (g - x̂ <x̂, g>) / max(||x||, eps) (radial part dropped where ||x|| <= eps),
// without it s · grad_unit.
int normalize_backward(DType dtype, const void* x, const float* grad_unit, int64_t rows, int64_t d,
                       const float* scale, bool normalize, void* out, void* stream);

// Ring band per row (DESIGN.md §5): with M_i candidates, hi = floor(outer·M_i),
// lo = floor(inner·hi); v_hi = the logit of descending rank lo, v_lo = that of rank hi - 1;
// (+inf, -inf) where the ring is empty. Exact on the logits the forward pass uses.
int ring_band(DType dtype, const CoreArgs& a, double outer, double inner, float* v_lo,
              float* v_hi, void* stream);

// cudaGetErrorString of a launcher's return code.
const char* error_string(int code);

// The code this library holds, space separated: machine code per SM target and PTX, e.g.
// "sm_80 sm_90 compute_90" (the build's -gencode targets, passed as CONTRASTIVE_BUILT_TARGETS).
const char* built_archs();

}  // namespace contrastive_cuda
