"""minivlm.utils' results-file helpers, shared by every script in experiments/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from script_helpers import restored_threads

from minivlm.utils import (
    ResultsFile,
    add_results_args,
    experiment_parser,
    refuse_overwrite,
    write_json,
)


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


def test_results_file_refuses_loops_over_seeds_and_writes_a_header(tmp_path, capsys, monkeypatch):
    writes = []
    monkeypatch.setattr(ResultsFile, "write", lambda self: writes.append(
        json.loads(json.dumps(self.data))) or write_json(self.out, self.data))  # fmt: skip
    out = tmp_path / "r.json"
    args = experiment_parser("Demo.\n\nmore", seeds=(3, 4)).parse_args(["--out", str(out)])
    assert args.seeds == [3, 4] and not args.force
    with restored_threads():  # start() sets torch to one thread
        res = ResultsFile.start("demo", args, ["--out", "r.json"], {"steps": 2},
                                summarize=lambda runs: {"n": len(runs)})  # fmt: skip
    res.run(args.seeds, lambda s: {"seed": s, "acc": s / 10}, lambda s, r: f"seed {s} {r['acc']}")
    assert [w["complete"] for w in writes] == [False, False]  # rewritten after every seed
    assert [len(w["runs"]) for w in writes] == [1, 2] and writes[0]["summary"] == {"n": 1}
    data = res.finish(extra=1)
    assert json.loads(out.read_text()) == data and data["complete"] and data["extra"] == 1
    assert data["runs"] == [{"seed": 3, "acc": 0.3}, {"seed": 4, "acc": 0.4}]
    assert data["command"] == "python experiments/demo.py --out r.json"
    assert data["experiment"] == "demo" and data["steps"] == 2 and data["args"]["seeds"] == "[3, 4]"
    assert {"torch", "python", "minivlm", "machine", "cpu_seconds"} <= set(data)
    assert "[2/2] seed 4 0.4" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left
    assert ResultsFile.start("demo", args, [], {}) is None  # exists, no --force: refused
    assert "pass --force" in capsys.readouterr().err and json.loads(out.read_text()) == data
    two = ResultsFile(out=tmp_path / "two.json", name="two", fields={}, key=("a", "b"))
    two.add({"a": 1, "b": 2})
    assert json.loads((tmp_path / "two.json").read_text())["b"] == [2]
