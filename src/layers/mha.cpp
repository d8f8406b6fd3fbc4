// MultiHeadAttention: validation, weight copies, and forward = projection ->
// attention (qkv::attention or attention_with_kvcache) -> projection.
//
// forward's memory, per call: qkv [batch * seq, qkv_dim] and o [batch * seq,
// heads * head_dim] float32. q, k and v are strided views into qkv (row
// stride qkv_dim), so splitting the heads copies nothing; RoPE without a cache
// rotates q and k in place in that scratch.
#include "qkv/mha.h"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "cache/rope.h"
#include "layers/matmul.h"
#include "api/fail.h"
#include "qkv/error.h"
#include "runtime/half.h"

namespace qkv {
namespace {

using internal::fail;

bool is_float_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

float read_float(const Tensor& t, int64_t offset) {
  switch (t.dtype) {
    case DType::kFloat16: return internal::f32_from_f16(static_cast<const uint16_t*>(t.data)[offset]);
    case DType::kBFloat16: return internal::f32_from_bf16(static_cast<const uint16_t*>(t.data)[offset]);
    default: return static_cast<const float*>(t.data)[offset];
  }
}

// A view of the given rank and exact shape with float elements.
void check_weight(const Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
  const int rank = static_cast<int>(shape.size());
  std::ostringstream want;
  want << '[';
  int d = 0;
  bool match = t.rank == rank;
  for (int64_t s : shape) {
    want << (d ? ", " : "") << s;
    if (match && t.shape[d] != s) match = false;
    ++d;
  }
  want << ']';
  if (!t.present()) fail(name, " is required but has no data; expected shape ", want.str());
  if (!match) fail(name, " has shape ", t.shape_string(), " but must be ", want.str());
  if (!is_float_dtype(t.dtype)) {
    fail(name, " must be float32, float16 or bfloat16, not ", dtype_name(t.dtype));
  }
  for (int i = 0; i < rank; ++i) {
    if (t.strides[i] < 0) fail(name, " stride ", i, " (", t.strides[i], ") must not be negative");
  }
}

// x or y: float32 [batch, seq, hidden], contiguous innermost dimension.
void check_activation(const Tensor& t, const char* name, int64_t hidden) {
  if (!t.present()) fail(name, " is required but has no data");
  if (t.rank != 3) fail(name, " must have rank 3 [batch, seq, hidden] but has shape ", t.shape_string());
  if (t.dtype != DType::kFloat32) fail(name, " must be float32, not ", dtype_name(t.dtype));
  if (t.shape[2] != hidden) {
    fail(name, " has shape ", t.shape_string(), " but its last dimension must be hidden (", hidden, ")");
  }
  for (int d = 0; d < 3; ++d) {
    if (t.shape[d] < 0) fail(name, " has a negative dimension: ", t.shape_string());
    if (t.strides[d] < 0) fail(name, " stride ", d, " (", t.strides[d], ") must not be negative");
  }
  if (t.strides[2] != 1 && hidden > 1) {
    fail(name, " must have a contiguous innermost dimension (stride 1), but its strides end in ",
         t.strides[2]);
  }
}

// c[b, s, :] = a[b, s, :] . w + bias for b < batch, s < seq; a and c given by
// their batch and row strides. One matmul over batch * seq rows when both
// tensors are dense across the batch, else one per batch.
struct Rows {
  float* data;
  int64_t batch_stride, row_stride;
};

void linear(const Rows& a, int64_t batch, int64_t seq, int64_t depth, const void* w, DType w_dtype,
            int64_t width, const std::vector<float>& bias, const Rows& c, int num_threads) {
  internal::MatmulParams mm;
  mm.n = width;
  mm.k = depth;
  mm.lda = a.row_stride;
  mm.b = w;
  mm.b_dtype = w_dtype;
  mm.ldb = width;
  mm.bias = bias.empty() ? nullptr : bias.data();
  mm.ldc = c.row_stride;
  mm.num_threads = num_threads;
  const bool dense = batch == 1 || (a.batch_stride == seq * a.row_stride &&
                                    c.batch_stride == seq * c.row_stride);
  const int64_t groups = dense ? 1 : batch;
  mm.m = dense ? batch * seq : seq;
  for (int64_t b = 0; b < groups; ++b) {
    mm.a = a.data + b * a.batch_stride;
    mm.c = c.data + b * c.batch_stride;
    internal::matmul(mm);
  }
}

}  // namespace

const void* MultiHeadAttention::Matrix::data() const {
  return dtype == DType::kBFloat16 ? static_cast<const void*>(bf16.data())
                                   : static_cast<const void*>(f32.data());
}

MultiHeadAttention::Matrix MultiHeadAttention::copy_matrix(const Tensor& t, const char* name,
                                                           int64_t rows, int64_t cols, DType dtype) {
  check_weight(t, name, {rows, cols});
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.dtype = dtype;
  const size_t n = static_cast<size_t>(rows * cols);
  if (dtype == DType::kBFloat16) {
    m.bf16.resize(n);
  } else {
    m.f32.resize(n);
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const float x = read_float(t, i * t.strides[0] + j * t.strides[1]);
      if (dtype == DType::kBFloat16) {
        m.bf16[i * cols + j] = internal::bf16_from_f32(x);
      } else {
        m.f32[i * cols + j] = x;
      }
    }
  }
  return m;
}

