// Test helpers: see test_util.h.
#include "test_util.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#include <sstream>

#include "kernels/bf16_forward.h"
#include "kernels/flash_forward.h"
#include "runtime/amx.h"
#include "runtime/half.h"

namespace qkv::test {

double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return 0x1p-11;
    case DType::kBFloat16: return 0x1p-8;
    default: return 0x1p-24;
  }
}

float round_to(DType dtype, float x) {
  switch (dtype) {
    case DType::kFloat16: return internal::f32_from_f16(internal::f16_from_f32(x));
    case DType::kBFloat16: return internal::f32_from_bf16(internal::bf16_from_f32(x));
    default: return x;
  }
}

double Tolerance::absolute(DType dtype) {
  return dtype == DType::kFloat32 ? kAbsolute : 2 * unit_roundoff(dtype);
}

namespace {

uint16_t half_bits(DType dtype, float x) {
  return dtype == DType::kFloat16 ? internal::f16_from_f32(x) : internal::bf16_from_f32(x);
}

float from_half_bits(DType dtype, uint16_t bits) {
  return dtype == DType::kFloat16 ? internal::f32_from_f16(bits) : internal::f32_from_bf16(bits);
}

uint16_t half_nan(DType dtype) { return dtype == DType::kFloat16 ? 0x7e00 : 0x7fc0; }

}  // namespace

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::kBshd: return "bshd";
    case Layout::kBhsd: return "bhsd";
    case Layout::kPadded: return "padded";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// HostTensor

namespace {

// Calls fn(logical flat index, storage offset) for every element of a view.
template <typename Fn>
void for_each_element(const Tensor& t, Fn&& fn) {
  const int64_t n = t.numel();
  for (int64_t flat = 0; flat < n; ++flat) {
    int64_t rest = flat, offset = 0;
    for (int d = t.rank - 1; d >= 0; --d) {
      offset += (rest % t.shape[d]) * t.strides[d];
      rest /= t.shape[d];
    }
    fn(flat, offset);
  }
}

}  // namespace

template <typename T>
HostTensor<T>::HostTensor(std::vector<int64_t> shape, std::vector<int64_t> strides, T fill,
                          DType dtype)
    : fill_(fill) {
  view_.dtype = dtype;
  view_.rank = static_cast<int>(shape.size());
  int64_t last = 0;
  bool empty = false;
  for (int d = 0; d < view_.rank; ++d) {
    view_.shape[d] = shape[d];
    view_.strides[d] = strides[d];
    if (shape[d] == 0) empty = true;
    last += (shape[d] - 1) * strides[d];
  }
  // At least one element, so an empty view still has a data pointer.
  const int64_t size = empty ? 1 : last + 1;
  storage_.assign(static_cast<size_t>(size), fill);
  covered_.assign(static_cast<size_t>(size), 0);
  for_each_element(view_, [&](int64_t, int64_t offset) { covered_[offset] = 1; });
}

template <typename T>
HostTensor<T> HostTensor<T>::contiguous(std::vector<int64_t> shape, T fill) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return HostTensor(std::move(shape), std::move(strides), fill);
}

template <typename T>
Tensor HostTensor<T>::view() const {
  Tensor t = view_;
  t.data = storage_.empty() ? nullptr : const_cast<T*>(storage_.data());
  return t;
}

template <typename T>
int64_t HostTensor<T>::offset(std::initializer_list<int64_t> index) const {
  int64_t off = 0;
  int d = 0;
  for (int64_t i : index) off += i * view_.strides[d++];
  return off;
}

template <typename T>
int64_t HostTensor<T>::offset_of_flat(int64_t logical) const {
  int64_t off = 0;
  for (int d = view_.rank - 1; d >= 0; --d) {
    off += (logical % view_.shape[d]) * view_.strides[d];
    logical /= view_.shape[d];
  }
  return off;
}

template <typename T>
std::vector<T> HostTensor<T>::dense() const {
  std::vector<T> out(static_cast<size_t>(numel()));
  for_each_element(view_, [&](int64_t flat, int64_t offset) { out[flat] = storage_[offset]; });
  return out;
}

template <typename T>
bool HostTensor<T>::padding_intact() const {
  for (size_t i = 0; i < storage_.size(); ++i) {
    if (!covered_[i] && !equals_fill(storage_[i])) return false;
  }
  return true;
}

template <typename T>
int64_t HostTensor<T>::view_elements_equal_to_fill() const {
  int64_t count = 0;
  for_each_element(view_, [&](int64_t, int64_t offset) { count += equals_fill(storage_[offset]); });
  return count;
}

template class HostTensor<float>;
template class HostTensor<uint8_t>;
template class HostTensor<uint16_t>;

HostTensor<float> make_bshd(int64_t batch, int64_t seq, int64_t heads, int64_t dim, Layout layout,
                            float fill) {
  switch (layout) {
    case Layout::kBshd:
      return HostTensor<float>::contiguous({batch, seq, heads, dim}, fill);
    case Layout::kBhsd:
      return HostTensor<float>({batch, seq, heads, dim},
                               {heads * seq * dim, dim, seq * dim, 1}, fill);
    case Layout::kPadded: {
      // Odd gaps, so no padded stride is a multiple of a vector width.
      const int64_t head = dim + 3, row = heads * head + 5, b = seq * row + 7;
      return HostTensor<float>({batch, seq, heads, dim}, {b, row, head, 1}, fill);
    }
  }
  return {};
}

