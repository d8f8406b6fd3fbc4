// `qkv bench decode`: one decode step (batch 1, 32 query heads, 8 KV heads,
// head_dim 128, one new token) against a KVCache of 4K to 1M tokens in every
// cache type, as GB/s of K/V read and as a fraction of this machine's read
// bandwidth, measured in the same run by runtime/bandwidth_probe.h; against a
// baseline that re-reads K/V once per query head; int8 against float16.
#pragma once

#include <CLI/CLI.hpp>

namespace qkv::tools {

// Adds the `decode` subcommand to the `bench` subcommand (bench_command.cpp).
void register_bench_decode(CLI::App& bench);

}  // namespace qkv::tools
