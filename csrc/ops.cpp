// Torch glue of the CUDA extension: argument checks, the caller's stream, and the operators'
// registration under the `contrastive_ops_cuda` namespace. Compiles against the CPU build of
// torch (no c10/cuda headers): the kernels behind contrastive_cuda.h take raw pointers and the
// current stream as reached through c10's device-generic stream API.
//
// Operators (autograd and fake implementations are registered from Python,
// contrastive_ops/backends/cuda.py):
//   forward(query, keys?, extra?, scale, <roles>, band_lo?, band_hi?, key_negatives, decoupled,
//           column_terms, normalize) -> row_lse, row_pos, row_den_count, row_pos_count,
//                                       col_lse, col_pos, col_den_count, col_pos_count
//   backward(g_row_lse, g_row_pos, g_col_lse?, g_col_pos?, row_lse, row_pos_count, col_lse?,
//            col_pos_count?, query, keys?, extra?, scale, <roles>, band_lo?, band_hi?,
//            key_negatives, decoupled, normalize) -> grad_query, grad_keys, grad_extra, grad_scale
//   ring_band(query, keys?, extra?, scale, <roles>, key_negatives, normalize, outer, inner)
//            -> v_lo, v_hi
//   built_archs() -> str
// keys=None means the keys are the queries themselves (NT-Xent, SupCon); grad_keys is then empty
// and grad_query holds both gradients. Column outputs are empty without column_terms, grad_extra
// without extra negatives. CPU tensors pass the same checks and then fail with the fix named.
#include <Python.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>

#include "contrastive_cuda.h"

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

cc::DType kernel_dtype(const char* OP, const Tensor& query) {
  switch (query.scalar_type()) {
    case at::kFloat:
      return cc::DType::kFloat32;
    case at::kHalf:
      return cc::DType::kFloat16;
    case at::kBFloat16:
      return cc::DType::kBFloat16;
    case at::kDouble:
      TORCH_CHECK_TYPE(false, OP, ": float64 inputs are not supported by backend='cuda' (fp32/fp16/bf16 with fp32 ",
                       "accumulation); use backend='chunked' for float64");
    default:
      TORCH_CHECK_TYPE(false, OP, ": query must be float32, float16 or bfloat16, got ", query.scalar_type());
  }
  return cc::DType::kFloat32;  // unreachable
}

// Checked, contiguous inputs of one call and the CoreArgs pointing into them.
struct Inputs {
  Tensor query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo, band_hi;
  Tensor inv_q, inv_k, inv_e;
  bool shared = false;  // keys are the queries themselves
  cc::DType dtype = cc::DType::kFloat32;
  cc::CoreArgs args;
};

