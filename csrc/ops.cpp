// Torch glue of the extension: argument checks, the chunk loops, and the operators' registration
// under the `contrastive_ops_cuda` namespace.
//
// The dataflow is that of the Triton backend's large-D path: the logits exist only as chunks of
// chunk_rows × chunk_cols fp32 cosines, S = Q̂_rows · Ĉ_colsᵀ by torch's GEMM (cuBLAS on a GPU,
// fp32 accumulation and output), each read once by a fused epilogue (epilogue.cu): the forward's
// per-row and per-column log-sum-exp state, the backward's dS (then dQ̂ += dS·Ĉ and dĈ += dSᵀ·Q̂,
// again GEMMs into fp32), the Ring's radix histograms. Chunks go in a fixed order and no float is
// summed by atomics, so results are bitwise reproducible; the Ring selection, the forward and the
// backward use the same chunking, so they see bit-identical logits. With a guide, each chunk of
// cosines has beside it the chunk of guide similarities G = guide_rows · guide_colsᵀ of the same
// pairs (the GEMM of the guides in their dtype into fp32, as the cosines'), read by the same epilogues
// to drop the guide's false negatives from the candidates. Memory: the inputs, their unit rows,
// O(N + M) vectors, fp32 gradients of the unit rows, and one chunk (two with a guide).
//
// On CPU tensors the same operators run the same arithmetic (epilogue_cpu.h, fp32 products): what
// CI checks against float64. Compiles against the CPU build of torch (no c10/cuda headers): the
// kernels take raw pointers and the current stream through c10's device-generic stream API.
//
// Operators (autograd and fake implementations are registered from Python,
// contrastive_ops/backends/cuda.py):
//   forward(query, keys?, extra?, scale, bias?, <roles>, band_lo?, band_hi?, <guide>, key_negatives,
//           decoupled, column_terms, normalize, hard_beta?, pairwise_sigmoid, chunk_rows, chunk_cols)
//     -> row_lse, row_pos, row_den_count, row_pos_count, col_lse, col_pos, col_den_count,
//        col_pos_count, row_lse_beta, row_pair_loss        (absent terms are empty tensors)
//   backward(g_row_lse, g_row_pos, g_col_lse?, g_col_pos?, g_row_lse_beta?, g_row_pair?, row_lse,
//            row_pos_count, col_lse?, col_pos_count?, row_lse_beta?, <the forward's inputs>)
//     -> grad_query, grad_keys, grad_extra, grad_scale, grad_bias
//   ring_band(query, keys?, extra?, scale, <roles>, <guide>, key_negatives, normalize, outer, inner,
//             chunk_rows, chunk_cols) -> v_lo, v_hi
//   pair_forward(<forward's arguments>) -> forward's ten terms, dqh [N, D], dch [M + R, D], row_dscale [N],
//     row_dbias [N]: SigLIP's pair-loss gradient products for a row weight of 1, formed in the forward
//   pair_backward(g_row_pair, dqh, dch, row_dscale, row_dbias, query, keys?, extra?, normalize)
//     -> grad_query, grad_keys, grad_extra, grad_scale, grad_bias (a uniform g_row_pair)
//   built_archs() -> str
// <roles> = pos_index?, row_labels?, col_labels?, self_index?; <guide> = guide_rows? [N, G],
// guide_cols? [M + R, G] (keys then extra, the logits' columns), guide_max? [N], given together: a
// candidate (i, j) with <guide_rows[i], guide_cols[j]> > guide_max[i] (fp32) is none; no gradient.
// keys=None means the keys are the queries themselves (NT-Xent, SupCon); grad_keys is then empty
// and grad_query holds both gradients.
#include <Python.h>
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>
#include <torch/version.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "contrastive_cuda.h"
#include "epilogue_cpu.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
namespace cc = contrastive_cuda;

#define CHECK_2D(name, x) \
  TORCH_CHECK_VALUE((x).dim() == 2, OP, ": ", name, " must be 2-D [rows, features], got shape ", (x).sizes())
#define CHECK_SAME_DTYPE(name, x, ref)                                                                         \
  TORCH_CHECK_TYPE((x).scalar_type() == (ref).scalar_type(), OP, ": ", name, " is ", (x).scalar_type(), \
                   " but query is ", (ref).scalar_type())
#define CHECK_SAME_DEVICE(name, x, ref)                                                                           \
  TORCH_CHECK_VALUE((x).device() == (ref).device(), OP, ": ", name, " is on ", (x).device(), " but query is on ", \
                    (ref).device())
#define CHECK_SHAPE(name, x, ...)                                                                            \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), OP, ": ", name, " must have shape ", \
                    at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define CHECK_DTYPE(name, x, dtype)                                                                        \
  TORCH_CHECK_TYPE((x).scalar_type() == (dtype), OP, ": ", name, " must be ", dtype, ", got ", \
                   (x).scalar_type())
#define CHECK_LAUNCH(call)                                                                           \
  do {                                                                                               \
    const int _code = (call);                                                                        \
    TORCH_CHECK(_code == 0, OP, ": CUDA kernel launch failed: ", cc::error_string(_code), " (", #call, ")"); \
  } while (0)

void check_float_type(const char* OP, const Tensor& query) {
  const auto t = query.scalar_type();
  TORCH_CHECK_TYPE(t != at::kDouble, OP, ": float64 inputs are not supported by backend='cuda' (fp32/fp16/bf16 with ",
                   "fp32 accumulation); use backend='chunked' for float64");
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, OP,
                   ": query must be float32, float16 or bfloat16, got ", t);
}

// The guide's products are fp32 (core.guide_excluded compares float64 guides in float64: the
// backend's Python casts those to fp32 first, as the Triton backend does). The columns take the rows'
// dtype, the limits fp32, as the core casts them.
void check_guide_type(const char* OP, const char* name, const Tensor& t, bool rows) {
  const auto type = t.scalar_type();
  TORCH_CHECK_TYPE(at::isFloatingType(type), OP, ": ", name, " must be floating point, got ", type);
  TORCH_CHECK_TYPE(!rows || type != at::kDouble, OP, ": ", name, " is Double: backend='cuda' compares guide ",
                   "similarities in fp32 (float32, float16 or bfloat16 guides); use backend='chunked' for float64");
}

cc::DType kernel_dtype(const Tensor& t) {
  return t.scalar_type() == at::kHalf ? cc::DType::kFloat16
         : t.scalar_type() == at::kBFloat16 ? cc::DType::kBFloat16
                                            : cc::DType::kFloat32;
}

