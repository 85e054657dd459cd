"""Ablations in the shape of the paper's Tables II and III, on any dataset: one teacher per row.

    python -m d3n_ext.experiments.ablation --data data/synth-defects.yaml [--tables 2 3]
                                           [--teacher-cfg yolov5n-d3n-lite.yaml]

Table II sets every fusion row of --teacher-cfg to one variant (concat + conv1x1, sum, weighted sum, dynamic
cross-fusion), latents from the ResVAE, FreqFilter on. Table III keeps the YAML's own fusion rows and varies
what feeds them: PCA coefficients or ResVAE latents, with FreqFilter replaced by an identity or kept.
Each row's model YAML is written beside its run (rows keep their indices, so `from` stays valid), and a
baseline without DDPM features heads the table. Runs reuse stage 1 and each other exactly as the
pipeline does (a rerun continues after a crash); the training settings are the pipeline's flags.
Writes ablation.md / ablation.json under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from d3n_ext.experiments.pipeline import (PipelineOptions, add_pipeline_flags, evaluate_run, options_from_flags,
                                          report_split, stage1, train_options, train_stage)
from d3n_ext.fusion.binding import yaml_rows
from d3n_ext.fusion.blocks import blocks_with_role, fusion_row, row_role
from d3n_ext.fusion.task import D3NTask
from d3n_ext.fusion.teacher_inputs import RepositoryInputs
from engine.trainer import StopTraining
from models.yolo import ModelConfigError, load_model_yaml
from utils.cli import exit_on_user_error
from utils.files import atomic_write_text

PAPER_NEU_DET = {  # mAP@0.5 on NEU-DET (the paper's Tables II and III) beside ours, for the shape
    "concat1x1": 77.6, "sum": 77.4, "wsum": 78.2, "dcf": 79.0,
    "pca": 73.2, "resvae": 77.8, "resvae+freqfilter": 78.1}


@dataclass(frozen=True)
class AblationRow:
    """One teacher: fusion variant for every fusion row (None = the cfg's own), compressor, FreqFilter."""

    table: str
    label: str
    key: str  # PAPER_NEU_DET key
    fusion: str | None
    compressor: str
    freq_filter: bool

    @property
    def run_name(self) -> str:
        return f"{self.fusion or 'cfg'}-{self.compressor}-{'ff' if self.freq_filter else 'noff'}"


TABLE_ROWS: dict[str, list[AblationRow]] = {
    "2": [AblationRow("II", "concat + conv1x1", "concat1x1", "concat1x1", "resvae", True),
          AblationRow("II", "sum", "sum", "sum", "resvae", True),
          AblationRow("II", "weighted sum", "wsum", "wsum", "resvae", True),
          AblationRow("II", "dynamic cross-fusion", "dcf", "dcf", "resvae", True)],
    "3": [AblationRow("III", "PCA", "pca", None, "pca", False),
          AblationRow("III", "ResVAE", "resvae", None, "resvae", False),
          AblationRow("III", "ResVAE + FreqFilter", "resvae+freqfilter", None, "resvae", True)],
}


def ablate_yaml(cfg: dict, fusion: str | None, freq_filter: bool, kv_tokens: int) -> dict:
    """A copy of a D3N model YAML dict with every fusion row set to `fusion` (None keeps them) and, without
    `freq_filter`, every filter row (FreqFilter) an identity. Row indices never change, so `from` stays valid.
    Fusion rows with attention get `kv_tokens` as their key/value cap (the lite YAMLs' way of staying affordable)."""
    cfg = copy.deepcopy(cfg)
    source = cfg.get("yaml_file", "<dict>")
    rows = [row for _, _, row in yaml_rows(cfg)]
    fusion_rows = [r for r in rows if row_role(r) == "fusion"]
    filters = [r for r in rows if row_role(r) == "filter"]
    if not fusion_rows:
        raise ModelConfigError(f"{source}: no fusion rows ({', '.join(sorted(blocks_with_role('fusion')))}) to "
                               "ablate; use a D3N model YAML such as yolov5n-d3n-lite.yaml")
    if fusion is not None:
        name, args = fusion_row(fusion, kv_tokens)
        for row in fusion_rows:
            row[2], row[3] = name, list(args)
    if not freq_filter:
        for row in filters:
            row[2], row[3] = "nn.Identity", []
    return cfg


@dataclass
class AblationOptions:
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    tables: list[str] = field(default_factory=lambda: ["2", "3"])
    kv_tokens: int = 64


def run_row(a: AblationOptions, row: AblationRow, latents: RepositoryInputs, split: str) -> dict:
    """Train (or reuse) the row's teacher and validate it."""
    p, out = a.pipeline, Path(a.pipeline.out)
    run_dir = out / row.run_name
    cfg_path = run_dir / "model.yaml"
    cfg = ablate_yaml(load_model_yaml(p.teacher_cfg)[0], row.fusion, row.freq_filter, a.kv_tokens)
    cfg.pop("yaml_file", None)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if not cfg_path.is_file() or cfg_path.read_text() != text:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, text)
    task = D3NTask(latents)
    run = train_stage(train_options(p, row.run_name, str(cfg_path), task), task, f"table {row.table}: {row.label}")
    result = evaluate_run(p, row.label, run, latents, split)
    return {"table": row.table, "row": row.label, "run": row.run_name, **result,
            "paper NEU-DET mAP@0.5": PAPER_NEU_DET[row.key]}


