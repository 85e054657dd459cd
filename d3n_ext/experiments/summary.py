"""Summaries over seeds: mean ± sd of every model's mAP, and per seed the margins that carry the claim.

`seeds.md` / `seeds.json` come from the pipeline's own seeds or from table.json files of runs made
separately (other sessions, other machines), which `--summarise` joins.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from utils.files import atomic_write_text

BASELINE, TEACHER, SELF_DISTILLED, STUDENT = "baseline", "teacher (hybrid)", "student (self-distilled)", "student (D3N)"


# the margins that carry the claim: (line under a table, key of the seed summary, model, minus model)
MARGINS = (("D3N student − baseline", "D3N student − baseline", STUDENT, BASELINE),
           ("DDPM contribution = D3N student − self-distilled student",
            "DDPM contribution (D3N − self-distilled student)", STUDENT, SELF_DISTILLED),
           ("teacher − baseline", "teacher − baseline", TEACHER, BASELINE))


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "values": values}


def seed_summary(per_seed: dict[int, list[dict]]) -> dict:
    """Mean ± sd of each model's mAP over seeds, and per seed the margins that carry the claim (mAP@0.5)."""
    models = [r["model"] for r in next(iter(per_seed.values()))]
    value = lambda rows, m, k: next(r[k] for r in rows if r["model"] == m)  # noqa: E731
    first = next(iter(per_seed.values()))
    keys = ("mAP@0.5", "mAP@0.5:0.95", *(k for k in ("mask mAP@0.5", "mask mAP@0.5:0.95") if all(k in r for r in first)))
    summary = {"seeds": list(per_seed), "models": {m: {k: _stats([value(rows, m, k) for rows in per_seed.values()])
                                                       for k in keys} for m in models},
               "margins": {}}
    for _, label, a, b in MARGINS:
        if a in models and b in models:
            diffs = [round(value(rows, a, "mAP@0.5") - value(rows, b, "mAP@0.5"), 4) for rows in per_seed.values()]
            summary["margins"][label] = {**_stats(diffs), "ahead": f"{sum(d > 0 for d in diffs)}/{len(diffs)} seeds"}
    return summary


def format_seed_summary(summary: dict) -> str:
    keys = list(next(iter(summary["models"].values())))  # mAP@0.5, mAP@0.5:0.95 [, the masks']
    head = (f"Seeds {', '.join(map(str, summary['seeds']))}: mean ± sd\n\n| model | {' | '.join(keys)} | per seed "
            f"mAP@0.5 |\n|---|{'---:|' * len(keys)}---|\n")
    spread = lambda stats: f"{stats['mean']:.3f} ± {stats['sd']:.3f}"  # noqa: E731
    body = "".join(f"| {m} | {' | '.join(spread(v[k]) for k in keys)} | "
                   f"{', '.join(f'{x:.3f}' for x in v['mAP@0.5']['values'])} |\n"
                   for m, v in summary["models"].items())
    margins = "".join(f"\n{label}, mAP@0.5: {d['mean']:+.3f} ± {d['sd']:.3f} (per seed "
                      f"{', '.join(f'{x:+.3f}' for x in d['values'])}; ahead on {d['ahead']})"
                      for label, d in summary["margins"].items())
    return head + body + margins + "\n"


def write_seed_summary(per_seed: dict[int, list[dict]], out: Path) -> dict:
    summary = seed_summary(per_seed)
    text = format_seed_summary(summary)
    atomic_write_text(out / "seeds.md", text)
    atomic_write_text(out / "seeds.json", json.dumps(summary, indent=2))
    print(text)
    return summary


def summarise_tables(paths: list[str], out: Path) -> dict:
    """seeds.md / seeds.json from table.json files of earlier runs (one per seed, possibly from other sessions)."""
    per_seed = {}
    for path in paths:
        try:
            table = json.loads(Path(path).read_text())
            seed = table["options"]["seed"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a pipeline table.json ({e})") from None
        if seed in per_seed:
            raise ValueError(f"{path}: seed {seed} is given twice; pass one table per seed")
        per_seed[seed] = table["rows"]
    return write_seed_summary(dict(sorted(per_seed.items())), out)
