"""Summarise a ``torch.profiler`` Chrome trace (``distill_step.py --profile`` writes one): GPU kernel time by kind
and the top kernels, per profiled step. Reads the gzipped or plain JSON; prints a table and writes JSON.

    python bench/trace_summary.py bench/results/distill_step_trace.json.gz --out bench/results/distill_step_profile.json
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re

import common

# first match wins: cuDNN / CUTLASS convolutions before the generic GEMM names, casts before elementwise
KINDS = [
    ("convolution", r"conv|xmma_fprop|xmma_dgrad|xmma_wgrad|implicit_gemm|cudnn::.*(fprop|dgrad|wgrad)"),
    ("layout (NCHW<->NHWC)", r"nchwToNhwc|nhwcToNchw"),
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("matmul", r"gemm|cutlass|nvjet|matmul"),
    ("group norm", r"group_norm|groupnorm|RowwiseMoments|ComputeInternalGradients|ComputeFusedParams|"
                   r"GroupNorm|welford"),
    ("dtype casts / copies", r"copy_kernel|bfloat16_copy|direct_copy|_to_copy|cast"),
    ("optimizer", r"multi_tensor|adam|fused_adam"),
    ("reductions", r"reduce_kernel|reduce"),
    ("elementwise", r"elementwise|vectorized|unrolled|silu|mul|add"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return kind
    return "other"


def load_events(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        trace = json.load(fh)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def summarise(events: list[dict], top: int = 15) -> dict:
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep")]
    total = sum(e["dur"] for e in kernels)
    by_kind, count = collections.Counter(), collections.Counter()
    by_name = collections.Counter()
    for e in kernels:
        k = kind_of(e["name"])
        by_kind[k] += e["dur"]
        count[k] += 1
        by_name[e["name"]] += e["dur"]
    n_steps = max(len(steps), 1)
    return {
        "profiled_steps": len(steps),
        "step_wall_ms": [round(e["dur"] / 1e3, 2) for e in steps],
        "kernels": len(kernels),
        "kernel_ms_per_step": total / 1e3 / n_steps,
        "by_kind": [{"kind": k, "ms_per_step": v / 1e3 / n_steps, "share": v / total, "kernels": count[k]}
                    for k, v in by_kind.most_common()],
        "top_kernels": [{"name": n[:160], "ms_per_step": v / 1e3 / n_steps, "share": v / total}
                        for n, v in by_name.most_common(top)],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", help="JSON path")
    a = p.parse_args(argv)
    s = summarise(load_events(a.trace), a.top)
    s["trace"] = a.trace
    print(f"{s['profiled_steps']} profiled steps (wall ms {s['step_wall_ms']}), {s['kernels']} kernels, "
          f"{s['kernel_ms_per_step']:.1f} ms of GPU kernels per step")
    for r in s["by_kind"]:
        print(f"  {r['kind']:<24}{r['ms_per_step']:9.1f} ms {100 * r['share']:6.1f} %  ({r['kernels']} kernels)")
    print("top kernels:")
    for r in s["top_kernels"]:
        print(f"  {r['ms_per_step']:8.1f} ms {100 * r['share']:5.1f} %  {r['name'][:100]}")
    common.write_json_if(a.out, s)
    return s


if __name__ == "__main__":
    main()
