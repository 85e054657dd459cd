"""Label-efficient D3N: the pipeline with a labelled share of the train split (`--labels 0.1 0.25`).

Per seed and share, the train split is cut into a labelled subset (seeded, class-stratified;
utils.label_subset) and unlabelled images, written as a derived data YAML under
<out>/labels-<share>/. Every arm then reads that YAML:

- baseline and hybrid teacher: ground truth of the labelled subset only;
- self-distilled and D3N students: the labelled subset plus unlabelled images in every batch
  (`--unlabeled-share`, `--unlabeled-weight`), which get the distillation terms only;
- stage 1 (DDPM, ResVAE, repository): once per seed on the full data YAML (train + unlabeled: every
  image, no label), shared by all shares; with `--features DIR`, once for all seeds.

Equal optimiser steps: with k of N train images labelled, every arm trains round(epochs * N / k)
epochs of k/batch steps — the steps of `epochs` full-label epochs — and validates every
round(val_interval * N / k) epochs, so no arm trains or selects longer than another. The students'
batches carry their unlabelled images on top of the labelled batch, so they see each labelled image
exactly as often as the baseline does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from d3n_ext.experiments.summary import BASELINE, SELF_DISTILLED, STUDENT, TEACHER, write_seed_summary
from utils.data_config import load_data_config
from utils.files import atomic_write_text
from utils.label_subset import write_label_subset

LOGGER = logging.getLogger(__name__)

# options that may differ between a share's runs and the full-label protocol they are plotted beside
PER_RUN_KEYS = {"data", "out", "seed", "labels", "epochs", "val_interval", "features", "detect_source"}


def subset_folder(out: str | Path, labels: str) -> Path:
    return Path(out) / f"labels-{labels}"


def with_label_subset(p: Any) -> tuple[Any, dict]:
    """The pipeline options for one labelled share (derived data YAML, scaled epochs) and the subset's facts."""
    data = load_data_config(p.data)
    folder = subset_folder(p.out, p.labels)
    subset = _existing_subset(folder, data.yaml_path, p.labels, p.seed)
    derived = folder / "data.yaml" if subset else write_label_subset(data, p.labels, p.seed, folder)
    subset = subset or json.loads((folder / "subset.json").read_text())
    total = subset["labelled"] + subset["unlabeled"]
    scale = total / subset["labelled"]
    facts = {**subset, "labelled_fraction": round(subset["labelled"] / total, 4), "epoch_scale": round(scale, 3),
             "features": p.features or str(Path(p.out) / "features")}
    adjusted = replace(p, data=str(derived), out=str(folder), epochs=max(1, round(p.epochs * scale)),
                       val_interval=max(1, round(p.val_interval * scale)), features=facts["features"])
    LOGGER.info("--labels %s: %d of %d train images labelled; every arm trains %d epochs (validating every %d), "
                "the steps of %d full-label epochs", p.labels, subset["labelled"], total, adjusted.epochs,
                adjusted.val_interval, p.epochs)
    return adjusted, facts


def _existing_subset(folder: Path, data: Path, labels: str, seed: int) -> dict | None:
    """The subset an earlier run of this seed and share wrote, so reruns keep it (and read no label again)."""
    try:
        subset = json.loads((folder / "subset.json").read_text())
    except (OSError, ValueError):
        return None
    same = (subset.get("data"), subset.get("labels"), subset.get("seed")) == (str(data), str(labels), seed)
    return subset if same and (folder / "data.yaml").is_file() else None


def _fraction(table: dict) -> float:
    return float((table.get("labels") or {}).get("labelled_fraction", 1.0))


# options added after tables were written, with the behaviour their absence meant
LATER_OPTIONS = {"task": "detect"}
# the students' unlabelled images: a full-label table (every train image labelled) has none to share
UNLABELED_KEYS = {"unlabeled_share", "unlabeled_weight"}
NOT_PROTOCOL = PER_RUN_KEYS | UNLABELED_KEYS


