// C = A.B (+ bias): cache-blocked, packed, register-blocked, OpenMP-threaded.
//
// Loop order (BLIS-like). A task is C[task rows, block_n columns]:
//   for each depth block [p0, p0 + block_k):
//     1. pack B[p0.., task columns] as panels [block_n / 2N][block_k][2N]
//        (float32; bfloat16 is widened here, so one micro-kernel serves both)
//     for each chunk of block_m task rows:
//       2. pack A[chunk rows, p0..] as panels [block_m / R][block_k][R]
//       3. for each B panel (block_k x 2N floats: stays in L1)
//            for each A panel (R rows, from L2)
//              C[R x 2N] (+)= A panel . B panel      (MatmulPanel)
// The first depth block starts from the bias (or 0); later ones accumulate
// into C.
//
// Sizes: block_k = 256 keeps one B panel at 256 * 32 * 4 = 32 KiB (AVX-512;
// 16 KiB on AVX2) in a 48 KiB L1 while R rows of A are broadcast against it;
// the packed B block (256 x 512 floats = 512 KiB) and A chunk (96 x 256 = 96
// KiB) stay in L2. Each task packs its B block once per depth block, so B
// (the weights, in a layer: the larger operand) is read once per row split;
// rows are split only as far as needed for 2 tasks per thread. A is read
// once per column block (ceil(n / 512) times), from L3 when it fits there.
// Packing costs about 1 / (2 * task rows) of the FMAs for B and 1 / (2 * 512)
// for A, plus its memory stalls, which PrefetchRows overlaps.
//
// With few rows (decode, m = 1) the column blocks alone give the threads
// work and B streams from memory once.

#include "layers/matmul.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "runtime/half.h"
#include "runtime/threads.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "layers/matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "kernels/convert-inl.h"
#include "kernels/microkernel-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qkv::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr int64_t kDefaultBlockM = 96;
constexpr int64_t kDefaultBlockN = 512;
constexpr int64_t kDefaultBlockK = 256;
// Below this many FMAs one thread is faster than waking a team (~10 us).
constexpr double kMinParallelFmas = 1 << 19;

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }

