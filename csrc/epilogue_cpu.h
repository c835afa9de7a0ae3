// The epilogues of contrastive_cuda.h for CPU tensors: the same arithmetic (epilogue.h) in plain
// loops. The operators run on CPU tensors through these, so CI checks the very functions the GPU
// kernels call against the float64 reference (the GPU's order of the sums differs, not the math).
#pragma once

#include <cmath>
#include <cstdint>

#include "contrastive_cuda.h"

namespace contrastive_cuda {
namespace cpu {

inline void acc_init(Acc* acc, int64_t count) {
  for (int64_t i = 0; i < count; ++i) acc[i] = Acc();
}

inline void push_pair(Acc& a, const Chunk& c, const Roles& roles, const RowRoles& rr, const Terms& terms, float s,
                      int64_t i, int64_t j) {
  const float x = s * c.s[i * c.ld + j];
  const Pair p = pair_role(roles, rr, c.c0 + j, chunk_guide(c, roles, i, j));
  acc_push(a, terms, p, in_denominator(roles, rr, p, x), x);
}

inline void rows_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias,
                         Acc* acc) {
  const float s = *scale;
  if (terms.sigmoid) terms.bias = *bias;
  for (int64_t i = 0; i < c.rows; ++i) {
    const int64_t row = c.r0 + i;
    const RowRoles rr = row_roles(roles, row);
    Acc a;
    const float* srow = c.s + i * c.ld;
    int64_t j = 0;
    if (quads(c, terms)) {  // as the GPU kernel: plain quads without role tests, the others pair by pair
      const QuadRoles q = quad_roles(roles, rr, c.c0, c.cols);
      for (; j + 4 <= c.cols; j += 4) {
        if (plain_quad(q, static_cast<int>(j))) {
          acc_push_plain4(a, s * srow[j], s * srow[j + 1], s * srow[j + 2], s * srow[j + 3]);
          continue;
        }
        for (int k = 0; k < 4; ++k) push_pair(a, c, roles, rr, terms, s, i, j + k);
      }
    }
    for (; j < c.cols; ++j) push_pair(a, c, roles, rr, terms, s, i, j);
    acc[row] = acc_merge(acc[row], a);
  }
}

inline void cols_forward(const Chunk& c, const Roles& roles, const float* scale, Acc* acc) {
  const float s = *scale;
  const Terms plain;
  for (int64_t j = 0; j < c.cols; ++j) {
    const int64_t col = c.c0 + j;
    Acc a;
    for (int64_t i = 0; i < c.rows; ++i) {
      const float x = s * c.s[i * c.ld + j];
      const RowRoles rr = row_roles(roles, c.r0 + i);
      const Pair p = pair_role(roles, rr, col, chunk_guide(c, roles, i, j));
      acc_push(a, plain, p, in_denominator(roles, rr, p, x), x);
    }
    acc[col] = acc_merge(acc[col], a);
  }
}

inline void acc_finish(const Acc* acc, int64_t count, float* lse, float* pos, int64_t* den_n, int64_t* pos_n,
                       float* lse_beta, float* pair) {
  for (int64_t i = 0; i < count; ++i)
    acc_finish_one(acc[i], lse + i, pos + i, den_n + i, pos_n + i, lse_beta ? lse_beta + i : nullptr,
                   pair ? pair + i : nullptr);
}

// ds is fp32 here (the CPU products run in fp32)
inline void rows_backward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias,
                          const GradVecs& grads, float* ds, float* row_dscale, float* row_dbias) {
  const float s = *scale;
  if (terms.sigmoid) terms.bias = *bias;
  const bool columns = grads.col_g_lse != nullptr;
  for (int64_t i = 0; i < c.rows; ++i) {
    const int64_t row = c.r0 + i;
    const RowGrad g = row_grad(grads, row);
    const RowRoles rr = row_roles(roles, row);
    float dscale = 0.0f, dbias = 0.0f;
    auto one = [&](int64_t j) {
      const float cosine = c.s[i * c.ld + j];
      const float x = s * cosine;
      const float d = pair_dlogit(roles, rr, terms, grads, g, columns, c.c0 + j, x, chunk_guide(c, roles, i, j),
                                  &dbias);
      ds[i * c.cols + j] = s * d;
      dscale += d * cosine;
    };
    int64_t j = 0;
    if (quads(c, terms)) {  // as the GPU kernel
      const QuadRoles q = quad_roles(roles, rr, c.c0, c.cols);
      for (; j + 4 <= c.cols; j += 4) {
        if (!plain_quad(q, static_cast<int>(j))) {
          for (int k = 0; k < 4; ++k) one(j + k);
          continue;
        }
        for (int k = 0; k < 4; ++k) {
          const float cosine = c.s[i * c.ld + j + k];
          ColGrad cg;
          if (columns) cg = col_grad(grads, c.c0 + j + k);
          const float d = plain_grad(g, columns ? &cg : nullptr, s * cosine);
          ds[i * c.cols + j + k] = s * d;
          dscale += d * cosine;
        }
      }
    }
    for (; j < c.cols; ++j) one(j);
    row_dscale[row] += dscale;
    row_dbias[row] += dbias;
  }
}