HostTensor<float> make_bhs(int64_t batch, int64_t heads, int64_t seq, Layout layout, float fill) {
  switch (layout) {
    case Layout::kBshd:
      return HostTensor<float>::contiguous({batch, heads, seq}, fill);
    case Layout::kBhsd:
      return HostTensor<float>({batch, heads, seq}, {seq * heads, 1, heads}, fill);
    case Layout::kPadded:
      return HostTensor<float>({batch, heads, seq}, {heads * (seq + 2) + 3, seq + 2, 1}, fill);
  }
  return {};
}

// ---------------------------------------------------------------------------
// Case

Case& Case::bool_mask(std::vector<int64_t> shape, double density, bool expand) {
  mask_ = MaskSpec{};
  mask_.kind = MaskSpec::Kind::kBool;
  mask_.shape = std::move(shape);
  mask_.density = density;
  mask_.expand = expand;
  return *this;
}

Case& Case::float_mask(std::vector<int64_t> shape, double neg_inf_share, bool expand,
                       float fill_value) {
  mask_ = MaskSpec{};
  mask_.kind = MaskSpec::Kind::kFloat;
  mask_.shape = std::move(shape);
  mask_.neg_inf_share = neg_inf_share;
  mask_.expand = expand;
  mask_.fill_value = fill_value;
  return *this;
}

Case& Case::mask_fn(std::string label, DType dtype,
                    std::function<float(int64_t, int64_t, int64_t, int64_t)> fn) {
  mask_ = MaskSpec{};
  mask_.kind = dtype == DType::kBool ? MaskSpec::Kind::kBool : MaskSpec::Kind::kFloat;
  mask_.fn = std::move(fn);
  mask_.label = std::move(label);
  return *this;
}

namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? "," : "") << shape[i];
  out << ']';
  return out.str();
}

}  // namespace

std::string Case::describe() const {
  std::ostringstream out;
  out << "Case().batch(" << batch_ << ").seq_q(" << seq_q_ << ").seq_kv(" << seq_kv_
      << ").heads(" << heads_ << ").kv_heads(" << kv_heads() << ").head_dim(" << head_dim_
      << ").head_dim_v(" << head_dim_v() << ")";
  if (has_scale_) out << ".scale(" << scale_ << ")";
  if (causal_) {
    out << ".causal(" << (align_ == CausalAlign::kBottomRight ? "bottom-right" : "top-left") << ")";
  }
  if (window_.left != -1 || window_.right != -1) {
    out << ".window(" << window_.left << "," << window_.right << ")";
  }
  if (softcap_ != 0) out << ".softcap(" << softcap_ << ")";
  if (alibi_ == 1) out << ".alibi()";
  if (alibi_ == 2) out << ".alibi_per_batch()";
  if (sinks_) out << ".sinks()";
  if (mask_.kind != MaskSpec::Kind::kNone) {
    const bool is_bool = mask_.kind == MaskSpec::Kind::kBool;
    if (mask_.fn) {
      out << ".mask_fn(" << mask_.label << ", " << (is_bool ? "bool" : "float32") << ")";
    } else if (is_bool) {
      out << ".bool_mask(" << shape_string(mask_.shape) << ", density " << mask_.density
          << (mask_.expand ? ", expanded" : "") << ")";
    } else {
      out << ".float_mask(" << shape_string(mask_.shape) << ", " << mask_.fill_value << " share "
          << mask_.neg_inf_share << (mask_.expand ? ", expanded" : "") << ")";
    }
  }
  if (dtype_ != DType::kFloat32) out << ".dtype(" << dtype_name(dtype_) << ")";
  if (tiling_.block_q || tiling_.block_kv) {
    out << ".tiles(" << tiling_.block_q << "," << tiling_.block_kv << ")";
  }
  if (threads_) out << ".threads(" << threads_ << ")";
  if (logits_ != 0) out << ".logits(" << logits_ << ")";
  if (logit_offset_ != 0) out << ".logit_offset(" << logit_offset_ << ")";
  const Layout def = Layout::kBshd;
  if (q_layout_ != def || k_layout_ != def || v_layout_ != def || o_layout_ != def) {
    out << ".layouts(" << layout_name(q_layout_) << "," << layout_name(k_layout_) << ","
        << layout_name(v_layout_) << "," << layout_name(o_layout_) << ")";
  }
  if (lse_layout_ != def) out << ".lse_layout(" << layout_name(lse_layout_) << ")";
  if (!with_lse_) out << ".no_lse()";
  out << ".seed(" << seed_ << ")";
  return out.str();
}

// ---------------------------------------------------------------------------
// Workload

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

void fill_uniform(HostTensor<float>& t, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.at_flat(i) = dist(rng);
}

