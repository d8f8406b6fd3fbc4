// NumPy .npy reader and writer; see npy.h for the format and the guarantees.
#include "npy.h"

#include <unistd.h>  // getpid

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <new>
#include <string_view>
#include <utility>

#include "commands.h"

namespace qkv::tools {
namespace {

namespace fs = std::filesystem;

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
// numpy refuses headers above 10000 bytes by default (max_header_size); ours
// are under 128. The cap stops a hostile length from driving an allocation.
constexpr uint32_t kMaxHeaderSize = 65536;

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw CommandError(path + ": " + problem);
}

// Printable ASCII only, at most `limit` characters: file text is hostile and
// the error message must stay on one line.
std::string printable(std::string_view text, size_t limit = 40) {
  std::string out;
  for (char c : text.substr(0, limit)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (text.size() > limit) out += "...";
  return out;
}

struct TypeInfo {
  NpyType type;
  const char* descr;  // as written
  const char* name;
  size_t size;
};
constexpr TypeInfo kTypes[] = {
    {NpyType::kFloat32, "<f4", "float32", 4}, {NpyType::kFloat16, "<f2", "float16", 2},
    {NpyType::kBool, "|b1", "bool", 1},       {NpyType::kUInt8, "|u1", "uint8", 1},
    {NpyType::kInt8, "|i1", "int8", 1},
};
const TypeInfo& info(NpyType type) { return kTypes[static_cast<int>(type)]; }

// The dtype of a 'descr' string. One-byte types have no byte order, so numpy
// writes '|', but '<' and '=' mean the same for them.
std::optional<NpyType> parse_descr(const std::string& descr) {
  for (const TypeInfo& t : kTypes) {
    if (descr == t.descr) return t.type;
    if (t.size == 1 &&
        (descr == std::string("<") + (t.descr + 1) || descr == std::string("=") + (t.descr + 1))) {
      return t.type;
    }
  }
  return std::nullopt;
}

// The parsed header dict.
struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// Recursive-descent parser of the header dict: a Python literal with exactly
// the keys 'descr' (a string), 'fortran_order' (True/False) and 'shape' (a
// tuple of non-negative ints), in any order.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  Header parse() {
    Header header;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{', "at the start of the dict");
    skip_space();
    while (!consume('}')) {
      const std::string key = parse_string("a key");
      expect(':', "after a key");
      if (key == "descr" && !have_descr) {
        header.descr = parse_string("the value of 'descr'");
        have_descr = true;
      } else if (key == "fortran_order" && !have_order) {
        header.fortran_order = parse_bool();
        have_order = true;
      } else if (key == "shape" && !have_shape) {
        header.shape = parse_shape();
        have_shape = true;
      } else {
        malformed("unexpected or repeated key '" + printable(key) + "'");
      }
      skip_space();
      if (!consume(',')) {
        expect('}', "after a value (or ',')");
        break;
      }
      skip_space();
    }
    skip_space();
    if (pos_ != text_.size()) malformed("unexpected text after the closing '}'");
    if (!have_descr) malformed("missing key 'descr'");
    if (!have_order) malformed("missing key 'fortran_order'");
    if (!have_shape) malformed("missing key 'shape'");
    return header;
  }

 private:
  [[noreturn]] void malformed(const std::string& what) const {
    fail(path_, "malformed .npy header (byte " + std::to_string(pos_) + "): " + what);
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c, const char* where) {
    skip_space();
    if (!consume(c)) malformed(std::string("expected '") + c + "' " + where);
    skip_space();
  }
  bool match(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  std::string parse_string(const char* what) {
    const char quote = pos_ < text_.size() ? text_[pos_] : '\0';
    if (quote != '\'' && quote != '"') malformed(std::string("expected a quoted string for ") + what);
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) malformed(std::string("unterminated string for ") + what);
    std::string value(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return value;
  }
  bool parse_bool() {
    if (match("True")) return true;
    if (match("False")) return false;
    malformed("expected True or False for 'fortran_order'");
  }
  // "()", "(5,)", "(2, 3)", "(2, 3,)"
  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> shape;
    if (!consume('(')) malformed("expected '(' for 'shape'");
    skip_space();
    while (!consume(')')) {
      shape.push_back(parse_dim());
      skip_space();
      if (consume(',')) {
        skip_space();
      } else if (!consume(')')) {
        malformed("expected ',' or ')' in 'shape'");
      } else {
        break;
      }
      if (shape.size() > 64) malformed("'shape' has more than 64 dimensions");
    }
    return shape;
  }
  int64_t parse_dim() {
    if (pos_ < text_.size() && text_[pos_] == '-') {
      fail(path_, "header shape has a negative dimension (" +
                      printable(text_.substr(pos_, text_.find_first_of(",)", pos_) - pos_)) + ")");
    }
    if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') {
      malformed("expected a non-negative integer in 'shape'");
    }
    int64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const int digit = text_[pos_++] - '0';
      if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) {
        malformed("a dimension in 'shape' does not fit in 64 bits");
      }
      value = value * 10 + digit;
    }
    consume('L');  // Python 2 long, as old numpy wrote it
    return value;
  }

  std::string_view text_;
  const std::string& path_;
  size_t pos_ = 0;
};

