// A one-line progress report on stderr for commands that run for minutes.
//
// On a terminal the line is redrawn in place ("\r", erase to the end) and
// erased by finish(), so only the command's real output stays on screen. In a
// log (stderr not a terminal) each line is printed once, its pieces appended
// as they happen, so a slow step still shows where the command is.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <string>

namespace qkv::tools {

class ProgressLine {
 public:
  ProgressLine() : tty_(isatty(fileno(stderr)) != 0) {}
  ~ProgressLine() { finish(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Replaces the current line (terminal) or ends it and begins a new one (log).
  void start(const std::string& text) {
    if (tty_) {
      std::fputs("\r\033[K", stderr);
    } else if (open_) {
      std::fputc('\n', stderr);
    }
    std::fputs(text.c_str(), stderr);
    open_ = true;
    std::fflush(stderr);
  }

  // Adds text to the current line.
  void append(const std::string& text) {
    std::fputs(text.c_str(), stderr);
    open_ = true;
    std::fflush(stderr);
  }

  // Erases the line (terminal) or ends it (log).
  void finish() {
    if (!open_) return;
    std::fputs(tty_ ? "\r\033[K" : "\n", stderr);
    open_ = false;
    std::fflush(stderr);
  }

 private:
  bool tty_;
  bool open_ = false;
};

}  // namespace qkv::tools
