"""Smoke test of experiments/llava_stages.py (lecture 5's multi-seed table) on a tiny setting:
tiny random parts instead of the zoo's, a few scenes and steps."""

from __future__ import annotations

import json

import pytest
from script_helpers import load_script, restored_threads


@pytest.fixture(scope="module")
def stages():
    return load_script("experiments/llava_stages.py")


@pytest.fixture(autouse=True)
def _threads():
    with restored_threads():  # main() sets one thread; give the rest of the suite its own
        yield


TINY = ["--random-parts", "--n-train", "24", "--n-test", "4", "--s1-steps", "2",
        "--s2-steps", "3"]  # fmt: skip


def test_runs_writes_every_arm_and_refuses_to_overwrite(stages, tmp_path, capsys):
    out = tmp_path / "stages.json"
    assert stages.main([*TINY, "--seeds", "0", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["complete"] and res["seeds"] == [0, 1] and len(res["runs"]) == 2
    assert res["recipe"]["s2_steps"] == 3 and res["parts"].startswith("random")
    cols = {*res["qtypes"], "all"}
    for run in res["runs"]:
        assert list(run["acc"]) == list(stages.ARMS)
        for acc in run["acc"].values():
            assert set(acc) == cols and all(0.0 <= v <= 1.0 for v in acc.values())
        mix = run["stage2_mixture"]
        assert mix["vqa_chats"] == 24 * 5 and mix["dialogues"] == 24
        assert sum(mix["dialogues_by_answer_turns"].values()) == 24
        assert min(int(k) for k in mix["dialogues_by_answer_turns"]) >= 2  # all multi-turn
    summ = res["summary"]
    for arm in stages.ARMS:  # mean and std over the two seeds, recomputed
        v = [r["acc"][arm]["all"] for r in res["runs"]]
        assert summ[arm]["all"]["mean"] == pytest.approx(sum(v) / 2, abs=1e-5)
        assert summ[arm]["all"]["std"] == pytest.approx(abs(v[0] - v[1]) / 2**0.5, abs=1e-5)
    d = summ["paired"]["stage 1 + 2 minus stage 2 only"]["color"]
    assert d["wins"] + d["ties"] + d["losses"] == 2
    # the majority baseline is exact: its accuracy per type is the share of that answer
    run = res["runs"][0]
    assert run["acc"]["majority answer"]["count"] >= 0.25
    table = capsys.readouterr().out
    assert "mean ± std over 2 seed(s)" in table and "stage 1 + 2, VQA-only stage 2" in table
    before = out.read_text()
    assert stages.main([*TINY, "--seeds", "0", "--out", str(out)]) == 2  # no --force
    assert out.read_text() == before


def test_same_seed_same_numbers(stages, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert stages.main([*TINY, "--seeds", "3", "--out", str(out)]) == 0
    ra, rb = (json.loads(p.read_text())["runs"][0] for p in (a, b))
    assert ra["acc"] == rb["acc"] and ra["final_loss"] == rb["final_loss"]


# ---------------------------------------------------------------- lecture 5's chat panel (issue 25)
@pytest.fixture(scope="module")
def tiny_setup():
    from minivlm.recipes import llava_stages as recipe

    vit, lm = recipe.random_parts()
    setup = recipe.Setup(vit, lm, 0, recipe.Recipe(n_train=6, n_test=3))
    return recipe, setup, setup.build("mlp2x_gelu").eval()


def test_chat_panel_refuses_unknown_words_and_shows_one_reply(tiny_setup):
    recipe, setup, model = tiny_setup
    panel = recipe.ChatPanel(setup, model)
    assert panel.reply.value.startswith("assistant: ")  # the default question is answered
    # Enter in the box (continuous_update=False syncs the value on Enter) asks like the button
    panel.question.value = "what is the meaning of life?"
    refusal = panel.reply.value
    assert refusal.startswith("cannot ask that") and "assistant" not in refusal
    unknown = setup.tok.unknown_words("what is the meaning of life?")
    assert unknown and all(repr(w) in refusal for w in unknown)  # every unknown word named
    assert "meaning" in unknown and "life" in unknown and "what" not in unknown
    assert panel.ask() == refusal  # the handler the button calls gives the same refusal
    panel.question.value = "what color is the object?"
    assert panel.reply.value.startswith("assistant: ")
    labels = [w for w in (panel.widget.children[1],) if type(w).__name__ == "Label"]
    assert len(panel.widget.children) == 2 and len(labels) == 1  # one reply line, no print


def test_chat_helpers_refuse_unknown_words(tiny_setup):
    recipe, setup, model = tiny_setup
    with pytest.raises(ValueError, match="'zebra', 'striped'"):
        setup.chat("is the zebra striped?")
    with pytest.raises(ValueError, match="'zebra'"):
        recipe.answer(setup, model, [(0, "where is the zebra?", None, None)])
    with pytest.raises(ValueError, match="'unicorn'"):
        recipe.converse(setup, model, 0, ["describe the image.", "where is the unicorn?"])
    talk = recipe.converse(setup, model, 0, ["describe the image."], max_new_tokens=3)
    assert [t["from"] for t in talk] == ["human", "gpt"]
