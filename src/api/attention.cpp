// The one dispatch point of qkv::attention: validate, then pick a kernel.
#include "qkv/attention.h"

#include "api/validate.h"
#include "kernels/flash_forward.h"
#include "reference/attention_reference.h"

namespace qkv {

void attention(const AttentionParams& params) {
  const internal::AttentionProblem problem = internal::make_problem(params);
  switch (params.backend) {
    case Backend::kReference:
      internal::attention_reference(problem);
      return;
    case Backend::kAuto:
    case Backend::kFlash:
      internal::flash_forward(problem);
      return;
  }
}

}  // namespace qkv
