// `qkv attend`: attention on .npy files.
//
//   Q [batch, seq_q, heads, head_dim]      K [batch, seq_kv, kv_heads, head_dim]
//   V [batch, seq_kv, kv_heads, head_dim_v]
//   O [batch, seq_q, heads, head_dim_v]    LSE [batch, heads, seq_q]  (written)
//
// The command only moves data: it reads the files, checks what the library
// cannot see (file contents, ranks beyond 4, output paths), builds one
// qkv::AttentionParams and calls qkv::attention, whose qkv::Error names any
// inconsistent shape. Outputs are written all-or-nothing (write_npy_together).
#include <unistd.h>  // sysconf

#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "npy.h"
#include "qkv/attention.h"

namespace qkv::tools {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFooter = R"(
Shapes (C order; float32, or float16 converted to float32 on load):
  Q   [batch, seq_q, heads, head_dim]       K [batch, seq_kv, kv_heads, head_dim]
  V   [batch, seq_kv, kv_heads, head_dim_v]
  O   [batch, seq_q, heads, head_dim_v]     float32, written to --out
  LSE [batch, heads, seq_q]                 float32, written to --lse
kv_heads must divide heads (query head h reads KV head h / (heads / kv_heads)).
Logits: s = scale * q.k, then softcap, ALiBi and a float mask; keys hidden by
--causal, --window or a bool mask are skipped. A row with no visible key gives
O = 0 and LSE = -inf.
Outputs are written to <path>.tmp.<pid> and renamed onto their paths only when
all of them are complete: on any error no existing output is touched.
Exit status: 0 success, 2 bad input (one line on stderr), 1 internal error.)";

// Values of the flags, bound to CLI11 options; alive as long as the app.
struct AttendOptions {
  std::string q, k, v, out, lse, alibi, sinks, mask;
  bool causal = false;
  std::string causal_align = "bottom-right";
  std::string window;  // "L,R"; empty = no window
  double scale = 0;
  CLI::Option* scale_option = nullptr;  // scale applies only if given
  double softcap = 0;
  std::string backend = "auto";
  int threads = 0;
};

// "L,R" with integers >= -1, e.g. "128,0" or "-1,16".
std::optional<Window> parse_window(const std::string& text) {
  const size_t comma = text.find(',');
  if (comma == std::string::npos) return std::nullopt;
  auto parse_side = [](const char* first, const char* last) -> std::optional<int64_t> {
    int64_t value = 0;
    const auto [end, error] = std::from_chars(first, last, value);
    if (first == last || error != std::errc() || end != last || value < -1) return std::nullopt;
    return value;
  };
  const char* begin = text.data();
  const auto left = parse_side(begin, begin + comma);
  const auto right = parse_side(begin + comma + 1, begin + text.size());
  if (!left || !right) return std::nullopt;
  return Window{*left, *right};
}

// A finite number that is also finite as a float32 (the library's type).
std::optional<double> parse_finite(const std::string& text) {
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  if (!std::isfinite(value) || std::fabs(value) > std::numeric_limits<float>::max()) return std::nullopt;
  return value;
}

const CLI::Validator kWindowCheck(
    [](std::string& text) -> std::string {
      return parse_window(text)
                 ? ""
                 : "'" + text + "' is not L,R: two integers >= -1 (-1 = unbounded), e.g. 128,0";
    },
    "");
const CLI::Validator kFiniteCheck(
    [](std::string& text) -> std::string {
      return parse_finite(text) ? "" : "'" + text + "' is not a finite float32 number";
    },
    "");
const CLI::Validator kSoftcapCheck(
    [](std::string& text) -> std::string {
      const auto value = parse_finite(text);
      return value && *value >= 0 ? "" : "'" + text + "' must be a finite number >= 0 (0 = off)";
    },
    "");

const std::map<std::string, Backend> kBackends = {
    {"auto", Backend::kAuto}, {"reference", Backend::kReference}, {"flash", Backend::kFlash}};
const std::map<std::string, CausalAlign> kAligns = {{"bottom-right", CausalAlign::kBottomRight},
                                                    {"top-left", CausalAlign::kTopLeft}};

template <typename T>
std::vector<std::string> keys(const std::map<std::string, T>& map) {
  std::vector<std::string> out;
  for (const auto& entry : map) out.push_back(entry.first);
  return out;
}

