// What both AMX kernels (amx_tiles.h, decode_amx-inl.h) need around their
// tile instructions: the tile configuration, loaded for a scope, and the
// compiler fence. Inline assembly only, so no target attributes are needed
// to include it.
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

// Tile instructions reach memory through inline assembly that does not tell
// the compiler which memory it reads: fence plain stores before tile loads,
// plain loads after tile stores.
inline void CompilerFence() { __asm__ __volatile__("" ::: "memory"); }

// The calling thread's tile configuration (tile state is per thread), loaded
// for the object's lifetime and then released (back to the init state, so
// context switches stop saving 8 KiB of tiles).
class ScopedTiles {
 public:
  ScopedTiles() {
    const TileConfig config;
    // Not _tile_loadconfig: GCC 12 declares only the first 8 bytes of the
    // configuration as its operand, and may drop the stores of the rest.
    __asm__ __volatile__("ldtilecfg %0" : : "m"(config));
  }
  ~ScopedTiles() { __asm__ __volatile__("tilerelease" ::: "memory"); }
  ScopedTiles(const ScopedTiles&) = delete;
  ScopedTiles& operator=(const ScopedTiles&) = delete;
};

}  // namespace qkv::internal::amx
