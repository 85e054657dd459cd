"""The multi-seed report, and the one-line errors of the pipeline and ablation commands."""

from __future__ import annotations

import json

import pytest

from d3n_ext import pipeline


def rows(baseline: float, teacher: float, student: float) -> list[dict]:
    return [{"model": name, "mAP@0.5": m, "mAP@0.5:0.95": m / 2}
            for name, m in (("baseline", baseline), ("teacher (hybrid)", teacher), ("student (distilled)", student))]


def test_summary_reports_mean_spread_and_how_many_seeds_the_student_wins():
    summary = pipeline.seed_summary({0: rows(0.40, 0.30, 0.35), 1: rows(0.30, 0.35, 0.36), 2: rows(0.50, 0.5, 0.5)})
    assert summary["models"]["baseline"]["mAP@0.5"]["mean"] == pytest.approx(0.4)
    assert summary["models"]["baseline"]["mAP@0.5"]["sd"] == pytest.approx(0.1)
    assert summary["student minus baseline mAP@0.5"]["values"] == [-0.05, 0.06, 0.0]
    assert summary["student beats baseline"] == "1/3 seeds"  # a tie is not a win
    text = pipeline.format_seed_summary(summary)
    assert "| student (distilled) | 0.403 ± " in text and "beats the baseline on 1/3 seeds" in text


def test_seeds_flag_runs_each_seed_in_its_own_folder_and_writes_the_summary(tmp_path, monkeypatch):
    seen = []

    def fake_run(p: pipeline.PipelineOptions) -> list[dict]:
        seen.append((p.seed, p.out))
        return rows(0.3, 0.3, 0.3 + p.seed / 100)

    monkeypatch.setattr(pipeline, "run", fake_run)
    summary = pipeline.main(["--out", str(tmp_path), "--seeds", "1", "2", "--quiet"])
    assert seen == [(1, str(tmp_path / "seed1")), (2, str(tmp_path / "seed2"))]
    assert json.loads((tmp_path / "seeds.json").read_text()) == summary
    assert "2/2 seeds" in (tmp_path / "seeds.md").read_text()


@pytest.mark.parametrize("module", ["pipeline", "ablation"])
def test_a_missing_data_yaml_is_one_line_naming_it(module, tmp_path):
    from d3n_ext import ablation

    main = {"pipeline": pipeline.main, "ablation": ablation.main}[module]
    with pytest.raises(SystemExit, match=r"^error: .*nope\.yaml: data YAML not found$"):
        main(["--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
