#include "core/data/data_source.h"

#include <memory>
#include <string>

#include "core/data/token_file.h"

namespace moe {

Status OpenDataSource(const Config& cfg, std::unique_ptr<DataSource>* out) {
  // Shape checks repeat ValidateConfig's so a caller that skipped it gets a Status, not a crash.
  if (cfg.train.batch_size < 1) {
    return Status::InvalidArgument("train.batch_size = " + std::to_string(cfg.train.batch_size) + ": must be >= 1");
  }
  if (cfg.model.seq_len < 1) {
    return Status::InvalidArgument("model.seq_len = " + std::to_string(cfg.model.seq_len) + ": must be >= 1");
  }
  if (cfg.model.vocab_size < 1) {
    return Status::InvalidArgument("model.vocab_size = " + std::to_string(cfg.model.vocab_size) + ": must be >= 1");
  }
  const std::string& s = cfg.data.source;
  if (s == "synthetic") return OpenSyntheticSource(cfg, out);
  if (s == "bin") return OpenBinSource(cfg, out);
  if (s == "text") return OpenTextSource(cfg, out);
  return Status::InvalidArgument("data.source = '" + s + "': must be one of synthetic | bin | text");
}

}  // namespace moe
