// qkv::attention: validate, then hand over to the one dispatch point.
#include "qkv/attention.h"

#include "api/dispatch.h"
#include "api/validate.h"

namespace qkv {

void attention(const AttentionParams& params) {
  internal::run_attention(internal::make_problem(params), params.backend);
}

}  // namespace qkv
