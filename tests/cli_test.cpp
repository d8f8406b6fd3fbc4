// Tests of `qkv attend`: runs the built program (QKV_CLI_PATH) in a fresh
// directory per test. Good runs are compared with qkv::attention called in
// this process on the same data; every bad input must exit 2 with one line on
// stderr naming the problem and leave every file in the directory unchanged
// (no clobbered output, no temporary left behind).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cli_run.h"
#include "commands.h"
#include "npy.h"
#include "qkv/qkv.h"

namespace qkv::tools {
namespace {

namespace fs = std::filesystem;

// The test problem: a GQA group of 2, seq_q != seq_kv, head_dim != head_dim_v.
constexpr int64_t kBatch = 2, kSeqQ = 5, kSeqKv = 7, kHeads = 4, kKvHeads = 2, kHeadDim = 8, kHeadDimV = 6;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Every file (and directory) in `dir`, by name, with its bytes.
std::map<std::string, std::string> snapshot(const TempDir& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    out[name] = entry.is_directory() ? "<dir>" : read_bytes(entry.path().string());
  }
  return out;
}

std::vector<float> random_values(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

void write_f32(const TempDir& dir, const std::string& name, std::vector<int64_t> shape, unsigned seed = 1) {
  const auto bytes = npy_byte_size(NpyType::kFloat32, shape);
  const std::vector<float> values = random_values(static_cast<size_t>(*bytes / 4), seed);
  write_npy(dir.file(name), NpyView{NpyType::kFloat32, std::move(shape), values.data()});
}

// A .npy file with an arbitrary header dict (numpy's padding) and data.
std::string raw_npy(const std::string& dict, const std::string& data) {
  std::string header = dict;
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  return std::string("\x93NUMPY\x01\x00", 8) + static_cast<char>(header.size() & 0xff) +
         static_cast<char>(header.size() >> 8) + header + data;
}

// Q, K, V of the test problem, written as Q.npy, K.npy and V.npy.
struct Inputs {
  std::vector<float> q = random_values(kBatch * kSeqQ * kHeads * kHeadDim, 11);
  std::vector<float> k = random_values(kBatch * kSeqKv * kKvHeads * kHeadDim, 12);
  std::vector<float> v = random_values(kBatch * kSeqKv * kKvHeads * kHeadDimV, 13);

  void write(const TempDir& dir) const {
    write_npy(dir.file("Q.npy"), {NpyType::kFloat32, {kBatch, kSeqQ, kHeads, kHeadDim}, q.data()});
    write_npy(dir.file("K.npy"), {NpyType::kFloat32, {kBatch, kSeqKv, kKvHeads, kHeadDim}, k.data()});
    write_npy(dir.file("V.npy"), {NpyType::kFloat32, {kBatch, kSeqKv, kKvHeads, kHeadDimV}, v.data()});
  }
};

struct Outputs {
  std::vector<float> o, lse;
};

// qkv::attention in this process with the options of `p` (tensors filled here).
Outputs attend_in_process(const Inputs& in, AttentionParams p) {
  Outputs out{std::vector<float>(kBatch * kSeqQ * kHeads * kHeadDimV),
              std::vector<float>(kBatch * kHeads * kSeqQ)};
  p.q = Tensor::contiguous(in.q.data(), DType::kFloat32, {kBatch, kSeqQ, kHeads, kHeadDim});
  p.k = Tensor::contiguous(in.k.data(), DType::kFloat32, {kBatch, kSeqKv, kKvHeads, kHeadDim});
  p.v = Tensor::contiguous(in.v.data(), DType::kFloat32, {kBatch, kSeqKv, kKvHeads, kHeadDimV});
  p.o = Tensor::contiguous(out.o.data(), DType::kFloat32, {kBatch, kSeqQ, kHeads, kHeadDimV});
  p.lse = Tensor::contiguous(out.lse.data(), DType::kFloat32, {kBatch, kHeads, kSeqQ});
  attention(p);
  return out;
}

// Reads a float32 output and checks its shape.
std::vector<float> read_output(const std::string& path, const std::vector<int64_t>& shape) {
  const NpyArray a = read_npy(path);
  EXPECT_EQ(a.type, NpyType::kFloat32);
  EXPECT_EQ(a.shape, shape);
  return std::vector<float>(a.data<float>(), a.data<float>() + a.numel());
}

// Bit-for-bit equality (the same reference code ran on the same data).
void expect_identical(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
        << what << "[" << i << "]: " << got[i] << " vs " << want[i];
  }
}

// A fast backend against the float64 reference: values here are O(1) and rows
// have 7 keys, so float32 accumulation errs by a few ulps; 1e-5 leaves room
// for any summation order while catching a wrong key or scale.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  constexpr float kTolerance = 1e-5f;
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      ASSERT_EQ(got[i], want[i]) << what << "[" << i << "]";
    } else {
      ASSERT_NEAR(got[i], want[i], kTolerance * (1 + std::fabs(want[i]))) << what << "[" << i << "]";
    }
  }
}

