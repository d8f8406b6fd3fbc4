// Test helpers shared by the attention tests:
//   HostTensor   owning storage + a qkv::Tensor view, in any layout (padding
//                around the view keeps a fill value, so reads and writes of it
//                are caught);
//   Case         a fluent, printable description of one attention call;
//   Workload     a Case's seeded random inputs, run through any backend;
//   naive_float32  the textbook float32 attention (the error yardstick);
//   within_tolerance  THE tolerance rule of the suite, stated once.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "qkv/qkv.h"

namespace qkv::test {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------
// HostTensor: owning storage of one tensor plus its view.

// Memory order of a logical [batch, seq, heads, dim] tensor (of a logical
// [batch, heads, seq] tensor for lse: kBhsd then means [batch, seq, heads]).
enum class Layout : uint8_t {
  kBshd,    // row-major in the logical order (the default)
  kBhsd,    // heads and seq swapped in memory, passed by permuting strides
  kPadded,  // logical order with gaps after every row, head and batch
};
const char* layout_name(Layout layout);

// T is float (float32), uint8_t (bool) or uint16_t (float16 or bfloat16 bits).
template <typename T>
class HostTensor {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, uint8_t> ||
                std::is_same_v<T, uint16_t>);

 public:
  HostTensor() = default;
  // A view of `shape` with `strides` (elements) over storage just large enough
  // to hold it; every storage element starts as `fill`. `dtype` must fit T;
  // by default float32, bool or float16 for T = float, uint8_t, uint16_t.
  HostTensor(std::vector<int64_t> shape, std::vector<int64_t> strides, T fill,
             DType dtype = default_dtype());
  // Row-major view of `shape`.
  static HostTensor contiguous(std::vector<int64_t> shape, T fill = T{});

  // The view, pointing at this object's storage (null data when default-constructed).
  Tensor view() const;
  int rank() const { return view_.rank; }
  int64_t dim(int d) const { return view_.shape[d]; }
  int64_t numel() const { return view_.numel(); }

  // Element at a logical index (one entry per dimension).
  T& at(std::initializer_list<int64_t> index) { return storage_[offset(index)]; }
  T at(std::initializer_list<int64_t> index) const { return storage_[offset(index)]; }
  T& at_flat(int64_t logical) { return storage_[offset_of_flat(logical)]; }
  T at_flat(int64_t logical) const { return storage_[offset_of_flat(logical)]; }

  // The view's elements in logical row-major order.
  std::vector<T> dense() const;
  // Storage is reset to the fill value (view and padding).
  void reset() { std::fill(storage_.begin(), storage_.end(), fill_); }
  // True when every storage element outside the view still holds the fill
  // value, compared bitwise (the fill may be NaN).
  bool padding_intact() const;
  // Number of view elements still bitwise equal to the fill value.
  int64_t view_elements_equal_to_fill() const;
  const std::vector<T>& storage() const { return storage_; }
  // Same shape and strides, other element type (e.g. the float16 twin of a float tensor).
  template <typename U>
  HostTensor<U> like(DType dtype, U fill) const {
    std::vector<int64_t> shape(view_.shape.begin(), view_.shape.begin() + view_.rank);
    std::vector<int64_t> strides(view_.strides.begin(), view_.strides.begin() + view_.rank);
    return HostTensor<U>(std::move(shape), std::move(strides), fill, dtype);
  }

 private:
  static constexpr DType default_dtype() {
    return std::is_same_v<T, float> ? DType::kFloat32
           : std::is_same_v<T, uint8_t> ? DType::kBool : DType::kFloat16;
  }
  int64_t offset(std::initializer_list<int64_t> index) const;
  int64_t offset_of_flat(int64_t logical) const;
  bool equals_fill(T x) const { return std::memcmp(&x, &fill_, sizeof(T)) == 0; }

  std::vector<T> storage_;
  std::vector<uint8_t> covered_;  // 1 where storage is part of the view
  T fill_{};
  Tensor view_;
};