void add_flags(CLI::App& cmd, AttendOptions& o) {
  cmd.add_option("--q", o.q, "Queries .npy, float32 [batch, seq_q, heads, head_dim] (required)")
      ->required()
      ->type_name("Q.npy");
  cmd.add_option(
         "--k", o.k,
         "Keys .npy, float32 [batch, seq_kv, kv_heads, head_dim]; kv_heads must divide heads (required)")
      ->required()
      ->type_name("K.npy");
  cmd.add_option("--v", o.v, "Values .npy, float32 [batch, seq_kv, kv_heads, head_dim_v] (required)")
      ->required()
      ->type_name("V.npy");
  cmd.add_option("--out", o.out,
                 "Output .npy to write, float32 [batch, seq_q, heads, head_dim_v]; replaced only on success, "
                 "and must not be one of the inputs (required)")
      ->required()
      ->type_name("O.npy");
  cmd.add_option(
         "--lse", o.lse,
         "Also write the log-sum-exp of each row's logits (natural log), float32 [batch, heads, seq_q]; "
         "-inf for a row with no visible key")
      ->type_name("LSE.npy");
  cmd.add_flag("--causal", o.causal,
               "Causal mask: query i sees no key after its own position (diagonal set by --causal-align)");
  cmd.add_option("--causal-align", o.causal_align,
                 "Diagonal of --causal: bottom-right (FlashAttention; the last query sees the last key: "
                 "j <= i + seq_kv - seq_q) or top-left (PyTorch is_causal: j <= i)")
      ->check(CLI::IsMember(keys(kAligns)))
      ->type_name("ALIGN")
      ->capture_default_str();
  cmd.add_option(
         "--window", o.window,
         "Sliding window: query i sees keys j with i + seq_kv - seq_q - L <= j <= i + seq_kv - seq_q + R; "
         "-1 = unbounded on that side (default: no window)")
      ->check(kWindowCheck)
      ->type_name("L,R");
  o.scale_option =
      cmd.add_option("--scale", o.scale, "Multiplier of q.k, a finite number (default 1/sqrt(head_dim))")
          ->check(kFiniteCheck)
          ->type_name("X");
  cmd.add_option("--softcap", o.softcap, "Soft cap of the logits, s = X * tanh(s / X); X >= 0, 0 = off")
      ->check(kSoftcapCheck)
      ->type_name("X")
      ->capture_default_str();
  cmd.add_option(
         "--alibi", o.alibi,
         "ALiBi slopes .npy, float32 [heads] or [batch, heads]: s -= slope * |i + seq_kv - seq_q - j|")
      ->type_name("SLOPES.npy");
  cmd.add_option("--sinks", o.sinks,
                 "Attention-sink logits .npy, float32 [heads]: exp(sink[h]) joins the softmax denominator "
                 "with no value attached")
      ->type_name("SINKS.npy");
  cmd.add_option("--mask", o.mask,
                 "Mask .npy of rank 1 to 4 that broadcasts (numpy rules, aligned right) to "
                 "[batch, heads, seq_q, seq_kv]: bool, uint8 or int8 (nonzero = may attend), or float32 "
                 "(added to the logits)")
      ->type_name("MASK.npy");
  cmd.add_option(
         "--backend", o.backend,
         "Implementation: auto (the fastest, today flash), reference (plain loops in double precision, "
         "the oracle) or flash (tiled SIMD kernel)")
      ->check(CLI::IsMember(keys(kBackends)))
      ->type_name("NAME")
      ->capture_default_str();
  cmd.add_option("--threads", o.threads, "Worker threads, 0 to 4096; 0 = all the process may use")
      ->check(CLI::Range(0, 4096))
      ->type_name("N")
      ->capture_default_str();
}

// --- Paths -------------------------------------------------------------------

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;  // both exist: hard links and symlinks too
  const fs::path ca = fs::weakly_canonical(a, ec);
  if (ec) return false;
  const fs::path cb = fs::weakly_canonical(b, ec);
  return !ec && ca == cb;
}

// Fails early (before any work) if `path` cannot become an output.
void check_output_path(const std::string& flag, const std::string& path,
                       const std::vector<std::pair<std::string, std::string>>& inputs) {
  for (const auto& [input_flag, input_path] : inputs) {
    if (!input_path.empty() && same_file(path, input_path)) {
      throw CommandError(flag + " " + path + " is the same file as " + input_flag + " " + input_path +
                         "; choose another output path");
    }
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw CommandError(flag + " " + path + ": is a directory");
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::is_directory(parent, ec)) {
    throw CommandError(flag + " " + path + ": directory " + parent.string() + " does not exist");
  }
}

// --- Inputs ------------------------------------------------------------------

NpyArray read_input(const std::string& flag, const std::string& path) {
  try {
    return read_npy(path);
  } catch (const CommandError& e) {
    throw CommandError(flag + " " + e.what());
  }
}

void require_rank(const NpyArray& a, const std::string& flag, const std::string& path, int min_rank,
                  int max_rank, const char* layout) {
  if (a.rank() < min_rank || a.rank() > max_rank) {
    throw CommandError(flag + " " + path + ": shape " + npy_shape_string(a.shape) + " has rank " +
                       std::to_string(a.rank()) + ", but " + flag + " takes " + layout);
  }
}

// A float32 input (float16 converted) of an allowed rank.
NpyArray read_float(const std::string& flag, const std::string& path, int min_rank, int max_rank,
                    const char* layout) {
  NpyArray a = to_float32(read_input(flag, path), flag + " " + path);
  require_rank(a, flag, path, min_rank, max_rank, layout);
  return a;
}