constexpr const char* kBaseArgs = "attend --q Q.npy --k K.npy --v V.npy --out O.npy --lse LSE.npy";

TEST(CliAttend, EveryOptionMatchesTheLibraryExactly) {
  TempDir dir;
  const Inputs in;
  in.write(dir);
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};  // [heads]
  const std::vector<float> sinks = {0.0f, 1.0f, -1.0f, 2.0f};        // [heads]
  std::vector<uint8_t> mask(kBatch * kSeqQ * kSeqKv);                // [batch, 1, seq_q, seq_kv]
  std::mt19937 rng(7);
  for (uint8_t& m : mask) m = rng() % 7 != 0;
  mask[0] = 0;  // batch 0, query 0 sees key 0 only (top-left causal): an empty row
  write_npy(dir.file("A.npy"), {NpyType::kFloat32, {kHeads}, slopes.data()});
  write_npy(dir.file("S.npy"), {NpyType::kFloat32, {kHeads}, sinks.data()});
  write_npy(dir.file("M.npy"), {NpyType::kBool, {kBatch, 1, kSeqQ, kSeqKv}, mask.data()});
  write_bytes(dir.file("O.npy"), "an older output, replaced on success");

  const CliResult run =
      run_qkv(dir, std::string(kBaseArgs) +
                       " --causal --causal-align top-left --window 3,1 --scale 0.3 --softcap 2.5"
                       " --alibi A.npy --sinks S.npy --mask M.npy --backend reference --threads 2");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err, "");

  AttentionParams p;
  p.causal = true;
  p.causal_align = CausalAlign::kTopLeft;
  p.window = {3, 1};
  p.scale = 0.3f;
  p.softcap = 2.5f;
  p.alibi_slopes = Tensor::contiguous(slopes.data(), DType::kFloat32, {kHeads});
  p.sinks = Tensor::contiguous(sinks.data(), DType::kFloat32, {kHeads});
  p.mask = Tensor::contiguous(mask.data(), DType::kBool, {kBatch, 1, kSeqQ, kSeqKv});
  p.backend = Backend::kReference;
  const Outputs want = attend_in_process(in, p);
  expect_identical(read_output(dir.file("O.npy"), {kBatch, kSeqQ, kHeads, kHeadDimV}), want.o, "o");
  expect_identical(read_output(dir.file("LSE.npy"), {kBatch, kHeads, kSeqQ}), want.lse, "lse");
  // The empty row (o = 0, lse = -inf) must survive the trip.
  EXPECT_EQ(want.lse[0], -std::numeric_limits<float>::infinity());
  // Only the inputs and the two outputs: no temporary left behind.
  std::vector<std::string> names;
  for (const auto& [name, bytes] : snapshot(dir)) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"A.npy", "K.npy", "LSE.npy", "M.npy", "O.npy", "Q.npy", "S.npy",
                                             "V.npy"}));
}

