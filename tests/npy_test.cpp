// Tests of the .npy reader and writer (tools/npy.h): round trips, numpy's
// exact bytes, every malformed-file case, and the all-or-nothing writer.
#include "npy.h"

#include <gtest/gtest.h>
#include <sys/stat.h>  // mkfifo
#include <unistd.h>    // getpid

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "commands.h"

#include "npy.h"

// The largest over-aligned allocation made so far. AlignedBytes allocates
// through the aligned operator new, so replacing just that one form lets a
// test prove that a hostile header is rejected before anything is allocated.
// (It is the program-wide replacement, but does what the default does:
// aligned_alloc and free.)
static std::atomic<size_t> g_largest_aligned_new{0};

void* operator new(std::size_t size, std::align_val_t align) {
  size_t seen = g_largest_aligned_new.load();
  while (size > seen && !g_largest_aligned_new.compare_exchange_weak(seen, size)) {
  }
  const auto alignment = static_cast<size_t>(align);
  const size_t rounded = (std::max<size_t>(size, 1) + alignment - 1) / alignment * alignment;
  if (rounded < size) throw std::bad_alloc();
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }

namespace qkv::tools {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("qkv_npy_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  // Names of the files in the directory, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(path_)) out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A .npy file with an arbitrary header dict (padded as numpy pads it) and
// arbitrary data: the hostile files of the tests.
std::string raw_npy(const std::string& dict, const std::string& data, int major = 1) {
  const size_t length_size = major == 1 ? 2 : 4;
  std::string header = dict;
  const size_t unpadded = 8 + length_size + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  for (size_t i = 0; i < length_size; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string f4_dict(const std::string& shape) {
  return "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
}

// The message of the CommandError that read_npy(path) throws ("" if none).
std::string read_error(const std::string& path) {
  try {
    read_npy(path);
  } catch (const CommandError& e) {
    return e.what();
  }
  return "";
}

TEST(Npy, RoundTripsEveryTypeAndRank) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> shapes = {{}, {5}, {2, 3}, {3, 0}, {2, 3, 4, 5}, {1, 1, 1, 1, 7}};
  for (NpyType type :
       {NpyType::kFloat32, NpyType::kFloat16, NpyType::kBool, NpyType::kUInt8, NpyType::kInt8}) {
    for (const auto& shape : shapes) {
      SCOPED_TRACE(std::string(npy_type_name(type)) + " " + npy_shape_string(shape));
      NpyArray array = NpyArray::zeros(type, shape);
      auto* bytes = static_cast<unsigned char*>(array.bytes.data());
      for (size_t i = 0; i < array.bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 37 % 2);
      const std::string path = dir.file("a.npy");
      write_npy(path, array.view());
      const NpyArray back = read_npy(path);
      EXPECT_EQ(back.type, type);
      EXPECT_EQ(back.shape, shape);
      ASSERT_EQ(back.bytes.size(), array.bytes.size());
      EXPECT_EQ(std::memcmp(back.bytes.data(), array.bytes.data(), array.bytes.size()), 0);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(back.bytes.data()) % 64, 0u);
      EXPECT_NE(back.bytes.data(), nullptr);
    }
  }
  EXPECT_EQ(dir.names(), std::vector<std::string>{"a.npy"});  // no temporary left
}

// np.save("a.npy", np.arange(6, dtype="<f4").reshape(2, 3)) writes exactly these bytes.
TEST(Npy, WritesAndReadsNumpysExactBytes) {
  TempDir dir;
  const float values[6] = {0, 1, 2, 3, 4, 5};
  std::string numpy = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + std::string(58, ' ') +
                      "\n" + std::string(reinterpret_cast<const char*>(values), sizeof values);
  ASSERT_EQ(numpy.size(), 152u);
  write_npy(dir.file("ours.npy"), NpyView{NpyType::kFloat32, {2, 3}, values});
  EXPECT_EQ(read_bytes(dir.file("ours.npy")), numpy);

  write_bytes(dir.file("numpy.npy"), numpy);
  const NpyArray a = read_npy(dir.file("numpy.npy"));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.data<float>()[5], 5.0f);
}

TEST(Npy, ReadsFormatVersions2And3AndLooseDicts) {
  TempDir dir;
  const std::string data(8, '\0');
  for (int major : {2, 3}) {
    write_bytes(dir.file("v.npy"), raw_npy(f4_dict("(2,)"), data, major));
    EXPECT_EQ(read_npy(dir.file("v.npy")).shape, std::vector<int64_t>{2}) << "version " << major;
  }
  // Keys in any order, double quotes, no trailing comma, Python 2 longs.
  write_bytes(dir.file("loose.npy"),
              raw_npy("{\"shape\": (1L, 2), \"fortran_order\": False, \"descr\": \"<f4\"}", data));
  EXPECT_EQ(read_npy(dir.file("loose.npy")).shape, (std::vector<int64_t>{1, 2}));
  // One-byte types with any byte order mark.
  write_bytes(dir.file("u1.npy"),
              raw_npy("{'descr': '<u1', 'fortran_order': False, 'shape': (3,), }", "abc"));
  EXPECT_EQ(read_npy(dir.file("u1.npy")).type, NpyType::kUInt8);
}

struct MalformedCase {
  const char* name;
  std::string bytes;
  const char* expected;  // a phrase the message must contain
};

TEST(Npy, EveryMalformedFileNamesItsProblem) {
  const std::string data24(24, '\0');
  const std::string magic = std::string("\x93NUMPY", 6);
  const std::vector<MalformedCase> cases = {
      {"empty", "", "is empty"},
      {"truncated magic", magic.substr(0, 4), "truncated"},
      {"no version", magic, "truncated"},
      {"bad magic", "PK\x03\x04 this is a zip file", "not a .npy file"},
      {"unknown version", magic + "\x04" + '\0' + "\x10" + '\0', "version 4.0"},
      {"truncated header length", magic + "\x01" + '\0' + "\x76", "header length"},
      {"truncated header", magic + "\x01" + '\0' + "\x76" + '\0' + "{'descr': '<f4'", "truncated"},
      {"header length too large", magic + "\x02" + '\0' + "\xf0\xff\xff\xff" + std::string(100, ' '),
       "implausibly large"},
      {"data too short", raw_npy(f4_dict("(2, 3)"), data24.substr(0, 20)),
       "header claims shape (2, 3) = 24 bytes but the file holds 20 data bytes"},
      {"data too long", raw_npy(f4_dict("(2, 3)"), data24 + "xxxx"), "the file holds 28 data bytes"},
      {"size overflows", raw_npy(f4_dict("(4611686018427387904, 4)"), data24), "overflows 64 bits"},
      {"dimension overflows", raw_npy(f4_dict("(99999999999999999999,)"), data24), "does not fit in 64 bits"},
      {"negative dimension", raw_npy(f4_dict("(2, -3)"), data24), "negative dimension (-3)"},
      {"big-endian", raw_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", data24),
       "big-endian dtype '>f4'"},
      {"float64", raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", data24),
       "unsupported dtype '<f8'"},
      {"structured", raw_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", data24),
       "malformed"},
      {"fortran order", raw_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data24),
       "must be C order"},
      {"not a dict", raw_npy("['descr', '<f4']", data24), "malformed"},
      {"missing shape", raw_npy("{'descr': '<f4', 'fortran_order': False, }", data24), "missing key 'shape'"},
      {"unknown key", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}", data24),
       "unexpected or repeated key 'x'"},
      {"repeated key",
       raw_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,)}", data24),
       "unexpected or repeated key 'descr'"},
      {"text after dict", raw_npy(f4_dict("(6,)") + " junk", data24), "after the closing"},
      {"unterminated string", raw_npy("{'descr': '<f4, 'fortran_order': False, 'shape': (6,), }", data24),
       "malformed"},
      {"shape is a list", raw_npy(f4_dict("[2, 3]"), data24), "expected '('"},
      {"shape not closed", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3 }", data24),
       "malformed"},
      {"fortran_order not bool", raw_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (6,), }", data24),
       "True or False"},
      {"binary garbage header", raw_npy(std::string("{\x01\x02\n\x7f", 5), data24), "malformed"},
  };
  TempDir dir;
  for (const MalformedCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.file("bad.npy");
    write_bytes(path, c.bytes);
    const std::string message = read_error(path);
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;  // starts with the file name
    EXPECT_NE(message.find(c.expected), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;  // one line
  }
}

