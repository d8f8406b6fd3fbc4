// qkv._qkv: the Python binding of qkv::attention, qkv::attention_backward, qkv::KVCache,
// qkv::attention_with_kvcache, qkv::apply_rope and qkv::attention_varlen (nanobind).
//
// Arrays cross without a copy. nb::ndarray with no dtype, order or device
// constraint takes anything that speaks DLPack or the buffer protocol (NumPy,
// PyTorch, ...) as it is, strides included, so nanobind has nothing to convert;
// this file turns each into a qkv::Tensor view of the same memory. qkv's own
// validation then checks shapes and strides and throws qkv::Error, a
// std::invalid_argument, which nanobind raises as ValueError with the same
// message. Dtypes and devices are checked here: a wrong dtype is a TypeError.
//
// The Python layer (python/qkv/*.py) allocates o and lse in the caller's
// framework and normalizes the options (positions, lengths, block tables and
// cu_seqlens arrive as int64/int32 NumPy arrays or lists, a rope as a tuple),
// so this stays a thin adapter. Every compute call releases the GIL; the
// Python KVCache serializes calls on one cache with a lock.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <initializer_list>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "qkv/qkv.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using InArray = nb::ndarray<nb::ro>;  // read through a const pointer: read-only arrays are fine
using OutArray = nb::ndarray<>;       // written: must be writable

// "float32", "bfloat16", "int64", ... for messages.
std::string dtype_string(nb::dlpack::dtype dt) {
  using Code = nb::dlpack::dtype_code;
  const char* kind = "unknown";
  switch (static_cast<Code>(dt.code)) {
    case Code::Int: kind = "int"; break;
    case Code::UInt: kind = "uint"; break;
    case Code::Float: kind = "float"; break;
    case Code::Bfloat: kind = "bfloat"; break;
    case Code::Complex: kind = "complex"; break;
    case Code::Bool: return "bool";
    default: break;
  }
  return kind + std::to_string(dt.bits);
}

// The qkv storage type of `dt`; false when qkv has none.
bool qkv_dtype(nb::dlpack::dtype dt, qkv::DType* out) {
  using Code = nb::dlpack::dtype_code;
  if (dt.lanes != 1) return false;
  const auto code = static_cast<Code>(dt.code);
  if (code == Code::Float && dt.bits == 32) *out = qkv::DType::kFloat32;
  else if (code == Code::Float && dt.bits == 16) *out = qkv::DType::kFloat16;
  else if (code == Code::Bfloat && dt.bits == 16) *out = qkv::DType::kBFloat16;
  else if (code == Code::Bool && dt.bits == 8) *out = qkv::DType::kBool;
  else return false;
  return true;
}

// "float32, float16 or bfloat16"
std::string dtype_list(std::initializer_list<qkv::DType> dtypes) {
  std::string s;
  size_t i = 0;
  for (qkv::DType d : dtypes) {
    if (i > 0) s += i + 1 == dtypes.size() ? " or " : ", ";
    s += qkv::dtype_name(d);
    ++i;
  }
  return s;
}

template <typename Array>
std::string shape_string(const Array& a) {
  std::string s = "[";
  for (size_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + "]";
}

// A qkv view of `a`: the same data pointer, shape and strides (in elements).
template <typename Array>
qkv::Tensor view(const Array& a, const char* name, std::initializer_list<qkv::DType> allowed) {
  const std::string n = name;
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error((n + " must be on the CPU (DLPack device type " +
                           std::to_string(a.device_type()) + ")").c_str());
  }
  qkv::Tensor t;
  bool ok = qkv_dtype(a.dtype(), &t.dtype);
  if (ok) {
    ok = false;
    for (qkv::DType d : allowed) ok |= d == t.dtype;
  }
  if (!ok) {
    throw nb::type_error((n + " must be " + dtype_list(allowed) + ", not " +
                          dtype_string(a.dtype())).c_str());
  }
  if (a.ndim() > static_cast<size_t>(qkv::kMaxRank)) {
    throw nb::value_error((n + " has shape " + shape_string(a) + "; qkv takes at most " +
                           std::to_string(qkv::kMaxRank) + " dimensions").c_str());
  }
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  t.rank = static_cast<int>(a.ndim());
  for (int d = 0; d < t.rank; ++d) {
    t.shape[d] = static_cast<int64_t>(a.shape(d));
    t.strides[d] = a.stride(d);
  }
  if (a.size() == 0) {
    // Nothing is read from a zero-size array, whose strides and data pointer
    // frameworks leave arbitrary (0, or null in PyTorch, where null would mean
    // "argument absent"): give it C-order strides and a dummy address.
    static char empty_storage;
    if (t.data == nullptr) t.data = &empty_storage;
    int64_t stride = 1;
    for (int d = t.rank - 1; d >= 0; --d) {
      t.strides[d] = stride;
      stride *= std::max<int64_t>(t.shape[d], 1);
    }
  }
  return t;
}

