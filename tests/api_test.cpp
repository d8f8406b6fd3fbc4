// The public boundary: every argument check of src/api/validate.cpp throws
// qkv::Error (a std::invalid_argument) naming the argument and the values,
// and writes nothing; and the defaults the header promises.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace qkv::test {
namespace {

static_assert(std::is_base_of_v<std::invalid_argument, Error>);

// A valid call: batch 2, seq_q 3, seq_kv 5, heads 8, kv_heads 2, head_dim 16.
Case valid_case() { return Case().batch(2).seq_q(3).seq_kv(5).heads(8).kv_heads(2).head_dim(16); }

// Expects `p` (with each backend) to throw qkv::Error whose message contains
// every string of `parts`, to be catchable as std::invalid_argument, and to
// leave the outputs of `w` (which `p` writes to, when it writes) untouched.
void expect_rejected(Workload& w, AttentionParams p, const std::vector<std::string>& parts) {
  for (Backend backend : {Backend::kReference, Backend::kFlash, Backend::kAuto}) {
    p.backend = backend;
    std::string message;
    try {
      attention(p);
      ADD_FAILURE() << "no exception; expected one containing \"" << parts.front() << "\"";
    } catch (const Error& e) {
      message = e.what();
    }
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
    }
    EXPECT_THROW(attention(p), std::invalid_argument);
    const HostTensor<float>& o = w.o_buffer();
    EXPECT_EQ(o.view_elements_equal_to_fill(), o.numel())
        << "o written by a rejected call: " << message;
    EXPECT_TRUE(o.padding_intact()) << message;
    const HostTensor<float>& lse = w.lse_buffer();
    EXPECT_EQ(lse.view_elements_equal_to_fill(), lse.numel()) << "lse written: " << message;
  }
}

// Params of a valid call whose outputs have never been written.
struct Valid {
  Valid() : Valid(valid_case()) {}
  explicit Valid(const Case& c) : w(c), p(w.params(Backend::kFlash)) {}
  Workload w;
  AttentionParams p;
};

TEST(Api, TheValidCallIsAccepted) {
  Valid v;
  EXPECT_NO_THROW(attention(v.p));
  EXPECT_EQ(v.w.o_buffer().view_elements_equal_to_fill(), 0);
}

TEST(Api, MissingTensors) {
  for (const char* name : {"q", "k", "v", "o"}) {
    Valid v;
    Tensor* t = name[0] == 'q' ? &v.p.q : name[0] == 'k' ? &v.p.k : name[0] == 'v' ? &v.p.v : &v.p.o;
    t->data = nullptr;
    expect_rejected(v.w, v.p, {std::string(name) + " is required but has no data"});
  }
}

TEST(Api, WrongRank) {
  Valid v;
  v.p.q.rank = 3;
  expect_rejected(v.w, v.p, {"q must have rank 4 but has shape [2, 3, 8]"});
  Valid v2;
  v2.p.v.rank = 5;  // beyond kMaxRank
  expect_rejected(v2.w, v2.p, {"v must have rank 4"});
  Valid v3;
  v3.p.k.rank = -1;
  expect_rejected(v3.w, v3.p, {"k must have rank 4 but has rank -1"});
}

TEST(Api, NegativeDimensionsAndStrides) {
  Valid v;
  v.p.q.shape[1] = -1;
  expect_rejected(v.w, v.p, {"q has a negative dimension: [2, -1, 8, 16]"});
  Valid v2;
  v2.p.k.strides[1] = -32;
  expect_rejected(v2.w, v2.p, {"k stride 1 (-32) must not be negative"});
}

TEST(Api, TooLarge) {
  Valid v;
  v.p.q.shape = {int64_t{1} << 20, int64_t{1} << 20, 1 << 10, 16};
  expect_rejected(v.w, v.p, {"q is too large: [1048576, 1048576, 1024, 16]"});
}

