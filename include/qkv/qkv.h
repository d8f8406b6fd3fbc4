// Umbrella header for the qkv library.
#pragma once

#include "qkv/attention.h"  // IWYU pragma: export
#include "qkv/attention_backward.h"  // IWYU pragma: export
#include "qkv/error.h"      // IWYU pragma: export
#include "qkv/kv_cache.h"   // IWYU pragma: export
#include "qkv/merge.h"      // IWYU pragma: export
#include "qkv/mha.h"        // IWYU pragma: export
#include "qkv/rope.h"       // IWYU pragma: export
#include "qkv/tensor.h"     // IWYU pragma: export
#include "qkv/varlen.h"     // IWYU pragma: export
#include "qkv/version.h"    // IWYU pragma: export