// A logical [batch, seq, heads, dim] float tensor in `layout`.
HostTensor<float> make_bshd(int64_t batch, int64_t seq, int64_t heads, int64_t dim, Layout layout,
                            float fill);
// A logical [batch, heads, seq_q] float tensor (lse) in `layout`.
HostTensor<float> make_bhs(int64_t batch, int64_t heads, int64_t seq, Layout layout, float fill);

// ---------------------------------------------------------------------------
// Case: what to compute. Setters return *this; getters share the name (but
// is_causal(), as causal() with no argument is a setter).

struct MaskSpec {
  enum class Kind : uint8_t { kNone, kBool, kFloat };
  Kind kind = Kind::kNone;
  std::vector<int64_t> shape;   // broadcastable (numpy rules) to [batch, heads, seq_q, seq_kv]
  bool expand = false;          // size-1 dims widened to the full size with stride 0
  double density = 0.7;         // bool: probability that a key is visible
  double neg_inf_share = 0.0;   // float: share of entries that are -inf
  float fill_value = 0.0f;      // float: value of those entries (-inf or e.g. -FLT_MAX)
  // Custom content over the full [batch, heads, seq_q, seq_kv]; nonzero = true for bool.
  std::function<float(int64_t b, int64_t h, int64_t i, int64_t j)> fn;
  std::string label;
};

class Case {
 public:
  // Sizes. head_dim_v defaults to head_dim, kv_heads to heads.
  Case& batch(int64_t n) { batch_ = n; return *this; }
  Case& seq_q(int64_t n) { seq_q_ = n; return *this; }
  Case& seq_kv(int64_t n) { seq_kv_ = n; return *this; }
  Case& seq(int64_t n) { seq_q_ = seq_kv_ = n; return *this; }
  Case& heads(int64_t n) { heads_ = n; return *this; }
  Case& kv_heads(int64_t n) { kv_heads_ = n; return *this; }
  Case& head_dim(int64_t n) { head_dim_ = n; return *this; }
  Case& head_dim_v(int64_t n) { head_dim_v_ = n; return *this; }

  // Options of AttentionParams.
  Case& scale(float s) { scale_ = s; has_scale_ = true; return *this; }
  Case& causal(CausalAlign align = CausalAlign::kBottomRight) {
    causal_ = true;
    align_ = align;
    return *this;
  }
  Case& window(int64_t left, int64_t right) { window_ = {left, right}; return *this; }
  Case& softcap(float c) { softcap_ = c; return *this; }
  Case& alibi() { alibi_ = 1; return *this; }            // slopes [heads]
  Case& alibi_per_batch() { alibi_ = 2; return *this; }  // slopes [batch, heads]
  Case& sinks() { sinks_ = true; return *this; }         // random sinks in [-2, 3]
  Case& bool_mask(std::vector<int64_t> shape, double density = 0.7, bool expand = false);
  Case& float_mask(std::vector<int64_t> shape, double neg_inf_share = 0.0, bool expand = false,
                   float fill_value = kNegInf);
  Case& mask_fn(std::string label, DType dtype,
                std::function<float(int64_t b, int64_t h, int64_t i, int64_t j)> fn);
  Case& tiles(int block_q, int block_kv) { tiling_ = {block_q, block_kv}; return *this; }
  // Storage type of q, k, v and o: float32 (default), float16 or bfloat16.
  // Inputs are drawn as float32 and rounded to it, so every backend and the
  // naive helper see the same values.
  Case& dtype(DType t) { dtype_ = t; return *this; }
  Case& threads(int n) { threads_ = n; return *this; }

