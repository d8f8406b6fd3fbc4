// Decode kernel. Tasks are (batch, chunk of keys); for each kv head a task
// computes, for the R = seq_q * group rows of that kv head (the GQA group as
// one tiny matrix product, so every K/V byte is read once per step, not once
// per query head), a partial state over its chunk: running max m, sum l and
// acc = sum_j 2^(s_j - m) v_j. All kv heads in one task because a token's
// rows of all kv heads are contiguous in the cache: one stream instead of
// kv_heads strided ones. A second pass merges the chunks of each (batch, kv head):
//   m = max_c m_c,  l = sum_c 2^(m_c - m) l_c,  acc = sum_c 2^(m_c - m) acc_c
// skipping chunks with no visible key (m_c = -inf), and writes o and lse.
//
// Per block of kBlock keys: scores with the K rows streamed from memory and
// converted in registers (one pass over each K row serves all R rows), the
// options and online softmax of online_softmax-inl.h, then P.V with the V
// rows of the block (16 KiB at head_dim_v 128 in float16: stays in L1 across
// the column chunks) streamed the same way. Meanwhile the next block's K and
// V are requested into L2 a few lines per step of both passes, so memory
// streams while the block computes (fp16, 128K tokens, 2 threads: 27.4 ->
// 24.6 ms, against the next block's K requested during the scores only).

#include "kernels/decode.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

#include "hwy/base.h"
#if HWY_ARCH_X86
#include <xmmintrin.h>  // _mm_prefetch
#endif

#include "runtime/threads.h"

#if HWY_ARCH_X86 && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QKV_DECODE_VNNI 1  // the compiler can target AVX512-VNNI for one function
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/decode.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/convert-inl.h"
#include "kernels/microkernel-inl.h"
#include "kernels/online_softmax-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr int64_t kBlock = 64;           // keys per block
constexpr int64_t kMinChunk = 256;       // keys per task at least
constexpr int kKeyGroup = 4;             // keys per pass over the q rows
constexpr int kValueRows = 4;            // rows per pass over a V block
// Rows per pass over a group of K rows: kScoreRows x kKeyGroup accumulators
// plus kKeyGroup key vectors must fit the register file.
constexpr int kScoreRows = kMaxPanelRows == 12 ? 4 : 2;

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Rows of one kv head for keys j of a block: row j starts at base[j] + offset
// (base[j]: token j's rows of all kv heads, offset: this head's).
struct HeadRows {
  const char* const* base;
  int64_t offset;
  const void* operator[](int64_t j) const { return base[j] + offset; }
};

enum PrefetchLevel { kToL1, kToL2 };
// Software prefetch of one cache line (a no-op where the target has none).
template <PrefetchLevel kLevel>
HWY_INLINE void Prefetch(const char* p) {
#if HWY_ARCH_X86
  _mm_prefetch(p, kLevel == kToL1 ? _MM_HINT_T0 : _MM_HINT_T1);
#else
  hwy::Prefetch(p);
#endif
}

// Requests the next block's K and V rows into L2 a few lines at a time,
// spread over the current block's arithmetic: memory keeps streaming while
// the block computes, where a burst would stall on the miss queue and then
// leave memory idle. Lines in order token, kv head, K row then V row.
class NextBlockPrefetch {
 public:
  NextBlockPrefetch(const AttentionProblem::TokenRows* k, const AttentionProblem::TokenRows* v,
                    int64_t tokens, int64_t kv_heads, int64_t k_lines, int64_t v_lines)
      : k_(k), v_(v), tokens_(tokens), kv_heads_(kv_heads), k_lines_(k_lines),
        row_lines_(k_lines + v_lines) {}

  int64_t lines() const { return tokens_ * kv_heads_ * row_lines_; }

  // Requests up to `count` more lines.
  HWY_INLINE void Issue(int64_t count) {
    for (; count > 0 && t_ < tokens_; --count) {
      const char* line = line_ < k_lines_
                             ? k_[t_].data + h_ * k_[t_].head_bytes + line_ * 64
                             : v_[t_].data + h_ * v_[t_].head_bytes + (line_ - k_lines_) * 64;
      Prefetch<kToL2>(line);
      if (++line_ == row_lines_) {
        line_ = 0;
        if (++h_ == kv_heads_) {
          h_ = 0;
          ++t_;
        }
      }
    }
  }

 private:
  const AttentionProblem::TokenRows* k_;
  const AttentionProblem::TokenRows* v_;
  int64_t tokens_, kv_heads_, k_lines_, row_lines_;
  int64_t t_ = 0, h_ = 0, line_ = 0;  // the next line
};