TEST(Api, InnermostDimensionMustBeContiguous) {
  Valid v;
  v.p.v.strides[3] = 2;
  expect_rejected(v.w, v.p,
                  {"v must have a contiguous innermost dimension (stride 1)", "strides end in 2"});
  Valid v2;
  v2.p.o.strides[3] = 0;
  expect_rejected(v2.w, v2.p, {"o must have a contiguous innermost dimension", "strides end in 0"});
}

TEST(Api, InnermostStrideIsFreeWhenTheDimensionIsOne) {
  Valid v(Case().seq_q(3).seq_kv(5).head_dim(1).head_dim_v(1));
  const Result want = v.w.run(Backend::kReference);
  AttentionParams p = v.w.params(Backend::kReference);
  p.q.strides[3] = 7;
  p.k.strides[3] = 0;
  attention(p);
  EXPECT_EQ(v.w.o_buffer().dense(), want.o);
}

TEST(Api, DTypes) {
  Valid v;
  v.p.q.dtype = DType::kBool;
  v.p.k.dtype = v.p.v.dtype = v.p.o.dtype = DType::kBool;
  expect_rejected(v.w, v.p, {"q dtype (bool) is not supported; use float32, float16 or bfloat16"});
  Valid v1;
  v1.p.q.dtype = DType::kFloat16;
  expect_rejected(v1.w, v1.p, {"k dtype (float32) must match q dtype (float16)"});
  Valid v2;
  v2.p.k.dtype = DType::kBFloat16;
  expect_rejected(v2.w, v2.p, {"k dtype (bfloat16) must match q dtype (float32)"});
  Valid v3;
  v3.p.v.dtype = DType::kBool;
  expect_rejected(v3.w, v3.p, {"v dtype (bool) must match q dtype (float32)"});
  Valid v4;
  v4.p.o.dtype = DType::kFloat16;
  expect_rejected(v4.w, v4.p, {"o dtype (float16) must match q dtype (float32)"});
  Valid v5(Case(valid_case()).dtype(DType::kBFloat16));
  v5.p.v.dtype = DType::kFloat16;
  expect_rejected(v5.w, v5.p, {"v dtype (float16) must match q dtype (bfloat16)"});
  // Masks, slopes, sinks and lse stay float32 (or bool) whatever the storage.
  Valid v6(Case(valid_case()).dtype(DType::kFloat16));
  std::vector<float> sinks(8, 0.0f);
  v6.p.sinks = Tensor::contiguous(sinks.data(), DType::kFloat16, {8});
  expect_rejected(v6.w, v6.p, {"sinks must be float32, not float16"});
  Valid v7(Case(valid_case()).dtype(DType::kFloat16));
  EXPECT_NO_THROW(attention(v7.p));
}

TEST(Api, Sizes) {
  Valid heads;
  heads.p.q.shape[2] = 0;
  expect_rejected(heads.w, heads.p, {"heads (0) must be at least 1; q has shape [2, 3, 0, 16]"});

  Valid head_dim;
  head_dim.p.q.shape[3] = 0;
  expect_rejected(head_dim.w, head_dim.p,
                  {"head_dim (0) must be at least 1; q has shape [2, 3, 8, 0]"});

  Valid batch;
  batch.p.k.shape[0] = 1;
  expect_rejected(batch.w, batch.p,
                  {"batch must agree: q [2, 3, 8, 16], k [1, 5, 2, 16], v [2, 5, 2, 16]"});

  Valid k_dim;
  k_dim.p.k.shape[3] = 8;
  expect_rejected(k_dim.w, k_dim.p, {"head_dim of k (8) must equal head_dim of q (16)"});

  Valid v_seq;
  v_seq.p.v.shape[1] = 4;
  expect_rejected(v_seq.w, v_seq.p,
                  {"v must have the seq_kv and kv_heads of k: k [2, 5, 2, 16], v [2, 4, 2, 16]"});

  Valid v_heads;
  v_heads.p.v.shape[2] = 1;
  expect_rejected(v_heads.w, v_heads.p, {"v must have the seq_kv and kv_heads of k"});

  Valid kv_heads;
  kv_heads.p.k.shape[2] = 0;
  kv_heads.p.v.shape[2] = 0;
  expect_rejected(kv_heads.w, kv_heads.p, {"kv_heads (0) must be at least 1"});

  Valid dv;
  dv.p.v.shape[3] = 0;
  expect_rejected(dv.w, dv.p, {"head_dim_v (0) must be at least 1"});

  Valid divide(Case().batch(2).seq_q(3).seq_kv(5).heads(8).kv_heads(3));
  expect_rejected(divide.w, divide.p, {"kv_heads (3) must divide heads (8)"});

  Valid o_shape;
  o_shape.p.o.shape[3] = 8;
  expect_rejected(
      o_shape.w, o_shape.p,
      {"o has shape [2, 3, 8, 8] but must be [batch, seq_q, heads, head_dim_v] = [2, 3, 8, 16]"});
  Valid o_seq;
  o_seq.p.o.shape[1] = 2;
  expect_rejected(o_seq.w, o_seq.p, {"o has shape [2, 2, 8, 16]"});
}