float effective_scale(const Case& c) {
  return c.has_scale() ? c.scale() : 1.0f / std::sqrt(static_cast<float>(c.head_dim()));
}

}  // namespace

Workload::Workload(const Case& c) : case_(c) {
  std::mt19937 rng(c.seed());
  const int64_t b = c.batch(), sq = c.seq_q(), sk = c.seq_kv(), h = c.heads(), hk = c.kv_heads();
  const int64_t d = c.head_dim(), dv = c.head_dim_v();
  // Padding of inputs is NaN: a kernel that lets it into any result fails.
  q_ = make_bshd(b, sq, h, d, c.q_layout(), kNaN);
  k_ = make_bshd(b, sk, hk, d, c.k_layout(), kNaN);
  v_ = make_bshd(b, sk, hk, dv, c.v_layout(), kNaN);
  fill_uniform(q_, rng, -1, 1);
  fill_uniform(k_, rng, -1, 1);
  fill_uniform(v_, rng, -1, 1);

  const float scale = effective_scale(c);
  if (c.logit_offset() != 0 && scale != 0) {
    // s = scale * q.k ~= offset * (1 + 1e-4 u) + O(1): keys tie to within a
    // few units at |s| ~ offset.
    std::uniform_real_distribution<float> u(-1, 1);
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t i = 0; i < sq; ++i) {
        for (int64_t hi = 0; hi < h; ++hi) q_.at({bi, i, hi, 0}) = c.logit_offset() / scale;
      }
      for (int64_t j = 0; j < sk; ++j) {
        for (int64_t hi = 0; hi < hk; ++hi) k_.at({bi, j, hi, 0}) = 1.0f + 1e-4f * u(rng);
      }
    }
  }
  if (c.logits() != 0 && scale != 0) {
    double max_logit = 0;
    const int64_t group = h / hk;
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t hi = 0; hi < h; ++hi) {
        for (int64_t i = 0; i < sq; ++i) {
          for (int64_t j = 0; j < sk; ++j) {
            double dot = 0;
            for (int64_t e = 0; e < d; ++e) {
              dot += double{q_.at({bi, i, hi, e})} * k_.at({bi, j, hi / group, e});
            }
            max_logit = std::max(max_logit, std::fabs(scale * dot));
          }
        }
      }
    }
    if (max_logit > 0) {
      const double factor = c.logits() / max_logit;
      for (int64_t i = 0; i < q_.numel(); ++i) {
        q_.at_flat(i) = static_cast<float>(q_.at_flat(i) * factor);
      }
    }
  }

  if (c.alibi_rank() == 1) alibi_ = HostTensor<float>::contiguous({h});
  if (c.alibi_rank() == 2) alibi_ = HostTensor<float>::contiguous({b, h});
  if (c.alibi_rank()) fill_uniform(alibi_, rng, -0.1f, 0.5f);
  if (c.has_sinks()) {
    sinks_ = HostTensor<float>::contiguous({h});
    fill_uniform(sinks_, rng, -2, 3);
  }

  const MaskSpec& m = c.mask();
  if (m.kind != MaskSpec::Kind::kNone) {
    const std::vector<int64_t> full = {b, h, sq, sk};
    std::vector<int64_t> shape = m.fn ? full : m.shape;
    std::vector<int64_t> strides(shape.size());
    int64_t stride = 1;
    for (int d2 = static_cast<int>(shape.size()) - 1; d2 >= 0; --d2) {
      strides[d2] = stride;
      stride *= shape[d2];
    }
    if (m.expand) {
      // A size-1 dim becomes the full size with stride 0, as torch.expand does.
      for (size_t d2 = 0; d2 < shape.size(); ++d2) {
        const int64_t target = full[4 - shape.size() + d2];
        if (shape[d2] == 1 && target != 1) {
          shape[d2] = target;
          strides[d2] = 0;
        }
      }
    }
    std::uniform_real_distribution<double> u01(0, 1);
    std::uniform_real_distribution<float> values(-4, 4);
    if (m.kind == MaskSpec::Kind::kBool) {
      bool_mask_ = HostTensor<uint8_t>(shape, strides, 0);
      for (int64_t i = 0; i < bool_mask_.numel(); ++i) {
        uint8_t visible;
        if (m.fn) {
          const int64_t j = i % sk, ii = i / sk % sq, hh = i / (sk * sq) % h, bb = i / (sk * sq * h);
          visible = m.fn(bb, hh, ii, j) != 0;
        } else {
          // Nonzero bytes other than 1 also mean true.
          visible = u01(rng) < m.density ? static_cast<uint8_t>(1 + (i % 3) * 100) : 0;
        }
        bool_mask_.at_flat(i) = visible;
      }
    } else {
      float_mask_ = HostTensor<float>(shape, strides, kNaN);
      for (int64_t i = 0; i < float_mask_.numel(); ++i) {
        float x;
        if (m.fn) {
          const int64_t j = i % sk, ii = i / sk % sq, hh = i / (sk * sq) % h, bb = i / (sk * sq * h);
          x = m.fn(bb, hh, ii, j);
        } else {
          x = u01(rng) < m.neg_inf_share ? m.fill_value : values(rng);
        }
        float_mask_.at_flat(i) = x;
      }
    }
  }

  o_ = make_bshd(b, sq, h, dv, c.o_layout(), kNaN);
  if (c.with_lse()) lse_ = make_bhs(b, h, sq, c.lse_layout(), kNaN);

  if (c.dtype() != DType::kFloat32) {
    // Round the inputs to the storage type; the float tensors keep the
    // rounded values (for hand checks and max|V|), the twins hold the bits.
    const DType t = c.dtype();
    const auto twin = [t](HostTensor<float>& x) {
      HostTensor<uint16_t> out = x.like<uint16_t>(t, half_nan(t));
      for (int64_t i = 0; i < x.numel(); ++i) {
        out.at_flat(i) = half_bits(t, x.at_flat(i));
        x.at_flat(i) = from_half_bits(t, out.at_flat(i));
      }
      return out;
    };
    q16_ = twin(q_);
    k16_ = twin(k_);
    v16_ = twin(v_);
    o16_ = o_.like<uint16_t>(t, half_nan(t));
  }
}