#if HWY_TARGET == HWY_SCALAR
// One lane per vector: the sums are the lanes.
template <class D>
HWY_INLINE void StoreSumsOf4(D, hn::Vec<D> a, hn::Vec<D> b, hn::Vec<D> c, hn::Vec<D> e,
                             hn::TFromD<D>* HWY_RESTRICT out) {
  out[0] = hn::GetLane(a);
  out[1] = hn::GetLane(b);
  out[2] = hn::GetLane(c);
  out[3] = hn::GetLane(e);
}
#else
// out[0..4) = the sum of the 128-bit blocks of v.
template <class D>
HWY_INLINE void StoreFoldedBlocks(D d, hn::Vec<D> v, hn::TFromD<D>* HWY_RESTRICT out) {
  if constexpr (hn::MaxLanes(d) > 4) {
    const hn::Half<D> dh;
    StoreFoldedBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)), out);
  } else {
    hn::StoreU(v, d, out);
  }
}

// Sums of four vectors a, b, c, e into out[0..4), in one fixed order per
// lane position whatever the other three vectors are (so a key's score does
// not depend on its neighbours): pairs of lanes within each 128-bit block,
// then the blocks folded by halves.
template <class D>
HWY_INLINE void StoreSumsOf4(D d, hn::Vec<D> a, hn::Vec<D> b, hn::Vec<D> c, hn::Vec<D> e,
                             hn::TFromD<D>* HWY_RESTRICT out) {
  // Per block: ab = [a0+a2, b0+b2, a1+a3, b1+b3], ce likewise; then the
  // 64-bit halves: [a, b, c, e] per block.
  const hn::Vec<D> ab = hn::Add(hn::InterleaveLower(d, a, b), hn::InterleaveUpper(d, a, b));
  const hn::Vec<D> ce = hn::Add(hn::InterleaveLower(d, c, e), hn::InterleaveUpper(d, c, e));
  const hn::Repartition<uint64_t, D> du;
  const auto ab64 = hn::BitCast(du, ab), ce64 = hn::BitCast(du, ce);
  const hn::Vec<D> sums = hn::Add(hn::BitCast(d, hn::InterleaveLower(du, ab64, ce64)),
                                  hn::BitCast(d, hn::InterleaveUpper(du, ab64, ce64)));
  StoreFoldedBlocks(d, sums, out);
}
#endif  // HWY_TARGET == HWY_SCALAR

// Scores of kKeyGroup keys for kRows rows, all of one kv head:
//   s[r * s_stride + t] = q[r] . k_t  for r < kRows, t < kKeyGroup
//   q: [kRows][head_dim] floats (pre-scaled); k_t: k_rows[t] in the cache's type.
// Each K vector is loaded and converted once for all kRows rows. A key's score
// is the same bits wherever it sits in a group (StoreSumsOf4).
template <DType kDtype, int kRows, class D>
HWY_NOINLINE void ScoreKeys(D d, const float* HWY_RESTRICT q, int64_t head_dim,
                          HeadRows k_rows, float* HWY_RESTRICT s, int64_t s_stride) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V acc[kRows][kKeyGroup];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = hn::Zero(d);
  }
  int64_t c = 0;
  for (; c + N <= head_dim; c += N) {
    V k[kKeyGroup];
    for (int t = 0; t < kKeyGroup; ++t) k[t] = LoadAsFloat<kDtype>(d, k_rows[t], c);
    for (int r = 0; r < kRows; ++r) {
      const V qr = hn::LoadU(d, q + r * head_dim + c);
      for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = hn::MulAdd(qr, k[t], acc[r][t]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    StoreSumsOf4(d, acc[r][0], acc[r][1], acc[r][2], acc[r][3], s + r * s_stride);
  }
  // Tail of a head_dim that is not a multiple of N: one element at a time.
  for (int64_t e = c; e < head_dim; ++e) {
    for (int r = 0; r < kRows; ++r) {
      for (int t = 0; t < kKeyGroup; ++t) s[r * s_stride + t] += q[r * head_dim + e] * ElementAsFloat<kDtype>(k_rows[t], e);
    }
  }
}

#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
// ScoreKeys for an int8 cache on AVX512-VNNI, in exact integer arithmetic:
// q as 16-bit fixed point, q16 = round(q / q_scale), |q16| <= 32767, the
// keys widened to int16, pairs of products summed into int32 by vpdpwssd
// (one instruction per 32 multiply-adds, no conversion to float).
//   s[r * s_stride + t] = q_scale[r] * (q16[r] . k_t)   (times the key's own
//   scale later, with the other int8 scales)
//   q16: [kRows][q_stride]; head_dim % 32 == 0 and <= 256 (the sums stay
//   below 2^31: 256 * 32767 * 128 < 2^31)
// (GCC 12 sees the undefined vector some intrinsics start from as an
// uninitialized read.)
HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR ",avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int kRows>
HWY_NOINLINE void ScoreKeysVnni(const int16_t* HWY_RESTRICT q16, int64_t q_stride,
                                const float* HWY_RESTRICT q_scale, int64_t head_dim,
                                HeadRows k_rows, float* HWY_RESTRICT s, int64_t s_stride) {
  __m512i acc[kRows][kKeyGroup];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < head_dim; c += 32) {
    __m512i k[kKeyGroup];
    for (int t = 0; t < kKeyGroup; ++t) {
      k[t] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const int8_t*>(k_rows[t]) + c)));
    }
    for (int r = 0; r < kRows; ++r) {
      const __m512i q = _mm512_loadu_si512(q16 + r * q_stride + c);
      for (int t = 0; t < kKeyGroup; ++t) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], q, k[t]);
    }
  }
  const hn::Full512<int32_t> d32;
  for (int r = 0; r < kRows; ++r) {
    HWY_ALIGN int32_t sums[4];
    StoreSumsOf4(d32, hn::Vec512<int32_t>{acc[r][0]}, hn::Vec512<int32_t>{acc[r][1]},
                 hn::Vec512<int32_t>{acc[r][2]}, hn::Vec512<int32_t>{acc[r][3]}, sums);
    for (int t = 0; t < kKeyGroup; ++t) s[r * s_stride + t] = static_cast<float>(sums[t]) * q_scale[r];
  }
}
#pragma GCC diagnostic pop
HWY_POP_ATTRIBUTES
#endif  // QKV_DECODE_VNNI && HWY_TARGET == HWY_AVX3

