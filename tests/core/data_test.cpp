// Data sources: determinism per (step, micro, rank), exact windows of bin/text files checked
// against the bytes on disk, the train/validation split, and the error messages.
#include <catch2/catch.hpp>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/config/config.h"
#include "core/data/data_source.h"
#include "core/data/token_file.h"
#include "temp_dir.h"

namespace data_test {

using Catch::Matchers::Contains;
using moe::Batch;
using moe::Config;
using moe::DataSource;
using moe::testing::TempDir;

namespace {

Config MakeConfig(const std::string& source, const std::string& path, int64_t B, int64_t T,
                  int64_t vocab, double val_frac = 0.1) {
  Config cfg;
  cfg.data.source = source;
  cfg.data.path = path;
  cfg.data.val_frac = val_frac;
  cfg.train.batch_size = B;
  cfg.model.seq_len = T;
  cfg.model.vocab_size = vocab;
  return cfg;
}

std::unique_ptr<DataSource> MustOpen(const Config& cfg) {
  std::unique_ptr<DataSource> src;
  moe::Status st = moe::OpenDataSource(cfg, &src);
  INFO(st.ToString());
  REQUIRE(st.ok());
  REQUIRE(src != nullptr);
  return src;
}

// Little-endian uint16, byte by byte, so the test does not share the reader's decoding.
std::string EncodeU16(const std::vector<int64_t>& tokens) {
  std::string bytes;
  for (int64_t t : tokens) {
    bytes.push_back(static_cast<char>(t & 0xff));
    bytes.push_back(static_cast<char>((t >> 8) & 0xff));
  }
  return bytes;
}

// Reads the file back from disk: the ground truth windows are checked against.
std::vector<int64_t> ReadU16File(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<int64_t> out;
  for (size_t i = 0; i + 1 < b.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(b[i]) | (static_cast<int64_t>(static_cast<uint8_t>(b[i + 1])) << 8));
  }
  return out;
}

void CheckShape(const Batch& b, int64_t B, int64_t T) {
  for (const torch::Tensor& t : {b.inputs, b.targets}) {
    CHECK(t.sizes() == torch::IntArrayRef({B, T}));
    CHECK(t.scalar_type() == torch::kInt64);
    CHECK(t.device().is_cpu());
    CHECK(t.is_contiguous());
  }
}

// Targets are the inputs shifted left by one token.
void CheckShifted(const Batch& b) {
  const int64_t T = b.inputs.size(1);
  CHECK(torch::equal(b.inputs.slice(1, 1, T), b.targets.slice(1, 0, T - 1)));
}

bool SameBatch(const Batch& a, const Batch& b) {
  return torch::equal(a.inputs, b.inputs) && torch::equal(a.targets, b.targets);
}

// The file offset of each row, found by matching the row against the file's tokens (the test
// files have all-distinct tokens, so the first input token fixes the offset); then every input
// and target is compared with the file.
std::vector<int64_t> RowOffsets(const Batch& b, const std::vector<int64_t>& file) {
  const int64_t B = b.inputs.size(0), T = b.inputs.size(1);
  std::vector<int64_t> offsets;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t first = b.inputs[r][0].item<int64_t>();
    int64_t off = -1;
    for (size_t i = 0; i < file.size(); ++i) {
      if (file[i] == first) {
        off = static_cast<int64_t>(i);
        break;
      }
    }
    REQUIRE(off >= 0);
    REQUIRE(off + T + 1 <= static_cast<int64_t>(file.size()));
    for (int64_t t = 0; t < T; ++t) {
      REQUIRE(b.inputs[r][t].item<int64_t>() == file[off + t]);
      REQUIRE(b.targets[r][t].item<int64_t>() == file[off + t + 1]);
    }
    offsets.push_back(off);
  }
  return offsets;
}

}  // namespace

