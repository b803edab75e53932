// text: any file read as raw bytes, one token per byte (vocabulary 256; config validation makes
// model.vocab_size = 256). No tokenizer, so a CPU smoke run needs nothing but a text file.
// Split and windows: see token_file.h.
#include <memory>
#include <string>

#include "core/data/data_source.h"
#include "core/data/token_file.h"

namespace moe {

Status OpenTextSource(const Config& cfg, std::unique_ptr<DataSource>* out) {
  if (cfg.model.vocab_size < 256) {
    return Status::InvalidArgument("model.vocab_size = " + std::to_string(cfg.model.vocab_size) +
                                   ": data.source = text has a byte vocabulary: set model.vocab_size = 256");
  }
  data::TokenFileOptions opts;
  opts.kind = "text";
  opts.width = 1;
  return data::OpenTokenFileSource(cfg, opts, out);
}

}  // namespace moe