// An index vector's values must name a column: checked before any work (one host sync per vector),
// so that a bad index raises instead of reading out of bounds.
void check_index_range(const char* OP, const char* name, const Tensor& index, int64_t columns) {
  if (index.numel() == 0) return;
  auto [lo, hi] = at::aminmax(index);
  const int64_t vlo = lo.item<int64_t>(), vhi = hi.item<int64_t>();
  // -1: the row has no such column among these (a block of another rank's columns, say)
  TORCH_CHECK_VALUE(vlo >= -1 && vhi < columns, OP, ": ", name, " values must be column indices in [0, ", columns,
                    ") or -1 (none), got values in [", vlo, ", ", vhi, "]");
}

// The checked, contiguous inputs of one call, their unit rows and the epilogues' role view.
struct Problem {
  Tensor query, keys, extra, scale, bias, pos_index, row_labels, col_labels, self_index, band_lo, band_hi;
  Tensor guide_rows, guide_cols, guide_max;  // contiguous; the limits fp32 (undefined without a guide)
  Tensor qh, ch;  // unit rows (or the rows themselves) in the products' dtype: queries, then keys + extra
  bool shared = false;  // keys are the queries themselves
  int64_t n = 0, m = 0, r = 0, d = 0, chunk_rows = 1, chunk_cols = 1;
  cc::Roles roles;
  cc::Terms terms;
};

Tensor contiguous_or_undefined(const OptTensor& t) { return t.has_value() ? t->contiguous() : Tensor(); }

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

constexpr double kNormEps = 1e-12;  // F.normalize's eps

// Scaled norms, as core.normalize_rows: each row divided by its largest magnitude c (1 for a zero row)
// before the sum of squares, which then neither overflows (entries >~ 1e19) nor underflows.
// Returns (y = x / c, c, ||y||), fp32 [N, D], [N, 1], [N, 1].
std::tuple<Tensor, Tensor, Tensor> scaled_rows(const Tensor& x) {
  const Tensor xf = x.to(at::kFloat);
  Tensor c = xf.abs().amax({1}, true);
  c = at::where(c > 0, c, at::ones_like(c));
  const Tensor y = xf / c;
  return {y, c, at::linalg_vector_norm(y, 2, {1}, true)};
}

// The products' operand: the unit rows 1/max(||x||, 1e-12) · x (fp32 arithmetic with a scaled norm,
// rounded to the input dtype on a GPU; fp32 on the CPU, whose products run in fp32), or x itself.
Tensor unit_rows(const Tensor& x, bool normalize) {
  if (!normalize) return x.is_cuda() ? x : x.to(at::kFloat);
  auto [y, c, norm_y] = scaled_rows(x);
  const Tensor unit = y / at::maximum(norm_y, kNormEps / c);
  return x.is_cuda() ? unit.to(x.scalar_type()) : unit;
}