TEST(CliAttend, FloatMaskAndPerBatchAlibiOnFlashMatchTheReference) {
  TempDir dir;
  const Inputs in;
  in.write(dir);
  const std::vector<float> slopes = random_values(kBatch * kHeads, 21);  // [batch, heads]
  const std::vector<float> mask = random_values(kSeqQ * kSeqKv, 22);     // [seq_q, seq_kv]
  write_npy(dir.file("A.npy"), {NpyType::kFloat32, {kBatch, kHeads}, slopes.data()});
  write_npy(dir.file("M.npy"), {NpyType::kFloat32, {kSeqQ, kSeqKv}, mask.data()});

  const CliResult run =
      run_qkv(dir, std::string(kBaseArgs) + " --causal --alibi A.npy --mask M.npy --backend flash");
  ASSERT_EQ(run.exit_code, 0) << run.err;

  AttentionParams p;
  p.causal = true;
  p.alibi_slopes = Tensor::contiguous(slopes.data(), DType::kFloat32, {kBatch, kHeads});
  p.mask = Tensor::contiguous(mask.data(), DType::kFloat32, {kSeqQ, kSeqKv});
  p.backend = Backend::kReference;
  const Outputs want = attend_in_process(in, p);
  expect_close(read_output(dir.file("O.npy"), {kBatch, kSeqQ, kHeads, kHeadDimV}), want.o, "o");
  expect_close(read_output(dir.file("LSE.npy"), {kBatch, kHeads, kSeqQ}), want.lse, "lse");
}

// float16 inputs are converted to float32 on load; a uint8 mask is boolean
// (nonzero = may attend).
TEST(CliAttend, Float16InputsAndUint8MaskAreAccepted) {
  TempDir dir;
  Inputs in;
  std::mt19937 rng(5);
  auto write_half = [&](const std::string& name, std::vector<float>& as_float, std::vector<int64_t> shape) {
    std::vector<uint16_t> half(as_float.size());
    for (size_t i = 0; i < half.size(); ++i) {
      // Exponents 12..17 (values 2^-3 .. 2^2), random sign and mantissa.
      half[i] = static_cast<uint16_t>((rng() & 0x8000u) | ((12 + rng() % 6) << 10) | (rng() & 0x3ffu));
      as_float[i] = float16_to_float32(half[i]);
    }
    write_npy(dir.file(name), NpyView{NpyType::kFloat16, std::move(shape), half.data()});
  };
  write_half("Q.npy", in.q, {kBatch, kSeqQ, kHeads, kHeadDim});
  write_half("K.npy", in.k, {kBatch, kSeqKv, kKvHeads, kHeadDim});
  write_half("V.npy", in.v, {kBatch, kSeqKv, kKvHeads, kHeadDimV});
  const std::vector<uint8_t> mask = {1, 0, 7, 255, 0, 1, 3};  // [seq_kv]
  write_npy(dir.file("M.npy"), {NpyType::kUInt8, {kSeqKv}, mask.data()});

  const CliResult run = run_qkv(dir, std::string(kBaseArgs) + " --mask M.npy --backend reference");
  ASSERT_EQ(run.exit_code, 0) << run.err;

  AttentionParams p;
  p.mask = Tensor::contiguous(mask.data(), DType::kBool, {kSeqKv});
  p.backend = Backend::kReference;
  const Outputs want = attend_in_process(in, p);
  expect_identical(read_output(dir.file("O.npy"), {kBatch, kSeqQ, kHeads, kHeadDimV}), want.o, "o");
  expect_identical(read_output(dir.file("LSE.npy"), {kBatch, kHeads, kSeqQ}), want.lse, "lse");
}

