#include "stquant/quant_report.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "output/output_dir.h"

namespace stquant {

namespace {

double Median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// "int4 g64", "nvfp4": the type with its group size when that is not the type's default.
std::string TypeLabel(const QuantSpec& spec) {
  const std::string type = QuantTypeName(spec);
  if (spec.group_size == ModeInfo(spec.mode).default_group_size) return type;
  return fmt::format("{} g{}", type, spec.group_size);
}

struct Aggregate {
  uint64_t tensors = 0, elements = 0, groups = 0, zeroed_groups = 0;
  double squared_error = 0.0, squared_values = 0.0, bits = 0.0;
  void Add(const TensorQuantError& t) {
    ++tensors;
    elements += t.elements;
    groups += t.groups;
    zeroed_groups += t.zeroed_groups;
    squared_error += t.squared_error;
    squared_values += t.squared_values;
    bits += stquant::BitsPerWeight(t.spec, t.dtype) * static_cast<double>(t.elements);
  }
  double RelativeRmse() const { return squared_values > 0 ? std::sqrt(squared_error / squared_values) : 0.0; }
  double BitsPerWeight() const { return elements ? bits / static_cast<double>(elements) : 0.0; }
};

struct Summary {
  double median = 0.0;
  Aggregate overall;
  std::map<std::string, Aggregate> by_type;
  std::vector<const TensorQuantError*> flagged;  // worst first
};

Summary Summarize(const std::vector<TensorQuantError>& tensors) {
  Summary s;
  std::vector<double> errors;
  for (const TensorQuantError& t : tensors) {
    errors.push_back(t.RelativeRmse());
    s.overall.Add(t);
    s.by_type[TypeLabel(t.spec)].Add(t);
  }
  s.median = Median(errors);
  for (const TensorQuantError& t : tensors) {
    if (t.RelativeRmse() > kQuantErrorOutlierFactor * s.median) s.flagged.push_back(&t);
  }
  std::stable_sort(s.flagged.begin(), s.flagged.end(), [](const TensorQuantError* a, const TensorQuantError* b) {
    return a->RelativeRmse() > b->RelativeRmse();
  });
  return s;
}

nlohmann::ordered_json AggregateJson(const Aggregate& a) {
  return {{"tensors", a.tensors},
          {"elements", a.elements},
          {"bits_per_weight", a.BitsPerWeight()},
          {"relative_rmse", a.RelativeRmse()},
          {"zeroed_group_share", a.groups ? static_cast<double>(a.zeroed_groups) / a.groups : 0.0}};
}

}  // namespace

double TensorQuantError::RelativeRmse() const {
  return squared_values > 0 ? std::sqrt(squared_error / squared_values) : 0.0;
}

double BitsPerWeight(const QuantSpec& spec, DType dtype) {
  const int scale_bits = spec.mode == QuantMode::kAffine ? 2 * DTypeBits(dtype) : 8;  // scale + bias, or one byte
  return spec.bits + static_cast<double>(scale_bits) / spec.group_size;
}

std::string QuantReportJson(const std::vector<TensorQuantError>& tensors) {
  const Summary s = Summarize(tensors);
  nlohmann::ordered_json j;
  j["flag_factor"] = kQuantErrorOutlierFactor;
  j["median_relative_rmse"] = s.median;
  j["overall"] = AggregateJson(s.overall);
  j["types"] = nlohmann::ordered_json::object();
  for (const auto& [type, a] : s.by_type) j["types"][type] = AggregateJson(a);
  j["tensors"] = nlohmann::ordered_json::array();
  for (const TensorQuantError& t : tensors) {
    j["tensors"].push_back({{"name", t.name},
                            {"type", QuantTypeName(t.spec)},
                            {"mode", std::string(ModeInfo(t.spec.mode).name)},
                            {"bits", t.spec.bits},
                            {"group_size", t.spec.group_size},
                            {"bits_per_weight", BitsPerWeight(t.spec, t.dtype)},
                            {"elements", t.elements},
                            {"relative_rmse", t.RelativeRmse()},
                            {"max_abs_error", t.max_abs_error},
                            {"zeroed_group_share", t.groups ? static_cast<double>(t.zeroed_groups) / t.groups : 0.0},
                            {"flagged", t.RelativeRmse() > kQuantErrorOutlierFactor * s.median}});
  }
  return j.dump(1) + "\n";
}

std::string QuantReportTable(const std::vector<TensorQuantError>& tensors) {
  if (tensors.empty()) return "quantization error: no quantized tensor\n";
  const Summary s = Summarize(tensors);
  std::string out = fmt::format("{:<12} {:>8} {:>8} {:>13} {:>13}\n", "type", "tensors", "bits/w", "relative RMSE",
                                "zeroed groups");
  auto row = [&](const std::string& label, const Aggregate& a) {
    out += fmt::format("{:<12} {:>8} {:>8.3f} {:>13.5f} {:>12.3f}%\n", label, a.tensors, a.BitsPerWeight(),
                       a.RelativeRmse(), a.groups ? 100.0 * a.zeroed_groups / a.groups : 0.0);
  };
  for (const auto& [type, a] : s.by_type) row(type, a);
  if (s.by_type.size() > 1) row("all", s.overall);
  out += fmt::format("median relative RMSE {:.5f}; ", s.median);
  if (s.flagged.empty()) return out + fmt::format("no tensor above {}x the median\n", kQuantErrorOutlierFactor);
  out += fmt::format("{} tensor(s) above {}x the median:\n", s.flagged.size(), kQuantErrorOutlierFactor);
  constexpr size_t kShown = 10;
  for (size_t i = 0; i < std::min(kShown, s.flagged.size()); ++i) {
    const TensorQuantError& t = *s.flagged[i];
    out += fmt::format("  {} ({}): relative RMSE {:.5f}, max abs error {:.4g}\n", t.name, TypeLabel(t.spec),
                       t.RelativeRmse(), t.max_abs_error);
  }
  if (s.flagged.size() > kShown) out += fmt::format("  ... {} more in the JSON report\n", s.flagged.size() - kShown);
  return out;
}

Status WriteQuantReport(const std::vector<TensorQuantError>& tensors, const std::string& path) {
  return output::WriteFileAtomically(path, QuantReportJson(tensors)).Annotate("--report");
}

}  // namespace stquant
