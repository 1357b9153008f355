// codec_dump IN OUT: for the tensors of IN, writes OUT with our numeric codecs applied:
//   F32 tensor "x"  -> "x.to_bf16" (U16 bits), "x.to_f16" (U16 bits), "x.to_e4m3" (U8)
//   U16 tensor "x"  -> "x.bf16_to_f32", "x.f16_to_f32" (F32)
//   U8 tensor "x"   -> "x.e4m3_to_f32" (MLX <= 0.32.2), "x.e4m3fn_to_f32" (0x7F NaN), "x.e5m2_to_f32", "x.e8m0_to_f32", "x.e2m1_to_f32" (F32),
//                     
// tests/python/test_numeric_codecs.py compares OUT with ml_dtypes and pip MLX.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "numeric/bf16.h"
#include "numeric/e8m0.h"
#include "numeric/f16.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"
#include "stquant/safetensors.h"

using namespace stquant;

namespace {

struct Output {
  std::string name;
  DType dtype;
  std::vector<uint8_t> bytes;
};

template <typename T>
void Append(std::vector<uint8_t>& bytes, T value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  bytes.insert(bytes.end(), p, p + sizeof(T));
}

int Fail(const Status& s) {
  std::fprintf(stderr, "codec_dump: %s\n", s.ToString().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: codec_dump IN.safetensors OUT.safetensors\n");
    return 2;
  }
  auto reader = safetensors::Reader::Open(argv[1]);
  if (!reader.ok()) return Fail(reader.status());
  std::vector<Output> outputs;
  for (const auto& info : (*reader)->tensors()) {
    std::vector<uint8_t> in(info.nbytes());
    if (Status s = (*reader)->Read(info, 0, in); !s.ok()) return Fail(s);
    const int64_t n = info.num_elements();
    if (info.dtype == DType::kF32) {
      Output bf{info.name + ".to_bf16", DType::kU16, {}}, h{info.name + ".to_f16", DType::kU16, {}},
          e{info.name + ".to_e4m3", DType::kU8, {}};
      for (int64_t i = 0; i < n; ++i) {
        float x;
        std::memcpy(&x, in.data() + 4 * i, 4);
        Append(bf.bytes, numeric::BF16FromFloat(x));
        Append(h.bytes, numeric::F16FromFloat(x));
        Append(e.bytes, numeric::E4M3FromFloat(x));
      }
      outputs.push_back(std::move(bf));
      outputs.push_back(std::move(h));
      outputs.push_back(std::move(e));
    } else if (info.dtype == DType::kU16) {
      Output bf{info.name + ".bf16_to_f32", DType::kF32, {}}, h{info.name + ".f16_to_f32", DType::kF32, {}};
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, in.data() + 2 * i, 2);
        Append(bf.bytes, numeric::BF16ToFloat(v));
        Append(h.bytes, numeric::F16ToFloat(v));
      }
      outputs.push_back(std::move(bf));
      outputs.push_back(std::move(h));
    } else if (info.dtype == DType::kU8) {
      Output e4{info.name + ".e4m3_to_f32", DType::kF32, {}}, e4fn{info.name + ".e4m3fn_to_f32", DType::kF32, {}}, e5{info.name + ".e5m2_to_f32", DType::kF32, {}},
          e8{info.name + ".e8m0_to_f32", DType::kF32, {}}, f4{info.name + ".e2m1_to_f32", DType::kF32, {}};
      for (int64_t i = 0; i < n; ++i) {
        Append(e4.bytes, numeric::E4M3ToFloat(in[i]));
        Append(e4fn.bytes, numeric::E4M3FnToFloat(in[i]));
        Append(e5.bytes, numeric::E5M2ToFloat(in[i]));
        Append(e8.bytes, numeric::E8M0ToFloat(in[i]));
        Append(f4.bytes, numeric::E2M1ToFloat(in[i] & 0xF));
      }
      outputs.push_back(std::move(e4));
      outputs.push_back(std::move(e4fn));
      outputs.push_back(std::move(e5));
      outputs.push_back(std::move(e8));
      outputs.push_back(std::move(f4));
    }
  }
  std::vector<safetensors::TensorDecl> decls;
  for (const Output& o : outputs) {
    const int64_t count = static_cast<int64_t>(o.bytes.size() / (DTypeBits(o.dtype) / 8));
    decls.push_back({o.name, o.dtype, {count}});
  }
  auto writer = safetensors::Writer::Create(argv[2], decls);
  if (!writer.ok()) return Fail(writer.status());
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (Status s = (*writer)->WriteTensorData(i, 0, outputs[i].bytes); !s.ok()) return Fail(s);
  }
  if (Status s = (*writer)->Commit(); !s.ok()) return Fail(s);
  return 0;
}