TEST_CASE("data: synthetic batches are a pure function of (seed, step, micro, rank)", "[data]") {
  const int64_t B = 4, T = 16, V = 1000;
  Config cfg = MakeConfig("synthetic", "", B, T, V);
  auto src = MustOpen(cfg);
  Batch base = src->TrainBatch(3, 1, 0, 1);
  CheckShape(base, B, T);
  CheckShifted(base);
  CHECK(base.inputs.min().item<int64_t>() >= 0);
  CHECK(base.inputs.max().item<int64_t>() < V);

  // A fresh source (a resumed run) gives the same batch; world does not change rank 0's data.
  CHECK(SameBatch(base, MustOpen(cfg)->TrainBatch(3, 1, 0, 1)));
  CHECK(SameBatch(base, src->TrainBatch(3, 1, 0, 4)));

  struct Case {
    const char* what;
    int64_t step, micro, rank;
  };
  const Case cases[] = {{"next step", 4, 1, 0}, {"other micro", 3, 0, 0}, {"other rank", 3, 1, 1}};
  for (const Case& c : cases) {
    INFO(c.what);
    CHECK_FALSE(SameBatch(base, src->TrainBatch(c.step, c.micro, c.rank, 2)));
  }
  Config other_seed = cfg;
  other_seed.train.seed += 1;
  CHECK_FALSE(SameBatch(base, MustOpen(other_seed)->TrainBatch(3, 1, 0, 1)));

  // Validation is its own stream: deterministic, and not the training batch of the same index.
  Batch v0 = src->ValBatch(0);
  CheckShape(v0, B, T);
  CheckShifted(v0);
  CHECK(SameBatch(v0, src->ValBatch(0)));
  CHECK_FALSE(SameBatch(v0, src->ValBatch(1)));
  CHECK_FALSE(SameBatch(v0, src->TrainBatch(0, 0, 0, 1)));
  CHECK_THAT(src->Describe(), Contains("synthetic") && Contains("1000"));
}

TEST_CASE("data: W ranks of batch B read the global (training and validation) batch of one rank of batch W*B", "[data][dist]") {
  // Data-parallel runs are compared with single-process runs on the same global batch; that needs
  // rank r's shard to be rows [r*B, (r+1)*B) of what a W*B-row rank 0 reads, for every source.
  TempDir dir;
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < 3000; ++i) tokens.push_back((i * 37 + 11) % 65536);
  const std::string bin = dir.Write("tokens.bin", EncodeU16(tokens));
  const int64_t B = 3, T = 8, W = 4;
  for (const char* source : {"synthetic", "bin"}) {
    INFO(source);
    const std::string path = std::string(source) == "bin" ? bin : "";
    auto shard_src = MustOpen(MakeConfig(source, path, B, T, 65536));
    auto global_src = MustOpen(MakeConfig(source, path, W * B, T, 65536));
    for (int64_t step : {0, 5}) {
      Batch global = global_src->TrainBatch(step, 1, 0, 1);
      std::vector<torch::Tensor> in, tg;
      for (int64_t r = 0; r < W; ++r) {
        Batch b = shard_src->TrainBatch(step, 1, r, W);
        in.push_back(b.inputs);
        tg.push_back(b.targets);
      }
      CHECK(torch::equal(torch::cat(in), global.inputs));
      CHECK(torch::equal(torch::cat(tg), global.targets));
      // Shards are disjoint samples, not copies.
      CHECK_FALSE(torch::equal(in[0], in[1]));
      // Validation is sharded the same way (step here stands for the validation batch index).
      Batch global_val = global_src->ValBatch(step, 0, 1);
      std::vector<torch::Tensor> val;
      for (int64_t r = 0; r < W; ++r) val.push_back(shard_src->ValBatch(step, r, W).inputs);
      CHECK(torch::equal(torch::cat(val), global_val.inputs));
      CHECK_FALSE(torch::equal(val[0], val[1]));
    }
  }
}

TEST_CASE("data: synthetic tokens cover the vocabulary roughly uniformly", "[data]") {
  const int64_t V = 8;
  auto src = MustOpen(MakeConfig("synthetic", "", 64, 64, V));
  torch::Tensor counts = torch::bincount(src->TrainBatch(0, 0).inputs.flatten(), {}, V);  // (V)
  // 4096 draws over 8 ids: 512 expected each; 5 sigma is about +-106.
  CHECK(counts.min().item<int64_t>() > 400);
  CHECK(counts.max().item<int64_t>() < 624);
}