// acc[r][c, c + kVecs*N) = alpha_r * acc + sum_j p[r][j] * v_j[c, ...)
// (int8: p already carries the value rows' scales).
// Per key, `prefetch_per_key` lines of the next block are requested.
template <DType kDtype, int kRows, int kVecs, class D>
HWY_INLINE void ValueBlock(D d, const float* HWY_RESTRICT p, HeadRows v_rows,
                           int64_t n, int64_t c, const float* HWY_RESTRICT alpha,
                           float* HWY_RESTRICT acc, int64_t acc_stride,
                           NextBlockPrefetch& prefetch, int64_t prefetch_per_key) {
  using V = hn::Vec<D>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V o[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    const V a = hn::Set(d, alpha[r]);
    for (int v = 0; v < kVecs; ++v) o[r][v] = hn::Mul(a, hn::Load(d, acc + r * acc_stride + c + v * N));
  }
  for (int64_t j = 0; j < n; ++j) {
    prefetch.Issue(prefetch_per_key);
    V vj[kVecs];
    for (int v = 0; v < kVecs; ++v) vj[v] = LoadAsFloat<kDtype>(d, v_rows[j], c + v * N);
    for (int r = 0; r < kRows; ++r) {
      const V pr = hn::Set(d, p[r * kBlock + j]);
      for (int v = 0; v < kVecs; ++v) o[r][v] = hn::MulAdd(pr, vj[v], o[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) hn::Store(o[r][v], d, acc + r * acc_stride + c + v * N);
  }
}

template <int kMax, class F>
HWY_INLINE void WithRows(int rows, F&& f) {
  switch (rows) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    default:
      if constexpr (kMax > 4) {
        switch (rows) {
          case 5: f(std::integral_constant<int, 5>()); break;
          case 6: f(std::integral_constant<int, 6>()); break;
          case 7: f(std::integral_constant<int, 7>()); break;
          default: f(std::integral_constant<int, 8>()); break;
        }
      }
      break;
  }
}

struct Layout {
  int64_t rows = 0;     // seq_q * group: rows of one kv head
  int64_t dv_pad = 0;   // head_dim_v rounded up to N
  int64_t splits = 0;   // chunks per (batch, kv head)
  int64_t chunk = 0;    // keys per chunk
  int64_t rows_pad = 0; // rows rounded up to N
  int64_t state = 0;    // floats of one task's partial state (a multiple of N):
                        // acc [rows][dv_pad], m [rows_pad], l [rows_pad]
};

// Per-thread scratch. Per kv head h: score rows s[h * rows + r][kBlock] and
// the block's int8 scales at [h * kBlock + j]; per key j of the block, where
// its token's K and V rows start.
struct DecodeScratch {
  hwy::AlignedFreeUniquePtr<float[]> q, s, alpha, k_scale, v_scale, v_buf, q16_scale;
  hwy::AlignedFreeUniquePtr<int16_t[]> q16;  // ScoreKeysVnni's q rows
  hwy::AlignedFreeUniquePtr<int16_t[]> p16;  // ValueBlockVnni's weights, [rows][kBlock]
  hwy::AlignedFreeUniquePtr<float[]> p16_scale;
  hwy::AlignedFreeUniquePtr<const char*[]> k_tokens, v_tokens, widened;
  hwy::AlignedFreeUniquePtr<AttentionProblem::TokenRows[]> k_token, v_token, k_next, v_next;
  hwy::AlignedFreeUniquePtr<TileRow[]> rows;
  DecodeScratch(const AttentionProblem& p, const Layout& g)
      : q(hwy::AllocateAligned<float>(p.kv_heads * g.rows * p.head_dim)),
        s(hwy::AllocateAligned<float>(p.kv_heads * g.rows * kBlock)),
        alpha(hwy::AllocateAligned<float>(g.rows)),
        k_scale(hwy::AllocateAligned<float>(p.kv_heads * kBlock)),
        v_scale(hwy::AllocateAligned<float>(p.kv_heads * kBlock)),
        v_buf(hwy::AllocateAligned<float>(kBlock * g.dv_pad)),
        q16_scale(hwy::AllocateAligned<float>(p.kv_heads * g.rows)),
        q16(hwy::AllocateAligned<int16_t>(p.kv_heads * g.rows * p.head_dim)),
        p16(hwy::AllocateAligned<int16_t>(g.rows * kBlock)),
        p16_scale(hwy::AllocateAligned<float>(g.rows)),
        k_tokens(hwy::AllocateAligned<const char*>(kBlock)),
        v_tokens(hwy::AllocateAligned<const char*>(kBlock)),
        widened(hwy::AllocateAligned<const char*>(kBlock)),
        k_token(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        v_token(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        k_next(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        v_next(hwy::AllocateAligned<AttentionProblem::TokenRows>(kBlock)),
        rows(hwy::AllocateAligned<TileRow>(p.kv_heads * g.rows)) {}
};

// acc = alpha * acc + P.V over the block's n keys, rows in groups of
// kValueRows, columns in passes of up to 4 vectors (fewer passes over V and
// fewer broadcasts of P per key).
//   p: [rows][kBlock] weights; v_rows: the block's n value rows of one kv head.
// The number of ValueBlock passes AccumulateValues makes over a block's keys.
int64_t ValuePasses(const Layout& g, int64_t lanes) {
  int64_t columns = 0, c = 0;
  if constexpr (kMaxPanelRows == 12) {
    for (; c + 4 * lanes <= g.dv_pad; c += 4 * lanes) ++columns;
  }
  for (; c + 2 * lanes <= g.dv_pad; c += 2 * lanes) ++columns;
  if (c < g.dv_pad) ++columns;
  return columns * ((g.rows + kValueRows - 1) / kValueRows);
}

template <DType kDtype>
HWY_NOINLINE void AccumulateValues(const Layout& g, int64_t n, const float* HWY_RESTRICT p,
                      HeadRows v_rows, const float* HWY_RESTRICT alpha_rows,
                      float* HWY_RESTRICT acc, NextBlockPrefetch& prefetch,
                      int64_t prefetch_per_key) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r0 = 0; r0 < g.rows; r0 += kValueRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kValueRows, g.rows - r0));
    const float* pw = p + r0 * kBlock;
    const float* alpha = alpha_rows + r0;
    float* o = acc + r0 * g.dv_pad;
    WithRows<kValueRows>(rows, [&](auto kRows) {
      int64_t c = 0;
      if constexpr (kMaxPanelRows == 12) {  // 32 vector registers: 16 accumulators fit
        for (; c + 4 * N <= g.dv_pad; c += 4 * N) {
          ValueBlock<kDtype, kRows(), 4>(d, pw, v_rows, n, c, alpha, o, g.dv_pad, prefetch,
                                         prefetch_per_key);
        }
      }
      for (; c + 2 * N <= g.dv_pad; c += 2 * N) {
        ValueBlock<kDtype, kRows(), 2>(d, pw, v_rows, n, c, alpha, o, g.dv_pad, prefetch,
                                       prefetch_per_key);
      }
      if (c < g.dv_pad) {
        ValueBlock<kDtype, kRows(), 1>(d, pw, v_rows, n, c, alpha, o, g.dv_pad, prefetch,
                                       prefetch_per_key);
      }
    });
  }
}