AttentionParams Workload::params(Backend backend) {
  AttentionParams p;
  const bool half = case_.dtype() != DType::kFloat32;
  p.q = half ? q16_.view() : q_.view();
  p.k = half ? k16_.view() : k_.view();
  p.v = half ? v16_.view() : v_.view();
  p.o = half ? o16_.view() : o_.view();
  p.lse = lse_.view();
  if (case_.has_scale()) p.scale = case_.scale();
  p.causal = case_.is_causal();
  p.causal_align = case_.causal_align();
  p.window = case_.window();
  p.softcap = case_.softcap();
  p.alibi_slopes = alibi_.view();
  p.sinks = sinks_.view();
  p.mask = case_.mask().kind == MaskSpec::Kind::kBool ? bool_mask_.view() : float_mask_.view();
  p.num_threads = case_.threads();
  p.backend = backend;
  p.tiling = case_.tiling();
  return p;
}

Result Workload::run(Backend backend, bool exact_bf16_probs) {
  o_.reset();
  o16_.reset();
  lse_.reset();
  const auto q0 = q_.storage(), k0 = k_.storage(), v0 = v_.storage();
  const auto q16 = q16_.storage(), k16 = k16_.storage(), v16 = v16_.storage();
  const auto mask_f0 = float_mask_.storage();
  const auto mask_b0 = bool_mask_.storage();
  AttentionParams p = params(backend);
  p.exact_bf16_probs = exact_bf16_probs;
  attention(p);

  const auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(*a.data())) == 0);
  };
  if (!same(q0, q_.storage()) || !same(k0, k_.storage()) || !same(v0, v_.storage()) ||
      !same(mask_f0, float_mask_.storage()) || !same(mask_b0, bool_mask_.storage()) ||
      !same(q16, q16_.storage()) || !same(k16, k16_.storage()) || !same(v16, v16_.storage())) {
    ADD_FAILURE() << "an input changed during the call\n  " << case_.describe();
  }
  const bool half = case_.dtype() != DType::kFloat32;
  if (!o_.padding_intact() || !o16_.padding_intact()) {
    ADD_FAILURE() << "o: wrote outside the view\n  " << case_.describe();
  }
  if (!lse_.padding_intact()) {
    ADD_FAILURE() << "lse: wrote outside the view\n  " << case_.describe();
  }
  if (int64_t n = half ? o16_.view_elements_equal_to_fill() : o_.view_elements_equal_to_fill()) {
    ADD_FAILURE() << "o: " << n << " elements never written\n  " << case_.describe();
  }
  if (int64_t n = case_.with_lse() ? lse_.view_elements_equal_to_fill() : 0) {
    ADD_FAILURE() << "lse: " << n << " elements never written\n  " << case_.describe();
  }
  Result r;
  if (half) {
    for (uint16_t bits : o16_.dense()) r.o.push_back(from_half_bits(case_.dtype(), bits));
  } else {
    r.o = o_.dense();
  }
  if (case_.with_lse()) r.lse = lse_.dense();
  return r;
}

std::vector<Result> Workload::naive() {
  const AttentionParams p = params(Backend::kReference);
  std::vector<Result> out;
  for (NaiveVariant v : kNaiveVariants) out.push_back(naive_float32(p, v));
  return out;
}

double Workload::max_abs_v() const {
  double m = 0;
  for (int64_t i = 0; i < v_.numel(); ++i) m = std::max(m, double{std::fabs(v_.at_flat(i))});
  return m;
}

// ---------------------------------------------------------------------------
// naive_float32