TEST(Api, Lse) {
  Valid rank;
  rank.p.lse.rank = 2;
  expect_rejected(rank.w, rank.p, {"lse must have rank 3 but has shape [2, 8]"});
  Valid dtype;
  dtype.p.lse.dtype = DType::kBool;
  expect_rejected(dtype.w, dtype.p, {"lse must be float32, not bool"});
  Valid shape;
  shape.p.lse.shape[2] = 4;
  expect_rejected(shape.w, shape.p,
                  {"lse has shape [2, 8, 4] but must be [batch, heads, seq_q] = [2, 8, 3]"});
  Valid stride;
  stride.p.lse.strides[2] = -1;
  expect_rejected(stride.w, stride.p, {"lse stride 2 (-1) must not be negative"});
}

TEST(Api, ScaleAndSoftcap) {
  Valid inf;
  inf.p.scale = std::numeric_limits<float>::infinity();
  expect_rejected(inf.w, inf.p, {"scale (inf) must be finite"});
  Valid nan;
  nan.p.scale = std::numeric_limits<float>::quiet_NaN();
  expect_rejected(nan.w, nan.p, {"scale (", "nan) must be finite"});
  Valid negative;
  negative.p.softcap = -1;
  expect_rejected(negative.w, negative.p, {"softcap (-1) must be finite and >= 0 (0 = off)"});
  Valid inf_cap;
  inf_cap.p.softcap = std::numeric_limits<float>::infinity();
  expect_rejected(inf_cap.w, inf_cap.p, {"softcap (inf) must be finite and >= 0"});
}

TEST(Api, Window) {
  Valid left;
  left.p.window.left = -2;
  expect_rejected(left.w, left.p, {"window left (-2) must be >= -1 (-1 = unbounded)"});
  Valid right;
  right.p.window.right = -5;
  expect_rejected(right.w, right.p, {"window right (-5) must be >= -1 (-1 = unbounded)"});
}

TEST(Api, AlibiSlopes) {
  std::vector<float> slopes(64, 0.5f);
  Valid dtype;
  dtype.p.alibi_slopes = Tensor::contiguous(slopes.data(), DType::kBool, {8});
  expect_rejected(dtype.w, dtype.p, {"alibi_slopes must be float32, not bool"});
  for (const auto& shape : {std::vector<int64_t>{3}, {8, 2}, {1, 8}, {2, 8, 1}}) {
    Valid v;
    v.p.alibi_slopes = Tensor::contiguous(slopes.data(), DType::kFloat32, {1});
    v.p.alibi_slopes.rank = static_cast<int>(shape.size());
    for (size_t d = 0; d < shape.size(); ++d) v.p.alibi_slopes.shape[d] = shape[d];
    expect_rejected(v.w, v.p, {"alibi_slopes has shape " + v.p.alibi_slopes.shape_string() +
                               " but must be [heads] = [8] or [batch, heads] = [2, 8]"});
  }
  Valid stride;
  stride.p.alibi_slopes = Tensor::strided(slopes.data(), DType::kFloat32, {8}, {-1});
  expect_rejected(stride.w, stride.p, {"alibi_slopes stride 0 (-1) must not be negative"});
  Valid stride2;
  stride2.p.alibi_slopes = Tensor::strided(slopes.data(), DType::kFloat32, {2, 8}, {8, -1});
  expect_rejected(stride2.w, stride2.p, {"alibi_slopes stride 1 (-1) must not be negative"});
}

