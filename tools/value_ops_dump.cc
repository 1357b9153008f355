// value_ops_dump IN.safetensors OUT.safetensors (add|multiply) VALUE [bf16|f16|f32]: every BF16,
// F16 and F32 tensor of IN with the architecture table's value op applied as the converter does
// (output/planned_rows.h ApplyValueOps: MLX's array-op-Python-float semantics), cast to the given
// dtype (default: its own). tests/python/test_value_ops_vs_mlx.py compares OUT with pip MLX.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "output/planned_rows.h"
#include "stquant/safetensors.h"

using namespace stquant;

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: value_ops_dump IN OUT add|multiply VALUE [bf16|f16|f32]\n");
    return 2;
  }
  const std::string op = argv[3];
  if (op != "add" && op != "multiply") return 2;
  const ValueOp value_op{op == "add" ? ValueOp::Kind::kAdd : ValueOp::Kind::kMultiply, std::strtod(argv[4], nullptr)};
  std::optional<DType> to;
  if (argc == 6) {
    const std::string d = argv[5];
    to = d == "bf16" ? DType::kBF16 : d == "f16" ? DType::kF16 : DType::kF32;
  }
  auto reader = safetensors::Reader::Open(argv[1]);
  if (!reader.ok()) {
    std::fprintf(stderr, "value_ops_dump: %s\n", reader.status().ToString().c_str());
    return 2;
  }
  std::vector<safetensors::TensorDecl> decls;
  std::vector<std::vector<uint8_t>> data;
  for (const safetensors::TensorInfo& t : (*reader)->tensors()) {
    std::vector<uint8_t> in(t.nbytes());
    if (!(*reader)->Read(t, 0, in).ok()) return 3;
    const DType out_dtype = to.value_or(t.dtype);
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::vector<uint8_t> out(n * DTypeBits(out_dtype) / 8);
    output::ApplyValueOps({&value_op, 1}, t.dtype, out_dtype, in.data(), out.data(), n);
    decls.push_back({t.name, out_dtype, t.shape});
    data.push_back(std::move(out));
  }
  auto writer = safetensors::Writer::Create(argv[2], decls);
  if (!writer.ok()) return 3;
  for (size_t i = 0; i < data.size(); ++i) {
    if (!(*writer)->WriteTensorData(i, 0, data[i]).ok()) return 3;
  }
  return (*writer)->Commit().ok() ? 0 : 3;
}