constexpr std::initializer_list<qkv::DType> kStorage = {qkv::DType::kFloat32, qkv::DType::kFloat16,
                                                         qkv::DType::kBFloat16};
constexpr std::initializer_list<qkv::DType> kFloat32 = {qkv::DType::kFloat32};
constexpr std::initializer_list<qkv::DType> kMask = {qkv::DType::kBool, qkv::DType::kFloat32};

// t's dtype must be q's: a TypeError naming both.
void check_same_dtype(const qkv::Tensor& t, const char* name, const qkv::Tensor& q) {
  if (t.dtype != q.dtype) {
    throw nb::type_error((std::string(name) + " dtype (" + qkv::dtype_name(t.dtype) +
                          ") must match q dtype (" + qkv::dtype_name(q.dtype) + ")").c_str());
  }
}

qkv::CausalAlign causal_align_of(const std::string& name) {
  if (name == "bottom-right") return qkv::CausalAlign::kBottomRight;
  if (name == "top-left") return qkv::CausalAlign::kTopLeft;
  throw nb::value_error(
      ("causal_align must be \"bottom-right\" or \"top-left\", not \"" + name + "\"").c_str());
}

// A rope crosses as (style, theta, rotary_dim): qkv.Rope is a Python dataclass.
using RopeArgs = std::tuple<std::string, float, int64_t>;

std::optional<qkv::Rope> rope_of(const std::optional<RopeArgs>& args) {
  if (!args) return std::nullopt;
  const auto& [style, theta, rotary_dim] = *args;
  qkv::Rope rope;
  if (style == "halves") {
    rope.style = qkv::Rope::Style::kHalves;
  } else if (style == "interleaved") {
    rope.style = qkv::Rope::Style::kInterleaved;
  } else {
    throw nb::value_error(
        ("rope style must be \"halves\" or \"interleaved\", not \"" + style + "\"").c_str());
  }
  rope.theta = theta;
  rope.rotary_dim = rotary_dim;
  return rope;
}

// Small integer vectors (positions, cu_seqlens): the Python layer passes
// contiguous int64/int32 NumPy arrays, read in place.
using Int64Vector = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Int32Vector = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// The params of an attention call: q [batch, seq_q, heads, head_dim], k
// [batch, seq_kv, kv_heads, head_dim], v [batch, seq_kv, kv_heads,
// head_dim_v], o [batch, seq_q, heads, head_dim_v] and, if given, lse [batch,
// heads, seq_q] (float32), with the options. (o and lse are written by the
// forward, read by the backward: OArray is OutArray or InArray.)
template <class OArray>
qkv::AttentionParams attention_params(const InArray& q, const InArray& k, const InArray& v,
                                      const OArray& o, const std::optional<OArray>& lse,
                                      bool causal, const std::string& causal_align,
                                      std::pair<int64_t, int64_t> window, std::optional<float> scale,
                                      float softcap, const std::optional<InArray>& alibi_slopes,
                                      const std::optional<InArray>& sinks,
                                      const std::optional<InArray>& mask, int num_threads) {
  qkv::AttentionParams p;
  p.q = view(q, "q", kStorage);
  p.k = view(k, "k", kStorage);
  p.v = view(v, "v", kStorage);
  check_same_dtype(p.k, "k", p.q);
  check_same_dtype(p.v, "v", p.q);
  p.o = view(o, "o", {p.q.dtype});
  if (lse) p.lse = view(*lse, "lse", kFloat32);

  p.causal = causal;
  p.causal_align = causal_align_of(causal_align);
  p.window = {window.first, window.second};
  p.scale = scale;
  p.softcap = softcap;
  if (alibi_slopes) p.alibi_slopes = view(*alibi_slopes, "alibi_slopes", kFloat32);
  if (sinks) p.sinks = view(*sinks, "sinks", kFloat32);
  if (mask) p.mask = view(*mask, "mask", kMask);
  p.num_threads = num_threads;
  return p;
}

