// The configuration both AMX kernels load (amx_tiles.h, decode_amx-inl.h).
#pragma once

#include <cstdint>

namespace qkv::internal::amx {

// ldtilecfg's 64-byte operand: palette 1, tiles 0..7 of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
static_assert(sizeof(TileConfig) == 64);

}  // namespace qkv::internal::amx
