// Plain C++ interface between the torch glue (ops.cpp) and the CUDA epilogue kernels (epilogue.cu).
//
// The products are not here: the glue forms each chunk of cosines S = Q̂_rows · Ĉ_colsᵀ and each
// gradient product with torch's GEMMs (cuBLAS on a GPU); with a guide also the chunk of guide
// similarities G = guide_rows · guide_colsᵀ (fp32) of the same pairs. These kernels are the fused
// epilogues between them, reading a chunk of S (and of G) once: logits → per-row / per-column
// log-sum-exp state, logits → dS, logits → the Ring's radix histograms; the roles of every pair
// (positive, self, label-excluded, guide-excluded, candidate) come from O(N + M) vectors and G, never
// from an N×M mask. Deliberately free of torch and CUDA headers (the CPU
// build of torch cannot compile torch's CUDA headers, DESIGN.md §7): raw pointers, the caller's
// stream as `void*`, and every launcher returns a cudaError_t as an int (0 = success).
#pragma once

#include <cstdint>

#include "epilogue.h"

namespace contrastive_cuda {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// One chunk of cosines: rows [r0, r0 + rows) × columns [c0, c0 + cols), fp32, row-major with
// leading dimension ld. Logits are *scale times these. With a guide (Roles::guide_max), g holds the
// guide similarities of the same pairs in the same layout.
struct Chunk {
  const float* s = nullptr;
  const float* g = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  int64_t r0 = 0, c0 = 0;
};

// Per-row (per-column) upstream gradients and saved forward outputs, fp32 vectors; null = absent.
struct GradVecs {
  const float* g_lse = nullptr;  // [n]
  const float* lse = nullptr;
  const float* g_lse_beta = nullptr;  // [n] hard negatives
  const float* lse_beta = nullptr;
  const float* g_pos_w = nullptr;  // [n] g_pos / max(|P_i|, 1)
  const float* g_pair = nullptr;  // [n] pairwise sigmoid
  const float* col_g_lse = nullptr;  // [m] column terms
  const float* col_lse = nullptr;
  const float* col_g_pos_w = nullptr;
};

CO_HD RowGrad row_grad(const GradVecs& v, int64_t i) {
  RowGrad g;
  g.g_lse = v.g_lse[i];
  g.lse = v.lse[i];
  if (v.g_lse_beta != nullptr) {
    g.g_lse_beta = v.g_lse_beta[i];
    g.lse_beta = v.lse_beta[i];
  }
  g.g_pos_w = v.g_pos_w[i];
  if (v.g_pair != nullptr) g.g_pair = v.g_pair[i];
  return g;
}

CO_HD ColGrad col_grad(const GradVecs& v, int64_t j) {
  ColGrad g;
  g.g_lse = v.col_g_lse[j];
  g.lse = v.col_lse[j];
  g.g_pos_w = v.col_g_pos_w[j];
  return g;
}

// Whether a row pass may take plain quads (epilogue.h's plain_quad): rows 16-byte aligned (the
// kernels load a quad as one float4) and no per-pair term that plain quads leave out.
CO_HD bool quads(const Chunk& c, const Terms& t) { return c.ld % 4 == 0 && !t.hard && !t.sigmoid; }

// The guide similarity of the chunk's pair (i, j), read only with a guide (else 0, never compared).
CO_HD float chunk_guide(const Chunk& c, const Roles& roles, int64_t i, int64_t j) {
  return roles.guide_max != nullptr ? c.g[i * c.ld + j] : 0.0f;
}

// dL/dx_ij of one pair of row `row` (its roles rr, its gradients g) at column `col`, logit x, guide
// similarity `guide`; column terms where `columns`; adds the pair's share of dL/dbias to *dbias.
CO_HD float pair_dlogit(const Roles& roles, const RowRoles& rr, const Terms& terms, const GradVecs& grads,
                        const RowGrad& g, bool columns, int64_t col, float x, float guide, float* dbias) {
  const Pair p = pair_role(roles, rr, col, guide);
  ColGrad cg;
  if (columns) cg = col_grad(grads, col);
  return pair_grad(terms, p, in_denominator(roles, rr, p, x), x, g, columns ? &cg : nullptr, dbias);
}

// acc[0 .. count) = the empty accumulator.
int acc_init(Acc* acc, int64_t count, void* stream);

// Every row of the chunk merges its pairs into acc[r0 + i] (one warp per row, in a fixed order).
// `bias` is read only with terms.sigmoid.
int rows_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias, Acc* acc,
                 void* stream);

// Every key column of the chunk (c0 + cols <= m) merges its pairs into acc[c0 + j].
int cols_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, Acc* acc, void* stream);

// out_* [count] from the accumulators: lse (0 where the denominator is empty), the positives' mean
// logit (0 without positives), both counts; lse_beta and pair where non-null.
int acc_finish(const Acc* acc, int64_t count, float* lse, float* pos, int64_t* den_n, int64_t* pos_n, float* lse_beta,
               float* pair, void* stream);