// Every argument checked (devices last, so that a CPU machine tests the other checks), then the
// unit rows formed.
Problem prepare(const char* OP, const Tensor& query, const OptTensor& keys, const OptTensor& extra,
                const Tensor& scale, const OptTensor& bias, const OptTensor& pos_index, const OptTensor& row_labels,
                const OptTensor& col_labels, const OptTensor& self_index, const OptTensor& band_lo,
                const OptTensor& band_hi, const OptTensor& guide_rows, const OptTensor& guide_cols,
                const OptTensor& guide_max, bool key_negatives, bool decoupled, bool normalize,
                std::optional<double> hard_beta, bool pairwise_sigmoid, int64_t chunk_rows, int64_t chunk_cols,
                bool check_indices) {
  Problem p;
  check_float_type(OP, query);
  CHECK_2D("query", query);
  const int64_t n = query.size(0), d = query.size(1);
  TORCH_CHECK_VALUE(n > 0 && d > 0, OP, ": query must have at least one row and one feature, got shape ",
                    query.sizes());
  p.shared = !keys.has_value();
  const Tensor& k = p.shared ? query : *keys;
  CHECK_2D("keys", k);
  CHECK_SAME_DTYPE("keys", k, query);
  TORCH_CHECK_VALUE(k.size(1) == d, OP, ": feature dims differ: query has ", d, ", keys has ", k.size(1));
  TORCH_CHECK_VALUE(k.size(0) > 0, OP, ": keys must have at least one row");
  const int64_t m = k.size(0);
  int64_t r = 0;
  if (extra.has_value()) {
    CHECK_2D("extra", *extra);
    CHECK_SAME_DTYPE("extra", *extra, query);
    TORCH_CHECK_VALUE(extra->size(1) == d, OP, ": feature dims differ: query has ", d, ", extra has ",
                      extra->size(1));
    r = extra->size(0);
  }
  TORCH_CHECK_VALUE(scale.numel() == 1, OP, ": scale must hold one value, got shape ", scale.sizes());
  CHECK_DTYPE("scale", scale, at::kFloat);
  TORCH_CHECK_VALUE(!pairwise_sigmoid || bias.has_value(), OP, ": pairwise_sigmoid needs a bias");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->numel() == 1, OP, ": bias must hold one value, got shape ", bias->sizes());
    CHECK_DTYPE("bias", *bias, at::kFloat);
  }
  TORCH_CHECK_VALUE(!hard_beta.has_value() || *hard_beta >= 0.0, OP, ": hard_beta must be >= 0, got ", *hard_beta);
  TORCH_CHECK_VALUE(chunk_rows > 0 && chunk_cols > 0, OP, ": chunk_rows and chunk_cols must be positive, got ",
                    chunk_rows, " and ", chunk_cols);
  for (const auto& [name, t] : {std::pair<const char*, const OptTensor*>{"pos_index", &pos_index},
                                {"self_index", &self_index}, {"row_labels", &row_labels}}) {
    if (!t->has_value()) continue;
    CHECK_DTYPE(name, **t, at::kLong);
    CHECK_SHAPE(name, **t, n);
  }
  TORCH_CHECK_VALUE(row_labels.has_value() == col_labels.has_value(), OP,
                    ": row_labels and col_labels go together (one was given without the other)");
  if (col_labels.has_value()) {
    CHECK_DTYPE("col_labels", *col_labels, at::kLong);
    CHECK_SHAPE("col_labels", *col_labels, m);
  }
  TORCH_CHECK_VALUE(band_lo.has_value() == band_hi.has_value(), OP, ": band_lo and band_hi go together");
  if (band_lo.has_value()) {
    CHECK_DTYPE("band_lo", *band_lo, at::kFloat);
    CHECK_SHAPE("band_lo", *band_lo, n);
    CHECK_DTYPE("band_hi", *band_hi, at::kFloat);
    CHECK_SHAPE("band_hi", *band_hi, n);
  }
  const int guides = guide_rows.has_value() + guide_cols.has_value() + guide_max.has_value();
  TORCH_CHECK_VALUE(guides == 0 || guides == 3, OP, ": guide_rows, guide_cols and guide_max go together (",
                    guides, " of the three were given)");
  if (guides == 3) {
    check_guide_type(OP, "guide_rows", *guide_rows, /*rows=*/true);
    check_guide_type(OP, "guide_cols", *guide_cols, /*rows=*/false);
    check_guide_type(OP, "guide_max", *guide_max, /*rows=*/false);
    CHECK_2D("guide_rows", *guide_rows);
    CHECK_2D("guide_cols", *guide_cols);
    TORCH_CHECK_VALUE(guide_rows->size(0) == n, OP, ": guide_rows must have one row per query row (", n,
                      "), got shape ", guide_rows->sizes());
    TORCH_CHECK_VALUE(guide_cols->size(0) == m + r, OP, ": guide_cols must have one row per column, keys then extra (",
                      m + r, "), got shape ", guide_cols->sizes());
    TORCH_CHECK_VALUE(guide_cols->size(1) == guide_rows->size(1), OP, ": guide feature dims differ: guide_rows has ",
                      guide_rows->size(1), ", guide_cols has ", guide_cols->size(1));
    CHECK_SHAPE("guide_max", *guide_max, n);
  }
  const std::pair<const char*, const OptTensor*> others[] = {
      {"keys", &keys},           {"extra", &extra},           {"bias", &bias},       {"pos_index", &pos_index},
      {"row_labels", &row_labels}, {"col_labels", &col_labels}, {"self_index", &self_index},
      {"band_lo", &band_lo},     {"band_hi", &band_hi},       {"guide_rows", &guide_rows},
      {"guide_cols", &guide_cols}, {"guide_max", &guide_max}};
  for (const auto& [name, t] : others)
    if (t->has_value()) CHECK_SAME_DEVICE(name, **t, query);
  CHECK_SAME_DEVICE("scale", scale, query);
  TORCH_CHECK_VALUE(query.is_cuda() || query.is_cpu(), OP, ": query is on ", query.device(),
                    ": backend='cuda' runs on CUDA tensors (and on CPU tensors, for tests)");
  if (check_indices) {  // the backward's are the forward's, already checked
    if (pos_index.has_value()) check_index_range(OP, "pos_index", *pos_index, m + r);
    if (self_index.has_value()) check_index_range(OP, "self_index", *self_index, m + r);
  }

  p.n = n, p.m = m, p.r = r, p.d = d, p.chunk_rows = chunk_rows, p.chunk_cols = chunk_cols;
  p.query = query.contiguous();
  p.keys = p.shared ? p.query : k.contiguous();
  p.extra = r > 0 ? extra->contiguous() : Tensor();
  p.scale = scale.reshape({}).contiguous();
  p.bias = bias.has_value() ? bias->reshape({}).contiguous() : Tensor();
  p.pos_index = contiguous_or_undefined(pos_index);
  p.row_labels = contiguous_or_undefined(row_labels);
  p.col_labels = contiguous_or_undefined(col_labels);
  p.self_index = contiguous_or_undefined(self_index);
  p.band_lo = contiguous_or_undefined(band_lo);
  p.band_hi = contiguous_or_undefined(band_hi);
  if (guides == 3) {  // the guide's GEMM operands as the cosines': their dtype on a GPU, fp32 on the CPU
    const auto type = query.is_cuda() ? guide_rows->scalar_type() : at::kFloat;
    p.guide_rows = guide_rows->to(type).contiguous();
    p.guide_cols = guide_cols->to(type).contiguous();
    p.guide_max = guide_max->to(at::kFloat).contiguous();
  }

  p.qh = unit_rows(p.query, normalize);
  std::vector<Tensor> columns = {p.shared ? p.qh : unit_rows(p.keys, normalize)};
  if (r > 0) columns.push_back(unit_rows(p.extra, normalize));
  p.ch = columns.size() == 1 ? columns[0] : at::cat(columns, 0);

  cc::Roles& ro = p.roles;
  ro.pos_index = ptr_or_null<int64_t>(p.pos_index);
  ro.self_index = ptr_or_null<int64_t>(p.self_index);
  ro.row_labels = ptr_or_null<int64_t>(p.row_labels);
  ro.col_labels = ptr_or_null<int64_t>(p.col_labels);
  ro.band_lo = ptr_or_null<float>(p.band_lo);
  ro.band_hi = ptr_or_null<float>(p.band_hi);
  ro.guide_max = ptr_or_null<float>(p.guide_max);
  ro.m = m;
  ro.key_negatives = key_negatives;
  ro.decoupled = decoupled;
  p.terms.hard = hard_beta.has_value();
  p.terms.beta = hard_beta.has_value() ? static_cast<float>(*hard_beta) : 0.0f;
  p.terms.sigmoid = pairwise_sigmoid;
  return p;
}

// The caller's current stream on the inputs' device (null on the CPU), through c10's
// device-generic interface (the CUDA implementation is registered by torch's CUDA library).
void* current_stream(const Tensor& t) {
  if (!t.is_cuda()) return nullptr;
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device()).native_handle();
}

// a @ b.T, or a @ b, into fp32 (fp32 accumulation inside the GEMM)
Tensor product_fp32(const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat) return at::mm(a, b);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  return at::mm(a, b, at::kFloat);
#else
  return at::mm(a, b).to(at::kFloat);  // rounded to the input dtype once per product
#endif
}

// acc (fp32) += a @ b with fp32 accumulation: on a GPU one GEMM whose epilogue adds into acc
// (beta = 1), no fp32 temporary
void accumulate_product(Tensor acc, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat) {
    acc.addmm_(a, b);
    return;
  }
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  static bool fused = true;  // torch's fp32-output addmm, where this build of torch has it for the inputs
  if (fused) {
    try {
      at::addmm_out(acc, acc, a, b, at::kFloat);
      return;
    } catch (const c10::Error&) {
      fused = false;
    }
  }
#endif
  acc.add_(product_fp32(a, b));
}

// The column chunks [c0, c1): keys then extra negatives, never straddling them (column terms
// belong to key columns only).
std::vector<std::pair<int64_t, int64_t>> column_chunks(const Problem& p) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& [start, end] : {std::pair<int64_t, int64_t>{0, p.m}, {p.m, p.m + p.r}})
    for (int64_t c0 = start; c0 < end; c0 += p.chunk_cols) out.emplace_back(c0, std::min(c0 + p.chunk_cols, end));
  return out;
}

cc::Chunk as_chunk(const Tensor& s, int64_t r0, int64_t c0) {
  cc::Chunk c;
  c.s = s.const_data_ptr<float>();
  c.rows = s.size(0), c.cols = s.size(1), c.ld = s.size(1);
  c.r0 = r0, c.c0 = c0;
  return c;
}