TEST_CASE("data: bin windows are the file's tokens, validation only from the held-out tail", "[data]") {
  TempDir dir;
  // 2000 distinct tokens with both bytes in use (37 is odd, so i*37 mod 65536 never repeats).
  std::vector<int64_t> tokens;
  for (int64_t i = 0; i < 2000; ++i) tokens.push_back((i * 37 + 1000) % 65536);
  const std::string path = dir.Write("tokens.bin", EncodeU16(tokens));
  const std::vector<int64_t> file = ReadU16File(path);
  REQUIRE(file == tokens);

  const int64_t B = 8, T = 32;
  Config cfg = MakeConfig("bin", path, B, T, 65536, 0.25);
  auto src = MustOpen(cfg);
  const int64_t n_train = 1500;  // 2000 - floor(2000 * 0.25)

  std::set<int64_t> train_offsets;
  for (int64_t step = 0; step < 20; ++step) {
    Batch b = src->TrainBatch(step, 0);
    CheckShape(b, B, T);
    for (int64_t off : RowOffsets(b, file)) {
      CHECK(off + T + 1 <= n_train);  // never reads into the held-out tail
      train_offsets.insert(off);
    }
  }
  CHECK(train_offsets.size() > 100);  // random offsets, not a handful of fixed windows
  CHECK(*train_offsets.rbegin() > n_train / 2);

  // Same (step, micro, rank) -> same windows on a fresh open; other steps/ranks -> other windows.
  CHECK(SameBatch(src->TrainBatch(7, 1, 2, 4), MustOpen(cfg)->TrainBatch(7, 1, 2, 4)));
  CHECK_FALSE(SameBatch(src->TrainBatch(7, 1, 2, 4), src->TrainBatch(8, 1, 2, 4)));
  CHECK_FALSE(SameBatch(src->TrainBatch(7, 1, 2, 4), src->TrainBatch(7, 1, 3, 4)));

  // Validation: window k starts at n_train + k*T; there are (500 - 1) / 32 = 15 windows, so
  // batch i row r is window (i*B + r) mod 15.
  const int64_t n_windows = 15;
  for (int64_t i = 0; i < 4; ++i) {
    Batch v = src->ValBatch(i);
    std::vector<int64_t> offs = RowOffsets(v, file);
    for (int64_t r = 0; r < B; ++r) {
      INFO("val batch " << i << " row " << r);
      CHECK(offs[r] >= n_train);
      CHECK(offs[r] == n_train + ((i * B + r) % n_windows) * T);
    }
  }
  // Validation does not depend on the seed: every run is scored on the same tokens.
  Config other_seed = cfg;
  other_seed.train.seed = 7;
  CHECK(SameBatch(src->ValBatch(2), MustOpen(other_seed)->ValBatch(2)));
  CHECK_THAT(src->Describe(), Contains("bin") && Contains(path) && Contains("2.0K tokens"));
}

TEST_CASE("data: text source gives byte values, split like bin", "[data]") {
  TempDir dir;
  // 47 bytes including a 3-byte UTF-8 sequence: bytes above 127 must come out unsigned.
  const std::string text = "The quick brown fox \xe2\x82\xac jumps over the lazy dog";
  REQUIRE(text.size() == 47);
  const std::string path = dir.Write("t.txt", text);
  const int64_t B = 3, T = 4;
  auto src = MustOpen(MakeConfig("text", path, B, T, 256, 0.25));
  const int64_t n_train = 47 - 11;  // floor(47 * 0.25) = 11 held out

  // Validation windows are exact: start n_train + k*T, (11 - 1) / 4 = 2 windows.
  Batch v = src->ValBatch(0);
  CheckShape(v, B, T);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t off = n_train + (r % 2) * T;
    for (int64_t t = 0; t < T; ++t) {
      CHECK(v.inputs[r][t].item<int64_t>() == static_cast<uint8_t>(text[off + t]));
      CHECK(v.targets[r][t].item<int64_t>() == static_cast<uint8_t>(text[off + t + 1]));
    }
  }

  // Training rows are byte windows of the training part, and cover the euro sign's bytes.
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 50; ++step) {
    Batch b = src->TrainBatch(step, 0);
    CheckShifted(b);
    for (int64_t r = 0; r < B; ++r) {
      std::string row;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t byte = b.inputs[r][t].item<int64_t>();
        REQUIRE(byte >= 0);
        REQUIRE(byte < 256);
        seen.insert(byte);
        row.push_back(static_cast<char>(byte));
      }
      row.push_back(static_cast<char>(b.targets[r][T - 1].item<int64_t>()));
      const std::string train_part = text.substr(0, n_train);
      CHECK(train_part.find(row) != std::string::npos);
    }
  }
  CHECK(seen.count(0xe2) == 1);
  CHECK(seen.count(0xac) == 1);
  CHECK_THAT(src->Describe(), Contains("text") && Contains(path));
}