// rows_forward and rows_backward of the pairwise sigmoid with unit row weights in one pass (ds fp32)
inline void rows_pair_forward(const Chunk& c, const Roles& roles, Terms terms, const float* scale, const float* bias,
                              Acc* acc, float* ds, float* row_dscale, float* row_dbias) {
  const float s = *scale;
  terms.bias = *bias;
  for (int64_t i = 0; i < c.rows; ++i) {
    const int64_t row = c.r0 + i;
    const RowRoles rr = row_roles(roles, row);
    Acc a;
    float dscale = 0.0f, dbias = 0.0f;
    for (int64_t j = 0; j < c.cols; ++j) {
      const float cosine = c.s[i * c.ld + j];
      const float x = s * cosine;
      const Pair p = pair_role(roles, rr, c.c0 + j, chunk_guide(c, roles, i, j));
      const float d = acc_push_pair_grad(a, terms, p, in_denominator(roles, rr, p, x), x);
      ds[i * c.cols + j] = s * d;
      dscale += d * cosine;
      dbias += d;
    }
    acc[row] = acc_merge(acc[row], a);
    row_dscale[row] += dscale;
    row_dbias[row] += dbias;
  }
}

inline void ring_histogram(const Chunk& c, const Roles& roles, const float* scale, const uint32_t* prefix, int shift,
                           int32_t* hist) {
  const float s = *scale;
  const bool first = shift >= 24;
  for (int64_t i = 0; i < c.rows; ++i) {
    const int64_t row = c.r0 + i;
    int32_t* h = hist + i * 512;
    const uint32_t p0 = first ? 0u : prefix[2 * i], p1 = first ? 0u : prefix[2 * i + 1];
    const RowRoles rr = row_roles(roles, row);
    for (int64_t j = 0; j < c.cols; ++j) {
      if (!pair_role(roles, rr, c.c0 + j, chunk_guide(c, roles, i, j)).candidate) continue;
      const uint32_t key = order_key(s * c.s[i * c.ld + j]);
      const uint32_t digit = (key >> shift) & 255u;
      if (matches_prefix(key, p0, shift)) h[digit] += 1;
      if (!first && matches_prefix(key, p1, shift)) h[256 + digit] += 1;
    }
  }
}

inline void ring_step(const int32_t* hist, int64_t rows, int shift, double outer, double inner, uint32_t* prefix,
                      int64_t* rank, uint8_t* nonempty) {
  for (int64_t i = 0; i < rows; ++i)
    ring_step_row(hist + i * 512, shift, outer, inner, prefix + 2 * i, rank + 2 * i, nonempty + i);
}

inline void ring_finish(const uint32_t* prefix, const uint8_t* nonempty, int64_t rows, float* v_lo, float* v_hi) {
  for (int64_t i = 0; i < rows; ++i) ring_band_row(prefix + 2 * i, nonempty[i] != 0, v_lo + i, v_hi + i);
}

}  // namespace cpu
}  // namespace contrastive_cuda