namespace {

// Element of a float32, float16 or bfloat16 tensor, widened to float.
float load(const Tensor& t, std::initializer_list<int64_t> index) {
  int64_t off = 0;
  int d = 0;
  for (int64_t i : index) off += i * t.strides[d++];
  if (t.dtype == DType::kFloat32) return static_cast<const float*>(t.data)[off];
  return from_half_bits(t.dtype, static_cast<const uint16_t*>(t.data)[off]);
}

// Element of a mask broadcast (numpy rules, aligned right) to
// [batch, heads, seq_q, seq_kv]: a size-1 dim reads index 0.
float load_mask(const Tensor& m, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t full_index[4] = {b, h, i, j};
  int64_t off = 0;
  for (int d = 0; d < m.rank; ++d) {
    const int64_t idx = m.shape[d] == 1 ? 0 : full_index[4 - m.rank + d];
    off += idx * m.strides[d];
  }
  if (m.dtype == DType::kBool) return static_cast<const uint8_t*>(m.data)[off] != 0 ? 1.0f : 0.0f;
  return static_cast<const float*>(m.data)[off];
}

}  // namespace

const char* naive_variant_name(NaiveVariant variant) {
  switch (variant) {
    case NaiveVariant::kTextbook: return "textbook";
    case NaiveVariant::kLog2Domain: return "log2-domain";
    case NaiveVariant::kReversedSums: return "reversed-sums";
    case NaiveVariant::kLog2Fma: return "log2-fma";
  }
  return "?";
}

