"""What CUDA graphs give the PyTorch peer: ../shared/reference/ref_moe.py's own bench() with
torch.compile's default mode against mode="reduce-overhead" (Inductor's CUDA graphs over the
compiled forward and backward; the fused AdamW step stays eager), at several batch sizes.
Issue 5 asks moe-train's cudagraph mode for 1.1x its eager mode on the reference config; this
measures the same ratio for the peer on the same model, so the two can be read side by side.

GPU machine (device tool), from the repo root, with .devdeps carried:
  python3 scripts/ref_graph_modes.py [--batches 16 4] [--variants moe_grouped dense]
Prints ref_moe's JSON line per run (name = variant_mode_bBATCH), then a table of the ratios.
"""
import argparse, contextlib, functools, io, json, os, sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".devdeps", "reference"))
import ref_moe  # noqa: E402  (the peer, copied by devdeps.sh)

VARIANTS = {"moe_grouped": dict(expert_impl="grouped"), "dense": dict(moe=False)}
MODES = ["default", "reduce-overhead"]


def compiled_with(mode):
    """torch.compile for ref_moe.bench: `mode`, and for CUDA graphs a step boundary before each
    call (cudagraph trees otherwise keep the previous step's outputs alive across replays)."""
    real = torch.compile

    def compile_(model):
        fn = real(model, mode=None if mode == "default" else mode)
        if mode != "reduce-overhead":
            return fn

        def step(*args):
            torch.compiler.cudagraph_mark_step_begin()
            return fn(*args)
        return step
    return compile_


def run(variant, mode, batch, steps):
    name = f"{variant}_{mode}_b{batch}"
    buf = io.StringIO()
    saved = torch.compile
    torch.compile = compiled_with(mode)
    try:
        with contextlib.redirect_stdout(buf):
            ref_moe.bench(name, batch=batch, steps=steps, compile=True, **VARIANTS[variant])
        r = json.loads(buf.getvalue().strip().splitlines()[-1])
    except Exception as e:  # one failed variant must not lose the others' figures
        r = dict(name=name, error=str(e)[:400])
    finally:
        torch.compile = saved
        torch._dynamo.reset()
    r.update(variant=variant, mode=mode, batch=batch)
    print(json.dumps(r), flush=True)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 4])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=15, help="timed steps per run (after ref_moe's 3 warm-up steps)")
    ap.add_argument("--reps", type=int, default=2, help="each (variant, batch) runs its modes alternately this many times")
    a = ap.parse_args()
    rows = []
    for variant in a.variants:
        for batch in a.batches:
            for _ in range(a.reps):
                for mode in MODES:
                    rows.append(run(variant, mode, batch, a.steps))
    print("\n| peer variant | batch | compile default tok/s | reduce-overhead tok/s | reduce-overhead / default |")
    print("|---|---:|---|---|---:|")
    for variant in a.variants:
        for batch in a.batches:
            t = {m: [r.get("tok_s") for r in rows if (r["variant"], r["batch"], r["mode"]) == (variant, batch, m)]
                 for m in MODES}
            ok = all(v is not None for m in MODES for v in t[m])
            ratio = ", ".join(f"{b / d:.3f}" for d, b in zip(t["default"], t["reduce-overhead"])) if ok else "n/a"
            fmt = lambda v: " / ".join(f"{x:,}" if x is not None else "error" for x in v)
            print(f"| {variant} | {batch} | {fmt(t['default'])} | {fmt(t['reduce-overhead'])} | {ratio} |")


if __name__ == "__main__":
    main()