// The one place where every argument is checked; the device comes last, so that a CPU machine can
// test the other checks, and a CPU tensor gets the fix named.
Inputs check_inputs(const char* OP, const Tensor& query, const OptTensor& keys, const OptTensor& extra,
                    const Tensor& scale, const OptTensor& pos_index, const OptTensor& row_labels,
                    const OptTensor& col_labels, const OptTensor& self_index, const OptTensor& band_lo,
                    const OptTensor& band_hi, bool key_negatives, bool decoupled,
                    const std::function<void(int64_t n, int64_t m)>& more_checks = nullptr) {
  Inputs in;
  in.dtype = kernel_dtype(OP, query);
  CHECK_2D("query", query);
  const int64_t n = query.size(0), d = query.size(1);
  TORCH_CHECK_VALUE(n > 0 && d > 0, OP, ": query must have at least one row and one feature, got shape ",
                    query.sizes());
  in.shared = !keys.has_value();
  const Tensor& k = in.shared ? query : *keys;
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
  if (pos_index.has_value()) {
    CHECK_DTYPE("pos_index", *pos_index, at::kLong);
    CHECK_SHAPE("pos_index", *pos_index, n);
  }
  TORCH_CHECK_VALUE(row_labels.has_value() == col_labels.has_value(), OP,
                    ": row_labels and col_labels go together (one was given without the other)");
  TORCH_CHECK_VALUE(!(pos_index.has_value() && row_labels.has_value()), OP,
                    ": give either pos_index or labels, not both");
  if (row_labels.has_value()) {
    CHECK_DTYPE("row_labels", *row_labels, at::kLong);
    CHECK_SHAPE("row_labels", *row_labels, n);
    CHECK_DTYPE("col_labels", *col_labels, at::kLong);
    CHECK_SHAPE("col_labels", *col_labels, m);
  }
  if (self_index.has_value()) {
    CHECK_DTYPE("self_index", *self_index, at::kLong);
    CHECK_SHAPE("self_index", *self_index, n);
  }
  TORCH_CHECK_VALUE(band_lo.has_value() == band_hi.has_value(), OP, ": band_lo and band_hi go together");
  if (band_lo.has_value()) {
    CHECK_DTYPE("band_lo", *band_lo, at::kFloat);
    CHECK_SHAPE("band_lo", *band_lo, n);
    CHECK_DTYPE("band_hi", *band_hi, at::kFloat);
    CHECK_SHAPE("band_hi", *band_hi, n);
  }
  if (more_checks) more_checks(n, m);
  // devices last: every tensor on query's device, and that device a GPU
  const std::pair<const char*, const OptTensor*> others[] = {
      {"keys", &keys},          {"extra", &extra},           {"pos_index", &pos_index}, {"row_labels", &row_labels},
      {"col_labels", &col_labels}, {"self_index", &self_index}, {"band_lo", &band_lo},     {"band_hi", &band_hi}};
  for (const auto& [name, t] : others)
    if (t->has_value()) CHECK_SAME_DEVICE(name, **t, query);
  CHECK_SAME_DEVICE("scale", scale, query);
  TORCH_CHECK_VALUE(query.is_cuda(), OP, ": query is on ", query.device(),
                    ", but backend='cuda' runs on CUDA tensors only: move the inputs to a GPU (tensor.cuda()), ",
                    "or use backend='chunked' (any device) or backend='auto'");

  auto contiguous = [](const OptTensor& t) { return t.has_value() ? t->contiguous() : Tensor(); };
  in.query = query.contiguous();
  in.keys = in.shared ? in.query : k.contiguous();
  in.extra = r > 0 ? contiguous(extra) : Tensor();
  in.scale = scale.reshape({}).contiguous();
  in.pos_index = contiguous(pos_index);
  in.row_labels = contiguous(row_labels);
  in.col_labels = contiguous(col_labels);
  in.self_index = contiguous(self_index);
  in.band_lo = contiguous(band_lo);
  in.band_hi = contiguous(band_hi);

  auto ptr = [](const Tensor& t) -> const void* { return t.defined() ? t.const_data_ptr() : nullptr; };
  cc::CoreArgs& a = in.args;
  a.q = ptr(in.query);
  a.k = ptr(in.keys);
  a.e = ptr(in.extra);
  a.n = n;
  a.m = m;
  a.r = r;
  a.d = d;
  a.scale = in.scale.const_data_ptr<float>();
  a.pos_index = static_cast<const int64_t*>(ptr(in.pos_index));
  a.row_labels = static_cast<const int64_t*>(ptr(in.row_labels));
  a.col_labels = static_cast<const int64_t*>(ptr(in.col_labels));
  a.self_index = static_cast<const int64_t*>(ptr(in.self_index));
  a.band_lo = static_cast<const float*>(ptr(in.band_lo));
  a.band_hi = static_cast<const float*>(ptr(in.band_hi));
  a.key_negatives = key_negatives;
  a.decoupled = decoupled;
  return in;
}

// The caller's current stream on the inputs' device, through c10's device-generic interface
// (the CUDA implementation is registered by torch's CUDA library at run time).
void* current_stream(const Tensor& t) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device()).native_handle();
}

