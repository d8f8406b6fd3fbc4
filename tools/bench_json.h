// A small JSON value for `qkv bench`: built and written for --json and for the
// case list handed to bench/peers.py, parsed from what peers.py prints.
//
// Objects keep their keys in insertion order, so the written file reads in the
// order the program builds it. Numbers are doubles (integers up to 2^53 are
// exact and written without a fraction); NaN and infinities are written as
// null, which is what Python's json module reads back as None.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace qkv::tools {

class Json {
 public:
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool value) : value_(value) {}
  Json(double value) : value_(value) {}
  Json(int value) : value_(static_cast<double>(value)) {}
  Json(int64_t value) : value_(static_cast<double>(value)) {}
  Json(const char* value) : value_(std::string(value)) {}
  Json(std::string value) : value_(std::move(value)) {}
  Json(Array value) : value_(std::move(value)) {}
  Json(Object value) : value_(std::move(value)) {}

  bool is_null() const { return std::holds_alternative<std::monostate>(value_); }
  bool is_bool() const { return std::holds_alternative<bool>(value_); }
  bool is_number() const { return std::holds_alternative<double>(value_); }
  bool is_string() const { return std::holds_alternative<std::string>(value_); }
  bool is_array() const { return std::holds_alternative<Array>(value_); }
  bool is_object() const { return std::holds_alternative<Object>(value_); }

  // The value; throws std::bad_variant_access for another type.
  bool as_bool() const { return std::get<bool>(value_); }
  double as_number() const { return std::get<double>(value_); }
  const std::string& as_string() const { return std::get<std::string>(value_); }
  const Array& as_array() const { return std::get<Array>(value_); }
  const Object& as_object() const { return std::get<Object>(value_); }

  // Member `key` of an object, nullptr if absent or not an object.
  const Json* find(std::string_view key) const;
  // Appends a member (objects) or an element (arrays); *this must be one.
  Json& set(std::string key, Json value);
  Json& push(Json value);

  // Pretty-printed with `indent` spaces per level (0: one line).
  std::string dump(int indent = 2) const;

  // Parses a complete JSON text; throws CommandError naming the offset of
  // the first problem.
  static Json parse(std::string_view text);

 private:
  void dump_to(std::string& out, int indent, int depth) const;

  std::variant<std::monostate, bool, double, std::string, Array, Object> value_;
};

}  // namespace qkv::tools