def _protocol(table: dict) -> dict:
    options = {**LATER_OPTIONS, **(table.get("protocol") or table["options"])}
    return {k: v for k, v in options.items() if k not in NOT_PROTOCOL}


def summarise_fractions(tables: dict[str, dict], out: Path) -> dict:
    """Per labelled share the seed summary (labels-<share>/seeds.md), then fractions.md / .json and
    accuracy_vs_labels.png over shares. Full-label tables join as share 1.0 when their protocol matches."""
    groups: dict[float, dict[int, list[dict]]] = {}
    shares = [t for t in tables.values() if t.get("labels")]
    reference = _protocol(shares[0]) if shares else None
    for path, table in tables.items():
        if not table.get("labels") and reference is not None and _protocol(table) != reference:
            differ = sorted(k for k in set(reference) | set(_protocol(table))
                            if reference.get(k) != _protocol(table).get(k))
            LOGGER.warning("WARNING: %s: a full-label run with another protocol (%s); left out of the share plot",
                           path, ", ".join(differ))
            continue
        seed = table["options"]["seed"]
        group = groups.setdefault(_fraction(table), {})
        if seed in group:
            raise ValueError(f"{path}: seed {seed} at labelled share {_fraction(table):g} is given twice")
        group[seed] = table["rows"]
    summaries = {share: write_seed_summary(dict(sorted(group.items())), out / f"share-{share:g}")
                 for share, group in sorted(groups.items())}
    atomic_write_text(out / "fractions.json", json.dumps({f"{k:g}": v for k, v in summaries.items()}, indent=2))
    atomic_write_text(out / "fractions.md", format_fractions(summaries))
    plot_fractions(summaries, out / "accuracy_vs_labels.png")
    print(format_fractions(summaries))
    return summaries


def format_fractions(summaries: dict[float, dict]) -> str:
    """One row per share: each arm's test mAP@0.5 (mean ± sd), then the DDPM contribution and teacher − baseline."""
    arms = (BASELINE, TEACHER, SELF_DISTILLED, STUDENT)
    margins = ("DDPM contribution (D3N − self-distilled student)", "teacher − baseline", "D3N student − baseline")
    head = (f"| labelled share | seeds | {' | '.join(arms)} | {' | '.join(margins)} |\n"
            f"|---:|---|{'---:|' * (len(arms) + len(margins))}\n")
    cell = lambda d: f"{d['mean']:.3f} ± {d['sd']:.3f}" if d else "—"  # noqa: E731
    signed = lambda d: f"{d['mean']:+.3f} ± {d['sd']:.3f} ({d['ahead']})" if d else "—"  # noqa: E731
    rows = "".join(
        f"| {share:g} | {', '.join(map(str, s['seeds']))} | "
        f"{' | '.join(cell(s['models'].get(a, {}).get('mAP@0.5')) for a in arms)} | "
        f"{' | '.join(signed(s['margins'].get(m)) for m in margins)} |\n" for share, s in sorted(summaries.items()))
    return ("mAP@0.5 on the report split (test when the data has one), mean ± sd over seeds; margins per seed, "
            "ahead = seeds where the first arm wins\n\n" + head + rows)


def plot_fractions(summaries: dict[float, dict], out: Path) -> None:
    from utils.plots import plot_accuracy_vs_labels  # matplotlib only when drawing

    series: dict[str, list[tuple[float, float, float]]] = {}
    for share, summary in summaries.items():
        for arm, stats in summary["models"].items():
            series.setdefault(arm, []).append((share, stats["mAP@0.5"]["mean"], stats["mAP@0.5"]["sd"]))
    try:
        plot_accuracy_vs_labels(series, out)
    except (OSError, ValueError) as e:
        LOGGER.warning("WARNING: %s not drawn: %s", out, e)


def provenance_extra(original: Any, facts: dict) -> dict:
    """What a share's table.json adds: the requested protocol (before scaling) and the subset's facts."""
    return {"protocol": asdict(original), "labels": facts}
