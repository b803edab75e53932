// A tiny model config shared by the model/MoE tests: fast on 2 CPU cores, and with every
// dimension a multiple of 4 so that the grouped backend runs in fp32 and bf16.
#pragma once

#include "core/config/config.h"

namespace moe_test {

inline moe::Config TinyConfig(bool use_moe) {
  moe::Config c;
  c.model.vocab_size = 64;
  c.model.n_layer = 2;
  c.model.n_embd = 32;
  c.model.n_head = 4;
  c.model.n_kv_head = 2;
  c.model.seq_len = 16;
  c.model.mlp_hidden_mult = 4;
  c.model.moe = use_moe;
  c.moe.n_experts = 4;
  c.moe.top_k = 2;
  c.moe.expert_hidden_mult = 2;
  return c;
}

// The tiny MoE model of the moe-train end-to-end tests as the start of a config file: the [model]
// section and the first [moe] keys. It ends inside [moe], so a test appends its own [moe] keys
// and then its other sections.
inline const char* kTinyMoeModelToml = R"(
[model]
vocab_size = 64
n_layer = 2
n_embd = 32
n_head = 4
n_kv_head = 2
seq_len = 16
[moe]
n_experts = 4
top_k = 2
)";

}  // namespace moe_test