// Calls fn(c0, c1, chunk) for every column chunk of the rows [r0, r1), in a fixed order: the chunk's
// cosines and, with a guide, its guide similarities (both fp32 GEMM outputs of the same shape).
template <typename Fn>
void for_each_chunk(const Problem& p, int64_t r0, int64_t r1, Fn&& fn) {
  const Tensor q = p.qh.narrow(0, r0, r1 - r0);
  const Tensor guide_q = p.guide_rows.defined() ? p.guide_rows.narrow(0, r0, r1 - r0) : Tensor();
  for (const auto& [c0, c1] : column_chunks(p)) {
    const Tensor s = product_fp32(q, p.ch.narrow(0, c0, c1 - c0).t()).contiguous();
    cc::Chunk c = as_chunk(s, r0, c0);
    Tensor g;
    if (guide_q.defined()) {
      g = product_fp32(guide_q, p.guide_cols.narrow(0, c0, c1 - c0).t()).contiguous();
      c.g = g.const_data_ptr<float>();
    }
    fn(c0, c1, c);
  }
}

// Whether the chunks go through the fused sm_90a kernels (fused_sm90.cu) instead of cuBLAS and the
// epilogues: CUDA bf16/fp16 operands, 16-byte aligned rows (d % 8 == 0), the plain roles (no labels,
// band, guide, hard negatives or sigmoid), a device they run on, and CONTRASTIVE_OPS_CUDA_FUSED not "0".
bool fused_path(const Problem& p) {
  if (!p.query.is_cuda() || p.d % 8 != 0) return false;
  const auto type = p.qh.scalar_type();
  if (type != at::kBFloat16 && type != at::kHalf) return false;
  const cc::Roles& ro = p.roles;
  if (p.terms.hard || p.terms.sigmoid || ro.row_labels != nullptr || ro.band_lo != nullptr || ro.guide_max != nullptr)
    return false;
  if (reinterpret_cast<uintptr_t>(p.qh.const_data_ptr()) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(p.ch.const_data_ptr()) % 16 != 0)
    return false;
  const char* env = std::getenv("CONTRASTIVE_OPS_CUDA_FUSED");
  if (env != nullptr && std::string(env) == "0") return false;
  return cc::fused_available(p.query.get_device());
}

// Calls fn(c0, c1, chunk, operands) for every column chunk of the rows [r0, r1) in for_each_chunk's
// order, for the fused kernels: no product is formed (chunk.s is null), the operands are the unit rows.
template <typename Fn>
void for_each_fused_chunk(const Problem& p, int64_t r0, int64_t r1, Fn&& fn) {
  const auto* q = static_cast<const uint8_t*>(p.qh.const_data_ptr());
  const auto* k = static_cast<const uint8_t*>(p.ch.const_data_ptr());
  const int64_t row_bytes = p.d * p.qh.element_size();
  for (const auto& [c0, c1] : column_chunks(p)) {
    cc::Chunk c;
    c.rows = r1 - r0, c.cols = c1 - c0, c.r0 = r0, c.c0 = c0;
    cc::Operands o;
    o.q = q + r0 * row_bytes;
    o.c = k + c0 * row_bytes;
    o.d = p.d;
    o.dtype = kernel_dtype(p.qh);
    fn(c0, c1, c, o);
  }
}

// Partial accumulators of the fused forward: count × tiles of them
Tensor partial_buffer(const Tensor& like, int64_t count, int64_t tiles) {
  return at::empty({static_cast<int64_t>(count * tiles * sizeof(cc::Acc))}, like.options().dtype(at::kByte));
}

Tensor acc_buffer(const Tensor& like, int64_t count, void* stream) {
  Tensor buf = at::empty({static_cast<int64_t>(count * sizeof(cc::Acc))}, like.options().dtype(at::kByte));
  auto* acc = reinterpret_cast<cc::Acc*>(buf.data_ptr<uint8_t>());
  if (like.is_cuda()) {
    const char* OP = "contrastive_ops_cuda (accumulators)";
    CHECK_LAUNCH(cc::acc_init(acc, count, stream));
  } else {
    cc::cpu::acc_init(acc, count);
  }
  return buf;
}

cc::Acc* acc_ptr(Tensor& buf) { return reinterpret_cast<cc::Acc*>(buf.data_ptr<uint8_t>()); }

// The terms of `count` accumulators: lse, pos, den_count, pos_count, lse_beta (beta), pair (pair).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> finish_terms(const char* OP, Tensor& buf, int64_t count,
                                                                        bool beta, bool pair, const Tensor& like,
                                                                        void* stream) {
  auto f32 = like.options().dtype(at::kFloat);
  auto i64 = like.options().dtype(at::kLong);
  Tensor lse = at::empty({count}, f32), pos = at::empty({count}, f32);
  Tensor den = at::empty({count}, i64), pos_n = at::empty({count}, i64);
  Tensor lse_beta = at::empty({beta ? count : 0}, f32), pair_loss = at::empty({pair ? count : 0}, f32);
  float* lb = beta ? lse_beta.data_ptr<float>() : nullptr;
  float* pl = pair ? pair_loss.data_ptr<float>() : nullptr;
  if (like.is_cuda()) {
    CHECK_LAUNCH(cc::acc_finish(acc_ptr(buf), count, lse.data_ptr<float>(), pos.data_ptr<float>(),
                                den.data_ptr<int64_t>(), pos_n.data_ptr<int64_t>(), lb, pl, stream));
  } else {
    cc::cpu::acc_finish(acc_ptr(buf), count, lse.data_ptr<float>(), pos.data_ptr<float>(), den.data_ptr<int64_t>(),
                        pos_n.data_ptr<int64_t>(), lb, pl);
  }
  return std::make_tuple(lse, pos, den, pos_n, lse_beta, pair_loss);
}

