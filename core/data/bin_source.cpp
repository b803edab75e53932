// bin: a flat little-endian uint16 token file as written by nanoGPT's prepare.py (np.uint16
// tofile), memory-mapped. Split, windows and checks: see token_file.h.
#include <memory>

#include "core/data/data_source.h"
#include "core/data/token_file.h"

namespace moe {

Status OpenBinSource(const Config& cfg, std::unique_ptr<DataSource>* out) {
  data::TokenFileOptions opts;
  opts.kind = "bin";
  opts.width = 2;
  return data::OpenTokenFileSource(cfg, opts, out);
}

}  // namespace moe
