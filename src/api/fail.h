// Formatting of qkv::Error messages at the API boundary.
#pragma once

#include <sstream>

#include "qkv/error.h"

namespace qkv::internal {

// Throws qkv::Error with the parts streamed together:
// fail("kv_heads (", 3, ") must divide heads (", 8, ")").
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw Error(out.str());
}

}  // namespace qkv::internal