TEST_CASE("data: open errors name data.path and the values", "[data]") {
  TempDir dir;
  std::vector<int64_t> big_ids(100, 7);
  big_ids[17] = 5000;
  std::vector<int64_t> ok_ids(100, 7);
  const std::string missing = dir.Path("nope.bin");
  const std::string tiny = dir.Write("tiny.bin", EncodeU16(std::vector<int64_t>(10, 1)));
  const std::string odd = dir.Write("odd.bin", "abc");
  const std::string empty = dir.Write("empty.bin", "");
  const std::string bad = dir.Write("bad.bin", EncodeU16(big_ids));
  const std::string text = dir.Write("t.txt", std::string(100, 'x'));

  struct Case {
    const char* what;
    Config cfg;
    bool not_found;  // else InvalidArgument
    std::vector<std::string> must_contain;
  };
  const Case cases[] = {
      {"missing file", MakeConfig("bin", missing, 2, 8, 4096), true, {"data.path", missing, "no such file"}},
      {"too small for a window", MakeConfig("bin", tiny, 2, 8, 4096), false,
       {"data.path", tiny, "10 tokens", "20 bytes", "9 training", "1 validation", "model.seq_len + 1 = 9"}},
      {"tail too small", MakeConfig("bin", bad, 2, 8, 65536, 0.05), false,
       {"data.path", bad, "100 tokens", "5 validation", "model.seq_len + 1 = 9"}},
      {"empty file", MakeConfig("bin", empty, 2, 8, 4096), false, {"data.path", empty, "0 tokens"}},
      {"odd byte count", MakeConfig("bin", odd, 2, 1, 4096), false, {"data.path", odd, "3 bytes", "2-byte tokens"}},
      {"token id >= vocab", MakeConfig("bin", bad, 2, 8, 4096), false,
       {"data.path", bad, "token id 5000", "position 17", "model.vocab_size = 4096"}},
      {"text with a small vocabulary", MakeConfig("text", text, 2, 8, 100), false,
       {"model.vocab_size = 100", "256"}},
      {"unknown source", MakeConfig("parquet", text, 2, 8, 256), false, {"data.source", "parquet"}},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    std::unique_ptr<DataSource> src;
    moe::Status st = moe::OpenDataSource(c.cfg, &src);
    INFO(st.ToString());
    REQUIRE_FALSE(st.ok());
    CHECK(st.IsNotFound() == c.not_found);
    CHECK(st.IsInvalidArgument() == !c.not_found);
    for (const std::string& s : c.must_contain) CHECK_THAT(st.message(), Contains(s));
  }
  // The same shapes open fine when the file is good.
  const std::string good = dir.Write("good.bin", EncodeU16(ok_ids));
  std::unique_ptr<DataSource> src;
  CHECK(moe::OpenDataSource(MakeConfig("bin", good, 2, 8, 4096), &src).ok());
}

TEST_CASE("data: files too large to scan on open check token ids per batch", "[data]") {
  TempDir dir;
  const std::string path = dir.Write("bad.bin", EncodeU16(std::vector<int64_t>(200, 5000)));
  moe::data::TokenFileOptions opts;
  opts.kind = "bin";
  opts.width = 2;
  opts.scan_limit_bytes = 0;  // as if the file were over 1 GiB
  std::unique_ptr<DataSource> src;
  REQUIRE(moe::data::OpenTokenFileSource(MakeConfig("bin", path, 2, 8, 4096), opts, &src).ok());
  CHECK_THROWS_WITH(src->TrainBatch(0, 0), Contains("data.path") && Contains(path) &&
                                               Contains("token id 5000") && Contains("model.vocab_size = 4096"));
  CHECK_THROWS_WITH(src->ValBatch(0), Contains("token id 5000"));
}

TEST_CASE("data: small files are copied, so truncating one during a run cannot fault it, large ones are mapped",
          "[data]") {
  TempDir dir;
  std::string bytes(4096, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7 + 3) % 251);
  const std::string path = dir.Write("corpus.txt", bytes);
  std::unique_ptr<moe::data::MappedFile> copied, mapped;
  REQUIRE(moe::data::MappedFile::Open(path, "data.path", &copied).ok());
  REQUIRE(moe::data::MappedFile::Open(path, "data.path", &mapped, /*copy_below_bytes=*/0).ok());
  REQUIRE(copied->size() == 4096);
  REQUIRE(mapped->size() == 4096);
  CHECK(std::string(reinterpret_cast<const char*>(mapped->data()), 4096) == bytes);
  mapped.reset();  // unmap before the truncation below: touching a truncated mapping is SIGBUS
  std::ofstream(path, std::ios::trunc) << "x";  // an editor saving a shorter file mid-sweep
  CHECK(std::string(reinterpret_cast<const char*>(copied->data()), 4096) == bytes);
}

}  // namespace data_test