std::vector<float> MultiHeadAttention::copy_vector(const Tensor& t, const char* name, int64_t n) {
  check_weight(t, name, {n});
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = read_float(t, i * t.strides[0]);
  return v;
}

MultiHeadAttention::MultiHeadAttention(const MhaConfig& config, const MhaWeights& weights)
    : config_(config) {
  MhaConfig& c = config_;
  if (c.hidden < 1) fail("hidden (", c.hidden, ") must be at least 1");
  if (c.heads < 1) fail("heads (", c.heads, ") must be at least 1");
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  if (c.kv_heads < 1) fail("kv_heads (", c.kv_heads, ") must be at least 1 (0 = heads)");
  if (c.heads % c.kv_heads != 0) fail("kv_heads (", c.kv_heads, ") must divide heads (", c.heads, ")");
  if (c.head_dim == 0) {
    if (c.hidden % c.heads != 0) {
      fail("head_dim is 0 (= hidden / heads) but heads (", c.heads, ") does not divide hidden (",
           c.hidden, ")");
    }
    c.head_dim = c.hidden / c.heads;
  }
  if (c.head_dim < 1) fail("head_dim (", c.head_dim, ") must be at least 1 (0 = hidden / heads)");
  if (c.weight_dtype != DType::kFloat32 && c.weight_dtype != DType::kBFloat16) {
    fail("weight_dtype (", dtype_name(c.weight_dtype), ") must be float32 or bfloat16");
  }
  if (c.rope) internal::validate_rope(*c.rope, c.head_dim);
  if (!std::isfinite(c.softcap) || c.softcap < 0) {
    fail("softcap (", c.softcap, ") must be finite and >= 0 (0 = off)");
  }
  if (c.window.left < -1 || c.window.right < -1) {
    fail("window (", c.window.left, ", ", c.window.right, ") must be >= -1 on each side (-1 = unbounded)");
  }
  if (c.scale && !std::isfinite(*c.scale)) fail("scale (", *c.scale, ") must be finite");

  const int64_t q_dim = c.heads * c.head_dim;
  qkv_weight_ = copy_matrix(weights.qkv_weight, "qkv_weight", c.hidden, qkv_dim(), c.weight_dtype);
  out_weight_ = copy_matrix(weights.out_weight, "out_weight", q_dim, c.hidden, c.weight_dtype);
  if (c.bias) {
    qkv_bias_ = copy_vector(weights.qkv_bias, "qkv_bias", qkv_dim());
    out_bias_ = copy_vector(weights.out_bias, "out_bias", c.hidden);
  } else if (weights.qkv_bias.present() || weights.out_bias.present()) {
    fail("qkv_bias / out_bias are given but config.bias is false");
  }
}

KVCacheConfig MultiHeadAttention::cache_config(int64_t batch, int64_t capacity, DType dtype) const {
  KVCacheConfig c;
  c.batch = batch;
  c.capacity = capacity;
  c.kv_heads = config_.kv_heads;
  c.head_dim = config_.head_dim;
  c.head_dim_v = config_.head_dim;
  c.dtype = dtype;
  return c;
}