// Writes o (and lse if given): see attention_params for the layout.
void attention(const InArray& q, const InArray& k, const InArray& v, const OutArray& o,
               const std::optional<OutArray>& lse, bool causal, const std::string& causal_align,
               std::pair<int64_t, int64_t> window, std::optional<float> scale, float softcap,
               const std::optional<InArray>& alibi_slopes, const std::optional<InArray>& sinks,
               const std::optional<InArray>& mask, int num_threads, bool exact_bf16_probs) {
  qkv::AttentionParams p = attention_params(q, k, v, o, lse, causal, causal_align, window, scale,
                                            softcap, alibi_slopes, sinks, mask, num_threads);
  p.exact_bf16_probs = exact_bf16_probs;
  // The arrays stay alive (this frame holds them); other Python threads run.
  nb::gil_scoped_release release;
  qkv::attention(p);
}

// The gradients of an attention call whose o and lse are given: dout of o's
// shape, dq, dk, dv of q's, k's, v's (all of q's dtype), dsinks [heads]
// float32 if given (and sinks).
void attention_backward(const InArray& q, const InArray& k, const InArray& v, const InArray& o,
                        const InArray& lse, const InArray& dout, const OutArray& dq,
                        const OutArray& dk, const OutArray& dv, const std::optional<OutArray>& dsinks,
                        bool causal, const std::string& causal_align,
                        std::pair<int64_t, int64_t> window, std::optional<float> scale,
                        float softcap, const std::optional<InArray>& alibi_slopes,
                        const std::optional<InArray>& sinks, const std::optional<InArray>& mask,
                        int num_threads) {
  qkv::AttentionBackwardParams p;
  p.forward = attention_params(q, k, v, o, std::optional<InArray>(lse), causal, causal_align, window, scale, softcap,
                               alibi_slopes, sinks, mask, num_threads);
  p.dout = view(dout, "dout", {p.forward.q.dtype});
  p.dq = view(dq, "dq", {p.forward.q.dtype});
  p.dk = view(dk, "dk", {p.forward.q.dtype});
  p.dv = view(dv, "dv", {p.forward.q.dtype});
  if (dsinks) p.dsinks = view(*dsinks, "dsinks", kFloat32);
  nb::gil_scoped_release release;
  qkv::attention_backward(p);
}

// q [total_q, heads, head_dim], k [total_kv, kv_heads, head_dim], v [total_kv,
// kv_heads, head_dim_v], cu_seqlens_q/k [batch + 1] int32; writes o [total_q,
// heads, head_dim_v] and, if given, lse [heads, total_q] (float32).
void attention_varlen(const InArray& q, const InArray& k, const InArray& v, const OutArray& o,
                      const Int32Vector& cu_seqlens_q, const Int32Vector& cu_seqlens_k,
                      const std::optional<OutArray>& lse, bool causal,
                      const std::string& causal_align, std::pair<int64_t, int64_t> window,
                      std::optional<float> scale, float softcap,
                      const std::optional<InArray>& alibi_slopes,
                      const std::optional<InArray>& sinks, int num_threads) {
  qkv::VarlenAttentionParams p;
  p.q = view(q, "q", kStorage);
  p.k = view(k, "k", kStorage);
  p.v = view(v, "v", kStorage);
  check_same_dtype(p.k, "k", p.q);
  check_same_dtype(p.v, "v", p.q);
  p.o = view(o, "o", {p.q.dtype});
  if (lse) p.lse = view(*lse, "lse", kFloat32);
  p.cu_seqlens_q = {cu_seqlens_q.data(), cu_seqlens_q.shape(0)};
  p.cu_seqlens_k = {cu_seqlens_k.data(), cu_seqlens_k.shape(0)};

  qkv::AttentionParams& options = p.options;
  options.causal = causal;
  options.causal_align = causal_align_of(causal_align);
  options.window = {window.first, window.second};
  options.scale = scale;
  options.softcap = softcap;
  if (alibi_slopes) options.alibi_slopes = view(*alibi_slopes, "alibi_slopes", kFloat32);
  if (sinks) options.sinks = view(*sinks, "sinks", kFloat32);
  options.num_threads = num_threads;

  nb::gil_scoped_release release;
  qkv::attention_varlen(p);
}

