"""The multi-seed report, and the one-line errors of the pipeline and ablation commands."""

from __future__ import annotations

import json

import pytest

from d3n_ext.experiments import pipeline
from d3n_ext.experiments.label_efficient import summarise_fractions


def rows(baseline: float, teacher: float, control: float, student: float) -> list[dict]:
    names = ("baseline", "teacher (hybrid)", "student (self-distilled)", "student (D3N)")
    return [{"model": name, "mAP@0.5": m, "mAP@0.5:0.95": m / 2}
            for name, m in zip(names, (baseline, teacher, control, student))]


def test_summary_reports_mean_spread_and_the_margins_per_seed():
    summary = pipeline.seed_summary({0: rows(0.40, 0.30, 0.36, 0.35), 1: rows(0.30, 0.35, 0.36, 0.36),
                                     2: rows(0.50, 0.5, 0.45, 0.5)})
    assert summary["models"]["baseline"]["mAP@0.5"]["mean"] == pytest.approx(0.4)
    assert summary["models"]["baseline"]["mAP@0.5"]["sd"] == pytest.approx(0.1)
    margins = summary["margins"]
    assert margins["D3N student − baseline"]["values"] == [-0.05, 0.06, 0.0]
    assert margins["D3N student − baseline"]["ahead"] == "1/3 seeds"  # a tie is not a win
    assert margins["DDPM contribution (D3N − self-distilled student)"]["values"] == [-0.01, 0.0, 0.05]
    text = pipeline.format_seed_summary(summary)
    assert "| student (D3N) | 0.403 ± " in text and "ahead on 1/3 seeds" in text
    assert "DDPM contribution (D3N − self-distilled student), mAP@0.5: +0.013 ± " in text


def test_summary_without_controls_has_no_ddpm_line():
    three = {0: [r for r in rows(0.4, 0.3, 0.0, 0.45) if r["model"] != "student (self-distilled)"]}
    assert list(pipeline.seed_summary(three)["margins"]) == ["D3N student − baseline", "teacher − baseline"]


def test_seeds_flag_runs_each_seed_in_its_own_folder_and_writes_the_summary(tmp_path, monkeypatch):
    seen = []

    def fake_run(p: pipeline.PipelineOptions) -> list[dict]:
        seen.append((p.seed, p.out))
        return rows(0.3, 0.3, 0.3, 0.3 + p.seed / 100)

    monkeypatch.setattr(pipeline, "run", fake_run)
    summary = pipeline.main(["--out", str(tmp_path), "--seeds", "1", "2", "--quiet"])
    assert seen == [(1, str(tmp_path / "seed1")), (2, str(tmp_path / "seed2"))]
    assert json.loads((tmp_path / "seeds.json").read_text()) == summary
    assert "ahead on 2/2 seeds" in (tmp_path / "seeds.md").read_text()


def test_seed_tables_from_separate_runs_accumulate(tmp_path):
    """Each seed's table.json (possibly from another session) is summarised without rerunning anything."""
    paths = []
    for seed, student in ((0, 0.42), (3, 0.44)):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps({"rows": rows(0.4, 0.41, 0.41, student), "options": {"seed": seed}}))
        paths.append(str(path))
    summary = pipeline.main(["--summarise", *paths, "--out", str(tmp_path / "all"), "--quiet"])
    assert summary["seeds"] == [0, 3] and (tmp_path / "all" / "seeds.md").exists()
    with pytest.raises(SystemExit, match="seed 0 is given twice"):
        pipeline.main(["--summarise", paths[0], paths[0], "--out", str(tmp_path / "x"), "--quiet"])


@pytest.mark.parametrize("module", ["pipeline", "ablation"])
def test_a_missing_data_yaml_is_one_line_naming_it(module, tmp_path):
    from d3n_ext.experiments import ablation

    main = {"pipeline": pipeline.main, "ablation": ablation.main}[module]
    with pytest.raises(SystemExit, match=r"^error: .*nope\.yaml: data YAML not found$"):
        main(["--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"), "--quiet"])


