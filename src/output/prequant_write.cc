#include "output/prequant_write.h"

#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "numeric/bf16.h"
#include "numeric/e8m0.h"
#include "numeric/fp4.h"
#include "numeric/fp8.h"
#include "output/mlx_files.h"
#include "output/output_dir.h"
#include "output/planned_rows.h"
#include "quant/element.h"
#include "safetensors/format.h"
#include "stquant/quantize.h"

namespace stquant::output {

namespace {

using model::Inventory;
using model::PrequantOp;
using model::PrequantRole;
using model::PrequantTensor;
using safetensors::TensorInfo;

std::string P(std::string_view name) { return safetensors::internal::Printable(name); }

struct Source {
  const safetensors::Reader* reader;
  const TensorInfo* info;
};
Source Find(const Inventory& inv, const std::string& name) {
  const model::TensorRef* ref = inv.Find(name);
  return {inv.shards()[ref->shard].reader.get(), ref->info};
}

Result<float> ReadScalar(const Inventory& inv, const std::string& name) {
  Source s = Find(inv, name);
  if (s.info->dtype != DType::kF32 || s.info->nbytes() != 4) {
    return Status::InvalidInput(fmt::format("{}: tensor '{}' is not an F32 scalar", s.reader->path(), P(name)));
  }
  float v = 0;
  STQ_RETURN_IF_ERROR(s.reader->Read(*s.info, 0, {reinterpret_cast<uint8_t*>(&v), 4}));
  if (!std::isfinite(v) || !(v > 0)) {
    return Status::InvalidInput(
        fmt::format("{}: tensor '{}': global scale {} is not a positive finite number", s.reader->path(), P(name), v));
  }
  return v;
}

// The source's per-block scale for E4M3 byte b (magnitude): f32(e4m3 * ws2), or f32(e4m3 / G).
float SourceBlockScale(uint8_t b, float scalar, bool inverted) {
  const float v = numeric::E4M3ToFloat(b & 0x7F);
  return inverted ? v / scalar : v * scalar;
}

// Byte transforms read their source in pieces of at most this: larger reads gain nothing, and the
// ollama layout imports several blobs at once, one per thread.
constexpr uint64_t kPieceBytes = 4 << 20;

// Calls fn(offset, bytes) over the bytes [begin, end) of a tensor in pieces of at most
// kPieceBytes, so that memory does not grow with the tensor. Not reentrant: fn must not call it.
Status ForEachPiece(const Source& src, uint64_t begin, uint64_t end,
                    const std::function<Status(uint64_t offset, std::span<uint8_t> bytes)>& fn) {
  // One buffer per thread, kept across tensors: a fresh one would be faulted in (and zeroed) again.
  thread_local std::vector<uint8_t> buffer;
  const uint64_t piece_bytes = std::min<uint64_t>(end - begin, kPieceBytes);
  if (buffer.size() < piece_bytes) buffer.resize(piece_bytes);
  for (uint64_t at = begin; at < end; at += piece_bytes) {
    const std::span<uint8_t> piece(buffer.data(), std::min<uint64_t>(piece_bytes, end - at));
    STQ_RETURN_IF_ERROR(src.reader->Read(*src.info, at, piece));
    STQ_RETURN_IF_ERROR(fn(at, piece));
  }
  return Status::Ok();
}

// The E4M3 magnitude bytes present in scale tensors (0x7F, NaN in E4M3FN, is an error).
Result<std::array<bool, 128>> PresentBytes(const Inventory& inv, const std::string& name) {
  const Source src = Find(inv, name);
  std::array<bool, 128> present{};
  STQ_RETURN_IF_ERROR(ForEachPiece(src, 0, src.info->nbytes(), [&](uint64_t offset, std::span<uint8_t> bytes) {
    for (size_t i = 0; i < bytes.size(); ++i) {
      if ((bytes[i] & 0x7F) == 0x7F) {
        return Status::InvalidInput(fmt::format("{}: tensor '{}': element {} is the E4M3 NaN code 0x{:02X}",
                                                src.reader->path(), P(name), offset + i, bytes[i]));
      }
      present[bytes[i] & 0x7F] = true;
    }
    return Status::Ok();
  }));
  return present;
}

// With `at_bf16`, equality of every dequantized value rounded to bfloat16 (e2m1 * block scale for
// the seven non-zero E2M1 magnitudes) instead of equality of the float32 block scales.
bool ScaleWorks(float r, float scalar, bool inverted, const std::array<bool, 128>& bytes, bool at_bf16) {
  for (int b = 0; b < 127; ++b) {
    if (!bytes[b]) continue;
    const float mlx = numeric::E4M3ToFloat(static_cast<uint8_t>(b)) * r;
    const float want = SourceBlockScale(static_cast<uint8_t>(b), scalar, inverted);
    if (!at_bf16) {
      if (mlx != want) return false;
      continue;
    }
    for (int code = 1; code < 8; ++code) {
      const float e = numeric::E2M1ToFloat(static_cast<uint8_t>(code));
      if (numeric::RoundToBF16(e * mlx) != numeric::RoundToBF16(e * want)) return false;
    }
  }
  return true;
}

// The MLX global scale g: MLX's CPU dequant multiplies from_fp8(byte) by f32(g / 2688) in float32;
// g must make that product equal the source's block scale for every byte in `bytes` (or, with
// `at_bf16`, give the same bfloat16 weights).
std::optional<float> FindGlobalScale(float scalar, bool inverted, const std::array<bool, 128>& bytes, bool at_bf16) {
  const float r0 = inverted ? 1.0f / scalar : scalar;
  constexpr int kUlps = 16;
  for (int k = 0; k <= 2 * kUlps; ++k) {
    // r0, r0+1ulp, r0-1ulp, r0+2ulp, ...
    float r = r0;
    const int steps = (k + 1) / 2;
    for (int i = 0; i < steps; ++i) r = std::nextafter(r, k % 2 ? INFINITY : 0.0f);
    if (!ScaleWorks(r, scalar, inverted, bytes, at_bf16)) continue;
    const float g0 = r * 2688.0f;
    for (int j = 0; j <= 2 * 64; ++j) {
      float g = g0;
      for (int i = 0; i < (j + 1) / 2; ++i) g = std::nextafter(g, j % 2 ? INFINITY : 0.0f);
      if (std::isfinite(g) && g / 2688.0f == r) return g;
    }
  }
  return std::nullopt;
}

Status WriteBytes(const WriteTarget& target, uint64_t& offset, std::span<const uint8_t> bytes) {
  STQ_RETURN_IF_ERROR(target.Write(offset, bytes));
  offset += bytes.size();
  return Status::Ok();
}

}  // namespace

Status WritePrequantTensor(const Inventory& inv, const PrequantTensor& t, const WriteTarget& target,
                           const std::function<void(uint64_t)>& progress) {
  if (t.op == PrequantOp::kDecodeFp8) {  // through the float sources' FP8 decode
    const PlannedTensor planned = model::DecodedFp8Tensor(t, t.name);
    return CopyRows(PlannedRows(inv, planned, QuantProfile::kMlxCpu), target, /*threads=*/0, progress);
  }
  uint64_t offset = 0;
  auto done = [&](uint64_t bytes) {
    if (progress) progress(bytes);
  };
  for (size_t si = 0; si < t.sources.size(); ++si) {
    const std::string& name = t.sources[si];
    const Source src = Find(inv, name);
    const std::string where = fmt::format("{}: tensor '{}'", src.reader->path(), P(name));
    switch (t.op) {
      case PrequantOp::kCopy: {
        STQ_RETURN_IF_ERROR(ForEachPiece(src, 0, src.info->nbytes(), [&](uint64_t, std::span<uint8_t> bytes) {
          done(bytes.size());
          return WriteBytes(target, offset, bytes);
        }));
        break;
      }
      case PrequantOp::kSelectRows: {
        const auto& shape = src.info->shape;
        int64_t outer = 1, inner = DTypeBits(src.info->dtype) / 8;
        for (int a = 0; a < t.axis; ++a) outer *= shape[a];
        for (size_t a = t.axis + 1; a < shape.size(); ++a) inner *= shape[a];
        const int64_t n = shape[t.axis];
        for (int64_t o = 0; o < outer; ++o) {
          for (int64_t i = t.offset; i < n; i += t.stride) {
            const uint64_t row = (o * n + i) * inner;
            STQ_RETURN_IF_ERROR(ForEachPiece(src, row, row + inner, [&](uint64_t, std::span<uint8_t> bytes) {
              done(bytes.size());
              return WriteBytes(target, offset, bytes);
            }));
          }
        }
        break;
      }
      case PrequantOp::kFoldScales: {
        STQ_ASSIGN_OR_RETURN(const float scalar, ReadScalar(inv, t.aux[si]));
        std::array<int, 128> map;
        map.fill(-1);
        STQ_RETURN_IF_ERROR(ForEachPiece(src, 0, src.info->nbytes(), [&](uint64_t at, std::span<uint8_t> bytes) {
          for (size_t i = 0; i < bytes.size(); ++i) {
            const uint8_t b = bytes[i] & 0x7F;
            if (b == 0x7F) {
              return Status::InvalidInput(
                  fmt::format("{}: element {} is the E4M3 NaN code 0x{:02X}", where, at + i, bytes[i]));
            }
            if (map[b] < 0) {
              const float want = SourceBlockScale(b, scalar, t.inverted);
              const uint8_t folded = numeric::E4M3FromFloat(want);
              if (numeric::E4M3ToFloat(folded) != want) {
                return Status::Unsupported(fmt::format(
                    "{}: NVFP4 layer '{}': its global scale ('{}' = {}) cannot be folded exactly into the E4M3 block "
                    "scales (byte 0x{:02X} = {} becomes {}, not an E4M3 value), and mlx's QuantizedLinear has no global "
                    "scale (mlx 0.32.4); only stacked experts (QuantizedSwitchLinear) keep one. Use -q TYPE "
                    "--requantize to dequantize and quantize again (loses accuracy)",
                    where, P(t.layer), P(t.aux[si]), scalar, b, numeric::E4M3ToFloat(b), want));
              }
              map[b] = folded;
            }
            bytes[i] = static_cast<uint8_t>(map[b] | (bytes[i] & 0x80));
          }
          done(bytes.size());
          return WriteBytes(target, offset, bytes);
        }));
        break;
      }
      case PrequantOp::kMlxGlobalScale: {
        STQ_ASSIGN_OR_RETURN(const float scalar, ReadScalar(inv, name));
        std::array<bool, 128> all{};
        all.fill(true);
        all[0x7F] = false;
        std::optional<float> g = FindGlobalScale(scalar, t.inverted, all, false);
        if (!g) {
          STQ_ASSIGN_OR_RETURN(const auto present, PresentBytes(inv, t.aux[si]));
          g = FindGlobalScale(scalar, t.inverted, present, false);
          // compressed-tensors divides by its global scale, which a float32 multiplication cannot
          // always reproduce; its decompressor returns bfloat16 weights, so equal bfloat16 weights
          // are what a lossless import must keep.
          if (!g && t.inverted) g = FindGlobalScale(scalar, t.inverted, present, true);
        }
        if (!g) {
          return Status::Unsupported(fmt::format(
              "{}: NVFP4 layer '{}': no float32 global scale g makes MLX's f32(e4m3 * f32(g / 2688)) equal the "
              "source's {} for every block scale byte of '{}'; the import would not be lossless. Use -q TYPE "
              "--requantize to dequantize and quantize again (loses accuracy)",
              where, P(t.layer), t.inverted ? "f32(e4m3 / weight_global_scale)" : "f32(e4m3 * weight_scale_2)",
              P(t.aux[si])));
        }
        STQ_RETURN_IF_ERROR(WriteBytes(target, offset, {reinterpret_cast<const uint8_t*>(&*g), 4}));
        done(4);
        break;
      }
      case PrequantOp::kScalarF32:
      case PrequantOp::kReciprocalF32: {
        STQ_ASSIGN_OR_RETURN(float v, ReadScalar(inv, name));
        if (t.op == PrequantOp::kReciprocalF32) v = 1.0f / v;
        STQ_RETURN_IF_ERROR(WriteBytes(target, offset, {reinterpret_cast<const uint8_t*>(&v), 4}));
        done(4);
        break;
      }
      case PrequantOp::kAffineBias: {
        // Row by row, in chunks of groups: memory stays bounded whatever the shape.
        const DType dtype = src.info->dtype;
        const int elem = DTypeBits(dtype) / 8;
        const int64_t rows = src.info->shape[0], groups = src.info->shape[1];
        const bool has_zero = !t.aux[si].empty();
        const Source zero_src = has_zero ? Find(inv, t.aux[si]) : Source{};
        const int pack = 32 / t.bits;
        const uint32_t mask = (1u << t.bits) - 1;
        const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kBlockBytes) / 8);
        std::vector<uint8_t> scales(std::min(chunk, groups) * elem), out(scales.size());
        std::vector<uint32_t> zero(has_zero ? std::min(chunk, groups) : 0);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t g0 = 0; g0 < groups; g0 += chunk) {
            const int64_t n = std::min(chunk, groups - g0);
            const std::span<uint8_t> s_bytes(scales.data(), n * elem), out_bytes(out.data(), n * elem);
            STQ_RETURN_IF_ERROR(src.reader->Read(*src.info, (r * groups + g0) * elem, s_bytes));
            if (has_zero) {
              // The zero point is packed like the codes, `pack` rows to a word, along dim 0.
              const std::span<uint8_t> words(reinterpret_cast<uint8_t*>(zero.data()), static_cast<size_t>(n) * 4);
              STQ_RETURN_IF_ERROR(zero_src.reader->Read(*zero_src.info, ((r / pack) * groups + g0) * 4, words));
            }
            for (int64_t k = 0; k < n; ++k) {
              // Stored codes are q + 2^(bits-1); with a zero point, q - zero_point.
              const uint32_t c = has_zero ? (zero[k] >> (t.bits * (r % pack))) & mask : 1u << (t.bits - 1);
              const double scale = quant::LoadElement(dtype, scales.data(), k);
              const double exact = -static_cast<double>(c) * scale;
              const float f = static_cast<float>(exact);
              quant::StoreElement(dtype, out.data(), k, f);
              if (static_cast<double>(f) != exact || quant::LoadElement(dtype, out.data(), k) != f) {
                return Status::Unsupported(fmt::format(
                    "{}: affine layer '{}': bias -{} * scale {} (row {}, group {}) is not exactly representable in "
                    "{}; MLX's affine bias would round it. Use -q TYPE --requantize (loses accuracy)",
                    where, P(t.layer), c, scale, r, g0 + k, DTypeName(dtype)));
              }
            }
            STQ_RETURN_IF_ERROR(WriteBytes(target, offset, out_bytes));
            done(out_bytes.size());
          }
        }
        break;
      }
      case PrequantOp::kDecodeFp8:  // the whole tensor at once, above
        return Status::Internal(fmt::format("prequant: tensor '{}': FP8 decode reached the byte copy", P(t.name)));
    }
  }
  if (offset != t.bytes) {
    return Status::Internal(fmt::format("prequant: tensor '{}': wrote {} bytes, planned {}", P(t.name), offset, t.bytes));
  }
  return Status::Ok();
}