using Terms10 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Terms10 forward(const Tensor& query, const OptTensor& keys, const OptTensor& extra, const Tensor& scale,
                const OptTensor& bias, const OptTensor& pos_index, const OptTensor& row_labels,
                const OptTensor& col_labels, const OptTensor& self_index, const OptTensor& band_lo,
                const OptTensor& band_hi, const OptTensor& guide_rows, const OptTensor& guide_cols,
                const OptTensor& guide_max, bool key_negatives, bool decoupled, bool column_terms, bool normalize,
                std::optional<double> hard_beta, bool pairwise_sigmoid, int64_t chunk_rows, int64_t chunk_cols) {
  const char* OP = "contrastive_ops_cuda::forward";
  TORCH_CHECK_VALUE(!(hard_beta.has_value() && column_terms), OP, ": hard_beta does not combine with column_terms");
  c10::DeviceGuard guard(query.device());
  Problem p = prepare(OP, query, keys, extra, scale, bias, pos_index, row_labels, col_labels, self_index, band_lo,
                      band_hi, guide_rows, guide_cols, guide_max, key_negatives, decoupled, normalize, hard_beta,
                      pairwise_sigmoid, chunk_rows, chunk_cols, /*check_indices=*/true);
  void* stream = current_stream(p.query);
  const bool gpu = p.query.is_cuda();
  Tensor row_buf = acc_buffer(p.query, p.n, stream);
  Tensor col_buf = acc_buffer(p.query, column_terms ? p.m : 0, stream);
  const float* scale_ptr = p.scale.const_data_ptr<float>();
  const float* bias_ptr = ptr_or_null<float>(p.bias);
  const bool fused = fused_path(p);
  if (fused) {  // cosines, LSE partials and their merge without a chunk of cosines in memory
    const int64_t rows_max = std::min(p.chunk_rows, p.n), cols_max = std::min(p.chunk_cols, p.m + p.r);
    Tensor row_part = partial_buffer(p.query, rows_max, cc::fused_tile_count(cols_max));
    Tensor col_part = partial_buffer(p.query, column_terms ? cols_max : 0, cc::fused_tile_count(rows_max));
    for (int64_t r0 = 0; r0 < p.n; r0 += p.chunk_rows) {
      const int64_t r1 = std::min(r0 + p.chunk_rows, p.n);
      for_each_fused_chunk(p, r0, r1, [&](int64_t c0, int64_t c1, const cc::Chunk& c, const cc::Operands& o) {
        const bool cols = column_terms && c1 <= p.m;
        cc::Acc* rp = acc_ptr(row_part);
        cc::Acc* cp = cols ? acc_ptr(col_part) : nullptr;
        CHECK_LAUNCH(cc::fused_forward(o, c, p.roles, scale_ptr, rp, cp, stream));
        CHECK_LAUNCH(cc::merge_partials(rp, c.rows, cc::fused_tile_count(c.cols), acc_ptr(row_buf) + r0, stream));
        if (cols)
          CHECK_LAUNCH(cc::merge_partials(cp, c.cols, cc::fused_tile_count(c.rows), acc_ptr(col_buf) + c0, stream));
      });
    }
  }
  for (int64_t r0 = 0; r0 < p.n && !fused; r0 += p.chunk_rows) {
    const int64_t r1 = std::min(r0 + p.chunk_rows, p.n);
    for_each_chunk(p, r0, r1, [&](int64_t, int64_t c1, const cc::Chunk& c) {
      if (gpu) {
        CHECK_LAUNCH(cc::rows_forward(c, p.roles, p.terms, scale_ptr, bias_ptr, acc_ptr(row_buf), stream));
        if (column_terms && c1 <= p.m) CHECK_LAUNCH(cc::cols_forward(c, p.roles, p.terms, scale_ptr, acc_ptr(col_buf), stream));
      } else {
        cc::cpu::rows_forward(c, p.roles, p.terms, scale_ptr, bias_ptr, acc_ptr(row_buf));
        if (column_terms && c1 <= p.m) cc::cpu::cols_forward(c, p.roles, scale_ptr, acc_ptr(col_buf));
      }
    });
  }
  auto [row_lse, row_pos, row_den, row_pos_n, row_lse_beta, row_pair] =
      finish_terms(OP, row_buf, p.n, p.terms.hard, p.terms.sigmoid, p.query, stream);
  auto [col_lse, col_pos, col_den, col_pos_n, unused_beta, unused_pair] =
      finish_terms(OP, col_buf, column_terms ? p.m : 0, false, false, p.query, stream);
  return {row_lse, row_pos, row_den, row_pos_n, col_lse, col_pos, col_den, col_pos_n, row_lse_beta, row_pair};
}

using Terms14 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                           Tensor, Tensor, Tensor>;

// SigLIP without recomputation: forward's terms and, from the same chunks of cosines, the gradient
// products of the pair losses for a row weight of 1 — dQ̂₁ = dS₁·Ĉ [N, D], dĈ₁ = dS₁ᵀ·Q̂ [M + R, D]
// (fp32) and per row Σ_j dL/dx·cos, Σ_j dL/dx (the scale's and bias's) — one S GEMM, one epilogue
// (rows_pair_forward) and the two gradient GEMMs per chunk. pair_backward then scales them by the
// incoming gradient, exact when it is one value for every row (a mean or sum of the pair losses).
// Only the pairwise sigmoid's roles without column terms or hard negatives.
Terms14 pair_forward(const Tensor& query, const OptTensor& keys, const OptTensor& extra, const Tensor& scale,
                     const OptTensor& bias, const OptTensor& pos_index, const OptTensor& row_labels,
                     const OptTensor& col_labels, const OptTensor& self_index, const OptTensor& band_lo,
                     const OptTensor& band_hi, const OptTensor& guide_rows, const OptTensor& guide_cols,
                     const OptTensor& guide_max, bool key_negatives, bool decoupled, bool column_terms,
                     bool normalize, std::optional<double> hard_beta, bool pairwise_sigmoid, int64_t chunk_rows,
                     int64_t chunk_cols) {
  const char* OP = "contrastive_ops_cuda::pair_forward";
  TORCH_CHECK_VALUE(pairwise_sigmoid && !column_terms && !hard_beta.has_value(), OP,
                    ": forms the gradient of the pairwise sigmoid alone (pairwise_sigmoid, no column_terms or ",
                    "hard_beta)");
  c10::DeviceGuard guard(query.device());
  Problem p = prepare(OP, query, keys, extra, scale, bias, pos_index, row_labels, col_labels, self_index, band_lo,
                      band_hi, guide_rows, guide_cols, guide_max, key_negatives, decoupled, normalize, hard_beta,
                      pairwise_sigmoid, chunk_rows, chunk_cols, /*check_indices=*/true);
  void* stream = current_stream(p.query);
  const bool gpu = p.query.is_cuda();
  auto f32 = p.query.options().dtype(at::kFloat);
  Tensor row_buf = acc_buffer(p.query, p.n, stream);
  Tensor col_buf = acc_buffer(p.query, 0, stream);
  Tensor dqh = at::zeros({p.n, p.d}, f32), dch = at::zeros({p.m + p.r, p.d}, f32);
  Tensor row_dscale = at::zeros({p.n}, f32), row_dbias = at::zeros({p.n}, f32);
  const float* scale_ptr = p.scale.const_data_ptr<float>();
  const float* bias_ptr = p.bias.const_data_ptr<float>();
  for (int64_t r0 = 0; r0 < p.n; r0 += p.chunk_rows) {
    const int64_t r1 = std::min(r0 + p.chunk_rows, p.n);
    const Tensor q = p.qh.narrow(0, r0, r1 - r0);
    for_each_chunk(p, r0, r1, [&](int64_t c0, int64_t c1, const cc::Chunk& c) {
      Tensor ds = at::empty({c.rows, c.cols}, p.qh.options());  // scale · dL/dx, the GEMMs' dtype
      if (gpu) {
        CHECK_LAUNCH(cc::rows_pair_forward(c, p.roles, p.terms, scale_ptr, bias_ptr, acc_ptr(row_buf), kernel_dtype(ds),
                                           ds.data_ptr(), row_dscale.data_ptr<float>(), row_dbias.data_ptr<float>(),
                                           stream));
      } else {
        cc::cpu::rows_pair_forward(c, p.roles, p.terms, scale_ptr, bias_ptr, acc_ptr(row_buf), ds.data_ptr<float>(),
                                   row_dscale.data_ptr<float>(), row_dbias.data_ptr<float>());
      }
      accumulate_product(dqh.narrow(0, r0, r1 - r0), ds, p.ch.narrow(0, c0, c1 - c0));
      accumulate_product(dch.narrow(0, c0, c1 - c0), ds.t(), q);
    });
  }
  auto [row_lse, row_pos, row_den, row_pos_n, row_lse_beta, row_pair] =
      finish_terms(OP, row_buf, p.n, false, true, p.query, stream);
  auto [col_lse, col_pos, col_den, col_pos_n, unused_beta, unused_pair] =
      finish_terms(OP, col_buf, 0, false, false, p.query, stream);
  return {row_lse, row_pos, row_den, row_pos_n, col_lse, col_pos, col_den, col_pos_n, row_lse_beta, row_pair,
          dqh, dch, row_dscale, row_dbias};
}

