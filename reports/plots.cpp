#include "reports/plots.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "reports/format.h"
#include "reports/text_file.h"

extern char** environ;

namespace moe::reports {

namespace fs = std::filesystem;

namespace {

// Ten Tableau colours; with three dash patterns they give 30 distinguishable lines.
constexpr const char* kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr int kLineStyles = 30;

std::string Quote(const std::string& s) {  // a gnuplot single-quoted string
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "''";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out + "'";
}

// A string column of gnuplot data: double-quoted, so spaces stay inside one field.
std::string DataString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += (c == '"' || c == '\n') ? '\'' : c;
  return out + "\"";
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void AppendNumber(double v, std::string* out, const char* nan = "NaN") {
  if (!std::isfinite(v)) {
    *out += nan;
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.7g", v);
  *out += buf;
}

bool HasSeries(const RunData& r) { return r.series.size() > 0; }

struct Reduced {
  std::vector<double> x, loss, tok, balance;
};

std::vector<size_t> LineRuns(const SweepReport& r) {
  std::vector<size_t> out;
  for (size_t i = 0; i < r.data.runs.size(); ++i) {
    if (HasSeries(r.data.runs[i])) out.push_back(i);
  }
  return out;
}

bool AnyExpertLoad(const SweepReport& r) {
  for (const auto& s : r.stats) {
    if (!s.tail.expert_share.empty()) return true;
  }
  return false;
}

// Per axis value: mean loss over the runs with that value, in fixed-width step bins.
struct AxisCurve {
  std::string label;
  std::vector<double> x, y;
};

std::vector<AxisCurve> AxisCurves(const SweepReport& r, const Axis& axis) {
  int64_t max_step = 1;
  for (const auto& run : r.data.runs) {
    if (HasSeries(run)) max_step = std::max(max_step, run.series.step.back());
  }
  const int64_t width = std::max<int64_t>(1, (max_step + 299) / 300);
  const size_t bins = static_cast<size_t>(max_step / width + 1);
  std::vector<AxisCurve> out;
  for (const auto& value : axis.values) {
    std::vector<double> sum(bins, 0.0);
    std::vector<int64_t> count(bins, 0);
    std::vector<double> xsum(bins, 0.0);
    size_t runs = 0;
    for (const auto& run : r.data.runs) {
      auto it = run.params.find(axis.key);
      if (it == run.params.end() || *it != value || !HasSeries(run)) continue;
      ++runs;
      const auto& se = run.series;
      for (size_t k = 0; k < se.size(); ++k) {
        if (!std::isfinite(se.loss[k])) continue;
        const size_t b = static_cast<size_t>(se.step[k] / width);
        sum[b] += se.loss[k];
        xsum[b] += static_cast<double>(se.step[k]);
        ++count[b];
      }
    }
    AxisCurve c;
    c.label = axis.key + " = " + ValueText(value) + " (" + std::to_string(runs) + " run" + (runs == 1 ? "" : "s") + ")";
    for (size_t b = 0; b < bins; ++b) {
      if (count[b] == 0) continue;
      c.x.push_back(xsum[b] / static_cast<double>(count[b]));
      c.y.push_back(sum[b] / static_cast<double>(count[b]));
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::string AxisFigureName(const Axis& a) { return "loss_by_" + FileSafe(a.key); }

std::string LegendSetup(size_t n) {
  if (n > kMaxLegendRuns) return "set key off\n";
  std::string s = "set key outside right top vertical Left reverse noenhanced";
  if (n > 12) s += " font ',8' spacing 0.9";
  return s + "\n";
}

std::string Common(const std::string& title, const std::string& xlabel, const std::string& ylabel) {
  return "reset\nset grid lc rgb '#dddddd'\nset border lc rgb '#555555'\nset title " + Quote(title) +
         " noenhanced\nset xlabel " + Quote(xlabel) + "\nset ylabel " + Quote(ylabel) + "\n";
}

std::string Output(const std::string& name) { return "set output dir.'/" + name + ".'.fmt\n"; }

// One line plot over runs: column `col` of each $rN datablock.
std::string RunLines(const SweepReport& r, const std::vector<size_t>& runs, int col, const std::string& name,
                     const std::string& title, const std::string& ylabel) {
  std::string s = Common(title, "optimizer step", ylabel) + LegendSetup(runs.size()) + Output(name);
  if (runs.size() > kMaxLegendRuns) {
    s += "set label 1 " + Quote(std::to_string(runs.size()) + " runs: legend omitted, see the run table") +
         " at graph 0.01, graph 0.97 front\n";
  }
  s += "plot ";
  for (size_t k = 0; k < runs.size(); ++k) {
    const size_t i = runs[k];
    s += (k ? ", \\\n  " : "") + std::string("$r") + std::to_string(i) + " using 1:" + std::to_string(col) +
         " with lines lt " + std::to_string(k % kLineStyles + 1) + " title " + Quote(r.data.runs[i].record.name);
  }
  return s + "\nunset output\n";
}

}  // namespace

void Downsample(const std::vector<int64_t>& x, const std::vector<double>& y, size_t points, std::vector<double>* ox,
                std::vector<double>* oy) {
  ox->clear();
  oy->clear();
  const size_t n = std::min(x.size(), y.size());
  if (n == 0 || points == 0) return;
  const size_t buckets = std::min(n, points);
  for (size_t k = 0; k < buckets; ++k) {
    const size_t b = k * n / buckets, e = (k + 1) * n / buckets;  // proportional bounds: exactly `buckets`
    double sx = 0, sy = 0;
    size_t m = 0;
    for (size_t i = b; i < e; ++i) {
      if (!std::isfinite(y[i])) continue;
      sx += static_cast<double>(x[i]);
      sy += y[i];
      ++m;
    }
    if (m == 0) {
      ox->push_back(static_cast<double>(x[b]));
      oy->push_back(kNaN);
    } else {
      ox->push_back(sx / static_cast<double>(m));
      oy->push_back(sy / static_cast<double>(m));
    }
  }
}

std::vector<Figure> PlanFigures(const SweepReport& r) {
  std::vector<Figure> f;
  if (LineRuns(r).empty()) return f;
  const std::string n = std::to_string(r.data.tail);
  f.push_back({"loss", "Training loss against step, all runs"});
  for (const auto& fx : r.ablation) {
    f.push_back({AxisFigureName(fx.axis), "Training loss against step by " + fx.axis.key + " (mean over runs with each value)"});
  }
  f.push_back({"tok_per_s", "Throughput against step, all runs"});
  f.push_back({"balance_loss", "Load-balancing loss against step, all runs"});
  if (AnyExpertLoad(r)) f.push_back({"expert_load", "Per-expert load of each run over the tail-" + n + " window"});
  f.push_back({"tail_tok_per_s", "Tail-" + n + " throughput per run"});
  return f;
}

std::string FindGnuplot() {
  if (const char* e = std::getenv("MOE_GNUPLOT"); e && *e) return access(e, X_OK) == 0 ? e : "";
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string p = (dir.empty() ? "." : dir) + "/gnuplot";
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

namespace {

Status Spawn(const std::string& gnuplot, const std::string& fmt, const fs::path& script, const fs::path& log,
             pid_t* pid) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  const std::string expr = "fmt='" + fmt + "'";
  std::vector<std::string> args = {gnuplot, "-e", expr, script.string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int rc = posix_spawn(pid, gnuplot.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return Status::IOError("cannot start " + gnuplot + ": " + std::strerror(rc));
  return Status::OK();
}

std::string LastLines(const fs::path& path, size_t n) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) {
    if (!l.empty()) lines.push_back(l);
  }
  std::string out;
  for (size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size(); ++i) out += lines[i] + "\n";
  return out;
}

}  // namespace

Status RenderPlots(const SweepReport& r, const std::vector<Figure>& figures, const std::string& plots_dir,
                   const std::string& gnuplot) {
  std::error_code ec;
  fs::create_directories(plots_dir, ec);
  if (ec) return Status::IOError("cannot create " + plots_dir + ": " + ec.message());
  const fs::path dir = fs::absolute(plots_dir);
  const auto runs = LineRuns(r);
  const std::string n = std::to_string(r.data.tail);

  // Reduced series, shared by the three line figures and their CSVs.
  const size_t per_run = std::max(kMinPointsPerRun, kPointBudget / std::max<size_t>(1, runs.size()));
  std::vector<Reduced> red(r.data.runs.size());
  for (size_t i : runs) {
    const auto& se = r.data.runs[i].series;
    Downsample(se.step, se.loss, per_run, &red[i].x, &red[i].loss);
    std::vector<double> unused;
    Downsample(se.step, se.tok_per_s, per_run, &unused, &red[i].tok);
    Downsample(se.step, se.balance_loss, per_run, &unused, &red[i].balance);
  }

  std::string gp;
  gp.reserve(1 << 20);
  gp += "# Generated by moe-report: gnuplot -e \"fmt='svg'\" figures.gp (or fmt='png').\n";
  gp += "if (!exists('fmt')) fmt = 'svg'\n";
  gp += "dir = " + Quote(dir.string()) + "\n";
  // PNG: cairo (antialiased) up to kMaxLegendRuns runs; beyond, libgd, because cairo takes seconds
  // to stroke a thousand overlapping noisy lines. The SVG is the primary figure either way.
  const std::string png_term = runs.size() > kMaxLegendRuns ? "png size 1200,700 noenhanced font 'Sans,10' background '#ffffff'"
                                                       : "pngcairo size 1200,700 noenhanced font 'Sans,10' background '#ffffff'";
  gp += "if (fmt eq 'svg') { set terminal svg size 1200,700 fixed noenhanced font 'Sans,12' background '#ffffff' } "
        "else { set terminal " + png_term + " }\n";
  for (int k = 0; k < kLineStyles; ++k) {
    gp += "set linetype " + std::to_string(k + 1) + " lc rgb '" + kColours[k % 10] + "' lw 1.5 dt " +
          std::to_string(k / 10 + 1) + "\n";
  }
  // Data: one datablock per run (step, loss, tok/s, balance loss).
  for (size_t i : runs) {
    gp += "$r" + std::to_string(i) + " << EOD\n";
    for (size_t k = 0; k < red[i].x.size(); ++k) {
      AppendNumber(red[i].x[k], &gp);
      gp += ' ';
      AppendNumber(red[i].loss[k], &gp);
      gp += ' ';
      AppendNumber(red[i].tok[k], &gp);
      gp += ' ';
      AppendNumber(red[i].balance[k], &gp);
      gp += '\n';
    }
    gp += "EOD\n";
  }

  struct LineCsv {
    const char* name;
    const char* column;
    std::vector<double> Reduced::*values;
  };
  for (const LineCsv& c : {LineCsv{"loss", "loss", &Reduced::loss}, LineCsv{"tok_per_s", "tok_per_s", &Reduced::tok},
                           LineCsv{"balance_loss", "balance_loss", &Reduced::balance}}) {
    std::string csv = std::string("run,step,") + c.column + "\n";
    for (size_t i : runs) {
      const std::string name = CsvField(r.data.runs[i].record.name);
      const auto& ys = red[i].*(c.values);
      for (size_t k = 0; k < ys.size(); ++k) {
        csv += name + ",";
        AppendNumber(red[i].x[k], &csv, "");
        csv += ",";
        AppendNumber(ys[k], &csv, "");
        csv += "\n";
      }
    }
    MOE_RETURN_IF_ERROR(WriteTextFile(dir / (std::string(c.name) + ".csv"), csv));
  }

  for (const auto& f : figures) {
    if (f.name == "loss") {
      gp += RunLines(r, runs, 2, f.name, f.title, "training loss (nats/token)");
    } else if (f.name == "tok_per_s") {
      gp += RunLines(r, runs, 3, f.name, f.title, "throughput (tokens/s)");
    } else if (f.name == "balance_loss") {
      gp += RunLines(r, runs, 4, f.name, f.title, "load-balancing loss (dimensionless)");
    } else if (f.name.rfind("loss_by_", 0) == 0) {
      const AxisEffects* fx = nullptr;
      for (const auto& a : r.ablation) {
        if (AxisFigureName(a.axis) == f.name) fx = &a;
      }
      if (!fx) continue;
      const auto curves = AxisCurves(r, fx->axis);
      const std::string block = "$axis" + std::to_string(fx - r.ablation.data()) + "_";  // gnuplot names: [A-Za-z0-9_]
      std::string csv = "value,step,mean_loss\n";
      for (size_t v = 0; v < curves.size(); ++v) {
        gp += block + std::to_string(v) + " << EOD\n";
        for (size_t k = 0; k < curves[v].x.size(); ++k) {
          AppendNumber(curves[v].x[k], &gp);
          gp += ' ';
          AppendNumber(curves[v].y[k], &gp);
          gp += '\n';
          csv += CsvField(ValueText(fx->axis.values[v])) + ",";
          AppendNumber(curves[v].x[k], &csv, "");
          csv += ",";
          AppendNumber(curves[v].y[k], &csv, "");
          csv += "\n";
        }
        gp += "EOD\n";
      }
      MOE_RETURN_IF_ERROR(WriteTextFile(dir / (f.name + ".csv"), csv));
      gp += Common(f.title, "optimizer step", "mean training loss (nats/token)") + LegendSetup(curves.size()) +
            Output(f.name) + "plot ";
      for (size_t v = 0; v < curves.size(); ++v) {
        gp += (v ? ", \\\n  " : "") + block + std::to_string(v) +
              " using 1:2 with lines lt " + std::to_string(v % kLineStyles + 1) + " lw 2 title " + Quote(curves[v].label);
      }
      gp += "\nunset output\n";
    } else if (f.name == "expert_load") {
      std::string block = "$expert_load << EOD\n", csv = "run,expert,share\n", ytics;
      std::vector<size_t> rows;
      size_t max_experts = 0;
      for (size_t i = 0; i < r.stats.size(); ++i) {
        if (r.stats[i].tail.expert_share.empty()) continue;
        const size_t y = rows.size();
        rows.push_back(i);
        const auto& share = r.stats[i].tail.expert_share;
        max_experts = std::max(max_experts, share.size());
        for (size_t e = 0; e < share.size(); ++e) {
          block += std::to_string(e) + " " + std::to_string(y) + " ";
          AppendNumber(share[e], &block);
          block += "\n";
          csv += CsvField(r.data.runs[i].record.name) + "," + std::to_string(e) + ",";
          AppendNumber(share[e], &csv, "");
          csv += "\n";
        }
        ytics += (ytics.empty() ? "" : ", ") + Quote(r.data.runs[i].record.name) + " " + std::to_string(y);
      }
      MOE_RETURN_IF_ERROR(WriteTextFile(dir / "expert_load.csv", csv));
      gp += block + "EOD\n";
      gp += Common(f.title + " (1.0 = uniform)", "expert index", "run");
      gp += "set key off\nset grid noxtics noytics\nset palette defined (0 '#2166ac', 1 '#f7f7f7', 2 '#b2182b')\n"
            "set cbrange [0:2]\nset cblabel 'tokens routed / mean over experts (tail window)'\n";
      gp += "set xrange [-0.5:" + std::to_string(max_experts) + "-0.5]\nset yrange [" + std::to_string(rows.size()) +
            "-0.5:-0.5]\n";
      gp += max_experts <= 64 ? "set xtics 1\n" : "";
      if (rows.size() <= 60) gp += "set ytics (" + ytics + ") font ',9'\n";
      gp += Output(f.name) + "plot $expert_load using 1:2:(0.5):(0.5):3 with boxxyerror fc palette fs solid 1.0 noborder\n"
            "unset output\n";
    } else if (f.name == "tail_tok_per_s") {
      std::vector<size_t> bars;
      for (size_t i = 0; i < r.stats.size(); ++i) {
        if (r.stats[i].tail.tok_per_s > 0) bars.push_back(i);
      }
      std::stable_sort(bars.begin(), bars.end(),
                       [&](size_t a, size_t b) { return r.stats[a].tail.tok_per_s > r.stats[b].tail.tok_per_s; });
      std::string block = "$bars << EOD\n", csv = "run,status,tail_tok_per_s,tail_mfu\n";
      for (size_t k = 0; k < bars.size(); ++k) {
        const size_t i = bars[k];
        block += std::to_string(k) + " ";
        AppendNumber(r.stats[i].tail.tok_per_s, &block);
        block += " " + DataString(r.data.runs[i].record.name) + "\n";
        csv += CsvField(r.data.runs[i].record.name) + "," + harness::RunStatusName(r.data.runs[i].record.status) + ",";
        AppendNumber(r.stats[i].tail.tok_per_s, &csv, "");
        csv += ",";
        AppendNumber(r.stats[i].tail.mfu, &csv, "");
        csv += "\n";
      }
      MOE_RETURN_IF_ERROR(WriteTextFile(dir / "tail_tok_per_s.csv", csv));
      gp += block + "EOD\n";
      gp += Common(f.title + " (median of the last " + n + " steps)", "run (fastest first)",
                   "tail-" + n + " throughput (tokens/s)");
      gp += "set key off\nset style fill solid 0.8 border -1\nset boxwidth 0.75\nset yrange [0:*]\n"
            "set xrange [-0.75:" + std::to_string(bars.size()) + "-0.25]\nset grid noxtics ytics\n";
      if (bars.size() <= 60) {
        gp += "set xtics rotate by 40 right noenhanced" + std::string(bars.size() > 20 ? " font ',9'" : "") + "\n";
        gp += "set bmargin 10\n" + Output(f.name) + "plot $bars using 1:2:xtic(3) with boxes lc rgb '#1f77b4'\n";
      } else {
        gp += "set xtics format ''\n" + Output(f.name) + "plot $bars using 1:2 with boxes lc rgb '#1f77b4'\n";
      }
      gp += "unset output\n";
    }
  }
  const fs::path script = dir / "figures.gp";
  MOE_RETURN_IF_ERROR(WriteTextFile(script, gp));

  pid_t svg = 0, png = 0;
  MOE_RETURN_IF_ERROR(Spawn(gnuplot, "svg", script, dir / "gnuplot-svg.log", &svg));
  Status png_started = Spawn(gnuplot, "png", script, dir / "gnuplot-png.log", &png);
  int svg_status = 0, png_status = 0;
  waitpid(svg, &svg_status, 0);
  if (png_started.ok()) waitpid(png, &png_status, 0);
  MOE_RETURN_IF_ERROR(png_started);
  for (auto [status, fmt] : {std::pair<int, const char*>{svg_status, "svg"}, {png_status, "png"}}) {
    const fs::path log = dir / (std::string("gnuplot-") + fmt + ".log");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return Status::Failed("gnuplot (" + std::string(fmt) + ") failed on " + script.string() + ":\n" + LastLines(log, 6));
    }
    if (fs::file_size(log, ec) == 0) fs::remove(log, ec);
  }
  return Status::OK();
}

}  // namespace moe::reports