TEST(Api, Sinks) {
  std::vector<float> sinks(16, 0.5f);
  Valid dtype;
  dtype.p.sinks = Tensor::contiguous(sinks.data(), DType::kFloat16, {8});
  expect_rejected(dtype.w, dtype.p, {"sinks must be float32, not float16"});
  Valid shape;
  shape.p.sinks = Tensor::contiguous(sinks.data(), DType::kFloat32, {4});
  expect_rejected(shape.w, shape.p, {"sinks has shape [4] but must be [heads] = [8]"});
  Valid rank;
  rank.p.sinks = Tensor::contiguous(sinks.data(), DType::kFloat32, {1, 8});
  expect_rejected(rank.w, rank.p, {"sinks has shape [1, 8] but must be [heads] = [8]"});
  Valid stride;
  stride.p.sinks = Tensor::strided(sinks.data(), DType::kFloat32, {8}, {-1});
  expect_rejected(stride.w, stride.p, {"sinks stride 0 (-1) must not be negative"});
}

TEST(Api, Mask) {
  std::vector<float> mask(2 * 8 * 3 * 5, 0.0f);
  Valid dtype;
  dtype.p.mask = Tensor::contiguous(mask.data(), DType::kFloat16, {3, 5});
  expect_rejected(dtype.w, dtype.p, {"mask must be bool or float32, not float16"});
  Valid rank0;
  rank0.p.mask = Tensor::contiguous(mask.data(), DType::kFloat32, {});
  expect_rejected(rank0.w, rank0.p, {"mask must have rank 1 to 4 but has shape []"});
  Valid rank5;
  rank5.p.mask = Tensor::contiguous(mask.data(), DType::kFloat32, {3, 5});
  rank5.p.mask.rank = 5;  // beyond kMaxRank
  expect_rejected(rank5.w, rank5.p, {"mask must have rank 1 to 4"});
  for (const auto& shape : {std::vector<int64_t>{4, 5}, {3, 4}, {2, 3, 5}, {3, 8, 3, 5}, {6}}) {
    Valid v;
    v.p.mask = Tensor::contiguous(mask.data(), DType::kBool, {1});
    v.p.mask.rank = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int d = v.p.mask.rank - 1; d >= 0; --d) {
      v.p.mask.shape[d] = shape[d];
      v.p.mask.strides[d] = stride;
      stride *= shape[d];
    }
    expect_rejected(v.w, v.p, {"mask of shape " + v.p.mask.shape_string() +
                               " does not broadcast to [batch, heads, seq_q, seq_kv] = [2, 8, 3, 5]"});
  }
  Valid negative;
  negative.p.mask = Tensor::strided(mask.data(), DType::kFloat32, {3, 5}, {5, -1});
  expect_rejected(negative.w, negative.p, {"mask stride 1 (-1) must not be negative"});
  Valid negative_dim;
  negative_dim.p.mask = Tensor::contiguous(mask.data(), DType::kFloat32, {3, 5});
  negative_dim.p.mask.shape[0] = -3;
  expect_rejected(negative_dim.w, negative_dim.p, {"mask has a negative dimension: [-3, 5]"});
}

TEST(Api, ThreadsAndTiling) {
  Valid threads;
  threads.p.num_threads = -1;
  expect_rejected(threads.w, threads.p, {"num_threads (-1) must be >= 0 (0 = all)"});
  for (int bad : {-1, 4097}) {
    Valid v;
    v.p.tiling.block_q = bad;
    expect_rejected(
        v.w, v.p, {"tiling.block_q (" + std::to_string(bad) + ") must be in [0, 4096] (0 = auto)"});
  }
  for (int bad : {-1, 65537}) {
    Valid v;
    v.p.tiling.block_kv = bad;
    expect_rejected(
        v.w, v.p,
        {"tiling.block_kv (" + std::to_string(bad) + ") must be in [0, 65536] (0 = auto)"});
  }
}