// Gradient through x̂ = x / max(||x||, eps): (g - x̂ <x̂, g>) / max(||x||, eps), the radial part
// dropped where ||x|| <= eps; g itself without normalization. In the input dtype.
Tensor input_grad(const Tensor& x, const Tensor& g, bool normalize) {
  if (!normalize) return g.to(x.scalar_type());
  auto [y, c, norm_y] = scaled_rows(x);
  const Tensor norm = norm_y * c;  // may be inf past fp32's range: the gradient is then 0, as rounded
  const Tensor unit = y / at::maximum(norm_y, kNormEps / c);
  const Tensor radial = (unit * g).sum(1, true) * (norm > kNormEps);
  return ((g - unit * radial) / norm.clamp_min(kNormEps)).to(x.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward(
    const Tensor& g_row_lse, const Tensor& g_row_pos, const OptTensor& g_col_lse, const OptTensor& g_col_pos,
    const OptTensor& g_row_lse_beta, const OptTensor& g_row_pair, const Tensor& row_lse, const Tensor& row_pos_count,
    const OptTensor& col_lse, const OptTensor& col_pos_count, const OptTensor& row_lse_beta, const Tensor& query,
    const OptTensor& keys, const OptTensor& extra, const Tensor& scale, const OptTensor& bias,
    const OptTensor& pos_index, const OptTensor& row_labels, const OptTensor& col_labels,
    const OptTensor& self_index, const OptTensor& band_lo, const OptTensor& band_hi, const OptTensor& guide_rows,
    const OptTensor& guide_cols, const OptTensor& guide_max, bool key_negatives, bool decoupled, bool column_terms,
    bool normalize, std::optional<double> hard_beta, bool pairwise_sigmoid, int64_t chunk_rows, int64_t chunk_cols) {
  const char* OP = "contrastive_ops_cuda::backward";
  c10::DeviceGuard guard(query.device());
  Problem p = prepare(OP, query, keys, extra, scale, bias, pos_index, row_labels, col_labels, self_index, band_lo,
                      band_hi, guide_rows, guide_cols, guide_max, key_negatives, decoupled, normalize, hard_beta,
                      pairwise_sigmoid, chunk_rows, chunk_cols, /*check_indices=*/false);
  const int64_t n = p.n, m = p.m;
  auto vec = [&](const char* name, const Tensor& t, int64_t size) {
    CHECK_DTYPE(name, t, at::kFloat);
    CHECK_SHAPE(name, t, size);
    CHECK_SAME_DEVICE(name, t, query);
    return t.contiguous();
  };
  Tensor gl = vec("g_row_lse", g_row_lse, n), lse = vec("row_lse", row_lse, n);
  CHECK_DTYPE("row_pos_count", row_pos_count, at::kLong);
  CHECK_SHAPE("row_pos_count", row_pos_count, n);
  Tensor gpw = (vec("g_row_pos", g_row_pos, n) / row_pos_count.clamp_min(1).to(at::kFloat)).contiguous();
  cc::GradVecs g;
  g.g_lse = gl.const_data_ptr<float>();
  g.lse = lse.const_data_ptr<float>();
  g.g_pos_w = gpw.const_data_ptr<float>();
  Tensor glb, lb, gpair, gcl, cl, gcpw;
  if (p.terms.hard) {
    TORCH_CHECK_VALUE(g_row_lse_beta.has_value() && row_lse_beta.has_value(), OP,
                      ": hard_beta needs g_row_lse_beta and row_lse_beta");
    glb = vec("g_row_lse_beta", *g_row_lse_beta, n);
    lb = vec("row_lse_beta", *row_lse_beta, n);
    g.g_lse_beta = glb.const_data_ptr<float>();
    g.lse_beta = lb.const_data_ptr<float>();
  }
  if (p.terms.sigmoid) {
    TORCH_CHECK_VALUE(g_row_pair.has_value(), OP, ": pairwise_sigmoid needs g_row_pair");
    gpair = vec("g_row_pair", *g_row_pair, n);
    g.g_pair = gpair.const_data_ptr<float>();
  }
  if (column_terms) {
    TORCH_CHECK_VALUE(g_col_lse.has_value() && g_col_pos.has_value() && col_lse.has_value() &&
                          col_pos_count.has_value(),
                      OP, ": column terms need g_col_lse, g_col_pos, col_lse and col_pos_count");
    gcl = vec("g_col_lse", *g_col_lse, m);
    cl = vec("col_lse", *col_lse, m);
    CHECK_DTYPE("col_pos_count", *col_pos_count, at::kLong);
    CHECK_SHAPE("col_pos_count", *col_pos_count, m);
    gcpw = (vec("g_col_pos", *g_col_pos, m) / col_pos_count->clamp_min(1).to(at::kFloat)).contiguous();
    g.col_g_lse = gcl.const_data_ptr<float>();
    g.col_lse = cl.const_data_ptr<float>();
    g.col_g_pos_w = gcpw.const_data_ptr<float>();
  }
  void* stream = current_stream(p.query);
  const bool gpu = p.query.is_cuda();
  auto f32 = p.query.options().dtype(at::kFloat);
  Tensor dqh = at::zeros({n, p.d}, f32), dch = at::zeros({m + p.r, p.d}, f32);  // fp32 gradients of the unit rows
  Tensor row_dscale = at::zeros({n}, f32), row_dbias = at::zeros({n}, f32);
  const float* scale_ptr = p.scale.const_data_ptr<float>();
  const float* bias_ptr = ptr_or_null<float>(p.bias);
  cc::GradVecs rows_only = g;  // extra negatives' columns have no column terms
  rows_only.col_g_lse = rows_only.col_lse = rows_only.col_g_pos_w = nullptr;
  const bool fused = fused_path(p);
  for (int64_t r0 = 0; r0 < n && fused; r0 += p.chunk_rows) {  // dS from the fused kernels, then the GEMMs
    const int64_t r1 = std::min(r0 + p.chunk_rows, n);
    const Tensor q = p.qh.narrow(0, r0, r1 - r0);
    for_each_fused_chunk(p, r0, r1, [&](int64_t c0, int64_t c1, const cc::Chunk& c, const cc::Operands& o) {
      const cc::GradVecs& gv = c1 <= m ? g : rows_only;
      const int64_t ld = (c.cols + 7) / 8 * 8;  // even rows for the kernels' paired stores
      Tensor ds = at::empty({c.rows, ld}, p.qh.options());
      Tensor dscale_part = at::empty({c.rows, cc::fused_tile_count(c.cols)}, f32);
      CHECK_LAUNCH(cc::fused_backward(o, c, p.roles, scale_ptr, gv, ds.data_ptr(), ld, dscale_part.data_ptr<float>(),
                                      stream));
      row_dscale.narrow(0, r0, c.rows).add_(dscale_part.sum(1));  // fixed-shape reduction: deterministic
      const Tensor dsv = ds.narrow(1, 0, c.cols);
      accumulate_product(dqh.narrow(0, r0, r1 - r0), dsv, p.ch.narrow(0, c0, c1 - c0));
      accumulate_product(dch.narrow(0, c0, c1 - c0), dsv.t(), q);
    });
  }
  for (int64_t r0 = 0; r0 < n && !fused; r0 += p.chunk_rows) {
    const int64_t r1 = std::min(r0 + p.chunk_rows, n);
    const Tensor q = p.qh.narrow(0, r0, r1 - r0);
    for_each_chunk(p, r0, r1, [&](int64_t c0, int64_t c1, const cc::Chunk& c) {
      const cc::GradVecs& gv = c1 <= m ? g : rows_only;
      Tensor ds = at::empty({c.rows, c.cols}, p.qh.options());  // scale · dL/dx, the GEMMs' dtype
      if (gpu) {
        CHECK_LAUNCH(cc::rows_backward(c, p.roles, p.terms, scale_ptr, bias_ptr, gv, kernel_dtype(ds), ds.data_ptr(),
                                       row_dscale.data_ptr<float>(), row_dbias.data_ptr<float>(), stream));
      } else {
        cc::cpu::rows_backward(c, p.roles, p.terms, scale_ptr, bias_ptr, gv, ds.data_ptr<float>(),
                               row_dscale.data_ptr<float>(), row_dbias.data_ptr<float>());
      }
      const Tensor cols = p.ch.narrow(0, c0, c1 - c0);
      accumulate_product(dqh.narrow(0, r0, r1 - r0), ds, cols);
      accumulate_product(dch.narrow(0, c0, c1 - c0), ds.t(), q);
    });
  }
  Tensor grad_scale = row_dscale.sum();  // fixed-size reductions: deterministic
  Tensor grad_bias = row_dbias.sum();
  if (p.shared) dqh.add_(dch.narrow(0, 0, m));  // the keys are the queries: both gradients
  Tensor grad_query = input_grad(p.query, dqh, normalize);
  Tensor grad_keys = p.shared ? at::empty({0}, query.options()) : input_grad(p.keys, dch.narrow(0, 0, m), normalize);
  Tensor grad_extra = p.r > 0 ? input_grad(p.extra, dch.narrow(0, m, p.r), normalize)
                      : extra.has_value() ? at::zeros_like(*extra)
                                          : at::empty({0}, query.options());
  return {grad_query, grad_keys, grad_extra, grad_scale, grad_bias};
}

// The gradients of pair_forward's pair losses: dQ̂ = g_i · dQ̂₁ row by row, dĈ = w · dĈ₁ with w =
// g_row_pair[0] (the one weight of every row: the caller's promise), d(scale) = Σ_i g_i Σ_j dL/dx·cos,
// d(bias) = Σ_i g_i Σ_j dL/dx, then the normalization backward. O((N + M)·D), no chunk recomputed.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> pair_backward(const Tensor& g_row_pair, const Tensor& dqh1,
                                                                 const Tensor& dch1, const Tensor& row_dscale1,
                                                                 const Tensor& row_dbias1, const Tensor& query,
                                                                 const OptTensor& keys, const OptTensor& extra,
                                                                 bool normalize) {
  const char* OP = "contrastive_ops_cuda::pair_backward";
  c10::DeviceGuard guard(query.device());
  check_float_type(OP, query);
  CHECK_2D("query", query);
  const bool shared = !keys.has_value();
  const int64_t n = query.size(0), d = query.size(1), m = shared ? n : keys->size(0);
  const int64_t r = extra.has_value() ? extra->size(0) : 0;
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"g_row_pair", &g_row_pair},
                                {"row_dscale", &row_dscale1}, {"row_dbias", &row_dbias1}}) {
    CHECK_DTYPE(name, *t, at::kFloat);
    CHECK_SHAPE(name, *t, n);
    CHECK_SAME_DEVICE(name, *t, query);
  }
  CHECK_DTYPE("dqh", dqh1, at::kFloat);
  CHECK_SHAPE("dqh", dqh1, n, d);
  CHECK_DTYPE("dch", dch1, at::kFloat);
  CHECK_SHAPE("dch", dch1, m + r, d);
  const Tensor g = g_row_pair.contiguous();
  Tensor dqh = dqh1 * g.unsqueeze(1);
  Tensor dch = dch1 * g.narrow(0, 0, 1).unsqueeze(1);  // no host sync: the weight stays on the device
  Tensor grad_scale = (row_dscale1 * g).sum();
  Tensor grad_bias = (row_dbias1 * g).sum();
  if (shared) dqh.add_(dch.narrow(0, 0, m));
  Tensor grad_query = input_grad(query, dqh, normalize);
  Tensor grad_keys = shared ? at::empty({0}, query.options()) : input_grad(*keys, dch.narrow(0, 0, m), normalize);
  Tensor grad_extra = r > 0 ? input_grad(*extra, dch.narrow(0, m, r), normalize)
                      : extra.has_value() ? at::zeros_like(*extra)
                                          : at::empty({0}, query.options());
  return {grad_query, grad_keys, grad_extra, grad_scale, grad_bias};
}

