// AMX tile products of the flash forward, cut into small steps so that the
// caller can interleave them with its AVX-512 softmax (bf16_forward.cpp).
// Included only inside bf16_forward.cpp's region of AVX-512 + AMX target
// attributes, which is what may call it.
//
// Tile registers (one configuration: 16 rows x 64 bytes each):
//   tmm0..3  C: a 2 x 2 block of 16 x 16 fp32 (S or O), 32 rows x 32 columns
//   tmm4, 5  A: 16 rows x 32 bf16 (Q over 32 of head_dim; P over 32 keys)
//   tmm6, 7  B: 16 pair-rows x 16 columns x 2 bf16 ("VNNI": row i holds
//            (X[2i][n], X[2i+1][n]) for the columns n of X [32][16])
// The tile unit runs beside the vector units: a step issued between two
// softmax rows executes while the next row's vector code does, so a step is
// sized at a few tile products (TDPBF16PS: 16 x 16 x 32, about 16 cycles).
// One exception to that overlap: a tile store issued while the products that
// write its tile are still running holds up the vector code too (measured:
// 4 tile stores right behind their products cost 13 ns of vector time, 5 ns
// when issued one step later). So a step stores the results of the previous
// step's last products, and Finish() stores the last ones. K and V tiles are
// loaded with the streaming hint (each serves one row group, then the next
// block's): they evict less of the Q, S, P and O that are used again.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/amx_scope.h"

namespace qkv::internal::amx {

inline constexpr int64_t kGroupRows = 32;   // rows of a C block: two A tiles
inline constexpr int64_t kDimStep = 32;     // bf16 per A-tile row: the K of one product
inline constexpr int64_t kKeyTile = 16;     // keys per B tile of S = Q.K^T
inline constexpr int64_t kKeyStep = 32;     // keys per product of O += P.V
inline constexpr int64_t kColTile = 16;     // columns of a C tile
inline constexpr int64_t kTileElems = 512;  // bf16 in a packed 1 KiB B tile

// S = Q.K^T for 32 query rows and n_pad keys: s[r][j] = q[r] . k_j, raw bf16
// products (exact in fp32), fp32 accumulation.
//   q:  [32][dim_pad] bf16 rows, dim_pad % 32 == 0
//   kp: packed keys [n_pad / 16][dim_pad / 32][16 pair-rows][16 keys][2]
//   s:  [32][s_stride] fp32; n_pad % 32 == 0
// A step is 4 products: 32 rows x 32 keys over 32 of head_dim.
class ScoreSteps {
 public:
  ScoreSteps() = default;  // no work
  ScoreSteps(const uint16_t* q, int64_t dim_pad, const uint16_t* kp, int64_t n_pad, float* s,
             int64_t s_stride)
      : q_(q), kp_(kp), s_(s), dim_pad_(dim_pad), s_stride_(s_stride),
        dim_steps_(dim_pad / kDimStep), key_pairs_(n_pad / (2 * kKeyTile)) {}

  int64_t steps() const { return key_pairs_ * dim_steps_; }
  bool done() const { return pair_ == key_pairs_; }

  void Step() {
    CompilerFence();
    StorePending();
    if (dim_ == 0) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    }
    const int64_t q_bytes = dim_pad_ * 2;
    const uint16_t* q = q_ + dim_ * kDimStep;
    const uint16_t* k = kp_ + (2 * pair_ * dim_steps_ + dim_) * kTileElems;
    _tile_loadd(4, q, q_bytes);
    _tile_loadd(5, q + 16 * dim_pad_, q_bytes);
    _tile_stream_loadd(6, k, 64);
    _tile_stream_loadd(7, k + dim_steps_ * kTileElems, 64);  // the next 16 keys
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    if (++dim_ == dim_steps_) {
      pending_ = s_ + pair_ * 2 * kKeyTile;
      dim_ = 0;
      ++pair_;
    }
  }

  // All steps and stores done: s is complete.
  void Finish() {
    while (!done()) Step();
    StorePending();
  }

 private:
  void StorePending() {
    if (pending_ == nullptr) return;
    const int64_t s_bytes = s_stride_ * 4;
    _tile_stored(0, pending_, s_bytes);
    _tile_stored(1, pending_ + 16, s_bytes);
    _tile_stored(2, pending_ + 16 * s_stride_, s_bytes);
    _tile_stored(3, pending_ + 16 * s_stride_ + 16, s_bytes);
    pending_ = nullptr;
  }

  float* pending_ = nullptr;  // where tmm0..3 go before the next step
  const uint16_t* q_ = nullptr;
  const uint16_t* kp_ = nullptr;
  float* s_ = nullptr;
  int64_t dim_pad_ = 0, s_stride_ = 0, dim_steps_ = 0, key_pairs_ = 0;
  int64_t pair_ = 0, dim_ = 0;  // next: keys [32 pair_, 32 pair_ + 32), dims [32 dim_, +32)
};

