"""minivlm.zoo: cached pretrained shapes-world components (tiny builds in tmp folders)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minivlm import zoo
from minivlm.cli import main
from minivlm.data import ShapesWorld, shapes_tokenizer

STEPS = 3  # tiny builds: the recipes' code paths, seconds instead of a minute


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, nn.Module]]:
    """Both components built once with STEPS steps into a module-wide cache folder."""
    root = tmp_path_factory.mktemp("zoo")
    models = {
        name: zoo.build(name, root, steps=STEPS, verbose=False) for name in zoo.list_components()
    }
    return root, models


@pytest.fixture
def no_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilds in this process skip the held-out evaluation (most of a 3-step build's time):
    these tests compare weights, hashes and cache states, which the evaluation never touches
    (it runs after training, under no_grad, and only its JSON metrics differ). The ``built``
    fixture keeps the full evaluation of every component."""
    monkeypatch.setattr(zoo, "_evaluate", lambda *args, **kwargs: {})


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_components_and_unknown_name() -> None:
    assert zoo.list_components() == [
        "shapes_clip", "shapes_lm", "shapes_vilt", "shapes_clip_cnn", "shapes_albef"
    ]
    with pytest.raises(ValueError, match="unknown component 'clip'.*shapes_clip"):
        zoo.load("clip")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        zoo.paths("shapes_lm", steps=0)


def test_build_writes_files_and_load_returns_the_same_weights(built, monkeypatch) -> None:
    root, models = built
    tok = shapes_tokenizer()
    for name, model in models.items():
        weights, desc = zoo.paths(name, root, steps=STEPS)
        assert weights.name == f"{name}-v{zoo.VERSION}-steps{STEPS}-seed0.safetensors"
        assert weights.is_file() and desc.is_file()
        record = json.loads(desc.read_text())
        assert record["name"] == name and record["recipe"]["steps"] == STEPS
        assert record["recipe"]["vocab_size"] == tok.vocab_size
        assert record["torch"] == torch.__version__ and record["build_seconds"] > 0
        assert len(record["sha256"]) == 64 and record["bytes"] == weights.stat().st_size
        assert record["num_parameters"] == sum(p.numel() for p in model.parameters())
        # the recorded config (from presets.preset_config, no model built) is the model's own
        assert record["recipe"]["config"] == zoo._jsonable(dataclasses.asdict(model.config))

    # a valid cached copy is loaded, never rebuilt
    def no_build(*args, **kwargs):
        raise AssertionError("load() rebuilt a valid cached component")

    monkeypatch.setattr(zoo, "build", no_build)
    for name, model in models.items():
        loaded = zoo.load(name, cache_dir=root, steps=STEPS, frozen=False)
        assert type(loaded) is type(model) and loaded.training
        assert _equal(_state(loaded), _state(model))

    clip = zoo.load("shapes_clip", cache_dir=root, steps=STEPS)
    lm = zoo.load("shapes_lm", cache_dir=root, steps=STEPS)
    assert clip.config.text.vocab_size == lm.config.vocab_size == tok.vocab_size
    assert (lm.config.pad_id, lm.config.bos_id, lm.config.eos_id) == (
        tok.pad_id,
        tok.bos_id,
        tok.eos_id,
    )
    vit = zoo.load_image_encoder(cache_dir=root, steps=STEPS)
    x = ShapesWorld().generate(2, seed=3).pixel_values()  # (2, 3, 64, 64)
    assert vit(x).shape == (2, 1 + 16, clip.config.vision.dim)
    torch.testing.assert_close(vit(x), clip.image_encoder(x), rtol=0, atol=0)


def test_same_seed_same_bits_other_seed_differs(built, no_eval, tmp_path) -> None:
    root, models = built
    again = zoo.build("shapes_lm", tmp_path, steps=STEPS, verbose=False)
    assert _equal(_state(again), _state(models["shapes_lm"]))
    sha = [zoo.verify("shapes_lm", d, steps=STEPS)["sha256"] for d in (root, tmp_path)]
    assert sha[0] == sha[1]  # the files are byte-identical too
    other = zoo.build("shapes_lm", tmp_path, steps=STEPS, seed=1, verbose=False)
    assert not _equal(_state(other), _state(models["shapes_lm"]))
    assert zoo.paths("shapes_lm", tmp_path, STEPS, 1)[0].name.endswith("-steps3-seed1.safetensors")


def _copy_cache(src: Path, dst: Path, name: str) -> tuple[Path, Path]:
    for p in zoo.paths(name, src, steps=STEPS):
        (dst / p.name).write_bytes(p.read_bytes())
    return zoo.paths(name, dst, steps=STEPS)