def format_ablation(rows: list[dict], baseline: dict, p: PipelineOptions) -> str:
    split = baseline.get("split", "val")
    chosen = "best.pt chosen on val, figures on the test split" if split == "test" else "figures on the val split"
    lines = [f"Ablations on {p.data}: {p.teacher_cfg} teachers, {p.epochs} epochs at {p.imgsz} px, seed {p.seed}; "
             f"{chosen}.",
             f"Baseline (YOLOv5 without DDPM features): mAP@0.5 {baseline['mAP@0.5']:.3f}, "
             f"mAP@0.5:0.95 {baseline['mAP@0.5:0.95']:.3f}.", ""]
    for table in dict.fromkeys(r["table"] for r in rows):
        lines += [f"Table {table}", "", "| row | mAP@0.5 | mAP@0.5:0.95 | parameters | GFLOPs | paper (NEU-DET) |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['row']} | {r['mAP@0.5']:.3f} | {r['mAP@0.5:0.95']:.3f} | {r['parameters']:,} | "
                  f"{r['GFLOPs']:.2f} | {r['paper NEU-DET mAP@0.5']:.1f} |" for r in rows if r["table"] == table]
        lines.append("")
    return "\n".join(lines)


def run(a: AblationOptions) -> list[dict]:
    from utils.data_config import load_data_config

    p, out = a.pipeline, Path(a.pipeline.out)
    unknown = [t for t in a.tables if t not in TABLE_ROWS]
    if unknown:
        raise ValueError(f"--tables {' '.join(unknown)}: expected some of {', '.join(TABLE_ROWS)}")
    rows = [r for t in a.tables for r in TABLE_ROWS[t]]
    load_data_config(p.data)
    baseline_run = train_stage(train_options(p, "baseline", p.cfg), None, "baseline")
    split = report_split(p.data)
    baseline = evaluate_run(p, "baseline", baseline_run, None, split)
    latents = {compressor: RepositoryInputs.open(stage1(p, compressor)) for compressor in dict.fromkeys(r.compressor for r in rows)}
    results = [run_row(a, row, latents[row.compressor], split) for row in rows]
    text = format_ablation(results, baseline, p)
    atomic_write_text(out / "ablation.md", text)
    atomic_write_text(out / "ablation.json", json.dumps({"baseline": baseline, "rows": results}, indent=2))
    print(text)
    return results


# Pipeline flags an ablation has no use for (it trains a baseline and teachers from scratch, detection only):
# refused rather than silently ignored.
NOT_ABLATION_FLAGS = frozenset({"controls", "teacher_init", "dist_lambda", "dist_feat", "detect_source", "task",
                                "labels", "unlabeled_share", "unlabeled_weight"})


def build_parser() -> argparse.ArgumentParser:
    """The pipeline's training flags and the tables'; parses nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_flags(ap, PipelineOptions(out="runs/ablation/exp"), skip=NOT_ABLATION_FLAGS)
    ap.add_argument("--tables", nargs="+", default=["2", "3"],
                    help="which tables: 2 (fusion), 3 (compressor, filter) (default: 2 3)")
    ap.add_argument("--kv-tokens", type=int, default=64,
                    help="key/value cap of CrossFusion rows set by Table II (default: %(default)s)")
    return ap


def parse_opt(argv: list[str] | None = None) -> AblationOptions:
    args = vars(build_parser().parse_args(argv))
    tables, kv_tokens = args.pop("tables"), args.pop("kv_tokens")
    return AblationOptions(options_from_flags(args), tables, kv_tokens)


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse_opt(argv)
    return exit_on_user_error(lambda: run(a), extra=(StopTraining,))


if __name__ == "__main__":
    main()
