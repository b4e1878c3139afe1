"""minivlm.utils' results-file helpers, shared by every script in experiments/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from minivlm.utils import add_results_args, refuse_overwrite, write_json


def test_write_json_is_indented_with_a_newline_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "sub" / "r.json"
    assert write_json(out, {"a": [1, 2]}) == out
    assert out.read_text() == json.dumps({"a": [1, 2]}, indent=1) + "\n"
    write_json(out, {"b": 3})  # replaces, atomically
    assert json.loads(out.read_text()) == {"b": 3}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_write_json_keeps_the_old_file_when_serialising_fails(tmp_path):
    out = tmp_path / "r.json"
    write_json(out, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"ok": 1}


def test_results_args_required_or_default():
    ap = argparse.ArgumentParser()
    add_results_args(ap)
    with pytest.raises(SystemExit):
        ap.parse_args([])  # --out is required without a default
    args = ap.parse_args(["--out", "x.json", "--force"])
    assert args.out == Path("x.json") and args.force
    ap = argparse.ArgumentParser()
    add_results_args(ap, default="experiments/results/y.json")
    args = ap.parse_args([])
    assert args.out == Path("experiments/results/y.json") and not args.force


def test_refuse_overwrite_only_for_an_existing_file_without_permission(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert not refuse_overwrite(out, False, "demo")  # nothing there yet
    out.write_text("{}")
    assert not refuse_overwrite(out, True, "demo")  # --force given
    assert refuse_overwrite(out, False, "demo", " or --resume")
    err = capsys.readouterr().err
    assert err.startswith(f"demo: {out} exists; pass --force to overwrite it or --resume")
    assert out.read_text() == "{}"
