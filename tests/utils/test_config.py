"""The one YAML-config reader: every bad file is a one-line error naming it, in the caller's error class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from utils.config import dataclass_from_mapping, read_yaml_mapping, reject_unknown
from utils.data_config import DataConfigError, load_data_config
from utils.hyp import load_hyp


class MyError(ValueError):
    pass


@dataclass
class Section:
    size: int = 1
    name: str = "a"


def test_a_mapping_is_read_and_anything_else_named(tmp_path):
    good, listed, empty, broken = (tmp_path / n for n in ("good.yaml", "listed.yaml", "empty.yaml", "broken.yaml"))
    good.write_text("a: 1\nb: [2, 3]\n")
    listed.write_text("- a\n- b\n")
    empty.write_text("")
    broken.write_text("a: [1, 2\n")
    assert read_yaml_mapping(good, "a mapping") == {"a": 1, "b": [2, 3]}
    assert read_yaml_mapping(empty, "a mapping", empty_ok=True) == {}
    with pytest.raises(MyError, match=r"listed\.yaml: expected a mapping of sizes$"):
        read_yaml_mapping(listed, "a mapping of sizes", MyError)
    with pytest.raises(MyError, match=r"empty\.yaml: expected a mapping$"):
        read_yaml_mapping(empty, "a mapping", MyError)
    with pytest.raises(MyError, match=r"^\S*broken\.yaml: not valid YAML \([^\n]*\)$"):
        read_yaml_mapping(broken, "a mapping", MyError)


def test_unknown_keys_are_named_beside_the_known_ones():
    reject_unknown({"size": 1}, ["size", "name"], "x.yaml")
    with pytest.raises(MyError, match=r"^x\.yaml: unknown keys \[1, 'sise'\] \(known: \['name', 'size'\]\)$"):
        reject_unknown({"sise": 1, 1: 2}, ["size", "name"], "x.yaml", error=MyError)


def test_a_dataclass_is_built_from_its_fields_only():
    assert dataclass_from_mapping(Section, {"size": 3}, "x.yaml: s") == Section(3, "a")
    with pytest.raises(ValueError, match=r"^x\.yaml: s: expected a mapping$"):
        dataclass_from_mapping(Section, [3], "x.yaml: s")
    with pytest.raises(ValueError, match=r"^x\.yaml: s: unknown keys \['colour'\] \(known: \['name', 'size'\]\)$"):
        dataclass_from_mapping(Section, {"colour": 3}, "x.yaml: s")


def test_hyp_and_data_yamls_report_through_it(tmp_path):
    hyp, data = tmp_path / "hyp.yaml", tmp_path / "data.yaml"
    hyp.write_text("lr0: [0.01\n")
    with pytest.raises(ValueError, match=r"hyp\.yaml: not valid YAML"):
        load_hyp(hyp)
    hyp.write_text("lr0: 0.01\nlr_0: 0.02\n")
    with pytest.raises(ValueError, match=r"hyp\.yaml: unknown hyper-parameter\(s\) \['lr_0'\] \(known: \["):
        load_hyp(hyp)
    data.write_text("train: a\nval: b\nnames: [x]\ntrian: c\n")
    with pytest.raises(DataConfigError, match=r"data\.yaml: unknown keys \['trian'\]"):
        load_data_config(data)