struct CloseFile {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, CloseFile>;

// Header text of a format 1.0 file, padded so the data starts 64-byte aligned.
std::string make_header(const NpyView& view) {
  std::string dict = std::string("{'descr': '") + npy_type_descr(view.type) +
                     "', 'fortran_order': False, 'shape': " + npy_shape_string(view.shape) + ", }";
  const size_t unpadded = kMagicSize + 2 + 2 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  return dict;
}

std::string temp_path_for(const std::string& path) {
  return path + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
}

// Writes `view` to `temp` (a new file); errors name `target`, the user's path.
void write_file(const std::string& target, const std::string& temp, const NpyView& view) {
  const std::optional<int64_t> data_size = npy_byte_size(view.type, view.shape);
  if (!data_size) fail(target, "array of shape " + npy_shape_string(view.shape) + " is too large");
  const std::string header = make_header(view);
  if (header.size() > 0xffff) fail(target, "header too long for format 1.0");
  File file(std::fopen(temp.c_str(), "wb"));
  if (!file) fail(target, "cannot create temporary file " + temp + ": " + std::strerror(errno));
  const unsigned char prefix[10] = {0x93,
                                    'N',
                                    'U',
                                    'M',
                                    'P',
                                    'Y',
                                    1,
                                    0,
                                    static_cast<unsigned char>(header.size() & 0xff),
                                    static_cast<unsigned char>(header.size() >> 8)};
  const auto size = static_cast<size_t>(*data_size);
  bool ok = std::fwrite(prefix, 1, sizeof prefix, file.get()) == sizeof prefix &&
            std::fwrite(header.data(), 1, header.size(), file.get()) == header.size() &&
            (size == 0 || std::fwrite(view.data, 1, size, file.get()) == size);
  int error = ok ? 0 : errno;
  if (std::fclose(file.release()) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (!ok) fail(target, "writing " + temp + " failed: " + std::strerror(error));
}

void remove_quietly(const std::string& path) {
  std::error_code ignored;
  fs::remove(path, ignored);
}

}  // namespace

size_t npy_type_size(NpyType type) { return info(type).size; }
const char* npy_type_descr(NpyType type) { return info(type).descr; }
const char* npy_type_name(NpyType type) { return info(type).name; }

std::optional<int64_t> npy_byte_size(NpyType type, const std::vector<int64_t>& shape) {
  int64_t bytes = static_cast<int64_t>(npy_type_size(type));
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(bytes, dim, &bytes)) return std::nullopt;
  }
  return bytes;
}