// c[r][0, 2N) = start[r] + sum_{k < depth} a[k][r] * b[k][0, 2N) for r < kRows,
// start[r] = c[r] when accumulating, else init[0, 2N) (the bias) or 0.
//   a: [depth, kMaxPanelRows] packed A panel (rows >= kRows unused)
//   b: [depth, 2N] packed B panel, aligned
//   c: [kRows, ldc]
// Register use as the flash micro-kernels (microkernel-inl.h): kRows x 2
// accumulators, 2 loads and 1 broadcast per k step; unlike QKPanel it
// accumulates into C at any row stride.
template <int kRows, class D>
HWY_INLINE void MatmulPanel(D d, const float* HWY_RESTRICT a, const float* HWY_RESTRICT b,
                            int64_t depth, const float* HWY_RESTRICT init, bool accumulate,
                            float* HWY_RESTRICT c, int64_t ldc) {
  using V = hn::Vec<D>;
  const size_t N = hn::Lanes(d);
  V acc0[kRows], acc1[kRows];
  for (int r = 0; r < kRows; ++r) {
    if (accumulate) {
      acc0[r] = hn::LoadU(d, c + r * ldc);
      acc1[r] = hn::LoadU(d, c + r * ldc + N);
    } else if (init != nullptr) {
      acc0[r] = hn::LoadU(d, init);
      acc1[r] = hn::LoadU(d, init + N);
    } else {
      acc0[r] = hn::Zero(d);
      acc1[r] = hn::Zero(d);
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    const V b0 = hn::Load(d, b + k * 2 * N);
    const V b1 = hn::Load(d, b + k * 2 * N + N);
    for (int r = 0; r < kRows; ++r) {
      const V ar = hn::Set(d, a[k * kMaxPanelRows + r]);
      acc0[r] = hn::MulAdd(ar, b0, acc0[r]);
      acc1[r] = hn::MulAdd(ar, b1, acc1[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    hn::StoreU(acc0[r], d, c + r * ldc);
    hn::StoreU(acc1[r], d, c + r * ldc + N);
  }
}

// Sizes derived once per call.
struct Geometry {
  int64_t panel_n = 0;  // 2N: columns per B panel
  int64_t block_m = 0, block_n = 0, block_k = 0;
  int64_t task_m = 0;   // rows per task: a multiple of block_m
  int64_t row_tasks = 0, col_tasks = 0;

  Geometry(const MatmulParams& p, int threads) {
    const hn::ScalableTag<float> d;
    panel_n = 2 * static_cast<int64_t>(hn::Lanes(d));
    const MatmulBlocking& b = p.blocking;
    block_m = RoundUp(std::min(b.m > 0 ? b.m : kDefaultBlockM, std::max<int64_t>(p.m, 1)),
                      kMaxPanelRows);
    block_n = RoundUp(std::min(b.n > 0 ? b.n : kDefaultBlockN, std::max<int64_t>(p.n, 1)), panel_n);
    block_k = std::min(b.k > 0 ? b.k : kDefaultBlockK, std::max<int64_t>(p.k, 1));
    col_tasks = CeilDiv(p.n, block_n);
    // Split the rows only as far as needed for 2 tasks per thread: each task
    // packs its B block once per depth block, so fewer row splits mean fewer
    // passes over B (the larger operand in a layer: the weights).
    const int64_t row_blocks = CeilDiv(p.m, block_m);
    const int64_t splits = std::clamp<int64_t>(CeilDiv(2 * threads, col_tasks), 1, row_blocks);
    task_m = CeilDiv(row_blocks, splits) * block_m;
    row_tasks = CeilDiv(p.m, task_m);
  }
};

// Per-thread scratch.
struct Scratch {
  hwy::AlignedFreeUniquePtr<float[]> a, b, c, bias;
  Scratch(const Geometry& g)
      : a(hwy::AllocateAligned<float>(g.block_m * g.block_k)),
        b(hwy::AllocateAligned<float>(g.block_n * g.block_k)),
        c(hwy::AllocateAligned<float>(kMaxPanelRows * g.panel_n)),
        bias(hwy::AllocateAligned<float>(g.panel_n)) {}
};

// Requests `rows` rows of `bytes` bytes, row r at base + r * stride, into the
// caches before a packing loop reads them. Packing reads rows that each start
// on a new page (a stride of 16 KiB at n = 4096), where the hardware
// prefetchers stop at every row; issuing the whole block up front lets the
// misses overlap. Measured on a 512 x 4096 x 4096 product: +15% (packing had
// been a quarter of the time, waiting on memory).
void PrefetchRows(const void* base, int64_t stride, int64_t rows, int64_t bytes) {
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = static_cast<const char*>(base) + r * stride;
    for (int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(row + x, 0, 3);
  }
}

// Packs B[p0, p0 + depth) x [j0, j1) as panels [ceil((j1 - j0) / 2N)][depth][2N],
// float32, the columns past j1 zero (their products are finite and dropped).
template <DType kDtype>
void PackB(const MatmulParams& p, const Geometry& g, int64_t p0, int64_t depth, int64_t j0,
           int64_t j1, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t elem = static_cast<int64_t>(dtype_size(kDtype));
  PrefetchRows(static_cast<const char*>(p.b) + (p0 * p.ldb + j0) * elem, p.ldb * elem, depth,
               (j1 - j0) * elem);
  for (int64_t kk = 0; kk < depth; ++kk) {
    const char* row = static_cast<const char*>(p.b) + (p0 + kk) * p.ldb * elem;
    for (int64_t j = j0; j < j1; j += g.panel_n) {
      float* dst = out + ((j - j0) / g.panel_n * depth + kk) * g.panel_n;
      const int64_t width = std::min(g.panel_n, j1 - j);
      int64_t c = 0;
      for (; c + N <= width; c += N) hn::Store(LoadAsFloat<kDtype>(d, row, j + c), d, dst + c);
      for (; c < width; ++c) {
        if constexpr (kDtype == DType::kBFloat16) {
          dst[c] = f32_from_bf16(reinterpret_cast<const uint16_t*>(row)[j + c]);
        } else {
          dst[c] = reinterpret_cast<const float*>(row)[j + c];
        }
      }
      for (; c < g.panel_n; ++c) dst[c] = 0.0f;
    }
  }
}

// Packs A[i0, i1) x [p0, p0 + depth) as panels [ceil((i1 - i0) / R)][depth][R].
void PackA(const MatmulParams& p, int64_t i0, int64_t i1, int64_t p0, int64_t depth,
           float* HWY_RESTRICT out) {
  PrefetchRows(p.a + i0 * p.lda + p0, p.lda * 4, i1 - i0, depth * 4);
  for (int64_t i = i0; i < i1; ++i) {
    const float* row = p.a + i * p.lda + p0;
    float* dst = out + (i - i0) / kMaxPanelRows * depth * kMaxPanelRows + (i - i0) % kMaxPanelRows;
    for (int64_t kk = 0; kk < depth; ++kk) dst[kk * kMaxPanelRows] = row[kk];
  }
}

// One task: C[i0, i1) x [j0, j1), over the whole depth.
void RunTile(const MatmulParams& p, const Geometry& g, int64_t i0, int64_t i1, int64_t j0,
             int64_t j1, Scratch& w) {
  const hn::ScalableTag<float> d;
  for (int64_t p0 = 0; p0 < p.k; p0 += g.block_k) {
    const int64_t depth = std::min(g.block_k, p.k - p0);
    const bool accumulate = p0 > 0;
    if (p.b_dtype == DType::kBFloat16) {
      PackB<DType::kBFloat16>(p, g, p0, depth, j0, j1, w.b.get());
    } else {
      PackB<DType::kFloat32>(p, g, p0, depth, j0, j1, w.b.get());
    }
    for (int64_t m0 = i0; m0 < i1; m0 += g.block_m) {
      const int64_t m1 = std::min(m0 + g.block_m, i1);
      PackA(p, m0, m1, p0, depth, w.a.get());
      for (int64_t j = j0; j < j1; j += g.panel_n) {
        const float* bp = w.b.get() + (j - j0) / g.panel_n * depth * g.panel_n;
        const int64_t width = std::min(g.panel_n, j1 - j);
        for (int64_t i = m0; i < m1; i += kMaxPanelRows) {
          const float* ap = w.a.get() + (i - m0) / kMaxPanelRows * depth * kMaxPanelRows;
          const int rows = static_cast<int>(std::min<int64_t>(kMaxPanelRows, m1 - i));
          float* c = p.c + i * p.ldc + j;
          WithPanelRows(rows, [&](auto kRows) {
            if (width == g.panel_n) {
              MatmulPanel<kRows()>(d, ap, bp, depth, p.bias ? p.bias + j : nullptr, accumulate, c,
                                   p.ldc);
              return;
            }
            // Last, narrower panel: through a full-width copy of the C rows.
            float* tmp = w.c.get();
            const float* init = nullptr;
            if (accumulate) {
              for (int r = 0; r < rows; ++r) std::memcpy(tmp + r * g.panel_n, c + r * p.ldc, width * 4);
            } else if (p.bias) {
              std::fill(w.bias.get(), w.bias.get() + g.panel_n, 0.0f);
              std::memcpy(w.bias.get(), p.bias + j, width * 4);
              init = w.bias.get();
            }
            MatmulPanel<kRows()>(d, ap, bp, depth, init, accumulate, tmp, g.panel_n);
            for (int r = 0; r < rows; ++r) std::memcpy(c + r * p.ldc, tmp + r * g.panel_n, width * 4);
          });
        }
      }
    }
  }
}

}  // namespace

void MatmulImpl(const MatmulParams& p) {
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {  // C = bias (or 0): no depth block runs
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) p.c[i * p.ldc + j] = p.bias ? p.bias[j] : 0.0f;
    }
    return;
  }
  const double fmas = static_cast<double>(p.m) * static_cast<double>(p.n) * static_cast<double>(p.k);
  const int threads = fmas < kMinParallelFmas ? 1 : resolve_threads(p.num_threads);
  const Geometry g(p, threads);
  const int64_t tasks = g.row_tasks * g.col_tasks;

#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, tasks)))
  {
    Scratch scratch(g);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t i0 = t % g.row_tasks * g.task_m;
      const int64_t j0 = t / g.row_tasks * g.block_n;
      RunTile(p, g, i0, std::min(i0 + g.task_m, p.m), j0, std::min(j0 + g.block_n, p.n), scratch);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace qkv::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qkv::internal {

HWY_EXPORT(MatmulImpl);

void matmul(const MatmulParams& params) noexcept { HWY_DYNAMIC_DISPATCH(MatmulImpl)(params); }

}  // namespace qkv::internal
#endif  // HWY_ONCE
