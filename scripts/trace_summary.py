#!/usr/bin/env python3
"""Where a profiled step's GPU time goes: compute vs communication, overlap and idle gaps.

Reads the Chrome traces that moe-train writes under MOE_PROFILE_STEPS (profile.json, or
profile.rank<R>.json per rank) and prints, per trace and per profiled step (steps divided by
`--steps`):
  window    first GPU event to last, per step
  compute   union of non-NCCL kernels/copies on any stream
  comm      union of NCCL kernels; `exposed` is the part during which no compute ran
  idle      the window minus the union of everything
  gaps      the largest holes on the compute stream, with the kernels either side (a host sync
            or a wait for another rank shows up here)
With --compare BASE, adds a per-kernel-name table of the device time difference against BASE
(e.g. rank 0 of a 2-GPU run against the 1-GPU run): extra kernels and slowed ones.

  scripts/trace_summary.py RUN/profile.rank0.json --steps 2 --compare RUN1/profile.json
"""
import argparse
import collections
import json

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def load(path):
    """GPU events as (start us, end us, name, stream, launching CPU op), sorted by start."""
    with open(path) as f:
        ev = json.load(f)["traceEvents"]
    cpu_op = {}
    for e in ev:
        if e.get("ph") == "X" and e.get("cat") == "cpu_op":
            cpu_op.setdefault(e.get("args", {}).get("External id"), e["name"])
    out = []
    for e in ev:
        if e.get("ph") != "X" or e.get("cat") not in GPU_CATS:
            continue
        args = e.get("args", {})
        out.append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e["name"],
                    args.get("stream", e.get("tid")), cpu_op.get(args.get("External id"), "?")))
    out.sort()
    return out


def is_comm(name):
    return name.lower().startswith("nccl")


def union(intervals):
    merged = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def total(merged):
    return sum(b - a for a, b in merged)


def intersect(x, y):
    i = j = 0
    s = 0.0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if b > a:
            s += b - a
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return s


def summarize(path, steps, n_gaps):
    ev = load(path)
    if not ev:
        print(f"{path}: no GPU events")
        return {}
    t0, t1 = ev[0][0], max(e[1] for e in ev)
    comp = union([(a, b) for a, b, n, *_ in ev if not is_comm(n)])
    comm = union([(a, b) for a, b, n, *_ in ev if is_comm(n)])
    every = union([(a, b) for a, b, *_ in ev])
    ms = lambda us: us / 1e3 / steps
    window = t1 - t0
    print(f"== {path} ({len(ev)} GPU events, {steps} step(s))")
    print(f"  window {ms(window):8.2f} ms/step   compute {ms(total(comp)):8.2f}   comm {ms(total(comm)):8.2f}"
          f" (exposed {ms(total(comm) - intersect(comp, comm)):6.2f})   idle {ms(window - total(every)):6.2f}")
    # The compute stream: the stream with the most non-NCCL time.
    per_stream = collections.Counter()
    for a, b, n, s, _ in ev:
        if not is_comm(n):
            per_stream[s] += b - a
    main = per_stream.most_common(1)[0][0]
    on_main = [e for e in ev if e[3] == main]
    gaps = []
    for prev, nxt in zip(on_main, on_main[1:]):
        if nxt[0] > prev[1]:
            gaps.append((nxt[0] - prev[1], (prev[1] - t0) / window, f"{prev[4]} | {prev[2][:40]}",
                         f"{nxt[4]} | {nxt[2][:40]}"))
    gaps.sort(reverse=True)
    hole = sum(g[0] for g in gaps)
    print(f"  compute stream {main}: busy {ms(per_stream[main]):.2f} ms/step, holes {ms(hole):.2f} ms/step"
          f" ({len(gaps)} holes); largest:")
    for g, at, a, b in gaps[:n_gaps]:
        print(f"    {g / 1e3:7.3f} ms at {at:4.0%} of the window: after [{a}] before [{b}]")
    by_name = collections.defaultdict(float)
    for a, b, n, *_ in ev:
        by_name[n] += b - a
    return {k: v / steps for k, v in by_name.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--steps", type=int, default=1, help="profiled steps in each trace")
    ap.add_argument("--gaps", type=int, default=8, help="largest compute-stream holes to list")
    ap.add_argument("--compare", help="base trace: print per-kernel differences against it")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    base = summarize(a.compare, a.steps, a.gaps) if a.compare else None
    for t in a.traces:
        cur = summarize(t, a.steps, a.gaps)
        if base is None:
            rows = sorted(cur.items(), key=lambda kv: -kv[1])[: a.top]
            print("    ms/step  kernel")
            for n, us in rows:
                print(f"    {us / 1e3:7.3f}  {n[:110]}")
            continue
        names = set(cur) | set(base)
        diff = sorted(((cur.get(n, 0) - base.get(n, 0), n) for n in names), key=lambda x: -abs(x[0]))
        print(f"  largest differences against {a.compare} (ms/step: this, base, delta):")
        for d, n in diff[: a.top]:
            print(f"    {cur.get(n, 0) / 1e3:7.3f} {base.get(n, 0) / 1e3:7.3f} {d / 1e3:+7.3f}  {n[:100]}")


if __name__ == "__main__":
    main()