#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
// out = round(x / scale) as int16 with scale = max|x| / 32767 over x[0, n)
// (0 for a zero row; the largest becomes +-32767), n % 16 == 0: the 16-bit
// fixed point of the VNNI paths (q rows; a block's weights, x >= 0).
void QuantizeRow16(const float* HWY_RESTRICT x, int64_t n, int16_t* HWY_RESTRICT out,
                   float& scale) {
  const hn::Full512<float> d;
  const hn::Rebind<int16_t, decltype(d)> d16;
  auto max_v = hn::Zero(d);
  for (int64_t i = 0; i < n; i += 16) max_v = hn::Max(max_v, hn::Abs(hn::LoadU(d, x + i)));
  const float max_abs = hn::GetLane(hn::MaxOfLanes(d, max_v));
  scale = max_abs / 32767.0f;
  const auto inv = hn::Set(d, max_abs > 0 ? 32767.0f / max_abs : 0.0f);
  for (int64_t i = 0; i < n; i += 16) {  // round to nearest even; |.| <= 32767
    hn::StoreU(hn::DemoteTo(d16, hn::NearestInt(hn::Mul(hn::LoadU(d, x + i), inv))), d16, out + i);
  }
}

// AccumulateValues for an int8 cache on AVX512-VNNI, in integer arithmetic
// per block: each row's weights (the value scales folded in) as 16-bit fixed
// point p16 = round(p / p_scale), p_scale = max p / 32767 (one per row and
// block), V rows of a key pair interleaved as int16 pairs, vpdpwssd summing
// p16_j v_j + p16_j+1 v_j+1 into int32 per column (exact: at most 64 * 32767
// * 128 per block); then acc = alpha * acc + p_scale * sum, in float.
//   p16: [rows][kBlock], zero past n (QuantizeRow16 of the weights, which
//   are 0 past the block's keys; for an odd n the key after the last is the
//   last's row again, v_rows has it); head_dim_v % 64 == 0
HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR ",avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int kRows>
HWY_INLINE void ValueBlockVnni(const int16_t* HWY_RESTRICT p16, const float* HWY_RESTRICT p_scale,
                               HeadRows v_rows, int64_t n, int64_t c,
                               const float* HWY_RESTRICT alpha, float* HWY_RESTRICT acc,
                               int64_t acc_stride, NextBlockPrefetch& prefetch,
                               int64_t prefetch_per_key) {
  // acc_int[r][i], i = 0..3: columns c + {0-7, 16-23}, {32-39, 48-55},
  // {8-15, 24-31}, {40-47, 56-63} (the unpack order), int32.
  __m512i sum[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int i = 0; i < 4; ++i) sum[r][i] = _mm512_setzero_si512();
  }
  for (int64_t j = 0; j < n; j += 2) {
    prefetch.Issue(2 * prefetch_per_key);
    const __m512i a = _mm512_loadu_si512(static_cast<const int8_t*>(v_rows[j]) + c);
    const __m512i b = _mm512_loadu_si512(static_cast<const int8_t*>(v_rows[j + 1]) + c);
    const __m512i lo = _mm512_unpacklo_epi8(a, b), hi = _mm512_unpackhi_epi8(a, b);
    const __m512i v[4] = {_mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo)),
                          _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(lo, 1)),
                          _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi)),
                          _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(hi, 1))};
    for (int r = 0; r < kRows; ++r) {
      int32_t pair;
      std::memcpy(&pair, p16 + r * kBlock + j, sizeof(pair));
      const __m512i pr = _mm512_set1_epi32(pair);
      for (int i = 0; i < 4; ++i) sum[r][i] = _mm512_dpwssd_epi32(sum[r][i], pr, v[i]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]), ps = _mm512_set1_ps(p_scale[r]);
    float* o = acc + r * acc_stride + c;
    // Natural column order: 16 columns from the 128-bit lanes of two sums.
    const __m512i natural[4] = {_mm512_shuffle_i32x4(sum[r][0], sum[r][2], 0x44),
                                _mm512_shuffle_i32x4(sum[r][0], sum[r][2], 0xEE),
                                _mm512_shuffle_i32x4(sum[r][1], sum[r][3], 0x44),
                                _mm512_shuffle_i32x4(sum[r][1], sum[r][3], 0xEE)};
    for (int i = 0; i < 4; ++i) {
      const __m512 old = _mm512_mul_ps(a, _mm512_loadu_ps(o + 16 * i));
      _mm512_storeu_ps(o + 16 * i, _mm512_fmadd_ps(ps, _mm512_cvtepi32_ps(natural[i]), old));
    }
  }
}

