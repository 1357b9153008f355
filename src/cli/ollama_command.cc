// stquant ollama gc|list|rm: the model store of `convert --layout ollama`, kept tidy
// (output/ollama_gc.h). list and rm print what ollama's own `ollama list` / `ollama rm` print.
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.h"
#include "stquant/ollama_models.h"

namespace stquant::cli {

namespace {

// ollama's format.HumanBytes: decimal units, "%d" from 10 up, else one decimal unless whole.
std::string OllamaHumanBytes(uint64_t b) {
  struct Unit {
    double size;
    const char* name;
  };
  static constexpr Unit kUnits[] = {{1e12, "TB"}, {1e9, "GB"}, {1e6, "MB"}, {1e3, "KB"}};
  for (const Unit& u : kUnits) {
    if (static_cast<double>(b) < u.size) continue;
    const double value = static_cast<double>(b) / u.size;
    if (value >= 10 || value == std::trunc(value)) return fmt::format("{} {}", static_cast<int64_t>(value), u.name);
    return fmt::format("{:.1f} {}", value, u.name);
  }
  return fmt::format("{} B", b);
}

// ollama's format.humanDuration.
std::string OllamaHumanDuration(double seconds_elapsed) {
  const int64_t seconds = static_cast<int64_t>(seconds_elapsed);
  if (seconds < 1) return "Less than a second";
  if (seconds == 1) return "1 second";
  if (seconds < 60) return fmt::format("{} seconds", seconds);
  const int64_t minutes = static_cast<int64_t>(seconds_elapsed / 60);
  if (minutes == 1) return "About a minute";
  if (minutes < 60) return fmt::format("{} minutes", minutes);
  const int64_t hours = static_cast<int64_t>(std::round(seconds_elapsed / 3600));
  if (hours == 1) return "About an hour";
  if (hours < 48) return fmt::format("{} hours", hours);
  if (hours < 24 * 7 * 2) return fmt::format("{} days", hours / 24);
  if (hours < 24 * 30 * 2) return fmt::format("{} weeks", hours / 24 / 7);
  if (hours < 24 * 365 * 2) return fmt::format("{} months", hours / 24 / 30);
  return fmt::format("{} years", static_cast<int64_t>(seconds_elapsed / 3600) / 24 / 365);
}

// ollama's format.HumanTime(t, "Never").
std::string OllamaHumanTime(int64_t time_ns) {
  if (time_ns == 0) return "Never";
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  const double delta = (static_cast<double>(now.tv_sec) * 1e9 + now.tv_nsec - static_cast<double>(time_ns)) / 1e9;
  if (static_cast<int64_t>(delta / 3600) / 24 / 365 < -20) return "Forever";
  if (delta < 0) return OllamaHumanDuration(-delta) + " from now";
  return OllamaHumanDuration(delta) + " ago";
}

// ollama list's table (tablewriter without borders, cells left-aligned and padded to the column's
// width, columns four spaces apart; the header's last cell is followed by one space, every row's
// by four).
std::string Table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) {
      out += rows[r][c] + std::string(width[c] - rows[r][c].size(), ' ');
      out += (r == 0 && c + 1 == rows[r].size()) ? " " : "    ";
    }
    out += "\n";
  }
  return out;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "0", "90" (seconds), "90s", "30m", "1h", "2d".
Result<std::chrono::seconds> ParseGrace(const std::string& text) {
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(text, &used);
  } catch (...) {
  }
  const std::string unit = value >= 0 ? text.substr(used) : "";
  const int64_t factor = unit.empty() || unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : unit == "d" ? 86400 : 0;
  if (value < 0 || factor == 0) {
    return Status::InvalidArgument("--grace '" + text + "': not a duration (e.g. 0, 90s, 30m, 1h, 2d)");
  }
  return std::chrono::seconds(value * factor);
}

struct OllamaCommandOptions {
  std::string models_dir;
  bool dry_run = false;
  std::string grace = "1h";
  std::vector<std::string> names;  // rm: models; list: an optional name prefix
};

