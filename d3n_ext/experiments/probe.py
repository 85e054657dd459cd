"""Feature probe, DDPM-Seg style: do our DDPM features know where the defects are, and at which timestep and level?

    python -m d3n_ext.experiments.probe --repo runs/features/exp --data data/synth-defects.yaml
    python -m d3n_ext.experiments.probe --repo runs/pipeline/exp/features --data data/NEU-DET.yaml --out runs/probe/neu

--repo is a stage-1 output folder (`extract_features.py all --out`, or a pipeline's `<out>/features`): the
latent repository with the DDPM and compressor weights it was built with. On every level (P3, P4, P5 grid
of the repository) each cell's target is the class of the smallest box covering its centre, or background.
A linear probe (a 1×1 conv: one linear map per cell) per source, level and timestep, plus all timesteps
concatenated, is fitted on sampled train cells with class-balanced cross-entropy and scored on the --split
images: mIoU and mean per-cell AP over the defect classes, and defect-vs-background AP (where, whatever
the class). Sources: `ddpm-decoded` (the repository latents decoded: what the teacher sees), `ddpm-raw`
(the DDPM's own taps: what compression loses) and three controls: `random-unet` (the same architecture
untrained), `image-pooled` (grey level per cell) and `image-patches` (the cell's k×k grey pixels).
Per level, the summary names the best DDPM row and its margin over the best control in defect AP: compare
runs on stage-1 folders of other presets, training lengths or timesteps to choose them.
`--detector WEIGHTS` (a trained plain YOLOv5, e.g. the pipeline's baseline/weights/best.pt) adds three
references: `detector` (its own neck maps), `detector+ddpm` (those maps with the decoded DDPM features
beside them) and `detector+random-unet` (with the random UNet's instead: what extra channels alone give);
the summary then says how much the DDPM adds to what the detector already knows.
`--labels 0.1` fits the probes on a labelled share of train only — the subset the pipeline's `--labels 0.1`
draws with the same --seed — and refuses a --detector trained on another subset: the few-label screen.
Writes probe.md and probe.json under --out (runs/probe/exp, exp2, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from d3n_ext.experiments.probe_data import (CONTROLS, REFERENCES, SOURCES, FeatureSource, cell_targets, open_sources,
                                            read_boxes)
from d3n_ext.experiments.probe_fit import (ProbeSettings, channel_stats, fit_linear_probe, predict, probe_scores,
                                           standardise)
from d3n_ext.stage1.checkpoints import LEVEL_NAMES
from d3n_ext.stage1.features import read_image
from d3n_ext.stage1.repository import LatentRepository
from models.loading import read_detector_checkpoint
from utils.cli import exit_on_user_error
from utils.data_config import DataConfig, load_data_config
from utils.label_subset import labels_amount, write_label_subset
from utils.files import atomic_write_text, increment_path
from utils.logging import set_logging
from utils.torch_utils import select_device

LOGGER = logging.getLogger(__name__)

METRICS = ("mIoU", "cell AP", "defect AP")
RANK_BY = "defect AP"  # the summary's score: the probe's question is *where* the defects are


@dataclass
class ProbeOptions:
    repo: str  # stage-1 output folder (the latent repository)
    data: str  # data YAML with YOLO labels
    split: str = "val"  # scored split: val or test
    out: str = "runs/probe/exp"  # incremented (exp2, ...) unless exist_ok
    exist_ok: bool = False
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    device: str = ""
    batch_size: int = 16  # images per extraction batch
    max_train_cells: int = 40_000  # per level, sampled over the train images (defect cells first)
    max_eval_cells: int = 100_000  # per level, drawn uniformly over the scored images
    patch: int = 8  # image-patches: k×k grey pixels per cell
    detector: str = ""  # a trained plain YOLOv5: adds the REFERENCES (its maps, with DDPM / random features beside)
    detector_imgsz: int = 0  # its input size (0: the size it was trained at)
    probe: ProbeSettings = field(default_factory=ProbeSettings)  # epochs, lr, seed (also the random UNet's)
    quiet: bool = False
    labels: str = ""  # fit on this labelled share (0.1) or count of train, drawn with the probe's seed; '' = all


@dataclass
class SplitCells:
    """Sampled cells of one split: features (N, T, C) float16 per (source, level index), targets (N,) per level."""

    features: dict[tuple[str, int], np.ndarray]
    targets: list[np.ndarray]


def sample_cells(target: np.ndarray, quota: int, nc: int, rng: np.random.Generator, defect_first: bool) -> np.ndarray:
    """Sorted flat indices of up to `quota` cells of one image's (h, w) class map.

    Train cells take up to half the quota from the rare defect cells (the loss is class-balanced, so this
    only lowers the probe's variance); scored cells are drawn uniformly, so the scores estimate the split's.
    """
    flat = target.ravel()
    if quota >= flat.size:
        return np.arange(flat.size)
    if not defect_first:
        return np.sort(rng.choice(flat.size, quota, replace=False))
    defect, background = np.flatnonzero(flat != nc), np.flatnonzero(flat == nc)
    n_background = min(len(background), quota - min(len(defect), quota // 2))
    picks = np.r_[rng.choice(defect, quota - n_background, replace=False),
                  rng.choice(background, n_background, replace=False)]
    return np.sort(picks)


def collect_cells(split: str, paths: list[Path], boxes: list[np.ndarray], sources: list[FeatureSource],
                  grids: list[tuple[int, int]], nc: int, o: ProbeOptions) -> SplitCells:
    """Run every source over the split's images in batches and keep only the sampled cells of each level."""
    train = split == "train"
    quota = math.ceil((o.max_train_cells if train else o.max_eval_cells) / len(paths))
    features = {(s.name, i): [] for s in sources for i in range(len(grids))}
    targets = [[] for _ in grids]
    for start in tqdm(range(0, len(paths), o.batch_size), desc=f"{split} features", unit="batch", disable=o.quiet):
        batch = paths[start:start + o.batch_size]
        picks = []  # per image, per level: flat cell indices
        for j in range(len(batch)):
            rng = np.random.default_rng([o.probe.seed, int(train), start + j])
            maps = [cell_targets(boxes[start + j], hw, nc) for hw in grids]
            picks.append([sample_cells(m, quota, nc, rng, defect_first=train) for m in maps])
            for i, m in enumerate(maps):
                targets[i].append(m.ravel()[picks[-1][i]])
        images = [read_image(p) for p in batch]
        for source in sources:
            for i, f in enumerate(source(batch, images)):
                f = f.flatten(3).cpu().numpy()  # (B, T, C, h·w)
                features[(source.name, i)] += [f[j][..., picks[j][i]].transpose(2, 0, 1).astype(np.float16)
                                               for j in range(len(batch))]
    for (name, i), parts in features.items():
        if not all(np.isfinite(p).all() for p in parts):
            raise ValueError(f"{name} {LEVEL_NAMES[i]}: non-finite features on the {split} split (beyond float16?)")
    return SplitCells({k: np.concatenate(v) for k, v in features.items()}, [np.concatenate(t) for t in targets])


def probe_source(source: FeatureSource, level: int, train: SplitCells, scored: SplitCells, nc: int,
                 settings: ProbeSettings, device: torch.device) -> list[dict]:
    """One row per timestep of the source, plus 'all' (timesteps concatenated) when it has several."""
    x_train, x_eval = train.features[(source.name, level)], scored.features[(source.name, level)]  # (N, T, C)
    y_train = torch.from_numpy(train.targets[level]).to(device)
    slots = [(label, [t]) for t, label in enumerate(source.timesteps)]
    if len(slots) > 1:
        slots.append(("all", list(range(len(slots)))))
    rows = []
    for label, ts in slots:
        mean, std = channel_stats(x_train[:, ts])
        x = standardise(x_train[:, ts], mean, std).to(device)
        probe = fit_linear_probe(x, y_train, nc + 1, settings)
        probs = predict(probe, standardise(x_eval[:, ts], mean, std).to(device))
        rows.append({"source": source.name, "control": source.name in CONTROLS,
                     "reference": source.name in REFERENCES, "level": LEVEL_NAMES[level],
                     "timestep": label, "channels": x.shape[1], **probe_scores(probs, scored.targets[level], nc)})
    return rows


def _rank(row: dict) -> float:
    return -math.inf if math.isnan(row[RANK_BY]) else row[RANK_BY]


def _describe(row: dict) -> str:
    scores = ", ".join(f"{m} {row[m]:.3f}" for m in (RANK_BY, *(m for m in METRICS if m != RANK_BY)))
    return f"{row['source']} t={row['timestep']} ({scores})"


def level_summary(rows: list[dict], level: str) -> str | None:
    """Which source is best on a level, and by how much its DDPM features beat the best control (by RANK_BY).

    None when only references were probed.
    """
    ours = [r for r in rows if r["level"] == level and not r["control"] and not r.get("reference")]
    controls = [r for r in rows if r["level"] == level and r["control"]]
    if not ours and not controls:
        return None
    if not ours or not controls:
        return f"{level}: best {_describe(max(ours or controls, key=_rank))}"
    best, control = max(ours, key=_rank), max(controls, key=_rank)
    leader = "DDPM features" if _rank(best) > _rank(control) else "a control"
    return (f"{level}: {leader} best; DDPM {_describe(best)} is {best[RANK_BY] - control[RANK_BY]:+.3f} {RANK_BY} "
            f"over the best control, {_describe(control)}")


def reference_summary(rows: list[dict], level: str) -> str | None:
    """What the DDPM (and, for scale, a random UNet) adds to a trained detector's maps on a level; None without them."""
    found = {r["source"]: r for r in rows if r["level"] == level and r.get("reference")}
    if "detector" not in found or "detector+ddpm" not in found:
        return None
    alone = found["detector"]
    order = (RANK_BY, *(m for m in METRICS if m != RANK_BY))
    gains = lambda joined: ", ".join(f"{m} {joined[m] - alone[m]:+.3f}" for m in order)  # noqa: E731
    text = f"{level}: DDPM features beside the detector's maps: {gains(found['detector+ddpm'])}"
    if "detector+random-unet" in found:
        text += f"; random-UNet features beside them: {gains(found['detector+random-unet'])}"
    return f"{text} (detector alone: {_describe(alone)})"


def format_report(result: dict) -> str:
    """probe.md: the settings, the chance levels, one row per source × level × timestep, the summary."""
    p = result["settings"]["probe"]
    lines = [f"Feature probe of {result['repo']} on {result['data']}: linear 1×1 probes fitted on "
             f"{result['train_images']} train images ({p['epochs']} epochs × {p['batches']} Adam steps, lr {p['lr']}, "
             f"seed {p['seed']}), scored on {result['eval_images']} {result['split']} images.", ""]
    lines += [f"- {lv['name']} {lv['grid'][0]}×{lv['grid'][1]}: {lv['train_cells']} train / {lv['eval_cells']} scored"
              f" cells, defect share {lv['defect_share']:.3f} (the chance defect AP)" for lv in result["levels"]]
    lines += ["", "| source | level | t | channels | mIoU | cell AP | defect AP |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['source']}{_role(r)} | {r['level']} | {r['timestep']} | {r['channels']}"
              f" | {r['mIoU']:.3f} | {r['cell AP']:.3f} | {r['defect AP']:.3f} |" for r in result["rows"]]
    if result["summary"]:
        lines += ["", f"Best per level by {RANK_BY}:", *result["summary"]]
    if result.get("reference_summary"):
        lines += ["", "What the DDPM adds to the trained detector (detector+ddpm − detector; detector+random-unet − "
                  "detector for scale):", *result["reference_summary"]]
    return "\n".join(lines + [""])


def _role(row: dict) -> str:
    return " (control)" if row["control"] else " (reference)" if row.get("reference") else ""


def split_inputs(data: DataConfig, split: str, repo: LatentRepository,
                 check_repo: bool) -> tuple[list[Path], list[np.ndarray]]:
    """A split's readable image files and boxes, checked up front: labels present, every image in the repository."""
    paths = data.images(split)
    if not paths:
        raise ValueError(f"{data.yaml_path}: the '{split}' split has no images")
    paths, boxes = read_boxes(paths, data.nc, split)
    if check_repo:
        for p in paths:
            if repo.key_of(p) not in repo:
                repo.lookup(p)  # raises the repository's one-line error (missing or changed image)
    return paths, boxes


def open_repository(path: str | Path) -> LatentRepository:
    """The stage-1 folder's latent repository; a one-line error when the folder is not there."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: stage-1 output folder not found (make one with "
                                f"extract_features.py all --data ... --out {path})")
    return LatentRepository(path)


def labelled_subset(data: DataConfig, o: ProbeOptions, out: Path) -> DataConfig:
    """The data with train cut to the --labels subset (written under <out>/labels, as the pipeline writes it);
    a --detector trained on a subset must have been trained on this one."""
    derived = load_data_config(write_label_subset(data, o.labels, o.probe.seed, out / "labels"), autogenerate=False)
    if o.detector:
        trained_on = (read_detector_checkpoint(o.detector).get("train_opts") or {}).get("data", "")
        if not trained_on or not Path(trained_on).is_file():
            raise ValueError(f"{o.detector}: its training data ({trained_on or 'not recorded'}) cannot be read, so it "
                             f"cannot be checked against --labels {o.labels}; pass the detector the pipeline trained")
        theirs = load_data_config(trained_on, autogenerate=False).images("train")
        if sorted(map(str, theirs)) != sorted(map(str, derived.images("train"))):
            raise ValueError(f"{o.detector}: trained on {len(theirs)} images of {trained_on}, not on the --labels "
                             f"{o.labels} subset of seed {o.probe.seed} ({len(derived.images('train'))} images); use the "
                             "same seed and share as its pipeline run")
    return derived


def run(o: ProbeOptions) -> dict:
    """Check the inputs, collect train and scored cells, fit and score every probe, write probe.md / probe.json."""
    t0 = time.time()
    repo = open_repository(o.repo)
    data = load_data_config(o.data)
    if o.split not in ("val", "test"):
        raise ValueError(f"--split {o.split!r}: expected 'val' or 'test' (the probes are fitted on 'train')")
    if o.labels:
        labels_amount(o.labels, len(data.images("train")))  # a bad --labels fails before anything is built
    device = select_device(o.device)
    sources = open_sources(repo, o.sources, device, o.probe.seed, o.patch, o.detector, o.detector_imgsz)
    check_repo = any(s.name in ("ddpm-decoded", "detector+ddpm") for s in sources)
    out = increment_path(o.out, exist_ok=o.exist_ok, mkdir=True) if o.labels else None  # the subset is kept in it
    if o.labels:
        data = labelled_subset(data, o, out)
    train_paths, train_boxes = split_inputs(data, "train", repo, check_repo)
    eval_paths, eval_boxes = split_inputs(data, o.split, repo, check_repo)
    out = out or increment_path(o.out, exist_ok=o.exist_ok, mkdir=True)  # only once the inputs are known good
    grids = [lv.hw for lv in repo.levels]
    with torch.no_grad():
        train = collect_cells("train", train_paths, train_boxes, sources, grids, data.nc, o)
        scored = collect_cells(o.split, eval_paths, eval_boxes, sources, grids, data.nc, o)
    t1 = time.time()
    jobs = [(s, i) for i in range(len(grids)) for s in sources]
    rows = [r for s, i in tqdm(jobs, desc="probes", disable=o.quiet) for r in
            probe_source(s, i, train, scored, data.nc, o.probe, device)]
    levels = [{"name": LEVEL_NAMES[i], "grid": list(hw), "train_cells": len(train.targets[i]),
               "eval_cells": len(scored.targets[i]), "defect_share": float(np.mean(scored.targets[i] != data.nc))}
              for i, hw in enumerate(grids)]
    result = {"repo": str(repo.root), "data": str(data.yaml_path), "split": o.split, "names": data.names,
              "train_images": len(train_paths), "eval_images": len(eval_paths), "levels": levels,
              "settings": {"sources": [s.name for s in sources], "labels": o.labels, "patch": o.patch,
                           "detector": o.detector,
                           "detector_imgsz": o.detector_imgsz, "max_train_cells": o.max_train_cells,
                           "max_eval_cells": o.max_eval_cells, "probe": asdict(o.probe), "rank_by": RANK_BY},
              "rows": rows, "summary": [t for lv in levels if (t := level_summary(rows, lv["name"]))],
              "reference_summary": [t for lv in levels if (t := reference_summary(rows, lv["name"]))],
              "seconds": {"features": round(t1 - t0, 1), "probes": round(time.time() - t1, 1)}}
    text = format_report(result)
    atomic_write_text(out / "probe.md", text)
    atomic_write_text(out / "probe.json", json.dumps(result, indent=1))
    LOGGER.info("features %.1f s, probes %.1f s; probe.md, probe.json in %s", *result["seconds"].values(), out)
    return {**result, "out": str(out), "text": text}


def build_parser() -> argparse.ArgumentParser:
    """The probe's flags; parses nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True,
                    help="stage-1 output folder (extract_features.py --out, or <pipeline out>/features)")
    ap.add_argument("--data", required=True, help="data YAML with YOLO labels; train fits, --split scores")
    ap.add_argument("--split", default="val", choices=["val", "test"], help="split scored (default: %(default)s)")
    ap.add_argument("--out", default="runs/probe/exp",
                    help="results folder (exp, exp2, ... unless --exist-ok) (default: %(default)s)")
    ap.add_argument("--exist-ok", action="store_true", help="write into --out even if it exists")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES + REFERENCES,
                    help="feature sources to probe; the references need --detector (default: every source but the "
                         "references)")
    ap.add_argument("--detector", default="", help="a trained plain YOLOv5 (.pt): adds the detector, detector+ddpm "
                    "and detector+random-unet references (what the DDPM adds to what the detector knows) "
                    "(default: none)")
    ap.add_argument("--detector-imgsz", type=int, default=0,
                    help="the detector's input size, 0 = its training size (default: %(default)s)")
    ap.add_argument("--device", default="",
                    help="device: cpu or a CUDA index such as 0 (default: the first GPU, else cpu)")
    ap.add_argument("--batch-size", type=int, default=16,
                    help="images per feature-extraction batch (default: %(default)s)")
    ap.add_argument("--max-train-cells", type=int, default=40_000,
                    help="train cells per level, defect cells first (default: %(default)s)")
    ap.add_argument("--max-eval-cells", type=int, default=100_000,
                    help="scored cells per level, drawn uniformly (default: %(default)s)")
    ap.add_argument("--patch", type=int, default=8,
                    help="image-patches: k×k grey pixels per cell (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=30, help="probe epochs over the train cells (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=0.01, help="probe Adam learning rate (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of cell sampling, probe batches and the random UNet (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    ap.add_argument("--labels", default="", metavar="SHARE",
                    help="fit on this labelled share (0.1) or count of the train split, drawn with --seed as the "
                         "pipeline's --labels does; --detector must be trained on it (default: every label)")
    return ap


def parse_opt(argv: list[str] | None = None) -> ProbeOptions:
    a = build_parser().parse_args(argv)
    settings = ProbeSettings(epochs=a.epochs, lr=a.lr, seed=a.seed)
    return ProbeOptions(a.repo, a.data, a.split, a.out, a.exist_ok, a.sources, a.device, a.batch_size,
                        a.max_train_cells, a.max_eval_cells, a.patch, a.detector, a.detector_imgsz, settings, a.quiet,
                        a.labels)


def main(argv: list[str] | None = None) -> dict:
    o = parse_opt(argv)
    set_logging(not o.quiet)
    result = exit_on_user_error(lambda: run(o))
    print(result["text"])
    return result


if __name__ == "__main__":
    main()