RowSource PrequantLayerRows(const Inventory& inv, const model::PrequantLayer& layer,
                            std::vector<const PrequantTensor*> tensors, std::vector<int64_t> shape, DType dtype,
                            model::SourceKind kind) {
  RowSource source;
  source.name = fmt::format("{}: layer '{}'", inv.path(), layer.path);
  source.dtype = dtype;
  SetRowShape(source, shape, 1);
  const PrequantTensor* weight = nullptr;
  const PrequantTensor* scales = nullptr;
  const PrequantTensor* biases = nullptr;
  const PrequantTensor* global = nullptr;
  for (const PrequantTensor* t : tensors) {
    if (t->role == PrequantRole::kWeight) weight = t;
    if (t->role == PrequantRole::kScales) scales = t;
    if (t->role == PrequantRole::kBiases) biases = t;
    if (t->role == PrequantRole::kGlobalScale) global = t;
  }
  const int64_t pieces = static_cast<int64_t>(weight->sources.size());
  const int64_t rows_per_source = std::max<int64_t>(1, source.rows / pieces);
  // A block stays within one expert (one source, or one slice of a 3-D source).
  const int64_t rows_per_expert = shape.size() >= 3 ? std::max<int64_t>(1, shape[shape.size() - 2]) : rows_per_source;
  source.rows_per_piece = rows_per_expert;
  const QuantSpec spec = layer.spec;
  const int64_t cols = source.cols;
  // A part of a row holds whole source groups and whole packed words.
  source.col_align = std::lcm<int64_t>(layer.spec.group_size, 32);
  source.read = [&inv, weight, scales, biases, global, spec, cols, dtype, kind, rows_per_source, rows_per_expert](
                    const RowBlock& block, uint8_t* out) -> Status {
    const int64_t first = block.first, count = block.count;
    const int64_t piece = first / rows_per_source;
    const int64_t local = first % rows_per_source;
    // Source words and groups per row, of the block's rows, and before its first column.
    const int64_t words = block.cols * spec.bits / 32, groups = block.cols / spec.group_size;
    const int64_t row_groups = cols / spec.group_size, first_group = block.col / spec.group_size;
    // From each of the block's rows of `t` (rows of `per_row` words or scales of `bytes` bytes),
    // `elements` of them after the first `skip` (row selection for gpt-oss gate/up).
    auto read_rows = [&](const PrequantTensor* t, int64_t per_row, int64_t skip, int64_t elements, int bytes,
                         std::vector<uint8_t>& buf) -> Status {
      const Source src = Find(inv, t->sources[piece]);
      buf.resize(count * elements * bytes);
      if (t->op != PrequantOp::kSelectRows) {
        // Whole rows, or a part of one row: consecutive either way.
        return src.reader->Read(*src.info, (local * per_row + skip) * bytes, buf);
      }
      // gpt-oss: rows `offset + stride * r` of the source's row axis, per expert.
      const int64_t src_rows = src.info->shape[t->axis];
      const int64_t out_rows = src_rows / t->stride;
      for (int64_t r = 0; r < count; ++r) {
        const int64_t row = local + r;
        const int64_t expert = row / out_rows, within = row % out_rows;
        const int64_t src_row = expert * src_rows + t->offset + within * t->stride;
        STQ_RETURN_IF_ERROR(src.reader->Read(*src.info, (src_row * per_row + skip) * bytes,
                                             {buf.data() + r * elements * bytes, static_cast<size_t>(elements * bytes)}));
      }
      return Status::Ok();
    };
    std::vector<uint8_t> w, s, b;
    STQ_RETURN_IF_ERROR(read_rows(weight, cols * spec.bits / 32, block.col * spec.bits / 32, words, 4, w));
    const DType scale_dtype = spec.mode == QuantMode::kAffine ? Find(inv, scales->sources[piece]).info->dtype : DType::kU8;
    const int scale_bytes = DTypeBits(scale_dtype) / 8;
    STQ_RETURN_IF_ERROR(read_rows(scales, row_groups, first_group, groups, scale_bytes, s));
    std::vector<float> values(block.elements());
    if (spec.mode == QuantMode::kNvfp4 && kind != model::SourceKind::kMlx) {
      const bool inverted = scales->inverted || (global && global->inverted);
      const std::string scalar = global ? global->sources[piece] : scales->aux[piece];
      STQ_ASSIGN_OR_RETURN(const float g, ReadScalar(inv, scalar));
      for (int64_t i = 0; i < block.elements(); ++i) {
        const uint8_t code = (w[i / 2] >> (4 * (i % 2))) & 0xF;
        const uint8_t byte = s[i / 16];
        float block = SourceBlockScale(byte, g, inverted);
        if (byte & 0x80) block = -block;
        values[i] = numeric::E2M1ToFloat(code) * block;
      }
    } else if (spec.mode == QuantMode::kMxfp4 && kind == model::SourceKind::kGptOssMxfp4) {
      for (int64_t i = 0; i < block.elements(); ++i) {
        const uint8_t code = (w[i / 2] >> (4 * (i % 2))) & 0xF;
        values[i] = std::ldexp(numeric::E2M1ToFloat(code), static_cast<int>(s[i / 32]) - 127);
      }
    } else if (spec.mode == QuantMode::kAffine && kind == model::SourceKind::kCompressedTensors) {
      // T((q - zero_point) * scale), q - zero_point = code - c (c = 2^(bits-1), or the packed zero point).
      const int pack = 32 / spec.bits;
      const uint32_t mask = (1u << spec.bits) - 1;
      // The zero-point words of this block only: the packed row blocks its rows fall in, its groups.
      std::vector<uint8_t> zero;
      const std::string& zp = biases->aux[piece];
      const int64_t first_zero_row = local / pack;
      if (!zp.empty()) {
        const Source z = Find(inv, zp);
        const int64_t zero_rows = (local + count - 1) / pack - first_zero_row + 1;
        zero.resize(zero_rows * groups * 4);
        for (int64_t zr = 0; zr < zero_rows; ++zr) {
          STQ_RETURN_IF_ERROR(z.reader->Read(*z.info, ((first_zero_row + zr) * row_groups + first_group) * 4,
                                             {zero.data() + zr * groups * 4, static_cast<size_t>(groups * 4)}));
        }
      }
      for (int64_t r = 0; r < count; ++r) {
        const int64_t row = local + r;
        for (int64_t k = 0; k < block.cols; ++k) {
          uint32_t word;
          std::memcpy(&word, w.data() + (r * words + k / pack) * 4, 4);
          const int code = static_cast<int>((word >> (spec.bits * (k % pack))) & mask);
          const int64_t grp = k / spec.group_size;
          int c = 1 << (spec.bits - 1);
          if (!zero.empty()) {
            uint32_t zw;
            std::memcpy(&zw, zero.data() + ((row / pack - first_zero_row) * groups + grp) * 4, 4);
            c = static_cast<int>((zw >> (spec.bits * (row % pack))) & mask);
          }
          const float scale = quant::LoadElement(scale_dtype, s.data(), r * groups + grp);
          values[r * block.cols + k] = quant::RoundTo(scale_dtype, static_cast<float>(code - c) * scale);
        }
      }
    } else {
      // An MLX source: MLX's own dequantize.
      if (biases) STQ_RETURN_IF_ERROR(read_rows(biases, row_groups, first_group, groups, scale_bytes, b));
      float gs = 0;
      if (global) {
        const Source src = Find(inv, global->sources[piece]);
        const uint64_t expert = src.info->nbytes() > 4 ? static_cast<uint64_t>(local / rows_per_expert) : 0;
        STQ_RETURN_IF_ERROR(src.reader->Read(*src.info, expert * 4, {reinterpret_cast<uint8_t*>(&gs), 4}));
      }
      QuantSpec dq = spec;
      dq.global_scale = global != nullptr;
      STQ_RETURN_IF_ERROR(DequantizeRows(dq, scale_dtype,
                                         {reinterpret_cast<const uint32_t*>(w.data()), s.data(), b.empty() ? nullptr : b.data()},
                                         count, block.cols, gs, DType::kF32, values.data()));
    }
    for (int64_t i = 0; i < block.elements(); ++i) {
      if (!std::isfinite(values[i])) {
        return Status::InvalidInput(fmt::format("{}: layer '{}': dequantized element {} is not finite", inv.path(),
                                                weight->layer, first * cols + block.col + i));
      }
      quant::StoreElement(dtype, out, i, values[i]);
    }
    return Status::Ok();
  };
  return source;
}