Status RunGc(const OllamaCommandOptions& o) {
  OllamaGcOptions options;
  options.dry_run = o.dry_run;
  STQ_ASSIGN_OR_RETURN(options.grace, ParseGrace(o.grace));
  STQ_ASSIGN_OR_RETURN(OllamaGcReport report, CollectOllamaGarbage(o.models_dir, options));
  uint64_t blobs = 0, blob_bytes = 0, temps = 0, temp_bytes = 0;
  for (const OllamaGcEntry& e : report.removed) {
    std::printf("%s %s (%s, %s)\n", o.dry_run ? "would remove" : "removed", e.path.c_str(), e.reason.c_str(),
                OllamaHumanBytes(e.bytes).c_str());
    const bool blob = e.reason == "unreferenced blob";
    (blob ? blobs : temps) += 1;
    (blob ? blob_bytes : temp_bytes) += e.bytes;
  }
  std::printf("%s %llu unreferenced blob%s (%s) and %llu stale temporar%s (%s); kept %llu blob%s referenced by %llu "
              "manifest%s, %llu in use by running imports, %llu younger than %s\n",
              o.dry_run ? "would remove" : "removed", static_cast<unsigned long long>(blobs), blobs == 1 ? "" : "s",
              OllamaHumanBytes(blob_bytes).c_str(), static_cast<unsigned long long>(temps), temps == 1 ? "y" : "ies",
              OllamaHumanBytes(temp_bytes).c_str(), static_cast<unsigned long long>(report.referenced),
              report.referenced == 1 ? "" : "s", static_cast<unsigned long long>(report.manifests),
              report.manifests == 1 ? "" : "s", static_cast<unsigned long long>(report.importing),
              static_cast<unsigned long long>(report.recent), o.grace.c_str());
  return Status::Ok();
}

Status RunList(const OllamaCommandOptions& o) {
  std::vector<std::string> warnings;
  STQ_ASSIGN_OR_RETURN(std::vector<OllamaModelInfo> models, ListOllamaModels(o.models_dir, &warnings));
  for (const std::string& w : warnings) std::fprintf(stderr, "stquant: warning: %s\n", w.c_str());
  std::vector<std::vector<std::string>> rows = {{"NAME", "ID", "SIZE", "MODIFIED"}};
  const std::string prefix = o.names.empty() ? "" : Lower(o.names.front());
  for (const OllamaModelInfo& m : models) {
    const std::string& name = m.name;
    if (!Lower(name).starts_with(prefix)) continue;
    rows.push_back({name, m.digest.substr(0, 12), m.remote ? "-" : OllamaHumanBytes(m.size), OllamaHumanTime(m.modified_ns)});
  }
  const std::string table = Table(rows);
  std::fwrite(table.data(), 1, table.size(), stdout);
  return Status::Ok();
}

Status RunRm(const OllamaCommandOptions& o) {
  for (const std::string& name : o.names) {
    STQ_ASSIGN_OR_RETURN(OllamaRemoval removal, RemoveOllamaModel(o.models_dir, name));
    for (const std::string& w : removal.warnings) std::fprintf(stderr, "stquant: warning: %s\n", w.c_str());
    std::printf("deleted '%s'\n", name.c_str());
  }
  return Status::Ok();
}

}  // namespace

void RegisterOllamaCommand(CLI::App& app, Status* status) {
  auto o = std::make_shared<OllamaCommandOptions>();
  CLI::App* cmd = app.add_subcommand("ollama", "Manage an ollama model store: collect garbage, list and remove models");
  cmd->require_subcommand(1);
  const char* models_dir_help = "the model store (default: $OLLAMA_MODELS, else ~/.ollama/models)";

  CLI::App* gc = cmd->add_subcommand(
      "gc", "Remove blobs no manifest references (any tool's) and stale temporaries, safely beside running imports");
  gc->add_option("--models-dir", o->models_dir, models_dir_help);
  gc->add_flag("--dry-run", o->dry_run, "print what would be removed; remove nothing");
  gc->add_option("--grace", o->grace,
                 "keep unreferenced blobs and other tools' temporaries younger than this (default 1h, as ollama's "
                 "own prune: their import may still be running); stquant's running imports are protected whatever "
                 "their age");
  gc->callback([o, status] { *status = RunGc(*o); });

  CLI::App* list = cmd->add_subcommand("list", "List the models of the store, as `ollama list`");
  list->alias("ls");
  list->add_option("--models-dir", o->models_dir, models_dir_help);
  list->add_option("prefix", o->names, "only models whose name starts with this")->expected(0, 1);
  list->callback([o, status] { *status = RunList(*o); });

  CLI::App* rm = cmd->add_subcommand("rm", "Remove models and the blobs no other model uses, as `ollama rm`");
  rm->add_option("--models-dir", o->models_dir, models_dir_help);
  rm->add_option("names", o->names, "model names (foo, me/foo:v1, host/ns/foo:tag)")->required();
  rm->callback([o, status] { *status = RunRm(*o); });
}

}  // namespace stquant::cli
