"""Lecture 8's recipe (minivlm.recipes.vlmo) on tiny inputs: the ViLT -> VLMo copy is exact,
the transfer experiment's arms run and freeze what they say, the counts are consistent."""

from __future__ import annotations

import torch

import minivlm
from minivlm.data import ShapesWorld
from minivlm.recipes import vlmo as R


def test_from_vilt_gives_the_same_fused_pass_and_mlm_logits():
    torch.manual_seed(0)
    vilt = minivlm.create_model("vilt_tiny", vocab_size=81, max_text_len=12, patch_size=16,
                                dim=32, depth=2, num_heads=2, num_answers=0).eval()  # fmt: skip
    model = R.from_vilt(vilt).eval()
    assert model.config.vl_from == 1 and model.config.dim == 32
    ids = torch.randint(8, 81, (3, 7))
    am = torch.ones(3, 7, dtype=torch.long)
    am[1, -2:] = 0
    px = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = vilt(ids, px, am)
        out = model.encode_pair(ids, px, am)
        torch.testing.assert_close(out.hidden, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.mlm_head(out.hidden[:, :7]), ref.mlm_logits,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
        torch.testing.assert_close(model.itm_logits(ids, px, am), ref.itm_logits,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def test_transfer_arms_and_scores_on_tiny_data():
    text = R.Text()
    d = R.transfer_data(0, n_images=48, n_test=12, tokenizer_steps=2, text=text)
    assert d.tokens.shape == (48, 16) and d.ids.shape[1] == d.test_ids.shape[1]
    res, models = R.transfer(d, 0, image_steps=2, text_steps=2, text=text,
                             dim=32, mlp_hidden=64, embed_dim=16)  # fmt: skip
    assert set(res) == {"image stage MIM", *R.ARMS}
    assert all(0.0 <= res[a]["acc"] <= 1.0 for a in R.ARMS)
    img, rnd = models[R.ARMS[0]], models[R.ARMS[1]]
    attn = "blocks.0.attn.q_proj.weight"
    assert not dict(img.named_parameters())[attn].requires_grad  # frozen in the text stage
    assert dict(models[R.ARMS[2]].named_parameters())[attn].requires_grad
    assert not torch.equal(dict(img.named_parameters())[attn], dict(rnd.named_parameters())[attn])


def test_scores_of_the_two_modes_and_counts():
    text = R.Text()
    test = ShapesWorld(min_objects=2, max_objects=2).generate(6, seed=5)
    torch.manual_seed(0)
    model = minivlm.create_model("vlmo_tiny", dim=32, mlp_hidden=64, embed_dim=16).eval()
    ids, am = text.encode([test.caption(i) for i in range(6)])
    with torch.no_grad():
        assert R.dual_score(model, text, ids, am, test.pixel_values()).shape == (6,)
        assert R.fusion_score(model, text, ids, am, test.pixel_values()).shape == (6,)
    c = R.parameter_counts("vlmo_tiny")
    assert c["multiway"] < c["two towers"] < c["two towers + fusion"]


def test_cli_tiny_run_writes_its_results_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    """experiments/vlmo.py end to end on a tiny setting (one seed, 2 steps per stage, a few
    scenes, relative positions in the transfer model). A random ``vilt_tiny`` stands in for the
    zoo's ``shapes_vilt`` (``make test`` builds the zoo after the unit tests); the numbers mean
    nothing, the file's layout, ranges and bookkeeping are checked. Then it keeps the file."""
    import json
    import math

    from script_helpers import load_script, restored_threads

    from minivlm import zoo

    def tiny_vilt(name: str, frozen: bool = True):
        assert name == "shapes_vilt"
        torch.manual_seed(0)
        return minivlm.create_model("vilt_tiny", vocab_size=81, max_text_len=24, patch_size=16,
                                    dim=32, depth=2, num_heads=2, num_answers=0).eval()

    monkeypatch.setattr(zoo, "load", tiny_vilt)
    out = tmp_path / "vlmo.json"
    argv = ["--out", str(out), "--seeds", "0", "--pair-steps", "2", "--image-steps", "2",
            "--text-steps", "2", "--n-train", "48", "--n-test", "24", "--rank-images", "4",
            "--n-images", "40", "--tokenizer-steps", "2", "--position", "relative"]  # fmt: skip
    exp = load_script("experiments/vlmo.py")
    with restored_threads():
        assert exp.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and res["seeds"] == [0] and res["recipe"]["position"] == "relative"
    assert set(res["parameters"]) == {"vlmo_tiny", "vlmo_base"}
    (run,) = res["runs"]
    assert run["seed"] == 0 and run["position"] == "relative" and run["cpu_seconds"] > 0
    for who in ("vilt (zoo)", "vlmo"):  # before / after the pair stage, both modes, every kind
        for mode in ("dual", "fusion"):
            accs = run["binding"][who][mode]
            assert set(accs) == set(R.KINDS) and all(0.0 <= a <= 1.0 for a in accs.values())
    assert 0.0 <= run["dual_r1_of_100"] <= 1.0 and math.isfinite(run["pair_loss"])
    assert all(run["timing"][k] > 0 for k in ("dual", "dual_with_images", "fusion"))
    assert set(run["transfer"]) == {"image stage MIM", *R.ARMS}
    for arm in R.ARMS:
        assert 0.0 <= run["transfer"][arm]["acc"] <= 1.0 and run["transfer"][arm]["loss"] > 0
    summary = res["summary"]  # R.summarize over the one run
    assert summary["transfer"][f"{R.ARMS[0]} / acc"]["values"] == [run["transfer"][R.ARMS[0]]["acc"]]
    assert len(summary["binding"]) == 2 * 2 * len(R.KINDS)
    assert "seed 0: region dual" in capsys.readouterr().out
    before = out.read_text()
    assert exp.main(argv) == 2  # a full run is minutes of CPU: never overwritten unasked
    assert out.read_text() == before and "--force" in capsys.readouterr().err