// --- KV cache ----------------------------------------------------------------

qkv::DType cache_dtype_of(const std::string& name) {
  if (name == "float16") return qkv::DType::kFloat16;
  if (name == "bfloat16") return qkv::DType::kBFloat16;
  if (name == "float32") return qkv::DType::kFloat32;
  if (name == "int8") return qkv::DType::kInt8;
  throw nb::value_error(("cache dtype must be \"float16\", \"bfloat16\", \"float32\" or \"int8\", not \"" +
                         name + "\"").c_str());
}

void init_cache(qkv::KVCache* self, int64_t batch, int64_t capacity, int64_t kv_heads,
                int64_t head_dim, int64_t head_dim_v, const std::string& dtype, int64_t page_size,
                int64_t num_pages) {
  qkv::KVCacheConfig c;
  c.batch = batch;
  c.capacity = capacity;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.head_dim_v = head_dim_v;
  c.dtype = cache_dtype_of(dtype);
  c.page_size = page_size;
  c.num_pages = num_pages;
  new (self) qkv::KVCache(c);  // on a throw nanobind leaves the instance uninitialized
}

nb::dict cache_config(const qkv::KVCache& cache) {
  const qkv::KVCacheConfig& c = cache.config();
  nb::dict d;
  d["batch"] = c.batch;
  d["capacity"] = c.capacity;
  d["kv_heads"] = c.kv_heads;
  d["head_dim"] = c.head_dim;
  d["head_dim_v"] = c.head_dim_v;
  d["dtype"] = qkv::dtype_name(c.dtype);
  d["page_size"] = c.page_size;
  d["num_pages"] = c.num_pages;
  return d;
}

int64_t cache_nbytes(const qkv::KVCache& cache) {
  return cache.num_pages() * cache.page_size() * cache.config().kv_heads *
         cache.bytes_per_token_head();
}

void check_index(const char* name, int64_t i, const char* bound_name, int64_t bound) {
  if (i < 0 || i >= bound) {
    throw nb::index_error((std::string(name) + " (" + std::to_string(i) + ") must be in [0, " +
                           bound_name + " (" + std::to_string(bound) + "))").c_str());
  }
}