// ds [rows, cols] (row-major, dtype) = scale · dL/dx of every pair of the chunk, ready for the two
// gradient GEMMs; row_dscale[r0 + i] += Σ_j dL/dx_ij · cos_ij and row_dbias[r0 + i] += Σ_j dL/dbias
// (one warp per row: fixed order). Column terms where grads.col_g_lse is non-null (key columns).
int rows_backward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias,
                  const GradVecs& grads, DType ds_dtype, void* ds, float* row_dscale, float* row_dbias,
                  void* stream);

// SigLIP's forward and unit-weight gradient in one pass over the chunk (terms.sigmoid, no column
// terms or hard negatives): every row merges its pairs into acc[r0 + i] as rows_forward, and
// ds [rows, cols] = scale · acc_push_pair_grad (row weight 1), row_dscale[r0 + i] += Σ_j dL/dx_ij ·
// cos_ij, row_dbias[r0 + i] += Σ_j dL/dx_ij, as rows_backward with g_pair = 1 and no other gradient.
int rows_pair_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias, Acc* acc,
                      DType ds_dtype, void* ds, float* row_dscale, float* row_dbias, void* stream);

// Ring radix select, one pass over one chunk: hist[(i · 2 + t) · 256 + digit] += the chunk's
// candidates of row r0 + i whose order key matches prefix[2 i + t] above bit shift + 8 and has this
// digit at `shift` (hist indexed by the chunk's row, from 0; t = 0 only on the first pass, shift 24).
int ring_histogram(const Chunk& c, const Roles& roles, const float* scale, const uint32_t* prefix, int shift,
                   int32_t* hist, void* stream);

// After a pass over every column chunk of a row chunk: per row, choose each target's digit and
// update its prefix and rank. On the first pass (shift 24) the candidates' count gives the ranks
// (ring_ranks): rank[2 i] = lo, rank[2 i + 1] = hi - 1, nonempty[i] = hi > lo.
int ring_step(const int32_t* hist, int64_t rows, int shift, double outer, double inner, uint32_t* prefix,
              int64_t* rank, uint8_t* nonempty, void* stream);

// v_lo[i] = the value of prefix[2 i + 1], v_hi[i] = that of prefix[2 i]; (+inf, -inf) when empty.
int ring_finish(const uint32_t* prefix, const uint8_t* nonempty, int64_t rows, float* v_lo, float* v_hi,
                void* stream);

// ---------------------------------------------------------------------------------------------
// the fused sm_90a path (fused_sm90.cu): the plain roles (positive / self index, extra negatives,
// decoupled; no labels, band, guide, hard negatives or sigmoid) of bf16/fp16 operands with d % 8 == 0
// ---------------------------------------------------------------------------------------------

// One chunk's operands: q the unit rows of the chunk's rows [rows, d], c those of its columns
// [cols, d], row-major and 16-byte aligned (d % 8 == 0), in `dtype` (kBFloat16 or kFloat16).
struct Operands {
  const void* q = nullptr;
  const void* c = nullptr;
  int64_t d = 0;
  DType dtype = DType::kBFloat16;
};

constexpr int kFusedTile = 128;  // rows and columns of one tile
CO_HD int64_t fused_tile_count(int64_t extent) { return (extent + kFusedTile - 1) / kFusedTile; }

// Whether the fused kernels run on CUDA device `device`: the library holds their sm_90a code (and no
// plain sm_90 code the runtime could prefer) and the device is sm_90.
bool fused_available(int device);

// The chunk's tiles (c.s unused: the cosines are formed from o), each leaving its partial
// accumulators: row_part[i · T_n + t] for chunk row i and column tile t (T_n =
// fused_tile_count(c.cols)) and, where col_part is non-null (key columns, column terms),
// col_part[j · T_m + t] for chunk column j and row tile t (T_m = fused_tile_count(c.rows)).
int fused_forward(const Operands& o, const Chunk& c, const Roles& roles, const float* scale, Acc* row_part,
                  Acc* col_part, void* stream);

// ds [rows, ld] (the operands' dtype, ld even) = scale · dL/dx of the chunk's pairs (column terms
// where grads.col_g_lse is non-null), dscale_part[i · T_n + t] = Σ over column tile t of
// dL/dx_ij · cos_ij.
int fused_backward(const Operands& o, const Chunk& c, const Roles& roles, const float* scale, const GradVecs& grads,
                   void* ds, int64_t ld, float* dscale_part, void* stream);

// acc[i] = acc_merge(acc[i], part[i · tiles + t]) for t = 0 .. tiles - 1 in order, i < count.
int merge_partials(const Acc* part, int64_t count, int64_t tiles, Acc* acc, void* stream);

// cudaGetErrorString of a launcher's return code.
const char* error_string(int code);

// The code this library holds, space separated: machine code per SM target and PTX, e.g.
// "sm_80 sm_90a compute_80" (the build's -gencode targets, passed as CONTRASTIVE_BUILT_TARGETS).
const char* built_archs();

}  // namespace contrastive_cuda