TEST(CliAttend, HelpMentionsEveryFlag) {
  TempDir dir;
  const CliResult top = run_qkv(dir, "--help");
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_NE(top.out.find("attend"), std::string::npos) << top.out;
  const CliResult help = run_qkv(dir, "attend --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag :
       {"--q",       "--k",          "--v",       "--out",     "--lse",   "--causal", "--causal-align",
        "--window",  "--scale",      "--softcap", "--alibi",   "--sinks", "--mask",   "--backend",
        "--threads", "bottom-right", "top-left",  "reference", "flash",   "float16"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

// --- Bad inputs ----------------------------------------------------------------

struct BadCase {
  const char* name;
  std::function<void(const TempDir&)> setup;  // breaks the good files
  std::string args;                           // after "attend"
  const char* keyword;                        // the message must contain it
};

void nothing(const TempDir&) {}
auto write_file(const char* name, std::string bytes) {
  return [name, bytes](const TempDir& dir) { write_bytes(dir.file(name), bytes); };
}
auto write_array(const char* name, std::vector<int64_t> shape) {
  return [name, shape](const TempDir& dir) { write_f32(dir, name, shape); };
}
std::string f4_dict(const std::string& shape) {
  return "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
}

const std::string kGood = "--q Q.npy --k K.npy --v V.npy --out O.npy --lse LSE.npy";
const std::string kQData(static_cast<size_t>(kBatch * kSeqQ * kHeads * kHeadDim) * 4, '\0');

const BadCase kBadCases[] = {
    // Files.
    {"missing_file", nothing, "--q missing.npy --k K.npy --v V.npy --out O.npy", "No such file"},
    {"directory_input", [](const TempDir& d) { fs::create_directory(d.file("D.npy")); },
     "--q D.npy --k K.npy --v V.npy --out O.npy", "is a directory"},
    {"empty_file", write_file("Q.npy", ""), kGood, "empty"},
    {"truncated_magic", write_file("Q.npy", "\x93NUM"), kGood, "truncated"},
    {"not_npy", write_file("Q.npy", "q,k,v\n1,2,3\n"), kGood, "not a .npy file"},
    {"truncated_header", write_file("Q.npy", std::string("\x93NUMPY\x01\x00\x76\x00{'descr'", 17)), kGood,
     "truncated"},
    {"truncated_data", write_file("Q.npy", raw_npy(f4_dict("(2, 5, 4, 8)"), kQData.substr(100))), kGood,
     "but the file holds 1180 data bytes"},
    {"header_disagrees_with_size", write_file("Q.npy", raw_npy(f4_dict("(2, 5, 4, 9)"), kQData)), kGood,
     "header claims shape (2, 5, 4, 9) = 1440 bytes but the file holds 1280"},
    {"terabyte_header",
     write_file("Q.npy", raw_npy(f4_dict("(1000000, 1000, 8, 128)"), std::string(4096, '\0'))), kGood,
     "= 4096000000000 bytes but the file holds 4096 data bytes"},
    {"overflowing_header", write_file("Q.npy", raw_npy(f4_dict("(4294967296, 4294967296, 8, 8)"), kQData)),
     kGood, "overflows"},
    {"malformed_header", write_file("Q.npy", raw_npy("{'descr': '<f4', 'shape': (2, 5, 4, 8)", kQData)),
     kGood, "malformed .npy header"},
    {"negative_dim", write_file("Q.npy", raw_npy(f4_dict("(2, -5, 4, 8)"), kQData)), kGood,
     "negative dimension"},
    {"fortran_order",
     write_file("Q.npy", raw_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 5, 4, 8), }", kQData)),
     kGood, "must be C order"},
    {"float64",
     write_file("Q.npy",
                raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 5, 4, 4), }", kQData)),
     kGood, "unsupported dtype '<f8'"},
    {"big_endian",
     write_file("Q.npy",
                raw_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", kQData)),
     kGood, "big-endian"},
    {"bool_q",
     write_file("Q.npy",
                raw_npy("{'descr': '|b1', 'fortran_order': False, 'shape': (2, 5, 4, 32), }", kQData)),
     kGood, "dtype bool is not supported"},
    {"mask_float64",
     write_file("M.npy", raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (5, 7), }",
                                 std::string(280, '\0'))),
     kGood + " --mask M.npy", "unsupported dtype"},
    // Shapes.
    {"q_rank_3", write_array("Q.npy", {kBatch * kSeqQ, kHeads, kHeadDim}), kGood, "has rank 3"},
    {"mask_rank_5", write_array("M.npy", {1, 1, 1, kSeqQ, kSeqKv}), kGood + " --mask M.npy", "has rank 5"},
    {"sinks_rank_2", write_array("S.npy", {1, kHeads}), kGood + " --sinks S.npy", "has rank 2"},
    {"head_dim_mismatch", write_array("K.npy", {kBatch, kSeqKv, kKvHeads, kHeadDim + 1}), kGood,
     "head_dim of k"},
    {"seq_kv_mismatch", write_array("V.npy", {kBatch, kSeqKv - 1, kKvHeads, kHeadDimV}), kGood, "seq_kv"},
    {"batch_mismatch", write_array("K.npy", {kBatch + 1, kSeqKv, kKvHeads, kHeadDim}), kGood, "batch"},
    {"heads_not_divisible",
     [](const TempDir& d) {
       write_f32(d, "K.npy", {kBatch, kSeqKv, 3, kHeadDim});
       write_f32(d, "V.npy", {kBatch, kSeqKv, 3, kHeadDimV});
     },
     kGood, "kv_heads (3) must divide heads (4)"},
    {"output_larger_than_memory",  // empty K and V files whose head_dim_v makes O petabytes
     [](const TempDir& d) {
       write_bytes(d.file("K.npy"), raw_npy(f4_dict("(2, 0, 2, 8)"), ""));
       write_bytes(d.file("V.npy"), raw_npy(f4_dict("(2, 0, 2, 1125899906842624)"), ""));
     },
     kGood, "more than this machine's memory"},
    {"mask_not_broadcastable", write_array("M.npy", {3, kSeqKv}), kGood + " --mask M.npy",
     "does not broadcast"},
    {"alibi_wrong_heads", write_array("A.npy", {kHeads + 1}), kGood + " --alibi A.npy", "alibi_slopes"},
    {"sinks_wrong_heads", write_array("S.npy", {kHeads - 1}), kGood + " --sinks S.npy", "sinks has shape"},
    // Flags.
    {"window_one_value", nothing, kGood + " --window 3", "--window"},
    {"window_letters", nothing, kGood + " --window a,b", "--window"},
    {"window_below_minus_one", nothing, kGood + " --window -2,0", "--window"},
    {"window_three_values", nothing, kGood + " --window 1,2,3", "--window"},
    {"scale_nan", nothing, kGood + " --scale nan", "--scale"},
    {"scale_inf", nothing, kGood + " --scale inf", "--scale"},
    {"scale_overflows_float", nothing, kGood + " --scale 1e39", "--scale"},
    {"scale_without_value", nothing, kGood + " --scale", "--scale"},
    {"softcap_negative", nothing, kGood + " --softcap -1", "--softcap"},
    {"threads_negative", nothing, kGood + " --threads -1", "--threads"},
    {"threads_not_integer", nothing, kGood + " --threads two", "--threads"},
    {"threads_too_many", nothing, kGood + " --threads 100000", "--threads"},
    {"backend_unknown", nothing, kGood + " --backend fast", "--backend"},
    {"causal_align_unknown", nothing, kGood + " --causal --causal-align middle", "--causal-align"},
    {"unknown_flag", nothing, kGood + " --frobnicate", "--frobnicate"},
    {"flag_twice", nothing, kGood + " --q K.npy", "--q"},
    {"missing_q", nothing, "--k K.npy --v V.npy --out O.npy", "--q is required"},
    {"missing_out", nothing, "--q Q.npy --k K.npy --v V.npy", "--out is required"},
    // Output paths.
    {"out_is_an_input", nothing, "--q Q.npy --k K.npy --v V.npy --out ./K.npy", "is the same file as --k"},
    {"lse_is_out", nothing, "--q Q.npy --k K.npy --v V.npy --out O.npy --lse O.npy", "same file"},
    {"out_directory_missing", nothing, "--q Q.npy --k K.npy --v V.npy --out missing/O.npy", "does not exist"},
};