  // Data and layouts.
  Case& seed(uint32_t s) { seed_ = s; return *this; }
  // Rescales q so that the largest |scale * q.k| is exactly `magnitude`.
  Case& logits(float magnitude) { logits_ = magnitude; return *this; }
  // Adds a shared direction so every logit is about `offset` (+- a few):
  // near ties at a magnitude where a naive exp over/underflows.
  Case& logit_offset(float offset) { logit_offset_ = offset; return *this; }
  Case& layout(Layout l) { q_layout_ = k_layout_ = v_layout_ = o_layout_ = l; return *this; }
  Case& layouts(Layout q, Layout k, Layout v, Layout o) {
    q_layout_ = q, k_layout_ = k, v_layout_ = v, o_layout_ = o;
    return *this;
  }
  Case& lse_layout(Layout l) { lse_layout_ = l; return *this; }
  Case& no_lse() { with_lse_ = false; return *this; }
  // By default a case must have at least one row that sees a key, so that no
  // comparison passes on all-zero outputs.
  Case& allow_all_empty() { allow_all_empty_ = true; return *this; }

  int64_t batch() const { return batch_; }
  int64_t seq_q() const { return seq_q_; }
  int64_t seq_kv() const { return seq_kv_; }
  int64_t heads() const { return heads_; }
  int64_t kv_heads() const { return kv_heads_ > 0 ? kv_heads_ : heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t head_dim_v() const { return head_dim_v_ > 0 ? head_dim_v_ : head_dim_; }
  bool has_scale() const { return has_scale_; }
  float scale() const { return scale_; }
  bool is_causal() const { return causal_; }
  CausalAlign causal_align() const { return align_; }
  Window window() const { return window_; }
  float softcap() const { return softcap_; }
  int alibi_rank() const { return alibi_; }
  bool has_sinks() const { return sinks_; }
  const MaskSpec& mask() const { return mask_; }
  Tiling tiling() const { return tiling_; }
  DType dtype() const { return dtype_; }
  int threads() const { return threads_; }
  uint32_t seed() const { return seed_; }
  float logits() const { return logits_; }
  float logit_offset() const { return logit_offset_; }
  Layout q_layout() const { return q_layout_; }
  Layout k_layout() const { return k_layout_; }
  Layout v_layout() const { return v_layout_; }
  Layout o_layout() const { return o_layout_; }
  Layout lse_layout() const { return lse_layout_; }
  bool with_lse() const { return with_lse_; }
  bool allows_all_empty() const { return allow_all_empty_; }

  // One line naming every size and every option that is not the default.
  std::string describe() const;

 private:
  int64_t batch_ = 1, seq_q_ = 8, seq_kv_ = 8, heads_ = 2, kv_heads_ = 0;
  int64_t head_dim_ = 16, head_dim_v_ = 0;
  bool has_scale_ = false;
  float scale_ = 0.0f;
  bool causal_ = false;
  CausalAlign align_ = CausalAlign::kBottomRight;
  Window window_;
  float softcap_ = 0.0f;
  int alibi_ = 0;
  bool sinks_ = false;
  MaskSpec mask_;
  Tiling tiling_;
  DType dtype_ = DType::kFloat32;
  int threads_ = 0;
  uint32_t seed_ = 1;
  float logits_ = 0.0f;
  float logit_offset_ = 0.0f;
  Layout q_layout_ = Layout::kBshd, k_layout_ = Layout::kBshd, v_layout_ = Layout::kBshd,
         o_layout_ = Layout::kBshd, lse_layout_ = Layout::kBshd;
  bool with_lse_ = true;
  bool allow_all_empty_ = false;
};

// ---------------------------------------------------------------------------
// Workload: a Case's inputs (seeded), and runs of it.

// Dense outputs of one run: o [batch, seq_q, heads, head_dim_v] and
// lse [batch, heads, seq_q] (empty when not requested).
struct Result {
  std::vector<float> o;
  std::vector<float> lse;
  // naive_float32 only: a priori bounds on its own error, per row (b, i, h)
  // in the order of o's rows. See naive_float32.
  std::vector<double> o_bound, lse_bound;
};

// Same length and the same bits (NaN payloads and signed zeros included).
inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Elements of a Result by logical index.
inline float o_at(const Case& c, const Result& r, int64_t b, int64_t i, int64_t h, int64_t d) {
  return r.o[static_cast<size_t>(((b * c.seq_q() + i) * c.heads() + h) * c.head_dim_v() + d)];
}
inline float lse_at(const Case& c, const Result& r, int64_t b, int64_t h, int64_t i) {
  return r.lse[static_cast<size_t>((b * c.heads() + h) * c.seq_q() + i)];
}

class Workload {
 public:
  explicit Workload(const Case& c);

