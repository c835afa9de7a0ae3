// The arithmetic of the extension's epilogues, shared by the CUDA kernels (epilogue.cu) and the
// CPU implementation of the same operators (ops.cpp): pair roles, the online log-sum-exp and its
// merge, the per-pair gradient (softmax, positives, hard-negative and pairwise-sigmoid terms), and
// the order keys and digit selection of the Ring's radix select. Free of torch and CUDA headers.
//
// Conventions (contrastive_ops/core.py): columns are the in-batch keys [0, m) then the extra
// negatives [m, m + r); a logit is x = s * <q̂_i, ĉ_j> in fp32; with a guide, a pair's guide
// similarity is <guide_rows[i], guide_cols[j]> in fp32 (a chunk of them beside the cosines').
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define CO_HD __host__ __device__ __forceinline__
#else
#define CO_HD inline
#endif

namespace contrastive_cuda {

// The O(N + M) role vectors of one call (null = absent) and the role switches.
struct Roles {
  const int64_t* pos_index = nullptr;  // [n] column of row i's single positive
  const int64_t* self_index = nullptr;  // [n] column excluded from row i
  const int64_t* row_labels = nullptr;  // [n] ...
  const int64_t* col_labels = nullptr;  // [m] positives (or, with pos_index, excluded) share a label
  const float* band_lo = nullptr;  // [n] Ring band: a candidate counts only with lo <= x <= hi
  const float* band_hi = nullptr;
  const float* guide_max = nullptr;  // [n] guide: a candidate whose guide similarity exceeds it is none
  int64_t m = 0;  // in-batch keys
  bool key_negatives = true;  // in-batch keys other than positives are candidates
  bool decoupled = false;  // positives are left out of the denominator
};

// The loss's options that change what a pair contributes.
struct Terms {
  float beta = 0.0f;  // hard-negative exponent (hard = true)
  bool hard = false;  // row lse over (1 + beta) x, and a second one over beta x
  bool sigmoid = false;  // SigLIP: softplus(-z (x + bias)) per valid pair
  float bias = 0.0f;
};

struct Pair {
  bool positive;
  bool candidate;
};

// Row i's role values, read once per row (the column loops then compare against registers).
struct RowRoles {
  int64_t pos = -1;  // its positive's column (-1: none, or labels decide)
  int64_t self = -1;  // its excluded column (-1: none)
  int64_t label = 0;
  float lo = -INFINITY, hi = INFINITY;  // its band
  float guide_max = INFINITY;  // its guide limit
};

CO_HD RowRoles row_roles(const Roles& ro, int64_t i) {
  RowRoles r;
  if (ro.pos_index != nullptr) r.pos = ro.pos_index[i];
  if (ro.self_index != nullptr) r.self = ro.self_index[i];
  if (ro.row_labels != nullptr) r.label = ro.row_labels[i];
  if (ro.band_lo != nullptr) {
    r.lo = ro.band_lo[i];
    r.hi = ro.band_hi[i];
  }
  if (ro.guide_max != nullptr) r.guide_max = ro.guide_max[i];
  return r;
}

// `guide`: the pair's guide similarity, compared only with a guide (ro.guide_max non-null).
CO_HD Pair pair_role(const Roles& ro, const RowRoles& r, int64_t j, float guide) {
  const bool is_key = j < ro.m;
  const bool is_self = j == r.self;
  const bool same_label = ro.row_labels != nullptr && is_key && r.label == ro.col_labels[j];
  bool positive = ro.pos_index != nullptr ? j == r.pos : same_label;
  positive = positive && !is_self;
  bool candidate = !positive && !is_self && (ro.key_negatives || !is_key);
  if (ro.pos_index != nullptr && ro.row_labels != nullptr) candidate = candidate && !same_label;  // false negatives
  if (ro.guide_max != nullptr) candidate = candidate && !(guide > r.guide_max);  // the guide's false negatives
  return {positive, candidate};
}

// In the denominator: a candidate inside the row's band (if any), and a positive unless decoupled.
CO_HD bool in_denominator(const Roles& ro, const RowRoles& r, Pair p, float x) {
  bool cand = p.candidate;
  if (cand && ro.band_lo != nullptr) cand = x >= r.lo && x <= r.hi;
  return cand || (p.positive && !ro.decoupled);
}

// ---------------------------------------------------------------------------------------------
// online log-sum-exp
// ---------------------------------------------------------------------------------------------

// e^x of the softmax terms (x <= 0 after the shift by a running max or an LSE): on the device the
// intrinsic ex2.approx of x·log2(e) (two instructions, flush-to-zero, about 2 ulp: as the Triton
// kernels), on the host std::exp (the CPU operators' check against float64 is at 1e-5).
CO_HD float exp_term(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
#else
  return std::exp(x);
#endif
}

struct Lse {
  float m = -INFINITY;  // running max
  float l = 0.0f;  // sum of exp(x - m)
};

CO_HD void lse_push(Lse& a, float x) {
  if (x > a.m) {
    a.l = a.l * exp_term(a.m - x) + 1.0f;  // exp(-inf) = 0 on the first value
    a.m = x;
  } else {
    a.l += exp_term(x - a.m);
  }
}

CO_HD Lse lse_merge(Lse a, Lse b) {
  if (b.m > a.m) {
    Lse t = a;
    a = b;
    b = t;
  }
  if (b.m == -INFINITY) return a;
  a.l += b.l * exp_term(b.m - a.m);
  return a;
}

// log-sum-exp of what was pushed; 0 for an empty set (count 0)
CO_HD float lse_value(Lse a, int64_t count) { return count > 0 ? a.m + logf(a.l) : 0.0f; }

// log(1 + e^t) without overflow, exact to fp32 rounding for every t
CO_HD float softplus(float t) { return t > 0.0f ? t + log1pf(expf(-t)) : log1pf(expf(t)); }

CO_HD float sigmoid(float t) {
  if (t >= 0.0f) return 1.0f / (1.0f + expf(-t));
  const float e = expf(t);
  return e / (1.0f + e);
}

// ---------------------------------------------------------------------------------------------
// forward: what one row (or key column) accumulates over its pairs
// ---------------------------------------------------------------------------------------------

struct Acc {
  Lse lse;  // over the denominator: x, or (1 + beta) x with hard negatives
  Lse lse_beta;  // over the denominator: beta x (hard negatives)
  float pos_sum = 0.0f;  // sum of the positives' logits
  float pair = 0.0f;  // sum of softplus(-z (x + bias)) (pairwise sigmoid)
  int64_t pos_n = 0;
  int64_t den_n = 0;
};

CO_HD void acc_push(Acc& a, const Terms& t, Pair p, bool den, float x) {
  if (den) {
    lse_push(a.lse, t.hard ? (1.0f + t.beta) * x : x);
    if (t.hard) lse_push(a.lse_beta, t.beta * x);
    a.den_n += 1;
  }
  if (p.positive) {
    a.pos_sum += x;
    a.pos_n += 1;
  }
  if (t.sigmoid && (p.positive || p.candidate)) a.pair += softplus(p.positive ? -(x + t.bias) : x + t.bias);
}

// ---------------------------------------------------------------------------------------------
// plain quads: four consecutive columns whose pairs are all candidate negatives in the denominator
// ---------------------------------------------------------------------------------------------

// A row's roles relative to a chunk of `cols` columns from c0, in 32-bit chunk positions (the
// plain-quad test then compares registers of one word): its positive's and self column's positions
// (-8 when outside the chunk: no quad holds them), the first extra column's, and whether the quads
// may be plain at all (no labels, band or guide; the caller's feature set has no hard negatives or
// sigmoid either).
struct QuadRoles {
  int pos = -8, self = -8;
  int extra = 0;  // chunk position of the first extra negative (cols when there is none in the chunk)
  bool key_negatives = true;
  bool any = false;
};

CO_HD int chunk_position(int64_t col, int64_t c0, int64_t cols) {
  return (col >= c0 && col < c0 + cols) ? static_cast<int>(col - c0) : -8;
}

CO_HD QuadRoles quad_roles(const Roles& ro, const RowRoles& r, int64_t c0, int64_t cols) {
  QuadRoles q;
  q.any = ro.row_labels == nullptr && ro.band_lo == nullptr && ro.guide_max == nullptr;
  q.pos = chunk_position(r.pos, c0, cols);
  q.self = chunk_position(r.self, c0, cols);
  q.extra = static_cast<int>(ro.m <= c0 ? 0 : (ro.m >= c0 + cols ? cols : ro.m - c0));
  q.key_negatives = ro.key_negatives;
  return q;
}

// Whether the chunk positions [j, j + width) of the row are plain: all on one side of the key/extra
// boundary and candidates there, none its positive or self column. Most quads (and most 128-column
// tiles of the fused sm_90a kernels) of a large batch are; their pairs then need no role test.
CO_HD bool plain_span(const QuadRoles& q, int j, int width) {
  const bool extra = j >= q.extra, keys = j + width <= q.extra;
  return q.any && (extra || (keys && q.key_negatives)) && static_cast<unsigned>(q.pos - j) >= unsigned(width) &&
         static_cast<unsigned>(q.self - j) >= unsigned(width);
}

// plain_span of a quad (the epilogues load it as one float4)
CO_HD bool plain_quad(const QuadRoles& q, int j) { return plain_span(q, j, 4); }

// A plain quad's four logits into the denominator's online log-sum-exp: one rescale for the four.
CO_HD void acc_push_plain4(Acc& a, float x0, float x1, float x2, float x3) {
  const float m = fmaxf(a.lse.m, fmaxf(fmaxf(x0, x1), fmaxf(x2, x3)));
  a.lse.l = a.lse.l * exp_term(a.lse.m - m) +
            ((exp_term(x0 - m) + exp_term(x1 - m)) + (exp_term(x2 - m) + exp_term(x3 - m)));
  a.lse.m = m;
  a.den_n += 4;
}

CO_HD Acc acc_merge(Acc a, const Acc& b) {
  a.lse = lse_merge(a.lse, b.lse);
  a.lse_beta = lse_merge(a.lse_beta, b.lse_beta);
  a.pos_sum += b.pos_sum;
  a.pair += b.pair;
  a.pos_n += b.pos_n;
  a.den_n += b.den_n;
  return a;
}

// ---------------------------------------------------------------------------------------------
// backward: dL/dx of one pair
// ---------------------------------------------------------------------------------------------

struct RowGrad {  // row i's upstream gradients and saved forward outputs
  float g_lse = 0.0f, lse = 0.0f;
  float g_lse_beta = 0.0f, lse_beta = 0.0f;  // hard negatives
  float g_pos_w = 0.0f;  // g_pos / max(|P_i|, 1)
  float g_pair = 0.0f;  // pairwise sigmoid
};

struct ColGrad {  // key column j's (column terms)
  float g_lse = 0.0f, lse = 0.0f;
  float g_pos_w = 0.0f;
};

// dL/dx_ij; adds the pair's share of dL/dbias to *dbias. `col` is null without column terms (or
// for an extra negative's column). exp() only on denominator pairs: elsewhere it may overflow.
CO_HD float pair_grad(const Terms& t, Pair p, bool den, float x, const RowGrad& g, const ColGrad* col,
                      float* dbias) {
  float ds = 0.0f;
  if (den) {
    if (t.hard) {
      ds += g.g_lse * (1.0f + t.beta) * exp_term((1.0f + t.beta) * x - g.lse);
      ds += g.g_lse_beta * t.beta * exp_term(t.beta * x - g.lse_beta);
    } else {
      ds += g.g_lse * exp_term(x - g.lse);
    }
    if (col != nullptr) ds += col->g_lse * exp_term(x - col->lse);
  }
  if (p.positive) ds += g.g_pos_w + (col != nullptr ? col->g_pos_w : 0.0f);
  if (t.sigmoid && (p.positive || p.candidate)) {
    const float z = p.positive ? 1.0f : -1.0f;  // d softplus(-z (x + b)) / dx = -z sigmoid(-z (x + b))
    const float gp = -z * g.g_pair * sigmoid(-z * (x + t.bias));
    ds += gp;
    *dbias += gp;
  }
  return ds;
}

// SigLIP's forward with its gradient formed in the same pass (the pairwise sigmoid alone, no
// softmax term read by the loss): the pair pushed into the row's accumulator as acc_push, and its
// dL/dx for a row weight of 1, -z sigmoid(-z (x + b)) on positive and candidate pairs (0 elsewhere):
// pair_grad's sigmoid term with g_pair = 1, so the backward only scales the products of these.
// The loss softplus(u) = max(u, 0) + log1p(e) and sigmoid(u) = (u >= 0 ? 1 : e) / (1 + e) share one
// exponential e = exp(-|u|) (in (0, 1]: no overflow) and one reciprocal.
CO_HD float acc_push_pair_grad(Acc& a, const Terms& t, Pair p, bool den, float x) {
  Terms softmax = t;  // the row's softmax terms as acc_push; the pair loss below
  softmax.sigmoid = false;
  acc_push(a, softmax, p, den, x);
  if (!(p.positive || p.candidate)) return 0.0f;
  const float z = p.positive ? 1.0f : -1.0f;
  const float u = -z * (x + t.bias);  // the pair's loss is softplus(u), its dL/dx = -z sigmoid(u)
  const float e = exp_term(-fabsf(u));
  a.pair += fmaxf(u, 0.0f) + log1pf(e);
#ifdef __CUDA_ARCH__
  const float r = __fdividef(1.0f, 1.0f + e);  // 1 + e in [1, 2]: the fast reciprocal is within 2 ulp
#else
  const float r = 1.0f / (1.0f + e);
#endif
  return -z * (u >= 0.0f ? r : e * r);
}

// dL/dx of a pair of a plain quad (a candidate in the denominator; no hard negatives or sigmoid):
// pair_grad's value for it without the role tests.
CO_HD float plain_grad(const RowGrad& g, const ColGrad* col, float x) {
  float ds = g.g_lse * exp_term(x - g.lse);
  if (col != nullptr) ds += col->g_lse * exp_term(x - col->lse);
  return ds;
}

// ---------------------------------------------------------------------------------------------
// Ring: order keys and the radix select's digit choice
// ---------------------------------------------------------------------------------------------

CO_HD uint32_t float_bits(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
#endif
}

CO_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
#endif
}