Tensor fp32_vector(const Tensor& like, int64_t size) { return at::empty({size}, like.options().dtype(at::kFloat)); }

// Fills inv_q/inv_k/inv_e (1 / max(||x||, 1e-12)) when normalizing; null pointers mean 1.
void inverse_norms(const char* OP, Inputs& in, bool normalize, void* stream) {
  if (!normalize) return;
  cc::CoreArgs& a = in.args;
  in.inv_q = fp32_vector(in.query, a.n);
  CHECK_LAUNCH(cc::inverse_norms(in.dtype, a.q, a.n, a.d, in.inv_q.data_ptr<float>(), stream));
  a.inv_q = in.inv_q.const_data_ptr<float>();
  if (in.shared) {
    a.inv_k = a.inv_q;
  } else {
    in.inv_k = fp32_vector(in.query, a.m);
    CHECK_LAUNCH(cc::inverse_norms(in.dtype, a.k, a.m, a.d, in.inv_k.data_ptr<float>(), stream));
    a.inv_k = in.inv_k.const_data_ptr<float>();
  }
  if (a.r > 0) {
    in.inv_e = fp32_vector(in.query, a.r);
    CHECK_LAUNCH(cc::inverse_norms(in.dtype, a.e, a.r, a.d, in.inv_e.data_ptr<float>(), stream));
    a.inv_e = in.inv_e.const_data_ptr<float>();
  }
}

