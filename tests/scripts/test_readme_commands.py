"""Every command README.md and docs/*.md show parses with today's flags: the pages and the parsers stay
in step. Nothing runs; each command line meets its script's parser (parse_args only). What counts as a
command and how placeholders read: tests/scripts/doc_commands.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts.cli_parsers import ROOT
from tests.scripts.doc_commands import check_command, doc_commands

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_a_page_shows_parses(page):
    problems = [line for command in doc_commands(page) for line in check_command(command)]
    assert not problems, "commands that no longer match their parsers:\n" + "\n".join(problems)


def test_the_readme_shows_the_main_commands():
    """The extraction finds the README's commands (so the test above cannot pass by finding none)."""
    shown = " ".join(c.text for c in doc_commands(ROOT / "README.md"))
    for command in ("python -m d3n_ext.experiments.pipeline", "python train.py", "python val.py", "python detect.py",
                    "python export.py", "python extract_features.py", "python train_distill.py"):
        assert command in shown


PAGE = """# A page

    python train.py --data data/synth-defects.yaml --imgsz 160 \\
        --epochs 3 --optimizer Adam
    torchrun --nproc_per_node 2 train.py --data ... --device cpu    # a comment --not-a-flag
    pip install -r requirements.txt && python -m pytest -q

```bash
$ OMP_NUM_THREADS=1 python val.py --weights <checkpoint> --imgsz <size> [--task val|test]
python -m segment.{train,val} --imgsz 160
```

```python
python = "not a command"
```

A sentence mentions `python -m d3n_ext.experiments.probe --split
test` without its required flags, and `python -m benchmarks.<name>` as a family.
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    page = tmp_path / "page.md"
    page.write_text(text)
    return [line for command in doc_commands(page) for line in check_command(command)]


def test_what_is_read_as_a_command(tmp_path):
    """Indented and fenced shell blocks, continuation lines and inline spans (wrapped too); not Python blocks."""
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    commands = doc_commands(page)
    assert [c.line for c in commands] == [3, 5, 6, 9, 10, 17, 18]
    assert commands[0].text.endswith("--epochs 3 --optimizer Adam")
    assert not [c for c in commands if "not a command" in c.text]
    assert _problems(tmp_path, PAGE) == []


@pytest.mark.parametrize("line, says", [
    ("python train.py --imgsize 160", "unrecognized arguments: --imgsize"),
    ("python train.py --epochs many", "invalid int value: 'many'"),
    ("python val.py --task val|bench", "invalid choice: 'bench'"),
    ("python -m d3n_ext.experiments.probe --data d.yaml", "required: --repo"),
    ("python trian.py --data d.yaml", "unknown script 'trian.py'"),
    ("python -m d3n_ext.experiments.pipelines --data d.yaml", "unknown module 'd3n_ext.experiments.pipelines'"),
])
def test_a_stale_command_is_reported_with_its_line(tmp_path, line, says):
    problems = _problems(tmp_path, f"Run it:\n\n    {line}\n")
    assert len(problems) == 1 and problems[0].startswith(f"page.md:3: {line}") and says in problems[0]
