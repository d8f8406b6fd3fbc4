// JSON writing and a strict recursive-descent parser (RFC 8259); see bench_json.h.
#include "bench_json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>

#include "commands.h"

namespace qkv::tools {

const Json* Json::find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const auto& [name, value] : as_object()) {
    if (name == key) return &value;
  }
  return nullptr;
}

Json& Json::set(std::string key, Json value) {
  auto& members = std::get<Object>(value_);
  members.emplace_back(std::move(key), std::move(value));
  return members.back().second;
}

Json& Json::push(Json value) {
  auto& elements = std::get<Array>(value_);
  elements.push_back(std::move(value));
  return elements.back();
}

namespace {

void append_string(std::string& out, const std::string& text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
          out += escaped;
        } else {
          out += c;  // UTF-8 passes through
        }
    }
  }
  out += '"';
}

void append_number(std::string& out, double value) {
  if (!std::isfinite(value)) {
    out += "null";
    return;
  }
  char buffer[32];
  // Shortest text that reads back as the same double; integers have no ".0".
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  out.append(buffer, result.ptr);
}

void newline(std::string& out, int indent, int depth) {
  if (indent <= 0) return;
  out += '\n';
  out.append(static_cast<size_t>(indent * depth), ' ');
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Json parse_document() {
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the value");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 64;

  [[noreturn]] void fail(const std::string& what) const {
    throw CommandError("invalid JSON at offset " + std::to_string(pos_) + ": " + what);
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool consume(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) return false;
    pos_ += literal.size();
    return true;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nested too deeply");
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') return Json(parse_string());
    if (consume("true")) return Json(true);
    if (consume("false")) return Json(false);
    if (consume("null")) return Json();
    // Python's json.dumps writes these for non-finite floats unless told not to.
    if (consume("NaN")) return Json(std::nan(""));
    if (consume("Infinity")) return Json(HUGE_VAL);
    if (consume("-Infinity")) return Json(-HUGE_VAL);
    return Json(parse_number());
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json object{Json::Object{}};
    skip_space();
    if (consume("}")) return object;
    for (;;) {
      skip_space();
      if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a member name");
      std::string key = parse_string();
      skip_space();
      if (!consume(":")) fail("expected ':'");
      object.set(std::move(key), parse_value(depth + 1));
      skip_space();
      if (consume("}")) return object;
      if (!consume(",")) fail("expected ',' or '}'");
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    Json array{Json::Array{}};
    skip_space();
    if (consume("]")) return array;
    for (;;) {
      array.push(parse_value(depth + 1));
      skip_space();
      if (consume("]")) return array;
      if (!consume(",")) fail("expected ',' or ']'");
    }
  }

  double parse_number() {
    // JSON's grammar is a subset of what from_chars accepts, apart from a
    // leading '-' (accepted) and '+' / "inf" / "nan" (rejected above or here).
    const char* first = text_.data() + pos_;
    const char* last = text_.data() + text_.size();
    if (*first != '-' && (*first < '0' || *first > '9')) fail("unexpected character");
    double value = 0;
    const auto result = std::from_chars(first, last, value);
    if (result.ec == std::errc::invalid_argument) fail("invalid number");
    // Out of range: from_chars leaves value alone; saturate like strtod.
    if (result.ec == std::errc::result_out_of_range) value = (*first == '-') ? -HUGE_VAL : HUGE_VAL;
    pos_ += static_cast<size_t>(result.ptr - first);
    return value;
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
      else fail("invalid \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // '"'
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = parse_hex4();
          if (code >= 0xD800 && code < 0xDC00 && consume("\\u")) {  // surrogate pair
            const unsigned low = parse_hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("invalid surrogate pair");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default: fail(std::string("invalid escape \\") + e);
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

void Json::dump_to(std::string& out, int indent, int depth) const {
  if (is_null()) {
    out += "null";
  } else if (is_bool()) {
    out += as_bool() ? "true" : "false";
  } else if (is_number()) {
    append_number(out, as_number());
  } else if (is_string()) {
    append_string(out, as_string());
  } else if (is_array()) {
    const Array& elements = as_array();
    if (elements.empty()) {
      out += "[]";
      return;
    }
    out += '[';
    for (size_t i = 0; i < elements.size(); ++i) {
      if (i > 0) out += ',';
      newline(out, indent, depth + 1);
      elements[i].dump_to(out, indent, depth + 1);
    }
    newline(out, indent, depth);
    out += ']';
  } else {
    const Object& members = as_object();
    if (members.empty()) {
      out += "{}";
      return;
    }
    out += '{';
    for (size_t i = 0; i < members.size(); ++i) {
      if (i > 0) out += ',';
      newline(out, indent, depth + 1);
      append_string(out, members[i].first);
      out += indent > 0 ? ": " : ":";
      members[i].second.dump_to(out, indent, depth + 1);
    }
    newline(out, indent, depth);
    out += '}';
  }
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

Json Json::parse(std::string_view text) { return Parser(text).parse_document(); }

}  // namespace qkv::tools