// Unsigned keys that sort like the floats (-0.0 as +0.0): negatives get every bit flipped,
// non-negatives the sign bit set.
CO_HD uint32_t order_key(float v) {
  const uint32_t bits = float_bits(v + 0.0f);
  return (bits & 0x80000000u) ? (bits ^ 0xFFFFFFFFu) : (bits | 0x80000000u);
}

CO_HD float key_value(uint32_t key) {
  return bits_float((key & 0x80000000u) ? (key ^ 0x80000000u) : (key ^ 0xFFFFFFFFu));
}

// The Ring's rank bounds (core.ring_ranks, in float64 like every backend): hi = floor(outer M),
// lo = floor(inner hi); the ring is the descending ranks [lo, hi).
CO_HD void ring_ranks(int64_t candidates, double outer, double inner, int64_t* lo, int64_t* hi) {
  *hi = static_cast<int64_t>(floor(static_cast<double>(candidates) * outer));
  *lo = static_cast<int64_t>(floor(static_cast<double>(*hi) * inner));
}

// The digit (0..255) holding descending rank *rank among the counts hist[256]; *rank becomes the
// rank within that digit. 0 where the counts hold fewer values than the rank.
CO_HD uint32_t select_digit(const int32_t* hist, int64_t* rank) {
  int64_t above = 0;
  for (int b = 255; b >= 0; --b) {
    const int64_t c = hist[b];
    if (*rank < above + c) {
      *rank -= above;
      return static_cast<uint32_t>(b);
    }
    above += c;
  }
  return 0u;
}