// acc = alpha * acc + P.V over the block's n keys for every row, rows in
// groups of kValueRows, columns in passes of 64.
HWY_NOINLINE void AccumulateValuesVnni(const Layout& g, int64_t n, const int16_t* HWY_RESTRICT p16,
                                       const float* HWY_RESTRICT p_scale, HeadRows v_rows,
                                       const float* HWY_RESTRICT alpha_rows,
                                       float* HWY_RESTRICT acc, NextBlockPrefetch& prefetch,
                                       int64_t prefetch_per_key) {
  for (int64_t r0 = 0; r0 < g.rows; r0 += kValueRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kValueRows, g.rows - r0));
    WithRows<kValueRows>(rows, [&](auto kRows) {
      for (int64_t c = 0; c < g.dv_pad; c += 64) {
        ValueBlockVnni<kRows()>(p16 + r0 * kBlock, p_scale + r0, v_rows, n, c, alpha_rows + r0,
                                acc + r0 * g.dv_pad, g.dv_pad, prefetch, prefetch_per_key);
      }
    });
  }
}
#pragma GCC diagnostic pop
HWY_POP_ATTRIBUTES
#endif  // QKV_DECODE_VNNI && HWY_TARGET == HWY_AVX3

// One task: keys [j0, j1) of batch b for every kv head, into the partial
// states of its kv heads (state + kvh * g.state, see Layout). All heads per
// task because a token's K (and V) rows of all kv heads are contiguous: the
// task streams one contiguous region instead of kv_heads strided ones.
template <DType kDtype>
void RunChunk(const AttentionProblem& p, const Layout& g, int64_t b, int64_t j0, int64_t j1,
              DecodeScratch& w, float* HWY_RESTRICT states) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const ScoreUnits units(p);
  const size_t q_elem = dtype_size(p.dtype);
  const int64_t elem_kv = static_cast<int64_t>(dtype_size(p.kv_dtype));
