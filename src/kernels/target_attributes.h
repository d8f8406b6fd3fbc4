// Functions that need more of the CPU than their Highway target gives (AMX,
// VNNI), inside a HWY_BEFORE_NAMESPACE() region:
//
//   QKV_PUSH_EXTRA_TARGET(",amx-tile,amx-int8")
//   ... functions ...
//   QKV_POP_EXTRA_TARGET
//
// Clang applies every target attribute pushed around a function and keeps the
// outermost, so a push nested in the region's own left the extra features out
// ("needs target feature amx-tile"): the region's attribute is popped first
// and pushed again after. (GCC: the same options either way.)
#pragma once

#include "hwy/base.h"

#define QKV_PUSH_EXTRA_TARGET(extra) HWY_POP_ATTRIBUTES HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR extra)
#define QKV_POP_EXTRA_TARGET HWY_POP_ATTRIBUTES HWY_PUSH_ATTRIBUTES(HWY_TARGET_STR)