Result naive_float32(const AttentionParams& p, NaiveVariant variant) {
  constexpr double kU = 0x1p-24;  // unit roundoff of float32
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  const int64_t batch = p.q.shape[0], seq_q = p.q.shape[1], heads = p.q.shape[2];
  const int64_t head_dim = p.q.shape[3], seq_kv = p.k.shape[1], kv_heads = p.k.shape[2];
  const int64_t head_dim_v = p.v.shape[3], group = heads / kv_heads;
  const int64_t diag = seq_kv - seq_q;
  const float scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  const bool bool_mask = p.mask.present() && p.mask.dtype == DType::kBool;
  const bool float_mask = p.mask.present() && p.mask.dtype == DType::kFloat32;
  const bool fused = variant == NaiveVariant::kLog2Fma;
  const bool reversed = variant == NaiveVariant::kReversedSums;
  const auto index = [reversed](int64_t t, int64_t n) { return reversed ? n - 1 - t : t; };

  // q, k, v read once through their views, into logical [batch, seq, heads, dim] order.
  const auto gather = [](const Tensor& t) {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    size_t n = 0;
    for (int64_t b = 0; b < t.shape[0]; ++b) {
      for (int64_t i = 0; i < t.shape[1]; ++i) {
        for (int64_t h = 0; h < t.shape[2]; ++h) {
          for (int64_t d = 0; d < t.shape[3]; ++d) out[n++] = load(t, {b, i, h, d});
        }
      }
    }
    return out;
  };
  const std::vector<float> q_all = gather(p.q), k_all = gather(p.k), v_all = gather(p.v);
  const auto q_row = [&](int64_t b, int64_t i, int64_t h) {
    return &q_all[static_cast<size_t>(((b * seq_q + i) * heads + h) * head_dim)];
  };
  const auto k_row = [&](int64_t b, int64_t j, int64_t h) {
    return &k_all[static_cast<size_t>(((b * seq_kv + j) * kv_heads + h) * head_dim)];
  };
  const auto v_row = [&](int64_t b, int64_t j, int64_t h) {
    return &v_all[static_cast<size_t>(((b * seq_kv + j) * kv_heads + h) * head_dim_v)];
  };
  double max_v = 0;
  for (float x : v_all) max_v = std::max(max_v, double{std::fabs(x)});

  Result r;
  r.o.assign(static_cast<size_t>(batch * seq_q * heads * head_dim_v), 0.0f);
  r.lse.assign(static_cast<size_t>(batch * heads * seq_q), kNegInf);
  r.o_bound.assign(static_cast<size_t>(batch * seq_q * heads), 0.0);
  r.lse_bound.assign(static_cast<size_t>(batch * seq_q * heads), 0.0);
  std::vector<float> s(static_cast<size_t>(seq_kv));
  std::vector<double> score_error(static_cast<size_t>(seq_kv));  // a priori, natural units
  std::vector<uint8_t> visible(static_cast<size_t>(seq_kv));
  std::vector<float> acc(static_cast<size_t>(head_dim_v));

  // Scores of row (b, h, i) into s, -inf where invisible; returns false when
  // a log2-unit score would overflow float (a mask near -FLT_MAX), so the
  // caller redoes the row in natural units, as a careful kernel must.
  const auto scores = [&](int64_t b, int64_t h, int64_t i, bool log2) {
    // log2: scores in units of log2 (scale * log2 e folded into q when no
    // softcap sits between), exp2 instead of exp, as FlashAttention does.
    const float unit = log2 ? kLog2e : 1.0f;
    const bool fold_scale = log2 && p.softcap == 0;
    const float q_scale = fold_scale ? scale * kLog2e : scale;
    const int64_t kvh = h / group;
    for (int64_t j = 0; j < seq_kv; ++j) {
      s[j] = kNegInf;
      bool vis = true;
      if (p.causal) vis = j <= (p.causal_align == CausalAlign::kBottomRight ? i + diag : i);
      if (p.window.left >= 0 && j < i + diag - p.window.left) vis = false;
      if (p.window.right >= 0 && j > i + diag + p.window.right) vis = false;
      if (bool_mask && load_mask(p.mask, b, h, i, j) == 0) vis = false;
      visible[j] = vis;
      if (!vis) continue;
      float dot = 0;
      double dot_terms = 0;  // sum of |terms| of the dot product, natural units
      const float* qr = q_row(b, i, h);
      const float* kr = k_row(b, j, kvh);
      for (int64_t t = 0; t < head_dim; ++t) {
        const int64_t d = index(t, head_dim);
        const float q = fold_scale ? qr[d] * q_scale : qr[d];
        dot = fused ? std::fma(q, kr[d], dot) : dot + q * kr[d];
        dot_terms += std::fabs(double{qr[d]} * kr[d]);
      }
      float score = fold_scale ? dot : scale * dot;
      dot_terms *= std::fabs(scale);
      double added = 0;  // magnitude of the terms added after the dot product
      if (p.softcap > 0) {
        score = p.softcap * std::tanh(score / p.softcap) * unit;
        added += p.softcap;
      }
      if (p.alibi_slopes.present()) {
        const float slope = p.alibi_slopes.rank == 1 ? load(p.alibi_slopes, {h})
                                                     : load(p.alibi_slopes, {b, h});
        const float bias = slope * unit * std::fabs(static_cast<float>(i + diag - j));
        score -= bias;
        added += std::fabs(bias / unit);
      }
      if (float_mask) {
        const float m = load_mask(p.mask, b, h, i, j);
        if (std::isfinite(m) && !std::isfinite(m * unit)) return false;
        score += m * unit;
        if (std::isfinite(m)) added += std::fabs(m);
      }
      s[j] = score;
      // Higham: a float dot product of n terms errs by <= n u sum|terms|; each
      // later operation adds one rounding of at most u times its magnitude.
      score_error[j] = (head_dim + 4) * kU * dot_terms + 8 * kU * (added + std::fabs(score / unit));
    }
    return true;
  };

  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i = 0; i < seq_q; ++i) {
        bool log2 = variant == NaiveVariant::kLog2Domain || variant == NaiveVariant::kLog2Fma;
        if (!scores(b, h, i, log2)) {
          log2 = false;
          scores(b, h, i, false);
        }
        const float unit = log2 ? kLog2e : 1.0f;
        const float row_max = seq_kv ? *std::max_element(s.begin(), s.end()) : kNegInf;
        const int64_t row = (b * seq_q + i) * heads + h;
        if (row_max == kNegInf) continue;  // no visible key: o = 0, lse = -inf

        // Softmax relative to the max (the sink takes part), then P.V.
        const bool has_sink = p.sinks.present();
        const float sink = has_sink ? load(p.sinks, {h}) * unit : kNegInf;
        const float m = std::max(row_max, sink);
        float sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        int64_t n = has_sink ? 1 : 0;
        double max_score_error = 0;  // over the keys that matter
        for (int64_t t = 0; t < seq_kv; ++t) {
          const int64_t j = index(t, seq_kv);
          if (s[j] == kNegInf) continue;
          ++n;
          // Keys 60 below the max weigh < e^-60: their errors cannot show.
          if (s[j] >= m - 60 * unit) max_score_error = std::max(max_score_error, score_error[j]);
          const float w = log2 ? std::exp2(s[j] - m) : std::exp(s[j] - m);
          sum += w;
          const float* vr = v_row(b, j, kvh);
          for (int64_t d = 0; d < head_dim_v; ++d) acc[d] += w * vr[d];
        }
        if (has_sink) sum += log2 ? std::exp2(sink - m) : std::exp(sink - m);
        float* o = &r.o[static_cast<size_t>(row * head_dim_v)];
        for (int64_t d = 0; d < head_dim_v; ++d) o[d] = round_to(p.o.dtype, acc[d] / sum);
        const float lse = log2 ? (m + std::log2(sum)) * kLn2 : m + std::log(sum);
        r.lse[static_cast<size_t>((b * heads + h) * seq_q + i)] = lse;

        // A priori bounds: each score errs by <= max_score_error, so each
        // weight by a relative e^(2 max_score_error) - 1; exp, the sum and P.V
        // add O(n u); the storage rounding of o up to one ulp against the
        // reference's. Capped (see within_tolerance) so they are never vacuous.
        const double weight_error =
            std::expm1(2 * max_score_error) + (n + 8) * kU + n * std::exp(-50.0);
        r.o_bound[static_cast<size_t>(row)] =
            (2 * weight_error + (n + 8) * kU + 2 * unit_roundoff(p.o.dtype)) * max_v;
        r.lse_bound[static_cast<size_t>(row)] = max_score_error + 2 * weight_error +
                                                4 * kU * (std::fabs(m / unit) + std::log(n + 1.0) + 1);
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------
// The tolerance rule

namespace {

std::string o_index(const Case& c, int64_t flat) {
  const int64_t dv = c.head_dim_v(), h = c.heads(), sq = c.seq_q();
  std::ostringstream out;
  out << "o[b=" << flat / (dv * h * sq) << ", i=" << flat / (dv * h) % sq << ", h="
      << flat / dv % h << ", d=" << flat % dv << "]";
  return out.str();
}

std::string lse_index(const Case& c, int64_t flat) {
  const int64_t h = c.heads(), sq = c.seq_q();
  std::ostringstream out;
  out << "lse[b=" << flat / (h * sq) << ", h=" << flat / sq % h << ", i=" << flat % sq << "]";
  return out.str();
}

}  // namespace

testing::AssertionResult within_tolerance(const Case& c, const std::string& fast_name,
                                          const Result& fast, const Result& ref,
                                          const std::vector<Result>& naive, double max_abs_v) {
  const auto fail = [&]() {
    return testing::AssertionFailure() << fast_name << " vs reference\n  " << c.describe() << "\n  ";
  };
  if (naive.empty()) return fail() << "no naive result";
  if (fast.o.size() != ref.o.size() || fast.lse.size() != ref.lse.size()) {
    return fail() << "result sizes differ";
  }
  const bool with_lse = !ref.lse.empty();
  const int64_t dv = c.head_dim_v(), h = c.heads(), sq = c.seq_q();

  // 1. The yardstick is earned on the same data: each naive variant errs
  //    within its a priori bound (else the naive or the reference is wrong),
  //    and finds the same empty rows as the reference. Hard caps keep the
  //    check meaningful where an a priori bound is huge (|mask| ~ FLT_MAX):
  //    no float32 implementation worth the name errs by 1% of max|V| or by
  //    0.1% of max(1, |lse|).
  const double o_cap = std::max(1e-2, 4 * unit_roundoff(c.dtype())) * max_abs_v;
  const auto lse_scale = [](float x) { return std::max(1.0, double{std::fabs(x)}); };
  double naive_o_err = 0, naive_lse_err = 0;  // lse: relative to lse_scale
  for (size_t n = 0; n < naive.size(); ++n) {
    const Result& nv = naive[n];
    const char* name = naive_variant_name(kNaiveVariants[n % std::size(kNaiveVariants)]);
    if (nv.o.size() != ref.o.size() || nv.lse.size() < ref.lse.size() ||
        nv.o_bound.size() * dv != ref.o.size()) {
      return fail() << "naive " << name << " result sizes differ";
    }
    for (size_t e = 0; e < ref.o.size(); ++e) {
      const double err = std::fabs(double{nv.o[e]} - ref.o[e]);
      const size_t row = e / static_cast<size_t>(dv);
      if (!(err <= std::min(nv.o_bound[row], o_cap))) {
        return fail() << "the naive float32 yardstick (" << name << ") is wrong at " << o_index(c, e)
                      << ": naive " << nv.o[e] << ", reference " << ref.o[e] << ", its a priori bound "
                      << std::min(nv.o_bound[row], o_cap);
      }
      naive_o_err = std::max(naive_o_err, err);
    }
    for (size_t e = 0; e < ref.lse.size(); ++e) {
      if ((ref.lse[e] == kNegInf) != (nv.lse[e] == kNegInf)) {
        return fail() << "naive " << name << " and reference disagree on an empty row at "
                      << lse_index(c, e) << ": naive " << nv.lse[e] << ", reference " << ref.lse[e];
      }
      if (ref.lse[e] == kNegInf) continue;
      const double err = std::fabs(double{nv.lse[e]} - ref.lse[e]);
      const int64_t b = e / (h * sq), hh = e / sq % h, i = e % sq;
      const size_t row = static_cast<size_t>((b * sq + i) * h + hh);
      const double bound = std::min(nv.lse_bound[row], 1e-3 * lse_scale(ref.lse[e]));
      if (!(err <= bound)) {
        return fail() << "the naive float32 yardstick (" << name << ") is wrong at " << lse_index(c, e)
                      << ": naive " << nv.lse[e] << ", reference " << ref.lse[e]
                      << ", its a priori bound " << bound;
      }
      naive_lse_err = std::max(naive_lse_err, err / lse_scale(ref.lse[e]));
    }
  }

  // 2. The rule.
  const double o_budget =
      Tolerance::kNaiveFactor * naive_o_err + Tolerance::absolute(c.dtype()) * max_abs_v;
  const double lse_budget = Tolerance::kNaiveFactor * naive_lse_err + Tolerance::kAbsolute;
  int64_t bad = 0, first = -1;
  double worst = 0;
  for (size_t e = 0; e < ref.o.size(); ++e) {
    const double err = std::fabs(double{fast.o[e]} - ref.o[e]);
    if (!(err <= o_budget)) {  // also catches NaN
      if (first < 0) first = static_cast<int64_t>(e);
      ++bad;
    }
    if (err > worst || std::isnan(err)) worst = err;
  }
  if (bad) {
    const size_t e = static_cast<size_t>(first);
    return fail() << bad << " of " << ref.o.size() << " o elements out of tolerance; first "
                  << o_index(c, first) << ": got " << fast.o[e] << ", reference " << ref.o[e]
                  << ", naive float32 " << naive[0].o[e] << "; error "
                  << std::fabs(double{fast.o[e]} - ref.o[e]) << " > budget " << o_budget
                  << " (= 2 * naive max error " << naive_o_err << " + "
                  << Tolerance::absolute(c.dtype()) << " * max|V| " << max_abs_v
                  << "); worst error " << worst;
  }
  if (!with_lse) return testing::AssertionSuccess();
  for (size_t e = 0; e < ref.lse.size(); ++e) {
    const float got = fast.lse[e], want = ref.lse[e];
    bool ok;
    if (want == kNegInf) {
      ok = got == kNegInf;
    } else {
      ok = std::isfinite(got) && std::fabs(double{got} - want) <= lse_budget * lse_scale(want);
    }
    if (!ok) {
      if (first < 0) first = static_cast<int64_t>(e);
      ++bad;
    }
  }
  if (bad) {
    const size_t e = static_cast<size_t>(first);
    return fail() << bad << " of " << ref.lse.size() << " lse elements out of tolerance; first "
                  << lse_index(c, first) << ": got " << fast.lse[e] << ", reference "
                  << ref.lse[e] << ", naive float32 " << naive[0].lse[e] << "; budget "
                  << lse_budget * lse_scale(ref.lse[e]) << " (= (2 * naive max relative error "
                  << naive_lse_err << " + 1e-6) * max(1, |lse|))";
  }
  return testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------
// The flash check on every target

namespace {

// Restores the default dispatch (best target, AMX on) when a check ends, even
// on a fatal failure.
struct DefaultTargetOnExit {
  ~DefaultTargetOnExit() {
    internal::flash_force_target(0);
    internal::set_dot_units_enabled(true);
    internal::bf16_flash_force_engine(internal::Bf16Engine::kNone);
  }
};

}  // namespace

std::string target_list() {
  std::string out;
  for (int64_t t : internal::flash_targets()) {
    out += (out.empty() ? "" : ", ") + std::string(internal::flash_target_name(t));
  }
  return out;
}

RowStats expect_flash_matches_reference(const Case& c) {
  Workload w(c);
  return expect_flash_matches_reference(w);
}

RowStats expect_flash_matches_reference(Workload& w) {
  const Case& c = w.spec();
  const Result ref = w.run(Backend::kReference);
  const std::vector<Result> naive = w.naive();
  const double max_v = w.max_abs_v();

  // The reference is non-trivial: rows that see a key have a nonzero o.
  RowStats stats;
  stats.rows = c.batch() * c.heads() * c.seq_q();
  const int64_t dv = c.head_dim_v();
  for (int64_t b = 0; b < c.batch(); ++b) {
    for (int64_t h = 0; h < c.heads(); ++h) {
      for (int64_t i = 0; i < c.seq_q(); ++i) {
        if (naive[0].lse[static_cast<size_t>((b * c.heads() + h) * c.seq_q() + i)] == kNegInf) {
          ++stats.empty_rows;
          continue;
        }
        const size_t row = static_cast<size_t>(((b * c.seq_q() + i) * c.heads() + h) * dv);
        const bool all_zero = std::all_of(ref.o.begin() + row, ref.o.begin() + row + dv,
                                          [](float x) { return x == 0.0f; });
        // (A sink far above the scores may legitimately round o to 0.)
        if (all_zero && max_v > 0 && !c.has_sinks()) {
          ADD_FAILURE() << "reference o row (b=" << b << ", i=" << i << ", h=" << h
                        << ") is all zero although the row sees a key\n  " << c.describe();
          return stats;
        }
      }
    }
  }
  if (stats.rows > 0 && stats.empty_rows == stats.rows && !c.allows_all_empty()) {
    ADD_FAILURE() << "vacuous case: no row sees a key\n  " << c.describe();
  }

  DefaultTargetOnExit restore;
  internal::set_dot_units_enabled(false);  // bfloat16 too: the float32 kernel on every target
  for (int64_t target : internal::flash_targets()) {
    internal::flash_force_target(target);
    const std::string name = std::string("flash[") + internal::flash_target_name(target) + "]";
    const Result fast = w.run(Backend::kFlash);
    EXPECT_TRUE(within_tolerance(c, name, fast, ref, naive, max_v));
  }
  internal::flash_force_target(0);
  internal::set_dot_units_enabled(true);
  if (c.dtype() == DType::kBFloat16) {
    // Each bfloat16 engine this CPU has: P rounded to bfloat16 (the default),
    // then carried in two terms (on tiles; the float32 kernel elsewhere).
    for (const internal::Bf16Engine engine : internal::bf16_flash_engines()) {
      internal::bf16_flash_force_engine(engine);
      const std::string name = std::string("flash[") + internal::bf16_engine_name(engine);
      for (const bool exact : {false, true}) {
        const Result fast = w.run(Backend::kFlash, exact);
        EXPECT_TRUE(within_tolerance(c, name + (exact ? ", exact P]" : "]"), fast, ref, naive, max_v));
      }
    }
    internal::bf16_flash_force_engine(internal::Bf16Engine::kNone);
  }
  return stats;
}

}  // namespace qkv::test
