"""One table from the per-teacher results of a sweep that is still running (``bench/gmm_sweep.sh`` writes
``<out>_<teacher>.json`` after each teacher and the combined ``<out>.json`` only at its end): every finished row of
each teacher, with as many seeds as that teacher has so far, and MATH §7's width measures filled in from the runs'
exported generators where a row was measured before they existed (or, when those runs are on another machine, from
the previous merge's ``<out>.json``). Trains nothing.

    python bench/gmm_table_merge.py --out bench/results/gmm_table_r1b --teachers ring8 grid25 gmm16d blobs6 aniso8d ring8*4

Writes ``<out>.json`` (rows, per-teacher seeds, the merged files' metadata) and ``<out>.md``; ``--readme MARKER``
also puts the table into README.md between the lines ``<!-- MARKER -->`` and ``<!-- /MARKER -->`` (in place of
what was there; README's reading of it is still written by hand).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import gmm_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/gmm_table_r1b")
    p.add_argument("--teachers", nargs="+", default=["ring8", "grid25", "gmm16d", "blobs6", "aniso8d", "ring8*4"])
    p.add_argument("--readme", metavar="MARKER", help="replace README.md's table between <!-- MARKER --> and "
                                                       "<!-- /MARKER --> with the merged one")
    p.add_argument("--readme-path", default=os.path.join(gmm_table.REPO, "README.md"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    rows, meta, missing = [], {}, []
    measured = {}  # width measures of an earlier merge, for rows whose run folders are gone (another machine)
    if os.path.isfile(a.out + ".json"):
        with open(a.out + ".json") as fh:
            measured = {r["run"]: r for r in json.load(fh)["runs"]
                        if "nll_teacher_width" in r and "mode_scale" in r}
    for t in a.teachers:
        path = f"{a.out}_{t.replace('*', 'x')}.json"
        if not os.path.isfile(path):
            missing.append(t)
            continue
        with open(path) as fh:
            res = json.load(fh)
        meta[t] = res["meta"]
        for r in res["runs"]:
            if "error" in r:
                continue
            if ("nll_teacher_width" not in r or "mode_scale" not in r) and r["run"] in measured:
                r.update({k: measured[r["run"]][k] for k in ("nll_teacher_width", "mode_scale")})
            if "nll_teacher_width" not in r or "mode_scale" not in r:
                if not os.path.isdir(os.path.join(r["run"], "generator")):
                    raise SystemExit(f"{r['run']}: no exported generator to measure the width from")
                r.update(gmm_table.width_measures(r["run"], t, r))
            rows.append(r)
    teachers = [t for t in a.teachers if t not in missing]
    if not teachers:
        p.error(f"no per-teacher results {a.out}_<teacher>.json for {a.teachers}")
    objectives = list(dict.fromkeys((r["objective"], r["divergence"]) for r in rows))
    objectives = [o for o in objectives if o != gmm_table.BASELINE] + \
        [o for o in objectives if o == gmm_table.BASELINE]
    refs = {t: gmm_table.teacher_reference(t) for t in teachers}
    md = gmm_table.table(rows, teachers, objectives, refs)
    seeds = {t: sorted({r["seed"] for r in rows if r["teacher"] == t and r["objective"] != "regress"})
             for t in teachers}
    with open(a.out + ".json", "w") as fh:
        json.dump({"meta": {"merged_from": meta, "seeds": seeds, "missing": missing,
                            "command": " ".join(sys.argv)},
                   "teacher_reference": {t: {k: v for k, v in r.items() if k != "mode_mass"}
                                         for t, r in refs.items()},
                   "runs": rows}, fh, indent=1)
    with open(a.out + ".md", "w") as fh:
        fh.write(md + "\n")
    if a.readme:
        replace_between_markers(a.readme_path, a.readme, md)
    print(md)
    return 0


def replace_between_markers(path: str, marker: str, text: str) -> None:
    """Put ``text`` between the lines ``<!-- marker -->`` and ``<!-- /marker -->`` of ``path`` (each must be there
    once, in that order)."""
    with open(path) as fh:
        lines = fh.read().split("\n")
    open_, close = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    found = {m: [i for i, line in enumerate(lines) if line.strip() == m] for m in (open_, close)}
    if len(found[open_]) != 1 or len(found[close]) != 1 or found[open_][0] > found[close][0]:
        raise SystemExit(f"{path}: expected one line {open_!r} and after it one line {close!r}; found "
                         f"{len(found[open_])} and {len(found[close])}")
    start, end = found[open_][0], found[close][0]
    lines[start + 1:end] = text.rstrip("\n").split("\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
