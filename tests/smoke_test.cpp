#include <gtest/gtest.h>
#include "qkv/qkv.h"
TEST(Smoke, Builds) { SUCCEED(); }