class CliBadInput : public testing::TestWithParam<BadCase> {};

TEST_P(CliBadInput, ExitsTwoWithOneLineAndTouchesNothing) {
  const BadCase& c = GetParam();
  TempDir dir;
  Inputs().write(dir);
  write_bytes(dir.file("O.npy"), "precious older output");
  write_bytes(dir.file("LSE.npy"), "precious older lse");
  c.setup(dir);
  const auto before = snapshot(dir);

  const CliResult run = run_qkv(dir, "attend " + c.args);
  EXPECT_EQ(run.exit_code, 2) << run.err;
  EXPECT_EQ(run.err.rfind("qkv: error: ", 0), 0u) << run.err;
  EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << run.err;  // exactly one line
  ASSERT_FALSE(run.err.empty());
  EXPECT_EQ(run.err.back(), '\n');
  EXPECT_NE(run.err.find(c.keyword), std::string::npos) << "expected '" << c.keyword << "' in: " << run.err;
  EXPECT_TRUE(snapshot(dir) == before) << "a file was changed, added or removed";
}

INSTANTIATE_TEST_SUITE_P(CliAttend, CliBadInput, testing::ValuesIn(kBadCases),
                         [](const testing::TestParamInfo<BadCase>& param_info) {
                           return std::string(param_info.param.name);
                         });

}  // namespace
}  // namespace qkv::tools