def test_corrupted_file_is_reported_and_rebuilt(built, no_eval, tmp_path) -> None:
    root, models = built
    weights, desc = _copy_cache(root, tmp_path, "shapes_lm")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a partial write
    with pytest.raises(zoo.ZooCacheError, match="corrupted or partially written"):
        zoo.verify("shapes_lm", tmp_path, steps=STEPS)
    assert zoo.info("shapes_lm", tmp_path, steps=STEPS) is None
    with pytest.warns(UserWarning, match="corrupted or partially written.*Rebuilding it"):
        model = zoo.load("shapes_lm", cache_dir=tmp_path, steps=STEPS, verbose=False)
    assert _equal(_state(model), _state(models["shapes_lm"]))
    assert (
        zoo.verify("shapes_lm", tmp_path, steps=STEPS)["sha256"]
        == json.loads((root / desc.name).read_text())["sha256"]
    )


def test_missing_description_and_other_recipe_are_rejected(built, tmp_path) -> None:
    root, _ = built
    weights, desc = _copy_cache(root, tmp_path, "shapes_lm")
    desc.unlink()
    with pytest.raises(zoo.ZooCacheError, match="is missing.*incomplete"):
        zoo.verify("shapes_lm", tmp_path, steps=STEPS)
    _copy_cache(root, tmp_path, "shapes_lm")
    record = json.loads(desc.read_text())
    record["recipe"]["config"]["dim"] = 64  # as if built by code with another config
    desc.write_text(json.dumps(record))
    with pytest.raises(zoo.ZooCacheError, match=r"another recipe.*\['config'\]"):
        zoo.verify("shapes_lm", tmp_path, steps=STEPS)
    desc.write_text("{not json")
    with pytest.raises(zoo.ZooCacheError, match="not valid JSON"):
        zoo.verify("shapes_lm", tmp_path, steps=STEPS)


def test_wrong_shapes_are_never_loaded(built, no_eval, tmp_path) -> None:
    """Even a file whose hash and recipe check out must fit the model tensor by tensor."""
    root, _ = built
    weights, desc = _copy_cache(root, tmp_path, "shapes_lm")
    tensors = load_file(str(weights))
    tensors["norm.weight"] = torch.ones(7)
    save_file(tensors, str(weights))
    record = json.loads(desc.read_text())
    record["sha256"] = zoo._sha256(weights)
    desc.write_text(json.dumps(record))
    zoo.verify("shapes_lm", tmp_path, steps=STEPS)  # the description is consistent...
    with pytest.raises(zoo.ZooCacheError, match=r"does not fit shapes_lm: norm.weight: \(7,\)"):
        zoo._load_verified("shapes_lm", tmp_path, STEPS, 0)  # ...the tensors are not
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = zoo.load("shapes_lm", cache_dir=tmp_path, steps=STEPS, verbose=False)
    assert any("does not fit" in str(w.message) for w in caught)
    assert model.norm.weight.shape == (model.config.dim,)