#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
  const bool vnni = kDtype == DType::kInt8 && p.head_dim % 32 == 0 && p.head_dim <= 256 &&
                    decode_vnni_available();
  const bool vnni_values = vnni && p.head_dim_v % 64 == 0;
#else
  [[maybe_unused]] constexpr bool vnni = false;
#endif

  // Rows of every kv head; the visible interval depends on the query only.
  int64_t key_begin = j1, key_end = j0;
  for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
    float* state = states + kvh * g.state;
    float* m = state + g.rows * g.dv_pad;
    float* l = m + g.rows_pad;
    TileRow* rows = w.rows.get() + kvh * g.rows;
    const KeyRange keys = SetTileRows(p, b, kvh, 0, g.rows, rows);
    if (keys.begin < keys.end) {
      key_begin = std::min(key_begin, std::max(keys.begin, j0));
      key_end = std::max(key_end, std::min(keys.end, j1));
    }
    for (int64_t r = 0; r < g.rows; ++r) {
      const TileRow& row = rows[r];
      const int64_t at = kvh * g.rows + r;
      LoadRowScaled(p.dtype,
                    static_cast<const char*>(p.q) + p.q_stride.offset(b, row.query, row.head) * q_elem,
                    p.head_dim, units.q_scale, w.q.get() + at * p.head_dim);
#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
      if (vnni) {
        QuantizeRow16(w.q.get() + at * p.head_dim, p.head_dim, w.q16.get() + at * p.head_dim,
                      w.q16_scale[at]);
      }
#endif
      m[r] = -std::numeric_limits<float>::infinity();
      l[r] = 0.0f;
    }
    std::fill(state, state + g.rows * g.dv_pad, 0.0f);
  }

  const bool plain = p.softcap == 0 && !p.has_alibi() && !p.has_mask();
  for (int64_t k0 = key_begin; k0 < key_end; k0 += kBlock) {
    const int64_t n = std::min(kBlock, key_end - k0);
    const int64_t n_pad = RoundUp(n, N);
    // The block's tokens (the last key stands in for the keys that complete
    // the last group of kKeyGroup: their scores become -inf with the padding),
    // and the next block's, whose K and V are requested into L2 while this
    // block computes: half during the scores, half during P.V.
    const int64_t n_next = std::min(kBlock, key_end - (k0 + n));
    p.tokens(b, k0, n, w.k_token.get(), w.v_token.get());
    if (n_next > 0) p.tokens(b, k0 + n, n_next, w.k_next.get(), w.v_next.get());
    const int64_t k_lines = (p.head_dim * elem_kv + 63) / 64, v_lines = (p.head_dim_v * elem_kv + 63) / 64;
    NextBlockPrefetch next(w.k_next.get(), w.v_next.get(), n_next, p.kv_heads, k_lines, v_lines);
    const int64_t score_steps = (n + kKeyGroup - 1) / kKeyGroup * p.kv_heads;
    const int64_t per_score_step = (next.lines() / 2 + score_steps - 1) / score_steps;
    const int64_t value_keys = p.kv_heads * ValuePasses(g, N) * n;
    const int64_t per_value_key = (next.lines() - next.lines() / 2 + value_keys - 1) / value_keys;
    const int64_t k_head_bytes = w.k_token[0].head_bytes, v_head_bytes = w.v_token[0].head_bytes;
    for (int64_t j = 0; j < RoundUp(n_pad, kKeyGroup); ++j) {
      const AttentionProblem::TokenRows& kt = w.k_token[std::min(j, n - 1)];
      const AttentionProblem::TokenRows& vt = w.v_token[std::min(j, n - 1)];
      w.k_tokens[j] = kt.data;
      w.v_tokens[j] = vt.data;
      if constexpr (kDtype == DType::kInt8) {
        for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
          w.k_scale[kvh * kBlock + j] = kt.row(kvh).scale;
          w.v_scale[kvh * kBlock + j] = vt.row(kvh).scale;
        }
      }
    }
    // 1. Scores, token-major: a token's K rows of all kv heads are adjacent
    //    in the cache, so the block's K is read as one forward stream. The
    //    same pass moves this block's V rows to L1, in the order P.V reads
    //    them.
    for (int64_t j = 0; j < n; j += kKeyGroup) {
      for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
        for (int t = 0; t < kKeyGroup; ++t) {
          const char* v = w.v_tokens[j + t] + kvh * v_head_bytes;
          for (int64_t line = 0; line < v_lines; ++line) Prefetch<kToL1>(v + line * 64);
        }
        next.Issue(per_score_step);
        for (int64_t r0 = 0; r0 < g.rows; r0 += kScoreRows) {
          const int nr = static_cast<int>(std::min<int64_t>(kScoreRows, g.rows - r0));
          const int64_t row = kvh * g.rows + r0;
          const HeadRows k_rows{w.k_tokens.get() + j, kvh * k_head_bytes};
          WithRows<kScoreRows>(nr, [&](auto kRows) {
#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
            if (vnni) {
              ScoreKeysVnni<kRows()>(w.q16.get() + row * p.head_dim, p.head_dim,
                                     w.q16_scale.get() + row, p.head_dim, k_rows,
                                     w.s.get() + row * kBlock + j, kBlock);
              return;
            }
#endif
            ScoreKeys<kDtype, kRows()>(d, w.q.get() + row * p.head_dim, p.head_dim, k_rows,
                                       w.s.get() + row * kBlock + j, kBlock);
          });
        }
      }
    }
    // 2. Per kv head: options and online softmax per row, then P.V.
    for (int64_t kvh = 0; kvh < p.kv_heads; ++kvh) {
      float* state = states + kvh * g.state;
      float* acc = state;
      float* m = state + g.rows * g.dv_pad;
      float* l = m + g.rows_pad;
      const TileRow* rows = w.rows.get() + kvh * g.rows;
      float* s = w.s.get() + kvh * g.rows * kBlock;
      const float* k_scale = w.k_scale.get() + kvh * kBlock;
      const float* v_scale = w.v_scale.get() + kvh * kBlock;
      for (int64_t r = 0; r < g.rows; ++r) {
        float* sr = s + r * kBlock;
        if constexpr (kDtype == DType::kInt8) {
          for (int64_t j = 0; j < n; j += N) {
            hn::Store(hn::Mul(hn::Load(d, sr + j), hn::LoadU(d, k_scale + j)), d, sr + j);
          }
        }
        const bool full = rows[r].lo <= k0 && rows[r].hi >= k0 + n - 1;
        if (!plain || !full || n < n_pad) ApplyScoreOptions(d, p, units, rows[r], k0, n, n_pad, !full, sr);
        w.alpha[r] = OnlineSoftmaxRow(d, units, sr, n_pad, m[r], l[r]);
        if constexpr (kDtype == DType::kInt8) {
          for (int64_t j = 0; j < n; j += N) {  // l is already summed
            hn::Store(hn::Mul(hn::Load(d, sr + j), hn::LoadU(d, v_scale + j)), d, sr + j);
          }
        }
      }
      const HeadRows v_rows{w.v_tokens.get(), kvh * v_head_bytes};
#if defined(QKV_DECODE_VNNI) && HWY_TARGET == HWY_AVX3
      if (vnni_values) {
        for (int64_t r = 0; r < g.rows; ++r) {
          QuantizeRow16(s + r * kBlock, n_pad, w.p16.get() + r * kBlock, w.p16_scale[r]);
        }
        AccumulateValuesVnni(g, n, w.p16.get(), w.p16_scale.get(), v_rows, w.alpha.get(), acc, next,
                             per_value_key);
        continue;
      }
#endif
      if (p.head_dim_v % N == 0) {
        AccumulateValues<kDtype>(g, n, s, v_rows, w.alpha.get(), acc, next, per_value_key);
      } else {
        // Rows that do not fill whole vectors: widen the block's V rows into a
        // zero-padded float buffer first, so no load runs past a row.
        for (int64_t j = 0; j < n; ++j) {
          float* dst = w.v_buf.get() + j * g.dv_pad;
          LoadRowScaled(p.kv_dtype, v_rows[j], p.head_dim_v, 1.0f, dst);  // int8: scale in P
          std::fill(dst + p.head_dim_v, dst + g.dv_pad, 0.0f);
          w.widened[j] = reinterpret_cast<const char*>(dst);
        }
        AccumulateValues<DType::kFloat32>(g, n, s, HeadRows{w.widened.get(), 0}, w.alpha.get(), acc,
                                          next, per_value_key);
      }
    }
    next.Issue(next.lines());  // what the rounding of the shares left
  }
}