using Terms = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Terms forward(const Tensor& query, const OptTensor& keys, const OptTensor& extra, const Tensor& scale,
              const OptTensor& pos_index, const OptTensor& row_labels, const OptTensor& col_labels,
              const OptTensor& self_index, const OptTensor& band_lo, const OptTensor& band_hi, bool key_negatives,
              bool decoupled, bool column_terms, bool normalize) {
  const char* OP = "contrastive_ops_cuda::forward";
  Inputs in = check_inputs(OP, query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo,
                           band_hi, key_negatives, decoupled);
  c10::DeviceGuard guard(query.device());
  void* stream = current_stream(query);
  inverse_norms(OP, in, normalize, stream);
  const cc::CoreArgs& a = in.args;
  auto f32 = query.options().dtype(at::kFloat);
  auto i64 = query.options().dtype(at::kLong);
  Tensor row_lse = at::empty({a.n}, f32), row_pos = at::empty({a.n}, f32);
  Tensor row_den = at::empty({a.n}, i64), row_pos_n = at::empty({a.n}, i64);
  CHECK_LAUNCH(cc::forward_rows(in.dtype, a, row_lse.data_ptr<float>(), row_pos.data_ptr<float>(),
                                row_den.data_ptr<int64_t>(), row_pos_n.data_ptr<int64_t>(), stream));
  const int64_t mc = column_terms ? a.m : 0;
  Tensor col_lse = at::empty({mc}, f32), col_pos = at::empty({mc}, f32);
  Tensor col_den = at::empty({mc}, i64), col_pos_n = at::empty({mc}, i64);
  if (column_terms)
    CHECK_LAUNCH(cc::forward_cols(in.dtype, a, col_lse.data_ptr<float>(), col_pos.data_ptr<float>(),
                                  col_den.data_ptr<int64_t>(), col_pos_n.data_ptr<int64_t>(), stream));
  return {row_lse, row_pos, row_den, row_pos_n, col_lse, col_pos, col_den, col_pos_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> backward(
    const Tensor& g_row_lse, const Tensor& g_row_pos, const OptTensor& g_col_lse, const OptTensor& g_col_pos,
    const Tensor& row_lse, const Tensor& row_pos_count, const OptTensor& col_lse, const OptTensor& col_pos_count,
    const Tensor& query, const OptTensor& keys, const OptTensor& extra, const Tensor& scale,
    const OptTensor& pos_index, const OptTensor& row_labels, const OptTensor& col_labels,
    const OptTensor& self_index, const OptTensor& band_lo, const OptTensor& band_hi, bool key_negatives,
    bool decoupled, bool normalize) {
  const char* OP = "contrastive_ops_cuda::backward";
  const bool column_terms = col_lse.has_value() && col_lse->numel() > 0;
  auto grad_checks = [&](int64_t n, int64_t m) {
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"g_row_lse", &g_row_lse},
                                  {"g_row_pos", &g_row_pos}, {"row_lse", &row_lse}}) {
      CHECK_DTYPE(name, *t, at::kFloat);
      CHECK_SHAPE(name, *t, n);
    }
    CHECK_DTYPE("row_pos_count", row_pos_count, at::kLong);
    CHECK_SHAPE("row_pos_count", row_pos_count, n);
    if (!column_terms) return;
    TORCH_CHECK_VALUE(g_col_lse.has_value() && g_col_pos.has_value() && col_pos_count.has_value(), OP,
                      ": column terms need g_col_lse, g_col_pos and col_pos_count");
    for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"g_col_lse", &*g_col_lse},
                                  {"g_col_pos", &*g_col_pos}, {"col_lse", &*col_lse}}) {
      CHECK_DTYPE(name, *t, at::kFloat);
      CHECK_SHAPE(name, *t, m);
    }
    CHECK_DTYPE("col_pos_count", *col_pos_count, at::kLong);
    CHECK_SHAPE("col_pos_count", *col_pos_count, m);
  };
  Inputs in = check_inputs(OP, query, keys, extra, scale, pos_index, row_labels, col_labels, self_index, band_lo,
                           band_hi, key_negatives, decoupled, grad_checks);
  cc::CoreArgs& a = in.args;
  c10::DeviceGuard guard(query.device());
  void* stream = current_stream(query);
  inverse_norms(OP, in, normalize, stream);

  // upstream gradients, with the positives' mean folded in: g_pos / max(|P|, 1)
  Tensor g_rl = g_row_lse.contiguous(), rl = row_lse.contiguous();
  Tensor g_rp = (g_row_pos / row_pos_count.clamp_min(1).to(at::kFloat)).contiguous();
  Tensor g_cl, cl, g_cp;
  cc::GradArgs g;
  g.g_row_lse = g_rl.const_data_ptr<float>();
  g.g_row_pos_w = g_rp.const_data_ptr<float>();
  g.row_lse = rl.const_data_ptr<float>();
  if (column_terms) {
    g_cl = g_col_lse->contiguous();
    cl = col_lse->contiguous();
    g_cp = (*g_col_pos / col_pos_count->clamp_min(1).to(at::kFloat)).contiguous();
    g.g_col_lse = g_cl.const_data_ptr<float>();
    g.g_col_pos_w = g_cp.const_data_ptr<float>();
    g.col_lse = cl.const_data_ptr<float>();
    g.column_terms = true;
  }

  auto f32 = query.options().dtype(at::kFloat);
  Tensor grad_q = at::zeros({a.n, a.d}, f32);  // fp32 gradients of the unit rows, before the scale
  Tensor grad_c = at::zeros({a.m + a.r, a.d}, f32);  // keys, then extra negatives
  const int64_t blocks = (a.n + cc::kBlockRows - 1) / cc::kBlockRows;
  Tensor scale_partials = at::empty({blocks}, f32);
  CHECK_LAUNCH(cc::backward_rows(in.dtype, a, g, grad_q.data_ptr<float>(), scale_partials.data_ptr<float>(), stream));
  CHECK_LAUNCH(cc::backward_cols(in.dtype, a, g, grad_c.data_ptr<float>(), stream));
  Tensor grad_scale = scale_partials.sum();  // a fixed-size reduction: deterministic

  if (in.shared) grad_q.add_(grad_c.narrow(0, 0, a.m));  // the keys are the queries: both gradients
  auto input_grad = [&](const Tensor& x, const Tensor& g_unit) {
    Tensor out = at::empty_like(x);
    CHECK_LAUNCH(cc::normalize_backward(in.dtype, x.const_data_ptr(), g_unit.const_data_ptr<float>(), x.size(0),
                                        a.d, a.scale, normalize, out.data_ptr(), stream));
    return out;
  };
  Tensor grad_query = input_grad(in.query, grad_q);
  Tensor grad_keys = in.shared ? at::empty({0}, query.options()) : input_grad(in.keys, grad_c.narrow(0, 0, a.m));
  Tensor grad_extra = a.r > 0            ? input_grad(in.extra, grad_c.narrow(0, a.m, a.r).contiguous())
                     : extra.has_value() ? at::zeros_like(*extra)  // zero rows
                                         : at::empty({0}, query.options());
  return {grad_query, grad_keys, grad_extra, grad_scale};
}