void MultiHeadAttention::forward(const Tensor& x, const Tensor& y, KVCache* cache,
                                 int num_threads) const {
  const MhaConfig& c = config_;
  check_activation(x, "x", c.hidden);
  check_activation(y, "y", c.hidden);
  if (y.shape[0] != x.shape[0] || y.shape[1] != x.shape[1]) {
    fail("y has shape ", y.shape_string(), " but must equal the shape of x ", x.shape_string());
  }
  if (num_threads < 0) fail("num_threads (", num_threads, ") must be >= 0 (0 = all)");
  const int64_t batch = x.shape[0], seq = x.shape[1];
  if (cache != nullptr) {
    const KVCacheConfig& cc = cache->config();
    if (cc.batch != batch || cc.kv_heads != c.kv_heads || cc.head_dim != c.head_dim ||
        cc.head_dim_v != c.head_dim) {
      fail("cache has batch ", cc.batch, ", kv_heads ", cc.kv_heads, ", head_dim ", cc.head_dim,
           ", head_dim_v ", cc.head_dim_v, " but x ", x.shape_string(), " and the layer need batch ",
           batch, ", kv_heads ", c.kv_heads, ", head_dim ", c.head_dim, ", head_dim_v ", c.head_dim);
    }
    for (int64_t b = 0; b < batch; ++b) {
      if (cache->lengths()[b] + seq > cc.capacity) {
        fail("cache sequence ", b, " holds ", cache->lengths()[b], " tokens; ", seq,
             " more (x ", x.shape_string(), ") exceed its capacity (", cc.capacity, ")");
      }
    }
  }
  if (batch == 0 || seq == 0) return;

  // 1. qkv = x . qkv_weight + qkv_bias: [batch * seq, qkv_dim].
  const int64_t rows = batch * seq, width = qkv_dim();
  const int64_t q_dim = c.heads * c.head_dim, kv_dim = c.kv_heads * c.head_dim;
  std::vector<float> qkv(static_cast<size_t>(rows * width));
  std::vector<float> o(static_cast<size_t>(rows * q_dim));
  linear(Rows{static_cast<float*>(x.data), x.strides[0], x.strides[1]}, batch, seq, c.hidden,
         qkv_weight_.data(), c.weight_dtype, width, qkv_bias_,
         Rows{qkv.data(), seq * width, width}, num_threads);

  // 2. Views: q [batch, seq, heads, head_dim], k and v [batch, seq, kv_heads, head_dim].
  const auto view = [&](int64_t column, int64_t heads) {
    return Tensor::strided(qkv.data() + column, DType::kFloat32, {batch, seq, heads, c.head_dim},
                           {seq * width, width, c.head_dim, 1});
  };
  const Tensor q = view(0, c.heads);
  const Tensor k = view(q_dim, c.kv_heads);
  const Tensor v = view(q_dim + kv_dim, c.kv_heads);
  const Tensor o_view = Tensor::contiguous(o.data(), DType::kFloat32, {batch, seq, c.heads, c.head_dim});

  // 3. Attention: o [batch, seq, heads, head_dim].
  if (cache == nullptr) {
    if (c.rope) {
      const std::vector<int64_t> start(static_cast<size_t>(batch), 0);
      apply_rope(q, start.data(), *c.rope);
      apply_rope(k, start.data(), *c.rope);
    }
    AttentionParams p;
    p.q = q;
    p.k = k;
    p.v = v;
    p.o = o_view;
    p.scale = c.scale;
    p.causal = c.causal;
    p.window = c.window;
    p.softcap = c.softcap;
    p.num_threads = num_threads;
    attention(p);
  } else {
    KVCacheAttentionParams p;
    p.q = q;
    p.k_new = k;
    p.v_new = v;
    p.o = o_view;
    p.cache = cache;
    p.rope = c.rope;
    p.scale = c.scale;
    p.causal = c.causal;
    p.window = c.window;
    p.softcap = c.softcap;
    p.num_threads = num_threads;
    attention_with_kvcache(p);
  }

  // 4. y = o . out_weight + out_bias: [batch * seq, hidden].
  linear(Rows{o.data(), seq * q_dim, q_dim}, batch, seq, q_dim, out_weight_.data(), c.weight_dtype,
         c.hidden, out_bias_, Rows{static_cast<float*>(y.data), y.strides[0], y.strides[1]},
         num_threads);
}

}  // namespace qkv