// Merges the splits of (b, kvh) and writes o and lse.
// states: the first chunk's state of (b, kvh); chunk c's is at c * stride.
void MergeAndStore(const AttentionProblem& p, const Layout& g, int64_t b, int64_t kvh,
                   const float* HWY_RESTRICT states, int64_t stride, float* HWY_RESTRICT merged) {
  const hn::ScalableTag<float> d;
  const ScoreUnits units(p);
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t r = 0; r < g.rows; ++r) {
    float m = -std::numeric_limits<float>::infinity();
    const int64_t m_at = g.rows * g.dv_pad + r, l_at = m_at + g.rows_pad;
    for (int64_t c = 0; c < g.splits; ++c) m = std::max(m, states[c * stride + m_at]);
    float l = 0.0f;
    std::fill(merged, merged + g.dv_pad, 0.0f);
    if (m != -std::numeric_limits<float>::infinity()) {
      for (int64_t c = 0; c < g.splits; ++c) {
        const float* st = states + c * stride;
        if (st[l_at] == 0.0f) continue;  // no visible key in this chunk
        const float w = std::exp2((st[m_at] - m) * units.to_log2);
        l += w * st[l_at];
        const float* a = st + r * g.dv_pad;
        const auto vw = hn::Set(d, w);
        for (int64_t i = 0; i < g.dv_pad; i += N) {
          hn::Store(hn::MulAdd(vw, hn::Load(d, a + i), hn::Load(d, merged + i)), d, merged + i);
        }
      }
    }
    TileRow row;
    row.batch = b;
    row.query = r / p.group;
    row.head = kvh * p.group + r % p.group;
    StoreFinalRow(p, units, row, m, l, merged);
  }
}

}  // namespace

