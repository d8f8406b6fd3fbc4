// qkv::Error: the one exception type thrown at the public boundary.
#pragma once

#include <stdexcept>
#include <string>

namespace qkv {

// Thrown for invalid arguments. The message names the argument and the values,
// e.g. "kv_heads (3) must divide heads (8)". Nothing is written when it is thrown.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& message) : std::invalid_argument(message) {}
};

}  // namespace qkv