std::tuple<Tensor, Tensor> ring_band(const Tensor& query, const OptTensor& keys, const OptTensor& extra,
                                     const Tensor& scale, const OptTensor& pos_index, const OptTensor& row_labels,
                                     const OptTensor& col_labels, const OptTensor& self_index,
                                     const OptTensor& guide_rows, const OptTensor& guide_cols,
                                     const OptTensor& guide_max, bool key_negatives, bool normalize, double outer,
                                     double inner, int64_t chunk_rows, int64_t chunk_cols) {
  const char* OP = "contrastive_ops_cuda::ring_band";
  TORCH_CHECK_VALUE(outer >= 0.0 && outer <= 1.0, OP, ": outer must be in [0, 1], got ", outer);
  TORCH_CHECK_VALUE(inner >= 0.0 && inner <= 1.0, OP, ": inner must be in [0, 1], got ", inner);
  c10::DeviceGuard guard(query.device());
  Problem p = prepare(OP, query, keys, extra, scale, std::nullopt, pos_index, row_labels, col_labels, self_index,
                      std::nullopt, std::nullopt, guide_rows, guide_cols, guide_max, key_negatives, false, normalize,
                      std::nullopt, false, chunk_rows, chunk_cols, /*check_indices=*/true);
  void* stream = current_stream(p.query);
  const bool gpu = p.query.is_cuda();
  auto opts = p.query.options();
  Tensor v_lo = at::empty({p.n}, opts.dtype(at::kFloat)), v_hi = at::empty({p.n}, opts.dtype(at::kFloat));
  const float* scale_ptr = p.scale.const_data_ptr<float>();
  for (int64_t r0 = 0; r0 < p.n; r0 += p.chunk_rows) {
    const int64_t rows = std::min(p.chunk_rows, p.n - r0);
    Tensor hist = at::empty({rows, 2, 256}, opts.dtype(at::kInt));
    Tensor prefix = at::zeros({rows, 2}, opts.dtype(at::kInt));  // uint32 bit patterns
    Tensor rank = at::zeros({rows, 2}, opts.dtype(at::kLong));
    Tensor nonempty = at::zeros({rows}, opts.dtype(at::kByte));
    auto* prefix_ptr = reinterpret_cast<uint32_t*>(prefix.data_ptr<int32_t>());
    for (int shift = 24; shift >= 0; shift -= 8) {  // one byte of the order keys per pass, from the top
      hist.zero_();
      for_each_chunk(p, r0, r0 + rows, [&](int64_t, int64_t, const cc::Chunk& c) {
        if (gpu)
          CHECK_LAUNCH(cc::ring_histogram(c, p.roles, scale_ptr, prefix_ptr, shift, hist.data_ptr<int32_t>(), stream));
        else
          cc::cpu::ring_histogram(c, p.roles, scale_ptr, prefix_ptr, shift, hist.data_ptr<int32_t>());
      });
      if (gpu)
        CHECK_LAUNCH(cc::ring_step(hist.data_ptr<int32_t>(), rows, shift, outer, inner, prefix_ptr,
                                   rank.data_ptr<int64_t>(), nonempty.data_ptr<uint8_t>(), stream));
      else
        cc::cpu::ring_step(hist.data_ptr<int32_t>(), rows, shift, outer, inner, prefix_ptr, rank.data_ptr<int64_t>(),
                           nonempty.data_ptr<uint8_t>());
    }
    float* lo = v_lo.data_ptr<float>() + r0;
    float* hi = v_hi.data_ptr<float>() + r0;
    if (gpu)
      CHECK_LAUNCH(cc::ring_finish(prefix_ptr, nonempty.data_ptr<uint8_t>(), rows, lo, hi, stream));
    else
      cc::cpu::ring_finish(prefix_ptr, nonempty.data_ptr<uint8_t>(), rows, lo, hi);
  }
  return {v_lo, v_hi};
}