namespace {

struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  int shard = 0;
  const PrequantTensor* copy = nullptr;  // lossless: written by WritePrequantTensor
  const model::PrequantLayer* layer = nullptr;  // requantize: the layer (its ".weight")
  const PrequantTensor* decoded = nullptr;      // requantize: a kDecodeFp8 tensor
  std::string base = "";                        // requantize: module path of ".scales" / ".biases"
  std::optional<QuantSpec> quant = std::nullopt;
  std::string role = "";  // requantize: "weight", "scales", "biases", "float"
};


uint64_t Bytes(DType d, const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t x : shape) n *= static_cast<uint64_t>(x);
  return n * DTypeBits(d) / 8;
}

}  // namespace

Result<ConvertSummary> ConvertPrequantMlx(const ConvertOptions& options, const model::PlanContext& context,
                                          const std::function<void(const ConvertProgress&)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  const Inventory& inv = *context.inventory;
  const model::PrequantPlan& pq = *context.prequant;
  const ConversionPlan& plan = context.plan;
  // -q TYPE --requantize or --dequantize: the quantized layers are written from their values.
  const bool rewrite = options.quant.has_value() || options.dequantize;

  // Output tensors.
  std::map<std::string, std::vector<const PrequantTensor*>> by_layer;
  for (const PrequantTensor& t : pq.tensors) {
    if (!t.layer.empty()) by_layer[t.layer].push_back(&t);
  }
  std::vector<OutTensor> outs;
  uint64_t parameters = 0;
  const DType float_dtype = model::DequantizedDType(inv.config());
  for (const PrequantTensor& t : pq.tensors) {
    // --requantize / --dequantize: the formerly quantized layers, FP8 ones decoded included, are
    // rewritten from their values.
    const bool fp8 = t.op == model::PrequantOp::kDecodeFp8;
    if (!rewrite || (t.layer.empty() && !fp8)) {
      OutTensor o{t.name, t.dtype, t.shape, t.bytes};
      o.copy = &t;
      outs.push_back(std::move(o));
      if (t.role == PrequantRole::kTensor) {
        parameters += t.bytes * 8 / DTypeBits(t.dtype);
      } else if (t.role == PrequantRole::kWeight) {
        for (const model::PrequantLayer& l : pq.layers) {
          if (l.path == t.layer) parameters += t.bytes * 8 / l.spec.bits;
        }
      }
      continue;
    }
    if (t.role != PrequantRole::kWeight && !fp8) continue;
    const model::PrequantLayer* layer = nullptr;
    for (const model::PrequantLayer& l : pq.layers) {
      if (l.path == t.layer) layer = &l;
    }
    if (layer == nullptr && !fp8) {
      return Status::Internal(fmt::format("tensor '{}': layer '{}' is missing from the import plan", t.name, t.layer));
    }
    std::vector<int64_t> shape = t.shape;
    if (!fp8) shape.back() = shape.back() * 32 / layer->spec.bits;
    const std::string base = fp8 ? t.name.substr(0, t.name.rfind('.')) : layer->path;
    int64_t elements = 1;
    for (int64_t d : shape) elements *= d;
    parameters += elements;
    if (!options.quant || shape.back() % options.quant->group_size != 0) {
      OutTensor o{t.name, float_dtype, shape, Bytes(float_dtype, shape)};
      o.layer = layer;
      o.decoded = fp8 ? &t : nullptr;
      o.role = "float";
      outs.push_back(std::move(o));
      continue;
    }
    const QuantSpec spec = *options.quant;
    std::vector<int64_t> packed = shape, groups = shape;
    packed.back() = PackedWordsPerRow(spec, shape.back());
    groups.back() = GroupsPerRow(spec, shape.back());
    OutTensor w{t.name, DType::kU32, packed, Bytes(DType::kU32, packed)};
    w.layer = layer;
    w.decoded = fp8 ? &t : nullptr;
    w.base = base;
    w.quant = spec;
    w.role = "weight";
    outs.push_back(w);
    OutTensor s{base + ".scales", ScaleDType(spec, float_dtype), groups, Bytes(ScaleDType(spec, float_dtype), groups)};
    s.role = "scales";
    outs.push_back(s);
    if (ModeInfo(spec.mode).has_biases) {
      OutTensor b{base + ".biases", float_dtype, groups, Bytes(float_dtype, groups)};
      b.role = "biases";
      outs.push_back(b);
    }
  }
  std::sort(outs.begin(), outs.end(), [](const OutTensor& a, const OutTensor& b) { return a.name < b.name; });
  int shard = -1;
  uint64_t size = 0, output_bytes = 0;
  for (OutTensor& o : outs) {
    if (shard < 0 || size + o.bytes > options.shard_bytes) {
      ++shard;
      size = 0;
    }
    o.shard = shard;
    size += o.bytes;
    output_bytes += o.bytes;
  }
  const int shard_count = shard + 1;

  STQ_ASSIGN_OR_RETURN(OutputDir dir, OutputDir::Create(options.output_dir, options.force));
  std::vector<std::unique_ptr<safetensors::Writer>> writers;
  for (int s = 0; s < shard_count; ++s) {
    std::vector<safetensors::TensorDecl> decls;
    for (const OutTensor& o : outs) {
      if (o.shard == s) decls.push_back({o.name, o.dtype, o.shape});
    }
    STQ_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::Writer> writer,
                         safetensors::Writer::Create(dir.PathOf(MlxShardName(s, shard_count)), std::move(decls),
                                                     std::map<std::string, std::string>{{"format", "mlx"}}));
    writers.push_back(std::move(writer));
  }
  std::map<std::string, const OutTensor*> by_name;
  for (const OutTensor& o : outs) by_name[o.name] = &o;
  auto target = [&](const std::string& name) {
    safetensors::Writer* w = writers[by_name.at(name)->shard].get();
    return WriteTarget{w, *w->IndexOf(name)};
  };

  ConvertProgress state;
  state.tensors_total = outs.size();
  state.bytes_total = pq.input_bytes;
  auto on_bytes = [&](uint64_t bytes) {
    state.bytes_done += bytes;
    if (progress) progress(state);
  };
  uint64_t quantized = 0;
  std::vector<TensorQuantError> quant_errors;
  for (const OutTensor& o : outs) {
    state.current = o.name;
    if (o.copy) {
      STQ_RETURN_IF_ERROR(WritePrequantTensor(inv, *o.copy, target(o.name), on_bytes));
    } else if (o.layer || o.decoded) {
      std::vector<int64_t> shape = o.shape;
      if (o.quant) shape.back() = shape.back() * 32 / o.quant->bits;
      const PlannedTensor fp8 = o.decoded ? model::DecodedFp8Tensor(*o.decoded, o.name) : PlannedTensor();
      const RowSource rows = o.decoded ? PlannedRows(inv, fp8, options.profile)
                                       : PrequantLayerRows(inv, *o.layer, by_layer[o.layer->path], shape, float_dtype,
                                                           pq.kind);
      if (!o.quant) {
        STQ_RETURN_IF_ERROR(CopyRows(rows, target(o.name), options.threads, on_bytes));
      } else {
        QuantizedTargets targets{target(o.name), target(o.base + ".scales"), std::nullopt};
        if (ModeInfo(o.quant->mode).has_biases) targets.biases = target(o.base + ".biases");
        std::optional<QuantErrorMeter> meter;
        if (options.measure_quant_error) targets.error = &meter.emplace(o.name, *o.quant, rows.dtype);
        STQ_RETURN_IF_ERROR(QuantizeRowSource(rows, *o.quant, 0.0f, targets, options.threads, on_bytes));
        if (meter) quant_errors.push_back(meter->Total());
        ++quantized;
      }
    }
    ++state.tensors_done;
    if (progress) progress(state);
  }
  for (auto& writer : writers) STQ_RETURN_IF_ERROR(writer->Commit());

  nlohmann::json index;
  index["metadata"] = {{"total_size", output_bytes}, {"total_parameters", parameters}};
  index["weight_map"] = nlohmann::json::object();
  for (const OutTensor& o : outs) index["weight_map"][o.name] = MlxShardName(o.shard, shard_count);
  STQ_RETURN_IF_ERROR(WriteFileAtomically(dir.PathOf("model.safetensors.index.json"), index.dump(4) + "\n"));

  // config.json: mlx-lm's normalization; the quantization block of the plan (or the requested type).
  STQ_ASSIGN_OR_RETURN(nlohmann::json config, MlxConfigBase(inv, plan.copied_files));
  if (rewrite || !pq.keep_config) {
    for (nlohmann::json* root : {&config, config.contains("text_config") ? &config["text_config"] : nullptr}) {
      if (root == nullptr || !root->is_object()) continue;
      root->erase("quantization");
      root->erase("quantization_config");
      root->erase("compression_config");
    }
    nlohmann::json q = pq.quantization;
    if (options.dequantize) q = nullptr;
    if (options.quant) {
      q = {{"group_size", options.quant->group_size}, {"bits", options.quant->bits},
           {"mode", std::string(ModeInfo(options.quant->mode).name)}};
    }
    if (!q.is_null()) {
      config["quantization"] = q;
      config["quantization_config"] = q;
    }
  }
  STQ_RETURN_IF_ERROR(WriteFileAtomically(dir.PathOf("config.json"), config.dump(4) + "\n"));
  for (const std::string& file : plan.copied_files) {
    STQ_RETURN_IF_ERROR(CopyFileAtomically(inv.path() + "/" + file, dir.PathOf(file)));
  }
  STQ_RETURN_IF_ERROR(dir.Commit());

  ConvertSummary summary;
  summary.input_bytes = pq.input_bytes;
  summary.output_bytes = output_bytes;
  summary.parameters = parameters;
  summary.tensors = outs.size();
  summary.quantized_tensors = rewrite ? quantized : pq.layers.size();
  summary.shards = shard_count;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  summary.peak_rss_bytes = static_cast<uint64_t>(usage.ru_maxrss) * 1024;
  summary.quant_errors = std::move(quant_errors);
  return summary;
}

}  // namespace stquant::output