// --- Defaults ---------------------------------------------------------------

TEST(Api, DefaultScaleIsOneOverSqrtHeadDim) {
  for (Backend backend : {Backend::kReference, Backend::kFlash}) {
    for (int64_t d : {1, 7, 80}) {
      const Case c = Case().seq_q(6).seq_kv(11).head_dim(d).causal();
      const Result by_default = Workload(c).run(backend);
      const Result explicit_scale =
          Workload(Case(c).scale(1 / std::sqrt(static_cast<float>(d)))).run(backend);
      EXPECT_TRUE(bitwise_equal(by_default.o, explicit_scale.o)) << "head_dim " << d;
      EXPECT_TRUE(bitwise_equal(by_default.lse, explicit_scale.lse)) << "head_dim " << d;
      // Not vacuous: the scale matters on this data.
      const Result unit = Workload(Case(c).scale(1.0f)).run(backend);
      if (d > 1) EXPECT_FALSE(bitwise_equal(by_default.o, unit.o)) << "head_dim " << d;
    }
  }
}

TEST(Api, NumThreadsZeroUsesWhatTheProcessMay) {
  const Case c = Case().batch(2).seq_q(40).seq_kv(50).heads(4).kv_heads(2).causal();
  for (Backend backend : {Backend::kReference, Backend::kFlash}) {
    const Result all = Workload(Case(c).threads(0)).run(backend);
    const Result one = Workload(Case(c).threads(1)).run(backend);
    EXPECT_TRUE(bitwise_equal(all.o, one.o));
    EXPECT_TRUE(bitwise_equal(all.lse, one.lse));
  }
}

TEST(Api, AutoIsFlash) {
  for (const Case& c :
       {Case().seq(33).causal(), Case().batch(2).seq_q(7).seq_kv(70).heads(4).kv_heads(1).sinks(),
        Case().seq(20).bool_mask({20, 20}, 0.5).alibi()}) {
    Workload w(c);
    const Result flash = w.run(Backend::kFlash);
    const Result automatic = w.run(Backend::kAuto);
    EXPECT_TRUE(bitwise_equal(flash.o, automatic.o)) << c.describe();
    EXPECT_TRUE(bitwise_equal(flash.lse, automatic.lse)) << c.describe();
  }
}

TEST(Api, CallsFromInsideAParallelRegion) {
  // Inside a parallel region qkv runs single-threaded; concurrent calls on
  // separate buffers must not interfere.
  const Case c = Case().batch(2).seq(48).heads(4).kv_heads(2).causal();
  const Result want = Workload(c).run(Backend::kFlash);
  std::vector<Workload> workloads(4, Workload(c));
  std::vector<Result> got(4);
#pragma omp parallel for num_threads(4)
  for (int t = 0; t < 4; ++t) {
    AttentionParams p = workloads[t].params(Backend::kFlash);
    attention(p);
    got[t].o = workloads[t].o_buffer().dense();
  }
  for (int t = 0; t < 4; ++t) EXPECT_TRUE(bitwise_equal(got[t].o, want.o)) << "caller " << t;
}

}  // namespace
}  // namespace qkv::test

namespace qkv::test {
namespace {

TEST(Api, RankAboveFourIsAnErrorNamingTheRank) {
  std::vector<float> buffer(64, 1.0f);
  for (int rank : {5, 6, 40}) {
    AttentionParams p;
    p.q = Tensor::contiguous(buffer.data(), DType::kFloat32, {1, 2, 2, 2});
    p.q.rank = rank;  // as a caller filling the struct by hand might
    p.k = Tensor::contiguous(buffer.data(), DType::kFloat32, {1, 2, 2, 2});
    p.v = p.k;
    p.o = Tensor::contiguous(buffer.data() + 16, DType::kFloat32, {1, 2, 2, 2});
    try {
      attention(p);
      ADD_FAILURE() << "rank " << rank << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("has rank " + std::to_string(rank)), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace qkv::test