def test_table_row_measures_at_the_size_training_rounded_to(tmp_path, tiny_cfg):
    """--imgsz 200 (NEU-DET's native size) trains at 224; the table's FLOPs and latency use 224 too."""
    from types import SimpleNamespace

    from models.loading import save_model
    from models.yolo import Model

    save_model(tmp_path / "m.pt", Model(tiny_cfg))
    result = SimpleNamespace(mp=0.5, mr=0.5, map50=0.5, map=0.25)
    row = pipeline.table_row("baseline", tmp_path / "m.pt", result, 200)
    at_224 = pipeline.table_row("baseline", tmp_path / "m.pt", result, 224)
    assert row["GFLOPs"] == at_224["GFLOPs"] > 0


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5n-d3n-lite.yaml"])
def test_table_gflops_equal_the_layer_table_s(cfg, tmp_path):
    """The results table and `python -m models.yolo` count the same model at the same size alike, attention
    (which grows with the square of the area) included."""
    from types import SimpleNamespace

    import d3n_ext  # noqa: F401  (registers the fusion blocks)
    from d3n_ext.fusion.binding import bind_levels, preset_levels
    from models.loading import save_model
    from models.yolo import Model, load_model_yaml
    from tests.conftest import TINY

    d, _ = load_model_yaml(cfg)
    if cfg != "yolov5n.yaml":
        d = bind_levels(d, preset_levels("ddpm-tiny"), "the ddpm-tiny preset")
    model = Model({**d, **TINY}, nc=3)
    save_model(tmp_path / "m.pt", model)
    row = pipeline.table_row("m", tmp_path / "m.pt", SimpleNamespace(mp=0.5, mr=0.5, map50=0.5, map=0.25), 96)
    assert row["GFLOPs"] == round(model.info(imgsz=96)["gflops"], 2) > 0


def test_segment_task_uses_seg_models_and_reports_masks_beside_boxes():
    p = pipeline.PipelineOptions(task="segment")
    assert (p.cfg, p.teacher_cfg) == ("yolov5n-seg.yaml", "yolov5n-seg-d3n-gated.yaml")
    assert pipeline.PipelineOptions(task="segment", cfg="yolov5s-seg.yaml").cfg == "yolov5s-seg.yaml"
    table = rows(0.40, 0.45, 0.41, 0.46)
    for r, mask in zip(table, (0.30, 0.33, 0.31, 0.35)):
        r.update({"parameters": 1, "GFLOPs": 0.1, "CPU ms/img": 1.0, "P": 0.5, "R": 0.5, "mask P": 0.4,
                  "mask R": 0.4, "mask mAP@0.5": mask, "mask mAP@0.5:0.95": mask / 2})
    text = pipeline.format_table(table, 160, "test")
    assert "| box P | box R | mask P | mask R | mask mAP@0.5 | mask mAP@0.5:0.95 |" in text
    assert "DDPM contribution = D3N student − self-distilled student: +0.050 mAP@0.5, +0.025 mAP@0.5:0.95, " \
           "+0.040 mask mAP@0.5, +0.020 mask mAP@0.5:0.95" in text
    summary = pipeline.seed_summary({0: table, 1: table})
    assert summary["models"]["student (D3N)"]["mask mAP@0.5"]["mean"] == pytest.approx(0.35)
    assert "| model | mAP@0.5 | mAP@0.5:0.95 | mask mAP@0.5 | mask mAP@0.5:0.95 |" in pipeline.format_seed_summary(summary)


def test_an_unknown_task_is_one_line():
    with pytest.raises(SystemExit, match="error: --task 'pose': expected one of detect, segment"):
        pipeline.main(["--task", "pose", "--quiet"])


def test_full_label_tables_join_the_share_plot_when_their_protocol_matches(tmp_path, caplog):
    """Tables written before --task and --unlabeled-* existed still join as share 1.0; another size does not."""
    protocol = {"cfg": "yolov5n.yaml", "imgsz": 160, "epochs": 15, "seed": 0, "task": "detect",
                "unlabeled_share": 0.5, "unlabeled_weight": 1.0}
    share = {"rows": rows(0.5, 0.5, 0.55, 0.55), "options": {**protocol, "epochs": 150}, "protocol": protocol,
             "labels": {"labelled_fraction": 0.1}}
    older = {k: v for k, v in protocol.items() if k not in ("task", "unlabeled_share", "unlabeled_weight")}
    full = {"rows": rows(0.56, 0.55, 0.58, 0.58), "options": older}
    other = {"rows": rows(0.6, 0.6, 0.6, 0.6), "options": {**older, "seed": 1, "imgsz": 320}}
    result = summarise_fractions({"a": share, "b": full, "c": other}, tmp_path)
    assert sorted(result) == [0.1, 1.0]
    assert "c: a full-label run with another protocol (imgsz)" in caplog.text
