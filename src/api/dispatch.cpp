#include "api/dispatch.h"

#include "kernels/decode.h"
#include "kernels/flash_forward.h"
#include "reference/attention_reference.h"

namespace qkv::internal {

void run_attention(const AttentionProblem& problem, Backend backend, int num_splits) {
  switch (backend) {
    case Backend::kReference:
      attention_reference(problem);
      return;
    case Backend::kFlash:
      flash_forward(problem);
      return;
    case Backend::kDecode:
      decode_forward(problem, num_splits);
      return;
    case Backend::kAuto:
      if (problem.seq_q * problem.group <= kDecodeMaxRows) {
        decode_forward(problem, num_splits);
      } else {
        flash_forward(problem);
      }
      return;
  }
}

}  // namespace qkv::internal