  const Case& spec() const { return case_; }
  // Inputs, editable by hand-written tests before a run (float32 storage
  // only: with float16/bfloat16 these hold the rounded values, read-only).
  HostTensor<float>& q() { return q_; }
  HostTensor<float>& k() { return k_; }
  HostTensor<float>& v() { return v_; }
  HostTensor<float>& alibi() { return alibi_; }
  HostTensor<float>& sinks() { return sinks_; }
  HostTensor<float>& float_mask() { return float_mask_; }
  HostTensor<uint8_t>& bool_mask() { return bool_mask_; }

  // Params pointing at this workload's inputs and output buffers.
  AttentionParams params(Backend backend);
  // Runs qkv::attention into NaN-filled outputs and returns dense copies.
  // Adds a test failure (naming the case) when the call wrote outside the
  // output views, left an output element unwritten, or changed an input.
  // exact_bf16_probs: AttentionParams' (the AMX kernel's P in two terms).
  Result run(Backend backend, bool exact_bf16_probs = false);
  // naive_float32, every variant, on exactly the params that run() passes.
  std::vector<Result> naive();
  // max |v| over the view (>= the largest |o| any correct call can give).
  double max_abs_v() const;

  // The output buffers of the last run (for checks of the raw memory).
  const HostTensor<float>& o_buffer() const { return o_; }
  const HostTensor<float>& lse_buffer() const { return lse_; }