std::string built_archs() { return cc::built_archs(); }

}  // namespace

TORCH_LIBRARY(contrastive_ops_cuda, m) {
  m.def(
      "forward(Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? bias, Tensor? pos_index, "
      "Tensor? row_labels, Tensor? col_labels, Tensor? self_index, Tensor? band_lo, Tensor? band_hi, "
      "Tensor? guide_rows, Tensor? guide_cols, Tensor? guide_max, bool key_negatives, bool decoupled, "
      "bool column_terms, bool normalize, float? hard_beta, bool pairwise_sigmoid, int chunk_rows, int chunk_cols) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor g_row_lse, Tensor g_row_pos, Tensor? g_col_lse, Tensor? g_col_pos, Tensor? g_row_lse_beta, "
      "Tensor? g_row_pair, Tensor row_lse, Tensor row_pos_count, Tensor? col_lse, Tensor? col_pos_count, "
      "Tensor? row_lse_beta, Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? bias, "
      "Tensor? pos_index, Tensor? row_labels, Tensor? col_labels, Tensor? self_index, Tensor? band_lo, "
      "Tensor? band_hi, Tensor? guide_rows, Tensor? guide_cols, Tensor? guide_max, bool key_negatives, "
      "bool decoupled, bool column_terms, bool normalize, float? hard_beta, bool pairwise_sigmoid, int chunk_rows, "
      "int chunk_cols) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ring_band(Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? pos_index, Tensor? row_labels, "
      "Tensor? col_labels, Tensor? self_index, Tensor? guide_rows, Tensor? guide_cols, Tensor? guide_max, "
      "bool key_negatives, bool normalize, float outer, float inner, int chunk_rows, int chunk_cols) "
      "-> (Tensor, Tensor)");
  m.def(
      "pair_forward(Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? bias, Tensor? pos_index, "
      "Tensor? row_labels, Tensor? col_labels, Tensor? self_index, Tensor? band_lo, Tensor? band_hi, "
      "Tensor? guide_rows, Tensor? guide_cols, Tensor? guide_max, bool key_negatives, bool decoupled, "
      "bool column_terms, bool normalize, float? hard_beta, bool pairwise_sigmoid, int chunk_rows, int chunk_cols) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "pair_backward(Tensor g_row_pair, Tensor dqh, Tensor dch, Tensor row_dscale, Tensor row_dbias, Tensor query, "
      "Tensor? keys, Tensor? extra, bool normalize) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("built_archs() -> str", &built_archs);
}

// CUDA tensors run the epilogue kernels; CPU tensors the same arithmetic in loops (epilogue_cpu.h).
TORCH_LIBRARY_IMPL(contrastive_ops_cuda, CUDA, m) {
  m.impl("forward", &forward);
  m.impl("pair_forward", &pair_forward);
  m.impl("pair_backward", &pair_backward);
  m.impl("backward", &backward);
  m.impl("ring_band", &ring_band);
}
TORCH_LIBRARY_IMPL(contrastive_ops_cuda, CPU, m) {
  m.impl("forward", &forward);
  m.impl("pair_forward", &pair_forward);
  m.impl("pair_backward", &pair_backward);
  m.impl("backward", &backward);
  m.impl("ring_band", &ring_band);
}

// `import contrastive_ops._cuda_ext` loads this library (and so registers the operators above);
// the module itself is empty.
extern "C" PyObject* PyInit__cuda_ext(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_ext", "contrastive_ops CUDA operators", -1, nullptr};
  return PyModule_Create(&module);
}