std::string npy_shape_string(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

AlignedBytes::AlignedBytes(size_t size)
    : data_(::operator new ((size + kAlignment - 1) / kAlignment * kAlignment + kAlignment * (size == 0),
                            std::align_val_t{kAlignment})),
      size_(size) {
  std::memset(data_.get(), 0, size);
}

void AlignedBytes::Free::operator()(void* p) const { ::operator delete (p, std::align_val_t{kAlignment}); }

NpyArray NpyArray::zeros(NpyType type, std::vector<int64_t> shape) {
  const std::optional<int64_t> size = npy_byte_size(type, shape);
  if (!size) throw CommandError("array of shape " + npy_shape_string(shape) + " is too large");
  NpyArray array;
  array.type = type;
  array.shape = std::move(shape);
  array.bytes = AlignedBytes(static_cast<size_t>(*size));
  return array;
}

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

NpyArray read_npy(const std::string& path) {
  // Refuse anything but a regular file before opening it: opening a FIFO
  // would block until a writer appears.
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) fail(path, "cannot open: No such file or directory");
  if (ec) fail(path, "cannot open: " + ec.message());
  if (fs::is_directory(status)) fail(path, "is a directory, not a .npy file");
  if (!fs::is_regular_file(status)) fail(path, "is not a regular file");
  File file(std::fopen(path.c_str(), "rb"));
  if (!file) fail(path, std::string("cannot open: ") + std::strerror(errno));
  const uintmax_t file_size = fs::file_size(path, ec);
  if (ec) fail(path, "cannot read its size: " + ec.message());

  // Magic and version.
  unsigned char prefix[kMagicSize + 2];
  const size_t got = std::fread(prefix, 1, sizeof prefix, file.get());
  if (got == 0) fail(path, "is empty, not a .npy file");
  if (std::memcmp(prefix, kMagic, std::min(got, kMagicSize)) != 0) {
    fail(path, "not a .npy file (it does not start with \\x93NUMPY)");
  }
  if (got < sizeof prefix) fail(path, "truncated: the file ends inside the .npy magic");
  const int major = prefix[kMagicSize], minor = prefix[kMagicSize + 1];
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    fail(path, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " (expected 1.0, 2.0 or 3.0)");
  }

  // Header length: uint16 (1.0) or uint32 (2.0, 3.0), little-endian.
  const size_t length_size = major == 1 ? 2 : 4;
  unsigned char length_bytes[4] = {0, 0, 0, 0};
  if (std::fread(length_bytes, 1, length_size, file.get()) != length_size) {
    fail(path, "truncated: the file ends inside the header length");
  }
  const uint32_t header_size = length_bytes[0] | length_bytes[1] << 8 | length_bytes[2] << 16 |
                               static_cast<uint32_t>(length_bytes[3]) << 24;
  const uintmax_t data_offset = sizeof prefix + length_size + header_size;
  if (header_size > kMaxHeaderSize) {
    fail(path, "header length " + std::to_string(header_size) + " is implausibly large (limit " +
                   std::to_string(kMaxHeaderSize) + ")");
  }
  if (data_offset > file_size) {
    fail(path, "truncated: the header claims " + std::to_string(header_size) +
                   " bytes but the file ends after " +
                   std::to_string(file_size - (sizeof prefix + length_size)));
  }
  std::string text(header_size, '\0');
  if (std::fread(text.data(), 1, header_size, file.get()) != header_size) {
    fail(path, "truncated: the file ends inside the header");
  }
  const Header header = HeaderParser(text, path).parse();

  // Dtype and layout.
  const std::optional<NpyType> type = parse_descr(header.descr);
  if (!type) {
    const std::string descr = printable(header.descr);
    if (!descr.empty() && descr[0] == '>') {
      fail(path, "big-endian dtype '" + descr + "' is not supported; save it little-endian (astype('<" +
                     descr.substr(1) + "'))");
    }
    fail(path, "unsupported dtype '" + descr +
                   "' (expected float32 '<f4', float16 '<f2', bool '|b1', uint8 '|u1' or int8 '|i1')");
  }
  if (header.fortran_order) {
    fail(path, "array must be C order, but the header says fortran_order: True (use np.ascontiguousarray)");
  }

  // The size, checked against the file before allocating anything.
  const uintmax_t data_in_file = file_size - data_offset;
  const std::optional<int64_t> claimed = npy_byte_size(*type, header.shape);
  if (!claimed) {
    fail(path, "header claims shape " + npy_shape_string(header.shape) +
                   " whose size overflows 64 bits; the file holds " + std::to_string(data_in_file) +
                   " data bytes");
  }
  if (static_cast<uintmax_t>(*claimed) != data_in_file) {
    fail(path, "header claims shape " + npy_shape_string(header.shape) + " = " + std::to_string(*claimed) +
                   " bytes but the file holds " + std::to_string(data_in_file) + " data bytes");
  }

  NpyArray array;
  array.type = *type;
  array.shape = header.shape;
  array.bytes = AlignedBytes(static_cast<size_t>(*claimed));
  const size_t want = static_cast<size_t>(*claimed);
  const size_t have = std::fread(array.bytes.data(), 1, want, file.get());
  if (have != want) {
    if (std::ferror(file.get())) fail(path, std::string("read failed: ") + std::strerror(errno));
    fail(path, "truncated: the file ended after " + std::to_string(have) + " of " + std::to_string(want) +
                   " data bytes (did it change while being read?)");
  }
  return array;
}

void write_npy(const std::string& path, const NpyView& view) { write_npy_together({{path, view}}); }

void write_npy_together(const std::vector<NpyOutput>& outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (outputs[i].path == outputs[j].path) fail(outputs[i].path, "is given twice as an output");
    }
  }
  std::vector<std::string> temps;
  try {
    for (const NpyOutput& out : outputs) {
      temps.push_back(temp_path_for(out.path));
      write_file(out.path, temps.back(), out.view);
    }
  } catch (...) {
    for (const std::string& temp : temps) remove_quietly(temp);
    throw;
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (std::rename(temps[i].c_str(), outputs[i].path.c_str()) != 0) {
      const int error = errno;
      for (size_t j = i; j < temps.size(); ++j) remove_quietly(temps[j]);
      fail(outputs[i].path, "cannot rename " + temps[i] + " onto it: " + std::strerror(error));
    }
  }
}

float float16_to_float32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);  // inf or NaN (payload kept)
  } else if (exponent != 0) {
    out = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;  // +-0
  } else {
    // Subnormal half (mantissa * 2^-24): a normal float after shifting the
    // leading one into the implicit bit.
    uint32_t shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    out = sign | ((127 - 15 + 1 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(out);
}

NpyArray to_float32(NpyArray array, const std::string& what) {
  if (array.type == NpyType::kFloat32) return array;
  if (array.type != NpyType::kFloat16) {
    throw CommandError(what + ": dtype " + npy_type_name(array.type) +
                       " is not supported here; expected float32 '<f4' (or float16 '<f2', converted)");
  }
  NpyArray out = NpyArray::zeros(NpyType::kFloat32, array.shape);
  const uint16_t* in = array.data<uint16_t>();
  float* dst = out.data<float>();
  for (int64_t i = 0; i < array.numel(); ++i) dst[i] = float16_to_float32(in[i]);
  return out;
}

}  // namespace qkv::tools