void DecodeForwardImpl(const AttentionProblem& p, int num_splits) {
  if (p.batch == 0 || p.seq_q == 0) return;
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  Layout g;
  g.rows = p.seq_q * p.group;
  g.dv_pad = RoundUp(p.head_dim_v, N);
  g.rows_pad = RoundUp(g.rows, N);
  g.state = g.rows * g.dv_pad + 2 * g.rows_pad;
  int64_t max_keys = 0;
  for (int64_t b = 0; b < p.batch; ++b) max_keys = std::max(max_keys, p.keys(b));
  const int64_t pairs = p.batch * p.kv_heads;
  if (num_splits > 0) {
    g.splits = num_splits;
  } else {
    // Enough chunks for 4 tasks per thread, none shorter than kMinChunk keys.
    const int64_t want = (4 * p.num_threads + p.batch - 1) / p.batch;
    g.splits = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, max_keys / kMinChunk));
  }
  g.chunk = RoundUp(std::max<int64_t>(1, (max_keys + g.splits - 1) / g.splits), kBlock);
  // states[((b * splits + chunk) * kv_heads + kvh) * g.state]
  auto states = hwy::AllocateAligned<float>(pairs * g.splits * g.state);

#pragma omp parallel num_threads(p.num_threads)
  {
    ScopedFlushDenormals flush_denormals;
    DecodeScratch scratch(p, g);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < p.batch * g.splits; ++t) {
      const int64_t b = t / g.splits;
      const int64_t j0 = std::min((t % g.splits) * g.chunk, p.keys(b));
      const int64_t j1 = std::min(j0 + g.chunk, p.keys(b));
      float* state = states.get() + t * p.kv_heads * g.state;
      switch (p.kv_dtype) {
        case DType::kFloat16: RunChunk<DType::kFloat16>(p, g, b, j0, j1, scratch, state); break;
        case DType::kBFloat16: RunChunk<DType::kBFloat16>(p, g, b, j0, j1, scratch, state); break;
        case DType::kInt8: RunChunk<DType::kInt8>(p, g, b, j0, j1, scratch, state); break;
        default: RunChunk<DType::kFloat32>(p, g, b, j0, j1, scratch, state); break;
      }
    }
    auto merged = hwy::AllocateAligned<float>(g.dv_pad);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t b = pair / p.kv_heads, kvh = pair % p.kv_heads;
      MergeAndStore(p, g, b, kvh, states.get() + (b * g.splits * p.kv_heads + kvh) * g.state,
                    p.kv_heads * g.state, merged.get());
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {
HWY_EXPORT(DecodeForwardImpl);

namespace {
std::atomic<bool> vnni_enabled{true};
}  // namespace

bool decode_vnni_available() {
#if defined(QKV_DECODE_VNNI)
  static const bool cpu = __builtin_cpu_supports("avx512vnni");
  return cpu && vnni_enabled.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void set_decode_vnni_enabled(bool enabled) { vnni_enabled.store(enabled, std::memory_order_relaxed); }
void decode_forward(const AttentionProblem& problem, int num_splits) noexcept {
  HWY_DYNAMIC_DISPATCH(DecodeForwardImpl)(problem, num_splits);
}
}  // namespace qkv::internal
#endif