TEST(Npy, MissingFileDirectoryAndFifoAreErrors) {
  TempDir dir;
  EXPECT_NE(read_error(dir.file("missing.npy")).find("cannot open: No such file"), std::string::npos);
  fs::create_directory(dir.file("sub.npy"));
  EXPECT_NE(read_error(dir.file("sub.npy")).find("is a directory"), std::string::npos);
  // Opening a FIFO would block until a writer appears; it must be refused first.
  ASSERT_EQ(::mkfifo(dir.file("fifo.npy").c_str(), 0600), 0);
  EXPECT_NE(read_error(dir.file("fifo.npy")).find("not a regular file"), std::string::npos);
}

TEST(Npy, TerabyteHeaderIsRejectedWithoutAllocating) {
  TempDir dir;
  const std::string path = dir.file("Q.npy");
  write_bytes(path, raw_npy(f4_dict("(1000000, 1000, 8, 128)"), std::string(4096, '\0')));
  g_largest_aligned_new = 0;
  const std::string message = read_error(path);
  EXPECT_EQ(message, path +
                         ": header claims shape (1000000, 1000, 8, 128) = 4096000000000 bytes "
                         "but the file holds 4096 data bytes");
  EXPECT_LT(g_largest_aligned_new.load(), size_t{1} << 20);
}