 private:
  Case case_;
  HostTensor<float> q_, k_, v_, alibi_, sinks_, float_mask_, o_, lse_;
  HostTensor<uint8_t> bool_mask_;
  // float16/bfloat16 storage of q, k, v and o when the case asks for it.
  HostTensor<uint16_t> q16_, k16_, v16_, o16_;
};

// The textbook float32 attention, written from the semantics table in
// include/qkv/attention.h, reading the very params qkv::attention gets
// (strides and mask broadcasting included): per row, the scores in float32,
// the row max subtracted, exp in float, a float sum, a division, and P.V
// accumulated in float. A sink takes part in the max and the sum.
//
// Variants differ only in rounding choices that any float32 implementation
// is free to make:
enum class NaiveVariant : uint8_t {
  kTextbook,      // exp(scale * (q . k) - max)
  kLog2Domain,    // exp2((scale * log2 e * q) . k - max), as FlashAttention computes it
  kReversedSums,  // textbook, every sum accumulated in reverse order
  kLog2Fma,       // log2 domain, dot products by fused multiply-add, as SIMD kernels do
};
inline constexpr NaiveVariant kNaiveVariants[] = {NaiveVariant::kTextbook, NaiveVariant::kLog2Domain,
                                                  NaiveVariant::kReversedSums, NaiveVariant::kLog2Fma};
const char* naive_variant_name(NaiveVariant variant);

// Also returns, per row, an a priori bound on its own error (Higham-style,
// from the magnitudes of the terms), so a wrong naive implementation cannot
// silently widen the tolerance.
Result naive_float32(const AttentionParams& params, NaiveVariant variant = NaiveVariant::kTextbook);

// ---------------------------------------------------------------------------
// THE tolerance rule.
//
// A fast path is exact when its error against the float64 oracle
// (Backend::kReference: double accumulation, rounded to float32 at the end)
// is at most twice the error of naive float32 attention on the same inputs,
// plus a small absolute term:
//
//   |fast - ref| <= 2 * naive_error + a * max|V|     for every element of o
//   |fast - ref| / L <= 2 * naive_lse_error + 1e-6   for every finite lse, L = max(1, |ref|)
//   lse == -inf exactly where the reference says -inf; no NaN or Inf elsewhere;
//
// naive_error = max over o and over the NaiveVariants of |naive - ref|,
// naive_lse_error = the same max of |naive - ref| / L over the finite lse,
// a = 1e-6 for float32 storage, 2u for float16 (u = 2^-11) and bfloat16 (u = 2^-8).
// (lse errors scale with the logits' magnitude, hence relative to L: one row
// with an lse of -1e38 must not loosen the others.)
//
// Why float32 naive as the yardstick: its error is what float32 arithmetic
// costs on these very inputs: it grows with head_dim (dot products), seq_kv
// (sums) and the logits' magnitude (an error of eps * |s| in a score becomes a
// relative error of the same size in its weight). Any implementation with
// float32 storage pays that; a bug (a misplaced mask, a missed rescale, a
// wrong tile edge) costs far more. Factor 2: the fast path may legally round
// differently (FMA, tree reductions, an exp polynomial of a few ulp, one
// rescale per kv block of the online softmax), not worse.
//
// Why a max over the output and over a few variants, not per element: the
// errors are rounding draws; per element or per row, one naive error can be
// near 0 by luck where the fast one is not (the ratio of two such draws
// exceeds 2 about 30% of the time). With large logits the maximum is set by
// the few rows with near ties, so even a max over the output is a handful of
// draws, and score rounding dominates: against the textbook variant alone
// the flash kernel's FMA targets measured up to 7x the naive error (96 of
// 1500 random runs with logits 30..1e3 over the budget); against the max of
// the four variants, at most half the budget. (kLog2Fma rounds the scores
// the way an FMA kernel does; the factor 2 then covers what differs: tiling,
// the online softmax, the exp polynomial, the P.V order.) The yardstick is
// still ~1e-7 for ordinary data, so anything wrong by more than a few ulp is
// caught.
//
// Why 1e-6 * max|V|: o is a convex combination of V rows, so |o| <= max|V|;
// 1e-6 * max|V| is ~16 float32 ulp of the largest possible output: room for
// a handful of roundings where the naive error happens to be tiny (tiny
// cases), and still orders of magnitude below any real bug. For lse the
// same 1e-6 is taken relative to L (lse is always float32). With float16 or
// bfloat16 storage, o is rounded to it: two correct float32 results on either
// side of a rounding boundary then differ by one storage ulp, up to
// 2u * max|V|, whatever the naive error happens to be.
struct Tolerance {
  static constexpr double kNaiveFactor = 2.0;
  static constexpr double kAbsolute = 1e-6;
  // The absolute term's factor of max|V| for o stored as `dtype`.
  static double absolute(DType dtype);
};

// Unit roundoff of a storage type (2^-24, 2^-11, 2^-8).
double unit_roundoff(DType dtype);
// x rounded to a storage type, back in float.
float round_to(DType dtype, float x);

// Checks `fast` against `ref` under the rule above. First checks that each
// naive variant agrees with `ref` within its own a priori bound (capped at 1%
// of max|V| for o and 0.1% of L for lse) and finds the same empty rows, so
// the budget is earned on the same data and is never vacuous. The failure
// names the case, the first failing index [b, i, h, d] and how many fail.
testing::AssertionResult within_tolerance(const Case& c, const std::string& fast_name,
                                          const Result& fast, const Result& ref,
                                          const std::vector<Result>& naive, double max_abs_v);

// Per-case counts, to assert that a case exercises what it claims.
struct RowStats {
  int64_t rows = 0;        // batch * heads * seq_q
  int64_t empty_rows = 0;  // rows that see no key (reference lse == -inf)
};

// Runs `c` with Backend::kReference, naive_float32 and Backend::kFlash on every
// SIMD target of flash_targets() with the AMX kernel off, then, for bfloat16
// on a CPU with AMX-BF16, with it on ("flash[amx]"), restoring the default
// dispatch after; expects every flash run within tolerance. Also expects the reference to be
// non-trivial: some row sees a key (unless allow_all_empty) and a row that
// sees a key has an o that is not all zero.
RowStats expect_flash_matches_reference(const Case& c);
// The same on a workload whose inputs a test edited by hand.
RowStats expect_flash_matches_reference(Workload& w);

// The targets flash_targets() lists, as "NAME" strings (for messages).
std::string target_list();

}  // namespace qkv::test