// A C-order view of an array of rank <= kMaxRank.
Tensor as_tensor(NpyArray& a, DType dtype) {
  Tensor t;
  t.data = a.bytes.data();
  t.dtype = dtype;
  t.rank = a.rank();
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[d] = a.shape[d];
    t.strides[d] = stride;
    stride *= a.shape[d];
  }
  return t;
}

// An output buffer, refused when it could never fit in this machine's memory
// (the inputs bound its size only loosely: V [1, 0, 1, 10^12] is an empty file).
NpyArray make_output(const std::string& flag, std::vector<int64_t> shape) {
  const auto bytes = npy_byte_size(NpyType::kFloat32, shape);
  const double memory =
      static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (!bytes || (memory > 0 && static_cast<double>(*bytes) > memory)) {
    throw CommandError(flag + " of shape " + npy_shape_string(shape) + " would need " +
                       (bytes ? std::to_string(*bytes) : std::string("over 2^63")) +
                       " bytes, more than this machine's memory");
  }
  return NpyArray::zeros(NpyType::kFloat32, std::move(shape));
}

void run_attend(const AttendOptions& o) {
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"--q", o.q}, {"--k", o.k}, {"--v", o.v}, {"--alibi", o.alibi}, {"--sinks", o.sinks}, {"--mask", o.mask},
  };
  check_output_path("--out", o.out, inputs);
  if (!o.lse.empty()) {
    check_output_path("--lse", o.lse, inputs);
    if (same_file(o.out, o.lse)) throw CommandError("--lse " + o.lse + " is the same file as --out " + o.out);
  }

  NpyArray q = read_float("--q", o.q, 4, 4, "[batch, seq_q, heads, head_dim]");
  NpyArray k = read_float("--k", o.k, 4, 4, "[batch, seq_kv, kv_heads, head_dim]");
  NpyArray v = read_float("--v", o.v, 4, 4, "[batch, seq_kv, kv_heads, head_dim_v]");
  NpyArray alibi, sinks, mask;
  if (!o.alibi.empty()) alibi = read_float("--alibi", o.alibi, 1, 2, "[heads] or [batch, heads]");
  if (!o.sinks.empty()) sinks = read_float("--sinks", o.sinks, 1, 1, "[heads]");
  DType mask_dtype = DType::kBool;
  if (!o.mask.empty()) {
    mask = read_input("--mask", o.mask);
    if (mask.type == NpyType::kFloat32 || mask.type == NpyType::kFloat16) {
      mask = to_float32(std::move(mask), "--mask " + o.mask);
      mask_dtype = DType::kFloat32;
    }
    require_rank(mask, "--mask", o.mask, 1, 4, "rank 1 to 4, broadcastable to [batch, heads, seq_q, seq_kv]");
  }

  const int64_t batch = q.shape[0], seq_q = q.shape[1], heads = q.shape[2], head_dim_v = v.shape[3];
  NpyArray out = make_output("--out", {batch, seq_q, heads, head_dim_v});
  NpyArray lse;
  if (!o.lse.empty()) lse = make_output("--lse", {batch, heads, seq_q});

  AttentionParams p;
  p.q = as_tensor(q, DType::kFloat32);
  p.k = as_tensor(k, DType::kFloat32);
  p.v = as_tensor(v, DType::kFloat32);
  p.o = as_tensor(out, DType::kFloat32);
  if (!o.lse.empty()) p.lse = as_tensor(lse, DType::kFloat32);
  if (o.scale_option->count() > 0) p.scale = static_cast<float>(o.scale);
  p.causal = o.causal;
  p.causal_align = kAligns.at(o.causal_align);
  if (!o.window.empty()) p.window = *parse_window(o.window);
  p.softcap = static_cast<float>(o.softcap);
  if (!o.alibi.empty()) p.alibi_slopes = as_tensor(alibi, DType::kFloat32);
  if (!o.sinks.empty()) p.sinks = as_tensor(sinks, DType::kFloat32);
  if (!o.mask.empty()) p.mask = as_tensor(mask, mask_dtype);
  p.num_threads = o.threads;
  p.backend = kBackends.at(o.backend);
  attention(p);  // throws qkv::Error naming any inconsistent shape; nothing is written then

  std::vector<NpyOutput> outputs = {{o.out, out.view()}};
  if (!o.lse.empty()) outputs.push_back({o.lse, lse.view()});
  write_npy_together(outputs);
}

}  // namespace

void register_attend(CLI::App& app) {
  auto options = std::make_shared<AttendOptions>();
  CLI::App* cmd = app.add_subcommand(
      "attend", "Attention on .npy files: O = softmax(scale * Q K^T, masked) V, optionally with its LSE");
  cmd->footer(kFooter);
  add_flags(*cmd, *options);
  cmd->callback([options] { run_attend(*options); });
}

}  // namespace qkv::tools