TEST(Npy, WriteTogetherTouchesNoTargetWhenOneFails) {
  TempDir dir;
  const std::string o_path = dir.file("O.npy");
  write_bytes(o_path, "precious");
  const float value = 1.0f;
  const NpyView view{NpyType::kFloat32, {1}, &value};
  // The second output cannot be created: the first must stay as it was.
  EXPECT_THROW(write_npy_together({{o_path, view}, {dir.file("missing/LSE.npy"), view}}), CommandError);
  EXPECT_EQ(read_bytes(o_path), "precious");
  EXPECT_EQ(dir.names(), std::vector<std::string>{"O.npy"});
  // The same output twice is refused before anything is written.
  EXPECT_THROW(write_npy_together({{o_path, view}, {o_path, view}}), CommandError);
  EXPECT_EQ(read_bytes(o_path), "precious");
  // Success replaces both.
  write_npy_together({{o_path, view}, {dir.file("LSE.npy"), view}});
  EXPECT_EQ(read_npy(o_path).data<float>()[0], 1.0f);
  EXPECT_EQ(read_npy(dir.file("LSE.npy")).data<float>()[0], 1.0f);
  EXPECT_EQ(dir.names(), (std::vector<std::string>{"LSE.npy", "O.npy"}));
}

TEST(Npy, WriteIntoMissingDirectoryNamesThePath) {
  TempDir dir;
  const float value = 0;
  try {
    write_npy(dir.file("missing/O.npy"), NpyView{NpyType::kFloat32, {1}, &value});
    FAIL() << "no error";
  } catch (const CommandError& e) {
    EXPECT_NE(std::string(e.what()).find("missing/O.npy: cannot create temporary file"), std::string::npos)
        << e.what();
  }
}

TEST(Npy, Float16ConvertsExactly) {
  EXPECT_EQ(float16_to_float32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(float16_to_float32(0x8000)));
  EXPECT_EQ(float16_to_float32(0x3c00), 1.0f);
  EXPECT_EQ(float16_to_float32(0xc000), -2.0f);
  EXPECT_EQ(float16_to_float32(0x3555), 0.333251953125f);
  EXPECT_EQ(float16_to_float32(0x7bff), 65504.0f);                  // largest half
  EXPECT_EQ(float16_to_float32(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(float16_to_float32(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(float16_to_float32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(float16_to_float32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(float16_to_float32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(float16_to_float32(0x7e00)));

  NpyArray half = NpyArray::zeros(NpyType::kFloat16, {2});
  half.data<uint16_t>()[0] = 0x3c00;
  half.data<uint16_t>()[1] = 0xc000;
  const NpyArray single = to_float32(std::move(half), "h.npy");
  EXPECT_EQ(single.type, NpyType::kFloat32);
  EXPECT_EQ(single.data<float>()[0], 1.0f);
  EXPECT_EQ(single.data<float>()[1], -2.0f);
  EXPECT_THROW(to_float32(NpyArray::zeros(NpyType::kBool, {2}), "b.npy"), CommandError);
}

}  // namespace
}  // namespace qkv::tools
