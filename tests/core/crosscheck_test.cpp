// Cross-check against an independent plain-PyTorch implementation (pytorch_crosscheck.py):
// same initial weights and batch, compare loss and every parameter gradient in fp32.
// A missing Python or a Python without torch is a FAILURE, never a skip: CI installs it.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/model/gpt.h"
#include "tiny_model_config.h"

namespace crosscheck_test {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Not std::filesystem::remove_all: libtorch.so exports its own copy of that symbol, which the
// dynamic linker may bind instead of libstdc++'s, and it crashes (seen with torch 2.11 wheels).
void RemoveTree(const fs::path& p) {
  const int rc = std::system(("rm -rf '" + p.string() + "'").c_str());
  (void)rc;
}

json WriteTensor(const fs::path& dir, const std::string& name, const torch::Tensor& t) {
  std::string file = name;
  for (char& ch : file) if (ch == '.') ch = '_';
  file += ".bin";
  torch::Tensor c = t.detach().contiguous().cpu();
  std::ofstream out(dir / file, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  REQUIRE(out.good());
  return {{"name", name}, {"file", file}, {"shape", c.sizes().vec()},
          {"dtype", c.scalar_type() == torch::kInt64 ? "int64" : "float32"}};
}

torch::Tensor ReadF32(const fs::path& path, torch::IntArrayRef shape) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  std::ifstream in(path, std::ios::binary);
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(t.nbytes()));
  return t;
}

struct Case {
  std::string name;
  moe::Config cfg;
  fs::path dir;
  moe::GPT model{nullptr};
  moe::ForwardOut out;
};

// Builds the model, randomises routers and biases (so routing is not a tie), runs forward and
// backward, and writes manifest.json with weights, buffers and the batch.
void Prepare(Case& c) {
  torch::manual_seed(1234);
  c.model = moe::GPT(c.cfg, torch::kFloat32);
  {
    torch::NoGradGuard ng;
    for (auto& p : c.model->named_parameters())
      if (p.key().find("router.weight") != std::string::npos) p.value().normal_(0.0, 0.5);
    if (c.cfg.moe.bias_update_rate > 0)
      for (auto& b : c.model->named_buffers())
        if (b.key().find("router_bias") != std::string::npos) b.value().normal_(0.0, 0.1);
  }
  const int64_t B = 2, T = c.cfg.model.seq_len;
  torch::Tensor idx = torch::randint(c.cfg.model.vocab_size, {B, T}, torch::kInt64);
  torch::Tensor tgt = torch::randint(c.cfg.model.vocab_size, {B, T}, torch::kInt64);

  fs::create_directories(c.dir);
  json man;
  man["config"] = moe::ConfigToJson(c.cfg);
  man["params"] = json::array();
  for (const auto& p : c.model->named_parameters()) man["params"].push_back(WriteTensor(c.dir, p.key(), p.value()));
  man["buffers"] = json::array();
  for (const auto& b : c.model->named_buffers()) man["buffers"].push_back(WriteTensor(c.dir, b.key(), b.value()));
  man["idx"] = WriteTensor(c.dir, "idx", idx);
  man["targets"] = WriteTensor(c.dir, "targets", tgt);
  std::ofstream(c.dir / "manifest.json") << man.dump(1);

  c.out = c.model->forward(idx, tgt);
  c.out.loss.backward();
}

void Compare(Case& c) {
  INFO("case " << c.name << " in " << c.dir);
  std::ifstream in(c.dir / "result.json");
  REQUIRE(in.good());
  json r = json::parse(in);
  CHECK(c.out.loss.item<double>() == Approx(r["loss"].get<double>()).epsilon(1e-5));
  CHECK(c.out.ce_loss.item<double>() == Approx(r["ce_loss"].get<double>()).epsilon(1e-5));
  CHECK(c.out.balance_loss.item<double>() == Approx(r["balance_loss"].get<double>()).epsilon(1e-5));
  CHECK(c.out.z_loss.item<double>() == Approx(r["z_loss"].get<double>()).epsilon(1e-5));
  CHECK(c.out.dropped.item<double>() == r["dropped"].get<double>());
  std::vector<float> load = r["expert_load"].get<std::vector<float>>();
  CHECK(torch::equal(c.out.expert_load, torch::tensor(load)));

  auto params = c.model->named_parameters();
  REQUIRE(r["grads"].size() == params.size());
  for (const auto& g : r["grads"]) {
    const std::string name = g["name"];
    INFO(name);
    REQUIRE(params.contains(name));
    torch::Tensor ours = params[name].grad();
    REQUIRE(ours.defined());
    torch::Tensor theirs = ReadF32(c.dir / g["file"].get<std::string>(), ours.sizes());
    // Relative to the tensor's largest gradient: element-wise relative error is meaningless
    // for entries that are zero up to rounding.
    const double scale = std::max(theirs.abs().max().item<double>(), 1e-12);
    const double err = (ours - theirs).abs().max().item<double>();
    CHECK(err / scale <= 1e-5);
  }
}

}  // namespace

TEST_CASE("crosscheck: loss and gradients match an independent PyTorch model", "[crosscheck]") {
  const std::string python = MOE_PYTHON;
  INFO("MOE_PYTHON='" << python << "' (configure CMake with a Python that has torch)");
  REQUIRE_FALSE(python.empty());
  const fs::path root = fs::temp_directory_path() / ("moe_crosscheck_" + std::to_string(getpid()));
  RemoveTree(root);

  std::vector<Case> cases(3);
  cases[0].name = "dense";
  cases[0].cfg = moe_test::TinyConfig(false);
  cases[1].name = "moe_softmax_grouped";  // the reference-style MoE: softmax top-2, renormalised, dropless
  cases[1].cfg = moe_test::TinyConfig(true);
  cases[1].cfg.moe.impl = "grouped";
  cases[1].cfg.moe.z_loss_coef = 0.001;
  cases[2].name = "moe_sigmoid_swiglu_capacity";  // every other option off its default
  cases[2].cfg = moe_test::TinyConfig(true);
  cases[2].cfg.model.mlp = "swiglu";
  cases[2].cfg.model.n_layer = 3;
  cases[2].cfg.model.moe_freq = 2;
  cases[2].cfg.moe.router = "sigmoid";
  cases[2].cfg.moe.renormalize = false;
  cases[2].cfg.moe.capacity_factor = 1.0;
  cases[2].cfg.moe.n_shared_experts = 1;
  cases[2].cfg.moe.bias_update_rate = 0.01;  // also randomises the selection bias in Prepare
  cases[2].cfg.moe.impl = "padded";
  cases[2].cfg.moe.z_loss_coef = 0.01;

  std::string cmd = "\"" + python + "\" \"" + std::string(MOE_SOURCE_DIR) + "/tests/core/pytorch_crosscheck.py\"";
  for (Case& c : cases) {
    c.dir = root / c.name;
    Prepare(c);
    cmd += " \"" + c.dir.string() + "\"";
  }
  INFO("command: " << cmd);
  const int rc = std::system((cmd + " 2>&1").c_str());
  REQUIRE(rc == 0);  // python missing, torch missing, or the script failed: see its output above
  // The capacity case must actually drop something, or it checks nothing about dropping.
  CHECK(cases[2].out.dropped.item<double>() > 0);
  for (Case& c : cases) Compare(c);
  RemoveTree(root);
}

}  // namespace crosscheck_test