// Token j of sequence b, kv head h, widened to a new float32 NumPy array:
// [head_dim] for keys, [head_dim_v] for values. qkv::KVCache::read_key trusts
// its indices, so they are checked here.
nb::ndarray<nb::numpy, float, nb::ndim<1>> cache_read(const qkv::KVCache& cache, int64_t b,
                                                     int64_t j, int64_t kv_head, bool value) {
  const qkv::KVCacheConfig& c = cache.config();
  check_index("b", b, "batch", c.batch);
  check_index("j", j, "capacity", c.capacity);
  check_index("kv_head", kv_head, "kv_heads", c.kv_heads);
  const int64_t n = value ? c.head_dim_v : c.head_dim;
  float* row = new float[static_cast<size_t>(n)];
  nb::capsule owner(row, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  if (value) {
    cache.read_value(b, j, kv_head, row);
  } else {
    cache.read_key(b, j, kv_head, row);
  }
  return nb::ndarray<nb::numpy, float, nb::ndim<1>>(row, {static_cast<size_t>(n)}, owner);
}

void cache_append(qkv::KVCache& cache, const InArray& k_new, const InArray& v_new,
                  const std::optional<RopeArgs>& rope) {
  const qkv::Tensor k = view(k_new, "k_new", kStorage);
  const qkv::Tensor v = view(v_new, "v_new", kStorage);
  const std::optional<qkv::Rope> r = rope_of(rope);
  nb::gil_scoped_release release;
  cache.append(k, v, r);
}

// q [batch, seq_q, heads, head_dim] (read, not rotated), k_new/v_new
// [batch, seq_new, kv_heads, head_dim(_v)] (optional); writes o [batch,
// seq_q, heads, head_dim_v] of q's dtype and lse [batch, heads, seq_q].
void attention_with_kvcache(const InArray& q, qkv::KVCache& cache, const OutArray& o,
                            const std::optional<InArray>& k_new,
                            const std::optional<InArray>& v_new,
                            const std::optional<OutArray>& lse,
                            const std::optional<RopeArgs>& rope, bool causal,
                            std::pair<int64_t, int64_t> window, std::optional<float> scale,
                            float softcap, const std::optional<InArray>& alibi_slopes,
                            const std::optional<InArray>& sinks, int num_threads, int num_splits,
                            bool exact_bf16_probs) {
  qkv::KVCacheAttentionParams p;
  p.cache = &cache;
  p.q = view(q, "q", kStorage);
  if (k_new) p.k_new = view(*k_new, "k_new", kStorage);
  if (v_new) p.v_new = view(*v_new, "v_new", kStorage);
  p.o = view(o, "o", {p.q.dtype});
  if (lse) p.lse = view(*lse, "lse", kFloat32);
  p.rope = rope_of(rope);
  p.causal = causal;
  p.window = {window.first, window.second};
  p.scale = scale;
  p.softcap = softcap;
  if (alibi_slopes) p.alibi_slopes = view(*alibi_slopes, "alibi_slopes", kFloat32);
  if (sinks) p.sinks = view(*sinks, "sinks", kFloat32);
  p.num_threads = num_threads;
  p.num_splits = num_splits;
  p.exact_bf16_probs = exact_bf16_probs;

  nb::gil_scoped_release release;
  qkv::attention_with_kvcache(p);
}

// Merges parts (os[p] [batch, seq_q, heads, head_dim_v], lses[p] [batch,
// heads, seq_q] float32) into o and, if given, lse (qkv/merge.h).
void merge_attention(const std::vector<InArray>& os, const std::vector<InArray>& lses,
                     const OutArray& o, const std::optional<OutArray>& lse, int num_threads) {
  if (os.size() != lses.size()) {
    throw nb::value_error(("os has " + std::to_string(os.size()) + " arrays but lses has " +
                           std::to_string(lses.size())).c_str());
  }
  qkv::MergeAttentionParams p;
  for (size_t i = 0; i < os.size(); ++i) {
    const std::string at = "parts[" + std::to_string(i) + "]";
    p.parts.push_back({view(os[i], (at + ".o").c_str(), kStorage),
                       view(lses[i], (at + ".lse").c_str(), kFloat32)});
  }
  p.o = view(o, "o", kStorage);
  if (lse) p.lse = view(*lse, "lse", kFloat32);
  p.num_threads = num_threads;
  nb::gil_scoped_release release;
  qkv::merge_attention(p);
}

// Rotates x [batch, seq, heads, head_dim] in place; token t of batch b is at
// position positions[b] + t.
void apply_rope(const OutArray& x, const Int64Vector& positions, const RopeArgs& rope) {
  const qkv::Tensor t = view(x, "x", kStorage);
  // qkv::apply_rope reads positions[0, batch) unchecked (it checks x's rank first).
  if (t.rank == 4 && static_cast<int64_t>(positions.shape(0)) != t.shape[0]) {
    throw nb::value_error(("positions has " + std::to_string(positions.shape(0)) +
                           " entries but x has batch " + std::to_string(t.shape[0])).c_str());
  }
  const qkv::Rope r = *rope_of(rope);
  nb::gil_scoped_release release;
  qkv::apply_rope(t, positions.data(), r);
}

// (address, shape, strides in elements) of the view attention() would hand
// qkv for `a`: lets tests show that arrays cross without a copy.
nb::tuple view_info(const InArray& a) {
  nb::list shape, strides;
  for (size_t d = 0; d < a.ndim(); ++d) {
    shape.append(a.shape(d));
    strides.append(a.stride(d));
  }
  return nb::make_tuple(reinterpret_cast<uintptr_t>(a.data()), nb::tuple(shape), nb::tuple(strides));
}

}  // namespace

