"""Issue 24's table of the students that see the real digits (target 3: FD-digits <= the teacher's, 3 seeds): one row
per recipe, read from the ``scores-*.json`` tables that ``bench/digits_score_exports.py`` writes, with each EMA's mean
± std over training seeds, the best EMA against the teacher scored on the same samples, and the verdict.

    python bench/digits_real_table.py --out bench/results/digits_students_real_table \\
        --entry "two stages, GAN on every level=bench/results/digits_students_staged_scores/scores-n10000-seeds0-1-2-steps800-1600.json:staged-fkl:800" \\
        --entry "two stages, GAN at sigma <= 1=bench/results/digits_students_staged_gancap_scores/scores-n10000-seeds0-1-2-steps800.json:staged-fkl:800"

An entry is ``LABEL=SCORES_JSON:VARIANT:STEP`` (the variant and step of that table's rows; its EMAs are the columns).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import write_json  # noqa: E402
from digits_score_exports import TARGET_SEEDS  # noqa: E402
from digits_students import TARGET_REAL  # noqa: E402

EMAS = ("first", "0.99", "0.995")  # the first EMA is the exported one (FIRST_EMA: 0.998 in the measured recipe)
FIRST_EMA = "0.998"


def parse_entry(text: str) -> dict:
    """``LABEL=SCORES_JSON:VARIANT:STEP`` -> its parts; a clear error on anything else."""
    label, sep, rest = text.partition("=")
    parts = rest.rsplit(":", 2)
    if not sep or not label or len(parts) != 3 or not parts[2].isdigit():
        raise SystemExit(f"--entry {text!r}: expected LABEL=SCORES_JSON:VARIANT:STEP, e.g. "
                         f"'two stages=bench/results/x/scores-n10000-seeds0-1-2-steps800.json:staged-fkl:800'")
    return {"label": label, "path": parts[0], "variant": parts[1], "step": int(parts[2])}


def table_row(entry: dict) -> dict:
    """One recipe: per EMA its mean ± std over seeds and each seed's FD-digits; the best EMA's ratio to the teacher."""
    with open(entry["path"]) as f:
        scores = json.load(f)
    teacher = scores["teacher_fd"]
    rows = {r["ema"]: r for r in scores["rows"] if r["variant"] == entry["variant"] and r["step"] == entry["step"]}
    if not rows:
        raise SystemExit(f"{entry['path']}: no rows for variant {entry['variant']!r} at step {entry['step']}; it has "
                         f"{sorted({(r['variant'], r['step']) for r in scores['rows']})}")
    emas = {e: {"fd": rows[e]["FD-digits"], "fd_std": rows[e]["FD-digits_std"], "fd_each": rows[e]["fd_values"],
                "seeds": rows[e]["seeds"], "fd_check": rows[e]["FD-check"], "recall": rows[e]["recall"]}
            for e in EMAS if e in rows}
    best = min(emas, key=lambda e: emas[e]["fd"])
    seeds = len(emas[best]["seeds"])
    ratio = emas[best]["fd"] / teacher
    return {**entry, "teacher_fd": teacher, "emas": emas, "best_ema": best, "ratio": ratio, "num_seeds": seeds,
            "met": ratio <= TARGET_REAL and seeds >= TARGET_SEEDS}


def markdown(rows: list[dict]) -> str:
    lines = [f"| recipe | step | seeds | FD-digits, {FIRST_EMA} EMA | 0.99 EMA | 0.995 EMA | best / teacher | FD-check (best) "
             "| recall (best) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for e in EMAS:
            v = r["emas"].get(e)
            if not v:
                cells.append("–")
            elif len(v["fd_each"]) == 1:
                cells.append(f"{v['fd']:.2f}")
            else:
                cells.append(f"{v['fd']:.2f} ± {v['fd_std']:.2f} ({' / '.join(f'{x:.2f}' for x in v['fd_each'])})")
        b, best = r["emas"][r["best_ema"]], FIRST_EMA if r["best_ema"] == "first" else r["best_ema"]
        lines.append(f"| {r['label']} | {r['step']} | {', '.join(b['seeds'])} | {' | '.join(cells)} | "
                     f"{r['ratio']:.2f} ({best} EMA) | {b['fd_check']:.2f} | {b['recall']:.3f} |")
    teachers = sorted({round(r["teacher_fd"], 2) for r in rows})
    met = [f"{r['label']} at {r['step']} steps" for r in rows if r["met"]]
    lines.append(f"\nTeacher (Heun, 35 evaluations) on the same samples: FD-digits {', '.join(map(str, teachers))}. "
                 f"Target 3 (<= {TARGET_REAL:g}x the teacher, mean over >= {TARGET_SEEDS} seeds): "
                 f"{'met by ' + '; '.join(met) if met else 'not met by any row'}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entry", action="append", required=True, help="LABEL=SCORES_JSON:VARIANT:STEP (repeat)")
    p.add_argument("--out", required=True, help="writes OUT.md and OUT.json")
    a = p.parse_args(argv)
    rows = [table_row(parse_entry(e)) for e in a.entry]
    command = shlex.join(["python", "bench/digits_real_table.py", *(argv if argv is not None else sys.argv[1:])])
    text = markdown(rows) + f"\nMade by: `{command}`\n"
    with open(a.out + ".md", "w") as f:
        f.write(text)
    write_json(a.out + ".json", {"rows": rows, "command": command})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
