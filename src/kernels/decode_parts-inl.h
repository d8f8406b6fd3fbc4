// Building blocks of the decode kernel (decode.cpp): block constants, a
// block's rows of one kv head, the next block's prefetch, the sums of four
// vectors, the row dispatch and the task layout. Per-target code, included
// by decode.cpp and decode_fixed-inl.h.

#if defined(QKV_KERNELS_DECODE_PARTS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QKV_KERNELS_DECODE_PARTS_INL_H_
#undef QKV_KERNELS_DECODE_PARTS_INL_H_
#else
#define QKV_KERNELS_DECODE_PARTS_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "api/problem.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "kernels/microkernel-inl.h"
#include "kernels/transpose-inl.h"
#if HWY_ARCH_X86
#include <xmmintrin.h>  // _mm_prefetch
#endif

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace decode_parts {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr int64_t kBlock = 64;  // keys per block
inline constexpr int kKeyGroup = 4;    // keys per pass over the q rows
inline constexpr int kValueRows = 4;   // rows per pass over a V block
// Keys of a P.V pass per batch of next-block prefetch requests: a request
// per key made the pass's scalar bookkeeping (on the ports the FMAs use)
// as long as its arithmetic.
inline constexpr int64_t kKeysPerRequest = 8;
static_assert(kBlock % kKeysPerRequest == 0, "a block's keys split into whole batches");
// The same for the int8 fixed-point P.V (ValueBlockFixed): 16 keys per batch (2
// threads, 32/8 heads, medians of alternating rounds: 4K tokens 0.241-0.247 ->
// 0.230-0.239 ms, 32K 1.72-1.74 -> 1.69-1.71 in three series of four (the
// fourth in one of the machine's slow phases), 128K and 1M the same; 32 keys
// no better; 16 for the float paths made float16 2.5% slower at 32K, so they
// keep 8). On AVX2, 8 or 16 the same (32K and 128K tokens, 2 threads).
inline constexpr int64_t kKeysPerRequestFixed = 16;
static_assert(kKeysPerRequestFixed % 2 == 0, "ValueBlockFixed takes keys in pairs within a batch");
static_assert(kBlock % kKeysPerRequestFixed == 0, "a block's keys split into whole batches");
// Rows per call over a group of K rows (ScoreKeys: kScoreRows x kKeyGroup
// accumulators with 32 vector registers, kScoreRows x 2 twice with 16).
inline constexpr int kScoreRows = 4;

// Rows of one kv head for keys j of a block: row j starts at base[j] + offset
// (base[j]: token j's rows of all kv heads, offset: this head's).
struct HeadRows {
  const char* const* base;
  int64_t offset;
  const void* operator[](int64_t j) const { return base[j] + offset; }
};

// Software prefetch of one cache line into L2 (x86 `prefetcht1`; on other
// architectures the compiler's hint of the same locality, e.g. 64-bit Arm's
// `prfm pldl2keep`).
HWY_INLINE void PrefetchToL2(const char* p) {
#if HWY_ARCH_X86
  _mm_prefetch(p, _MM_HINT_T1);
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// A byte range [begin, end) of the cache.
struct Span {
  const char* begin;
  const char* end;
};

// Requests the next block's K and V rows into L2 a few lines at a time,
// spread over the current block's arithmetic: memory keeps streaming while
// the block computes, where a burst would stall on the miss queue and then
// leave memory idle. The rows become spans of adjacent bytes first (in a
// contiguous cache the block's K is one span and its V another; a page
// boundary or strided heads start a new one), so a request is a pointer
// step, not an address computed per (token, kv head, line). K and V lines
// alternate: both streams advance together (K first, then V, measured 4-5%
// slower at 128K tokens).
class NextBlockPrefetch {
 public:
  // spans: room for tokens * kv_heads entries each; adjacent: what
  // AttentionProblem::tokens returned for these tokens (then one span each).
  NextBlockPrefetch(const AttentionProblem::TokenRows* k, const AttentionProblem::TokenRows* v,
                    int64_t tokens, bool adjacent, int64_t kv_heads, int64_t k_row_bytes,
                    int64_t v_row_bytes, Span* k_spans, Span* v_spans)
      : k_(k, tokens, adjacent, kv_heads, k_row_bytes, k_spans),
        v_(v, tokens, adjacent, kv_heads, v_row_bytes, v_spans) {}

  int64_t lines() const { return k_.lines + v_.lines; }

  // Requests up to `count` more lines, half from K and half from V (all
  // from one when the other is done).
  HWY_INLINE void Issue(int64_t count) {
    const int64_t from_v = v_.Issue(count / 2);
    const int64_t from_k = k_.Issue(count - from_v);
    v_.Issue(count - from_v - from_k);
  }

 private:
  // The lines of one tensor's rows: spans[0, count), cur the next line.
  struct Stream {
    Span* spans;
    int64_t count = 0, at = 0, lines = 0;
    const char* cur = nullptr;

    // The rows of every token and kv head, adjacent ones merged (one run
    // when `adjacent`: merging them token by token was 2.6-2.7% of a
    // 32K-token int8 step's samples).
    Stream(const AttentionProblem::TokenRows* t, int64_t tokens, bool adjacent, int64_t kv_heads,
           int64_t row_bytes, Span* out)
        : spans(out) {
      if (adjacent && tokens > 0) {
        spans[count++] = {t[0].data, t[0].data + tokens * kv_heads * row_bytes};
      } else {
        const bool heads_adjacent = tokens > 0 && t[0].head_bytes == row_bytes;
        const int64_t runs = heads_adjacent ? 1 : kv_heads;
        const int64_t run_bytes = heads_adjacent ? kv_heads * row_bytes : row_bytes;
        for (int64_t i = 0; i < tokens; ++i) {
          for (int64_t h = 0; h < runs; ++h) {
            const char* b = t[i].data + h * t[i].head_bytes;
            if (count > 0 && spans[count - 1].end == b) {
              spans[count - 1].end = b + run_bytes;
            } else {
              spans[count++] = {b, b + run_bytes};
            }
          }
        }
      }
      for (int64_t i = 0; i < count; ++i) {  // from the line holding begin
        const uintptr_t aligned = reinterpret_cast<uintptr_t>(spans[i].begin) & ~uintptr_t{63};
        spans[i].begin = reinterpret_cast<const char*>(aligned);
        lines += static_cast<int64_t>((reinterpret_cast<uintptr_t>(spans[i].end) - aligned + 63) / 64);
      }
      if (count > 0) cur = spans[0].begin;
    }
    // Requests the m lines from c on. (Four requests per loop step: a
    // request and its loop's counting were 5 instructions, ~9% of a float16
    // step's on AVX2.)
    static HWY_INLINE void Request(const char* c, int64_t m) {
#pragma GCC unroll 4
      for (int64_t i = 0; i < m; ++i) PrefetchToL2(c + 64 * i);
    }
    // Requests up to n lines; returns how many it did.
    HWY_INLINE int64_t Issue(int64_t n) {
      const char* c = cur;  // a local: the prefetches let the compiler keep it in a register
      // The usual call: a few lines, all inside the current span (the loop
      // below cost ~60 instructions per call, for one to three requests).
      if (at < count && c + 64 * n < spans[at].end) {
        Request(c, n);
        cur = c + 64 * n;
        return n;
      }
      int64_t done = 0;
      while (done < n && at < count) {
        const char* end = spans[at].end;
        const int64_t m = std::min<int64_t>(n - done, (end - c + 63) / 64);
        Request(c, m);
        c += 64 * m;
        done += m;
        if (c >= end && ++at < count) c = spans[at].begin;
      }
      cur = c;
      return done;
    }
  };

  Stream k_, v_;
};

// The int8 scales of a block's keys per kv head, as the kernels read them:
//   out[h * kBlock + j] = the scale of key min(j, n - 1), kv head h, j < n_keys
// (keys past n stand in for the padding). When the keys lie back to back
// (`adjacent`, from AttentionProblem::tokens: their scales are [token][kv
// head] floats) and kv_heads is a multiple of 8, 16 keys (AVX2: 8) x 8 kv
// heads at a time are turned in registers; key by key otherwise. Key by key
// always, this was 6% of an int8 step (AVX-512, 32K tokens, one thread) and
// 2.8% of an AVX2 step's instructions; gathers (16 keys of one kv head per
// instruction) were as slow; checking the scales' spacing key by key here,
// about 1%.
//   t: the block's n tokens; n_keys <= kBlock
template <class D>
HWY_INLINE void BlockScales(D, const AttentionProblem::TokenRows* HWY_RESTRICT t, int64_t n,
                            bool adjacent, int64_t n_keys, int64_t kv_heads,
                            float* HWY_RESTRICT out) {
  int64_t j0 = 0;  // keys below j0 are done
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX2
  const float* base = t[0].scales;
  const bool even = adjacent && base != nullptr && kv_heads % 8 == 0;
  constexpr int64_t kKeys = HWY_TARGET == HWY_AVX3 ? 16 : 8;
  for (; even && j0 + kKeys <= n; j0 += kKeys) {
    for (int64_t h0 = 0; h0 < kv_heads; h0 += 8) {
      const int32_t* from = reinterpret_cast<const int32_t*>(base + j0 * kv_heads + h0);
#if HWY_TARGET == HWY_AVX3
      __m512i col[8];
      FirstColumns16x8(from, col, kv_heads);
      for (int c = 0; c < 8; ++c) _mm512_storeu_si512(out + (h0 + c) * kBlock + j0, col[c]);
#else
      __m256i col[8];
      Columns8x8(from, col, kv_heads);
      for (int c = 0; c < 8; ++c) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (h0 + c) * kBlock + j0), col[c]);
      }
#endif
    }
  }
#else
  (void)adjacent;
#endif
  for (int64_t j = j0; j < n_keys; ++j) {
    const AttentionProblem::TokenRows& key = t[std::min(j, n - 1)];
    for (int64_t h = 0; h < kv_heads; ++h) out[h * kBlock + j] = key.row(h).scale;
  }
}

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
  int64_t block = 0;    // keys per block: kBlock, or 32 or 16 where two blocks'
                        // K and V would crowd the L2 or the cache streams from
                        // memory (decode_block_keys)
  int64_t rows_pad = 0; // rows rounded up to N
  int64_t state = 0;    // floats of one task's partial state (a multiple of N):
                        // acc [rows][dv_pad], m [rows_pad], l [rows_pad]
};

}  // namespace decode_parts
}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#endif  // QKV_KERNELS_DECODE_PARTS_INL_H_