NB_MODULE(_qkv, m) {
  m.doc() = "Low-level binding of the qkv C++ library; use the functions of the qkv package instead.";
  m.attr("__version__") = qkv::kVersion;
  const auto no_window = std::pair<int64_t, int64_t>{-1, -1};
  m.def("attention", &attention, "q"_a, "k"_a, "v"_a, "o"_a, nb::kw_only(),
        "lse"_a.none() = nb::none(), "causal"_a = false, "causal_align"_a = "bottom-right",
        "window"_a = no_window, "scale"_a.none() = nb::none(),
        "softcap"_a = 0.0f, "alibi_slopes"_a.none() = nb::none(), "sinks"_a.none() = nb::none(),
        "mask"_a.none() = nb::none(), "num_threads"_a = 0, "exact_bf16_probs"_a = false,
        "Computes attention into o (and lse) in place; every array in the layout of\n"
        "qkv.attention, o [batch, seq_q, heads, head_dim_v] of q's dtype and lse\n"
        "[batch, heads, seq_q] float32 allocated by the caller. No copies are made.\n"
        "Raises TypeError for a wrong dtype, ValueError for anything else qkv rejects.");
  m.def("attention_backward", &attention_backward, "q"_a, "k"_a, "v"_a, "o"_a, "lse"_a, "dout"_a,
        "dq"_a, "dk"_a, "dv"_a, nb::kw_only(), "dsinks"_a.none() = nb::none(), "causal"_a = false,
        "causal_align"_a = "bottom-right", "window"_a = no_window, "scale"_a.none() = nb::none(),
        "softcap"_a = 0.0f, "alibi_slopes"_a.none() = nb::none(), "sinks"_a.none() = nb::none(),
        "mask"_a.none() = nb::none(), "num_threads"_a = 0,
        "Computes the gradients dq, dk, dv (and dsinks) in place from the forward's\n"
        "inputs, its o and lse, and dout (o's shape and dtype); dq, dk, dv of q's, k's\n"
        "and v's shapes and q's dtype, dsinks [heads] float32, allocated by the caller.\n"
        "Raises TypeError for a wrong dtype, ValueError for anything else qkv rejects.");
  m.def("attention_varlen", &attention_varlen, "q"_a, "k"_a, "v"_a, "o"_a, "cu_seqlens_q"_a,
        "cu_seqlens_k"_a, nb::kw_only(), "lse"_a.none() = nb::none(), "causal"_a = false,
        "causal_align"_a = "bottom-right", "window"_a = no_window,
        "scale"_a.none() = nb::none(), "softcap"_a = 0.0f, "alibi_slopes"_a.none() = nb::none(),
        "sinks"_a.none() = nb::none(), "num_threads"_a = 0,
        "Computes packed variable-length attention into o (and lse) in place: q\n"
        "[total_q, heads, head_dim], k/v [total_kv, kv_heads, head_dim(_v)], o [total_q,\n"
        "heads, head_dim_v] of q's dtype, lse [heads, total_q] float32, cu_seqlens_q/k\n"
        "contiguous int32 [batch + 1]. Raises TypeError for a wrong dtype, ValueError\n"
        "for anything else qkv rejects.");

  nb::class_<qkv::KVCache>(m, "KVCache",
                           "qkv::KVCache: the keys and values of one attention layer, kept\n"
                           "across decode steps; use qkv.KVCache instead.")
      .def("__init__", &init_cache, "batch"_a, "capacity"_a, "kv_heads"_a, "head_dim"_a,
           "head_dim_v"_a = 0, "dtype"_a = "float16", "page_size"_a = 0, "num_pages"_a = 0,
           "Allocates the (zeroed) pool; head_dim_v 0 = head_dim, page_size 0 = contiguous,\n"
           "num_pages 0 = batch * ceil(capacity / page_size).")
      .def_prop_ro("config", &cache_config,
                   "The qkv::KVCacheConfig as a dict (head_dim_v resolved).")
      .def_prop_ro("page_size", &qkv::KVCache::page_size,
                   "Tokens per page (capacity for a contiguous cache).")
      .def_prop_ro("num_pages", &qkv::KVCache::num_pages, "Pages in the pool.")
      .def_prop_ro("pages_per_sequence", &qkv::KVCache::pages_per_sequence,
                   "ceil(capacity / page_size).")
      .def_prop_ro("nbytes", &cache_nbytes, "Bytes of K and V storage, int8 scales included.")
      .def_prop_ro("lengths", &qkv::KVCache::lengths, "Tokens held by each sequence (a new list).")
      .def("set_lengths", &qkv::KVCache::set_lengths, "lengths"_a,
           "Sets the lengths, [batch], each in [0, capacity].")
      .def_prop_ro("block_table", &qkv::KVCache::block_table,
                   "The page of each (sequence, page index), flattened (a new list).")
      .def("set_block_table", &qkv::KVCache::set_block_table, "table"_a,
           "Sets the block table, [batch * pages_per_sequence] flattened, each entry in\n"
           "[0, num_pages).")
      .def("append", &cache_append, "k_new"_a, "v_new"_a, "rope"_a.none() = nb::none(),
           "Appends k_new [batch, n, kv_heads, head_dim] and v_new [batch, n, kv_heads,\n"
           "head_dim_v] at each sequence's length, rotating the keys by rope (style,\n"
           "theta, rotary_dim) first when given. On error the cache is unchanged.")
      .def("read_key", [](const qkv::KVCache& c, int64_t b, int64_t j, int64_t h) {
             return cache_read(c, b, j, h, /*value=*/false);
           }, "b"_a, "j"_a, "kv_head"_a,
           "Key of token j of sequence b, kv head kv_head, as float32 [head_dim].")
      .def("read_value", [](const qkv::KVCache& c, int64_t b, int64_t j, int64_t h) {
             return cache_read(c, b, j, h, /*value=*/true);
           }, "b"_a, "j"_a, "kv_head"_a,
           "Value of token j of sequence b, kv head kv_head, as float32 [head_dim_v].");

  m.def("attention_with_kvcache", &attention_with_kvcache, "q"_a, "cache"_a, "o"_a, nb::kw_only(),
        "k_new"_a.none() = nb::none(), "v_new"_a.none() = nb::none(), "lse"_a.none() = nb::none(),
        "rope"_a.none() = nb::none(), "causal"_a = false, "window"_a = no_window,
        "scale"_a.none() = nb::none(), "softcap"_a = 0.0f, "alibi_slopes"_a.none() = nb::none(),
        "sinks"_a.none() = nb::none(), "num_threads"_a = 0, "num_splits"_a = 0,
        "exact_bf16_probs"_a = false,
        "Appends k_new/v_new (if given) to the cache, then attends q [batch, seq_q,\n"
        "heads, head_dim] over it into o [batch, seq_q, heads, head_dim_v] of q's dtype\n"
        "(and lse [batch, heads, seq_q] float32), allocated by the caller. rope is\n"
        "(style, theta, rotary_dim). On error nothing is written and the cache is unchanged.");
  m.def("merge_attention", &merge_attention, "os"_a, "lses"_a, "o"_a, nb::kw_only(),
        "lse"_a.none() = nb::none(), "num_threads"_a = 0,
        "Merges the attention over disjoint key sets (each part's o and lse) into o and\n"
        "lse in place (qkv/merge.h). Raises TypeError for a wrong dtype, ValueError for\n"
        "anything else qkv rejects.");
  m.def("apply_rope", &apply_rope, "x"_a, "positions"_a, "rope"_a,
        "Rotates x [batch, seq, heads, head_dim] in place; token t of batch b is at\n"
        "position positions[b] + t (positions: contiguous int64 [batch]); rope is\n"
        "(style, theta, rotary_dim).");
  m.def("view_info", &view_info, "a"_a,
        "(address, shape, strides in elements) of the view the binding hands qkv for `a`;\n"
        "for tests that check arrays cross without a copy.");
}