// Whether a key still matches the prefix chosen above bit `shift + 8` (always on the first pass).
CO_HD bool matches_prefix(uint32_t key, uint32_t prefix, int shift) {
  return shift >= 24 || ((key ^ prefix) >> (shift + 8)) == 0u;
}

// One row's step of the radix select after a pass (hist: its 2 × 256 counts): on the first pass
// (shift 24) the candidates' count sets the ranks, rank[0] = lo and rank[1] = hi - 1 of the ring;
// then each target takes the digit holding its rank into its prefix.
CO_HD void ring_step_row(const int32_t* hist, int shift, double outer, double inner, uint32_t* prefix, int64_t* rank,
                         uint8_t* nonempty) {
  if (shift >= 24) {
    int64_t count = 0;
    for (int b = 0; b < 256; ++b) count += hist[b];
    int64_t lo, hi;
    ring_ranks(count, outer, inner, &lo, &hi);
    *nonempty = hi > lo;
    rank[0] = hi > lo ? lo : 0;
    rank[1] = hi > lo ? hi - 1 : 0;
    prefix[0] = prefix[1] = 0u;
  }
  for (int t = 0; t < 2; ++t) {
    const int32_t* ht = hist + (shift >= 24 ? 0 : t * 256);  // one histogram serves both on the first pass
    prefix[t] |= select_digit(ht, &rank[t]) << shift;
  }
}

// The band of one row from its two prefixes: (v_lo, v_hi), or (+inf, -inf) for an empty ring.
CO_HD void ring_band_row(const uint32_t* prefix, bool nonempty, float* v_lo, float* v_hi) {
  *v_hi = nonempty ? key_value(prefix[0]) : -INFINITY;
  *v_lo = nonempty ? key_value(prefix[1]) : INFINITY;
}

// A row's (or column's) outputs from its accumulator: lse (0 for an empty denominator), the
// positives' mean logit (0 without positives), both counts; lse_beta and pair where non-null.
CO_HD void acc_finish_one(const Acc& a, float* lse, float* pos, int64_t* den_n, int64_t* pos_n, float* lse_beta,
                          float* pair) {
  *lse = lse_value(a.lse, a.den_n);
  *pos = a.pos_sum / static_cast<float>(a.pos_n > 0 ? a.pos_n : 1);
  *den_n = a.den_n;
  *pos_n = a.pos_n;
  if (lse_beta != nullptr) *lse_beta = lse_value(a.lse_beta, a.den_n);
  if (pair != nullptr) *pair = a.pair;
}

}  // namespace contrastive_cuda