// O = alpha * O + (P_hi + P_lo).V for 32 rows over n_pad keys:
//   o[r][c] = alpha[r] * o[r][c] + sum_j (p_hi[r][j] + p_lo[r][j]) v_j[c]
//   p_hi, p_lo: [32][p_stride] bf16 (p_lo null: no second term); alpha: [32]
//   vp: packed values [n_pad / 32][col_tiles][16 key pairs][16 columns][2]
//   o:  [32][o_stride] fp32, o_stride >= 16 * col_tiles; n_pad % 32 == 0
// The alpha rescale of a block of 32 columns is vector code just before its
// tiles are loaded. A step is 8 products (4 for a last odd column tile):
// 32 rows x 32 columns over 32 keys, for P_hi and for P_lo (half without).
class AccumulateSteps {
 public:
  AccumulateSteps() = default;  // no work
  AccumulateSteps(const uint16_t* p_hi, const uint16_t* p_lo, int64_t p_stride, const float* alpha,
                  const uint16_t* vp, int64_t col_tiles, int64_t n_pad, float* o, int64_t o_stride)
      : p_hi_(p_hi), p_lo_(p_lo), alpha_(alpha), vp_(vp), o_(o), p_stride_(p_stride),
        o_stride_(o_stride), col_tiles_(col_tiles), key_steps_(n_pad / kKeyStep) {}

  int64_t steps() const { return (col_tiles_ + 1) / 2 * key_steps_; }
  bool done() const { return col_ >= col_tiles_; }

  void Step() {
    CompilerFence();
    StorePending();
    const bool pair = col_ + 1 < col_tiles_;
    const int64_t o_bytes = o_stride_ * 4, p_bytes = p_stride_ * 2;
    float* o = o_ + col_ * kColTile;
    float* o1 = o + 16 * o_stride_;
    if (key_ == 0) {
      Rescale(o, pair ? 2 : 1);
      CompilerFence();
      _tile_loadd(0, o, o_bytes);
      _tile_loadd(2, o1, o_bytes);
      if (pair) {
        _tile_loadd(1, o + 16, o_bytes);
        _tile_loadd(3, o1 + 16, o_bytes);
      }
    }
    const uint16_t* v = vp_ + (key_ * col_tiles_ + col_) * kTileElems;
    const uint16_t* p_hi = p_hi_ + key_ * kKeyStep;
    const uint16_t* p_lo = p_lo_ != nullptr ? p_lo_ + key_ * kKeyStep : nullptr;
    const int64_t p_half = 16 * p_stride_;
    _tile_stream_loadd(6, v, 64);
    _tile_loadd(4, p_hi, p_bytes);
    _tile_loadd(5, p_hi + p_half, p_bytes);
    if (pair) {
      _tile_stream_loadd(7, v + kTileElems, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
      if (p_lo_ != nullptr) {
        _tile_loadd(4, p_lo, p_bytes);
        _tile_loadd(5, p_lo + p_half, p_bytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    } else {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      if (p_lo_ != nullptr) {
        _tile_loadd(4, p_lo, p_bytes);
        _tile_loadd(5, p_lo + p_half, p_bytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
      }
    }
    if (++key_ == key_steps_) {
      pending_ = o;
      pending_pair_ = pair;
      key_ = 0;
      col_ += 2;
    }
  }

  // All steps and stores done: o is complete.
  void Finish() {
    while (!done()) Step();
    StorePending();
  }

 private:
  void StorePending() {
    if (pending_ == nullptr) return;
    const int64_t o_bytes = o_stride_ * 4;
    float* o1 = pending_ + 16 * o_stride_;
    _tile_stored(0, pending_, o_bytes);
    _tile_stored(2, o1, o_bytes);
    if (pending_pair_) {
      _tile_stored(1, pending_ + 16, o_bytes);
      _tile_stored(3, o1 + 16, o_bytes);
    }
    pending_ = nullptr;
  }

  // o[r][0, 16 * tiles) *= alpha[r] for the 32 rows (skipped where alpha is 1).
  void Rescale(float* o, int tiles) const {
    for (int64_t r = 0; r < kGroupRows; ++r) {
      if (alpha_[r] == 1.0f) continue;
      const __m512 a = _mm512_set1_ps(alpha_[r]);
      float* row = o + r * o_stride_;
      for (int t = 0; t < tiles; ++t) {
        _mm512_storeu_ps(row + 16 * t, _mm512_mul_ps(a, _mm512_loadu_ps(row + 16 * t)));
      }
    }
  }

  float* pending_ = nullptr;  // where tmm0, 2 (and 1, 3) go before the next step
  bool pending_pair_ = false;
  const uint16_t* p_hi_ = nullptr;
  const uint16_t* p_lo_ = nullptr;
  const float* alpha_ = nullptr;
  const uint16_t* vp_ = nullptr;
  float* o_ = nullptr;
  int64_t p_stride_ = 0, o_stride_ = 0, col_tiles_ = 0, key_steps_ = 0;
  int64_t col_ = 0, key_ = 0;  // next: columns [16 col_, +32), keys [32 key_, +32)
};

// The tile work issued during one softmax pass: O += P.V of the previous
// item, then S = Q.K^T of the next. Both keep running sums in tmm0..3, so the
// second starts only after the first has stored its last ones.
class TileSteps {
 public:
  TileSteps(AccumulateSteps accumulate, ScoreSteps scores)
      : accumulate_(accumulate), scores_(scores) {}

  int64_t steps() const { return accumulate_.steps() + scores_.steps(); }

  void Step() {
    if (!accumulate_.done()) {
      accumulate_.Step();
    } else {
      accumulate_.Finish();  // its last stores, once
      scores_.Step();
    }
  }

  void Finish() {
    accumulate_.Finish();
    scores_.Finish();
  }

 private:
  AccumulateSteps accumulate_;
  ScoreSteps scores_;
};

}  // namespace qkv::internal::amx
