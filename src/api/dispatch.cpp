#include "api/dispatch.h"

#include "kernels/bf16_forward.h"
#include "kernels/decode.h"
#include "kernels/flash_forward.h"
#include "reference/attention_reference.h"

namespace qkv::internal {

// Below about a million multiply-adds a call is over before a second thread
// has started: run it on the calling thread (also spares spin-waiting teams
// when a caller issues thousands of tiny calls).
constexpr double kSerialWork = 1 << 20;

namespace {

// The flash kernel: on AMX tiles or AVX512-BF16 for bfloat16 where this CPU and OS allow it,
// else the float32 SIMD kernel.
void run_flash(const AttentionProblem& problem) {
  if (bf16_flash_supports(problem)) {
    bf16_flash_forward(problem);
  } else {
    flash_forward(problem);
  }
}

}  // namespace

void run_attention(const AttentionProblem& problem_in, Backend backend, int num_splits) {
  AttentionProblem problem = problem_in;
  const double work = static_cast<double>(problem.batch) * problem.heads * problem.seq_q *
                      problem.seq_kv * (problem.head_dim + problem.head_dim_v);
  if (work < kSerialWork) problem.num_threads = 1;
  switch (backend) {
    case Backend::kReference:
      attention_reference(problem);
      return;
    case Backend::kFlash:
      run_flash(problem);
      return;
    case Backend::kDecode:
      decode_forward(problem, num_splits);
      return;
    case Backend::kAuto:
      if (problem.seq_q * problem.group <= kDecodeMaxRows) {
        decode_forward(problem, num_splits);
      } else {
        run_flash(problem);
      }
      return;
  }
}

}  // namespace qkv::internal
