// The smallest program using an installed qkv (tests/install/check.sh builds it both ways).
#include <qkv/qkv.h>
#include <cstdio>
#include <vector>
int main() {
  std::vector<float> q(1*4*2*8, 0.5f), k(1*4*1*8, 0.25f), v(1*4*1*8), o(1*4*2*8);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i % 8);
  qkv::AttentionParams p;
  p.q = qkv::Tensor::contiguous(q.data(), qkv::DType::kFloat32, {1, 4, 2, 8});
  p.k = qkv::Tensor::contiguous(k.data(), qkv::DType::kFloat32, {1, 4, 1, 8});
  p.v = qkv::Tensor::contiguous(v.data(), qkv::DType::kFloat32, {1, 4, 1, 8});
  p.o = qkv::Tensor::contiguous(o.data(), qkv::DType::kFloat32, {1, 4, 2, 8});
  p.causal = true;
  qkv::attention(p);
  std::printf("qkv %s: o[0..3] = %g %g %g %g\n", qkv::kVersion, o[0], o[1], o[2], o[3]);
}
