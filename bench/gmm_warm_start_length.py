"""How long must the flow-map warm start be? The generator's warm start alone (MATH R1's regression, cosine-decayed
over ``N`` steps; the export is the warm start: ``train.steps=1 train.lr=0``) at ``N = m x max(8, K)`` steps for
several per-mode rates ``m`` (``K`` modes; the default is ``m = 750``, 375 until 2026-12-05), measured with MATH
§7's exact measures. The warm start alone is the probability-flow regression ceiling at budget ``N`` (same loss, schedule and betas), so
each curve also says how the ceiling grows with its budget. Issue 23.

    python bench/gmm_warm_start_length.py --teachers ring8 grid25 gmm16d --per-mode 375 750 1500 --seeds 0

Runs through ``bench/gmm_table.py`` (resumable) under ``<runs>/m<m>``; writes ``<out>.json``, ``<out>.md`` (one row per
teacher and rate, mean ± std over seeds) and ``<out>.png`` (each measure against ``m``, one line per teacher, the
teacher's own samples dotted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import gmm_table
from common import earlier_rows, parse_with_overrides, save_figure
from gmm_longer import MEASURES


def fit_steps(teacher: str, per_mode: int) -> int:
    """``m x max(8, K)``: the warm-start length at ``per_mode`` steps per mode (``fdistill.teachers.mixture``)."""
    from fdistill.teachers.mixture import flow_fit_steps_for

    return flow_fit_steps_for(gmm_table.teacher_of(teacher).num_components, per_mode)


def summarise(rows: list[dict], key: str) -> tuple[float, float]:
    v = np.array([r[key] for r in rows if key in r], dtype=float)
    return (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))


def table(rows, teachers, rates, refs) -> str:
    head = "| teacher | steps/mode | steps | seeds | " + " | ".join(label for _, label in MEASURES) + " |"
    lines = [head, "|" + "---|" * (4 + len(MEASURES))]
    for t in teachers:
        lines.append(f"| {t} | exact samples | - | - | " + " | ".join(
            f"{refs[t][k]:.3f}" if k in refs[t] else "-" for k, _ in MEASURES) + " |")
        for m in rates:
            rs = [r for r in rows if r["teacher"] == t and r["per_mode"] == m and "error" not in r]
            if rs:
                cells = [f"{mu:.3f} ± {sd:.3f}" for mu, sd in (summarise(rs, k) for k, _ in MEASURES)]
                lines.append(f"| {t} | {m} | {fit_steps(t, m)} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(path, rows, teachers, rates, refs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.4))
    for ax, (key, label) in zip(axes, MEASURES):
        for t in teachers:
            ms = [m for m in rates if any(r["teacher"] == t and r["per_mode"] == m and "error" not in r for r in rows)]
            stats = [summarise([r for r in rows if r["teacher"] == t and r["per_mode"] == m and "error" not in r], key)
                     for m in ms]
            if not ms:
                continue
            mean, std = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
            line, = ax.plot(ms, mean, marker="o", ms=4, label=t)
            ax.fill_between(ms, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            if key in refs[t]:
                ax.axhline(refs[t][key], color=line.get_color(), ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(rates, [str(m) for m in rates])
        ax.minorticks_off()
        ax.set_xlabel("warm-start steps per mode")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("the flow-map warm start alone (= the PF-regression ceiling at that budget); dotted: exact samples",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", nargs="+", default=["ring8", "grid25", "gmm16d"], metavar="PRESET[*C]")
    p.add_argument("--per-mode", type=int, nargs="+", default=[375, 750, 1500])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs", default="runs/gmm_warm_start_length")
    p.add_argument("--out", default="bench/results/gmm_warm_start_length")
    p.add_argument("overrides", nargs="*",
                   help="extra key=value for every run (network.warm_start_cache=DIR reuses fits)")
    a = parse_with_overrides(p, argv)  # key=value overrides anywhere, even right after a list option
    if min(a.per_mode) < 1:
        raise SystemExit(f"--per-mode takes positive steps per mode; got {a.per_mode}")
    rows = []
    for m in sorted(a.per_mode):  # the cheap fits first: a sweep stopped part way has every teacher at the short rates
        for t in a.teachers:
            extra = [*a.overrides, "train.steps=1", "train.lr=0", f"network.flow_fit_steps={fit_steps(t, m)}"]
            for s in a.seeds:
                r = gmm_table.run_one(t, "fdistill", "fkl", s, os.path.join(a.runs, f"m{m}"), extra)
                r.update(per_mode=m, flow_fit_steps=fit_steps(t, m))
                rows.append(r)
                print(json.dumps({k: r.get(k) for k in ("teacher", "per_mode", "seed", "error",
                                                        *(k for k, _ in MEASURES))}), flush=True)
    refs = {t: gmm_table.teacher_reference(t) for t in a.teachers}
    rows, refs, commands = with_recorded(a.out + ".json", rows, refs, " ".join(sys.argv))
    teachers = list(dict.fromkeys([*refs]))
    rates = sorted({r["per_mode"] for r in rows})
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump({"meta": {"command": commands[-1], "commands": commands, "commit": gmm_table.git_commit(),
                            "overrides": a.overrides, "teacher_reference": refs}, "runs": rows}, fh, indent=1)
    md = table(rows, teachers, rates, refs)
    with open(a.out + ".md", "w") as fh:
        fh.write(md)
    figure(a.out + ".png", rows, teachers, rates, refs)
    print(md)


def with_recorded(path: str, rows: list[dict], refs: dict, command: str) -> tuple[list[dict], dict, list[str]]:
    """This call's rows and teacher references after the ones ``path`` already holds for the (teacher, rate, seed)s
    this call did not run (a call for one more rate keeps the others' rows), and the commands that made them."""
    ran = {(r["teacher"], r["per_mode"], r["seed"]) for r in rows}
    kept, old = earlier_rows(path, lambda r: (r["teacher"], r["per_mode"], r["seed"]) in ran)
    meta = old.get("meta", {})
    commands = meta.get("commands") or ([meta["command"]] if meta.get("command") else [])
    return kept + rows, {**meta.get("teacher_reference", {}), **refs}, [*commands, command]


if __name__ == "__main__":
    main()