def test_frozen_parameters_get_no_gradient_and_do_not_change(built) -> None:
    root, _ = built
    vit = zoo.load_image_encoder(cache_dir=root, steps=STEPS)  # frozen by default
    assert not vit.training and not any(p.requires_grad for p in vit.parameters())
    head = nn.Linear(vit.config.dim, 5)
    model = nn.ModuleDict({"vit": vit, "head": head})
    before = _state(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = ShapesWorld().generate(8, seed=4).pixel_values()  # (8, 3, 64, 64)
    y = torch.arange(8) % 5
    for _ in range(2):
        loss = nn.functional.cross_entropy(head(vit(x)[:, 0]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in vit.parameters())
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    after = _state(model)
    for k in before:
        if k.startswith("vit."):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["head.weight"], after["head.weight"])

    lm = zoo.load("shapes_lm", cache_dir=root, steps=STEPS, frozen=False)
    assert lm.training and all(p.requires_grad for p in lm.parameters())
    assert zoo.freeze(lm) is lm and not lm.training
    assert not any(p.requires_grad for p in lm.parameters())


def test_cli_list_and_build(built, no_eval, tmp_path, capsys) -> None:
    root, models = built
    assert main(["zoo", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and out.count("not built") == len(zoo.list_components())
    args = ["zoo", "build", "--name", "shapes_lm", "--cache-dir", str(tmp_path), "--steps", "3"]
    assert main(args) == 0
    assert "shapes_lm: built in" in capsys.readouterr().out
    loaded = zoo.load("shapes_lm", cache_dir=tmp_path, steps=STEPS)
    assert _equal(_state(loaded), _state(models["shapes_lm"]))
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    mtime = zoo.paths("shapes_lm", tmp_path, STEPS)[0].stat().st_mtime_ns
    assert main([*args, "--force"]) == 0
    assert "built in" in capsys.readouterr().out
    assert zoo.paths("shapes_lm", tmp_path, STEPS)[0].stat().st_mtime_ns >= mtime
    with pytest.raises(SystemExit):
        main(["zoo", "build", "--name", "nope"])


def test_cli_parallel_build_gives_the_serial_bits(built, tmp_path, capsys) -> None:
    # --jobs builds components in separate processes; the weights must be the same bits as the
    # serial build of the fixture (each build is single-threaded and seeded by itself)
    root, models = built
    names = ["shapes_clip_cnn", "shapes_lm"]  # the two cheapest builds (spawned: full evaluation)
    args = ["zoo", "build", "--cache-dir", str(tmp_path), "--steps", str(STEPS), "--jobs", "2"]
    assert main([*args, *(a for n in names for a in ("--name", n))]) == 0
    out = capsys.readouterr().out
    assert all(f"{n}: built in" in out for n in names)
    for n in names:
        assert _equal(_state(zoo.load(n, cache_dir=tmp_path, steps=STEPS)), _state(models[n]))
    with pytest.raises(SystemExit, match="--jobs"):
        main(["zoo", "build", "--cache-dir", str(tmp_path), "--jobs", "0", "--force"])


def test_cache_dir_from_environment(built, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MINIVLM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.default_cache_dir() == tmp_path / "xdg" / "minivlm" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.default_cache_dir() == tmp_path / "home" / ".cache" / "minivlm" / "zoo"
    monkeypatch.setenv("MINIVLM_CACHE", str(tmp_path / "env"))
    assert zoo.default_cache_dir() == tmp_path / "env"
    expected = tmp_path / "env" / f"shapes_clip-v{zoo.VERSION}.safetensors"
    assert zoo.paths("shapes_clip")[0] == expected
    root, models = built
    (tmp_path / "env").mkdir()
    _copy_cache(root, tmp_path / "env", "shapes_clip")
    clip = zoo.load("shapes_clip", steps=STEPS)  # found through $MINIVLM_CACHE
    assert _equal(_state(clip), _state(models["shapes_clip"]))


def test_shapes_vilt_is_lecture_2_recipe(built) -> None:
    """shapes_vilt = recipes.vilt_binding's warm-up arm (same draw, same steps), bit for bit,
    with held-out binding accuracy per kind stored in its description."""
    import minivlm
    from minivlm.recipes import vilt_binding as vb

    root, models = built
    rec = zoo.info("shapes_vilt", root, steps=STEPS)
    assert rec["recipe"]["where_steps"] == 400
    assert set(rec["metrics"]) >= {"binding_region", "binding_relation", "binding_size"}
    assert all(0.0 <= rec["metrics"][f"binding_{k}"] <= 1.0 for k in vb.KINDS)
    minivlm.seed_everything(0)
    ref = vb.make_model("vilt warm-up", vb.Text())
    data = ShapesWorld(min_objects=2, max_objects=2).generate(
        zoo._recipe("shapes_vilt").scenes_for(STEPS), seed=zoo.DATA_SEED
    )
    vb.pretrain(ref, data, 0, STEPS, warmup=min(400, STEPS))
    assert _equal(_state(ref), _state(models["shapes_vilt"]))
    assert models["shapes_vilt"].pos_embed.std() > 0.3  # positions drawn with std 0.5


def test_shapes_albef_and_shapes_clip_cnn_are_lecture_recipes(built) -> None:
    """shapes_albef = recipes.albef_align.train_arm(1.0, seed) bit for bit (so its overrides are
    that arm's model config); shapes_clip_cnn trains clip_tiny_cnn on one-object scenes."""
    from minivlm.recipes import albef_align

    root, models = built
    _, ref = albef_align.train_arm(1.0, seed=0, steps=STEPS)
    assert ref.config == models["shapes_albef"].config
    assert _equal(_state(ref), _state(models["shapes_albef"]))
    rec = zoo.info("shapes_albef", root, steps=STEPS)
    assert set(rec["metrics"]) >= {"r1", "itm_vs_wrong_colour", "itm_vs_other_scene", "mlm_colour"}
    cnn = zoo.info("shapes_clip_cnn", root, steps=STEPS)
    assert cnn["recipe"]["model"] == "clip_tiny_cnn" and cnn["recipe"]["max_objects"] == 1
    assert 0.0 <= cnn["metrics"]["zero_shot_shape"] <= 1.0