std::tuple<Tensor, Tensor> ring_band(const Tensor& query, const OptTensor& keys, const OptTensor& extra,
                                     const Tensor& scale, const OptTensor& pos_index, const OptTensor& row_labels,
                                     const OptTensor& col_labels, const OptTensor& self_index, bool key_negatives,
                                     bool normalize, double outer, double inner) {
  const char* OP = "contrastive_ops_cuda::ring_band";
  TORCH_CHECK_VALUE(outer >= 0.0 && outer <= 1.0, OP, ": outer must be in [0, 1], got ", outer);
  TORCH_CHECK_VALUE(inner >= 0.0 && inner <= 1.0, OP, ": inner must be in [0, 1], got ", inner);
  Inputs in = check_inputs(OP, query, keys, extra, scale, pos_index, row_labels, col_labels, self_index,
                           std::nullopt, std::nullopt, key_negatives, false);
  c10::DeviceGuard guard(query.device());
  void* stream = current_stream(query);
  inverse_norms(OP, in, normalize, stream);
  Tensor v_lo = fp32_vector(in.query, in.args.n), v_hi = fp32_vector(in.query, in.args.n);
  CHECK_LAUNCH(cc::ring_band(in.dtype, in.args, outer, inner, v_lo.data_ptr<float>(), v_hi.data_ptr<float>(), stream));
  return {v_lo, v_hi};
}

std::string built_archs() { return cc::built_archs(); }

}  // namespace

TORCH_LIBRARY(contrastive_ops_cuda, m) {
  m.def(
      "forward(Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? pos_index, Tensor? row_labels, "
      "Tensor? col_labels, Tensor? self_index, Tensor? band_lo, Tensor? band_hi, bool key_negatives, bool decoupled, "
      "bool column_terms, bool normalize) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor g_row_lse, Tensor g_row_pos, Tensor? g_col_lse, Tensor? g_col_pos, Tensor row_lse, "
      "Tensor row_pos_count, Tensor? col_lse, Tensor? col_pos_count, Tensor query, Tensor? keys, Tensor? extra, "
      "Tensor scale, Tensor? pos_index, Tensor? row_labels, Tensor? col_labels, Tensor? self_index, "
      "Tensor? band_lo, Tensor? band_hi, bool key_negatives, bool decoupled, bool normalize) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ring_band(Tensor query, Tensor? keys, Tensor? extra, Tensor scale, Tensor? pos_index, Tensor? row_labels, "
      "Tensor? col_labels, Tensor? self_index, bool key_negatives, bool normalize, float outer, float inner) "
      "-> (Tensor, Tensor)");
  m.def("built_archs() -> str", &built_archs);
}

// The same functions for CPU tensors: every check runs, then the device check names the fix.
TORCH_LIBRARY_IMPL(contrastive_ops_cuda, CUDA, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("ring_band", &ring_band);
}
TORCH_LIBRARY_IMPL(contrastive_ops_cuda, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("ring_band", &ring_band);
}

// `import contrastive_ops._cuda_ext` loads this library (and so registers the operators above);
// the module itself is empty.
extern "C" PyObject* PyInit__cuda_ext(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_ext", "contrastive_ops CUDA operators", -1, nullptr};
  return PyModule_Create(&module);
}
