"""Pretrained shapes-world components, built on first use and cached: the *zoo*.

BLIP-2 (Li et al. 2023, §3) starts from a frozen pretrained image encoder and a frozen
pretrained language model; LLaVA (Liu et al. 2023, §4.1) from CLIP's ViT-L/14 and Vicuna.
Nothing can be downloaded in class, so the zoo trains tiny stand-ins of those on the shapes
world -- deterministically, the first time a notebook asks for them -- and caches the weights::

    name         model                                  trained on
    shapes_clip  clip_tiny, 16x16 patches (4x4 grid),   image-caption pairs (canonical captions),
                 shapes vocabulary                      symmetric InfoNCE, as in lecture 1
    shapes_lm    lm_tiny (Llama-style), shapes          captions, VQA question/answer pairs and
                 vocabulary                             dialogues, as plain text (lm_corpus)
    shapes_vilt  vilt_tiny, 16x16 patches, patch        two-object scenes: first the "where"
                 positions drawn with std 0.5           warm-up (colours of the left and the top
                                                        object), then colour-word MLM on binding
                                                        captions (lecture 2, recipes.vilt_binding)
    shapes_clip_cnn  clip_tiny_cnn (CNN image tower)    one-object scenes' captions, symmetric
                                                        InfoNCE: lecture 1's shape learner
                                                        (recipes.clip_shape, 700 steps)
    shapes_albef     lecture 3's ALBEF (ITC + ITM +      clean captions of 2,000 scenes, 250 steps:
                     MLM, MoD, 2 text + 2 fusion layers) recipes.albef_align.train_arm(1.0, seed)

    >>> from minivlm import zoo
    >>> vit = zoo.load_image_encoder()    # frozen ViT: (B, 3, 64, 64) -> (B, 1+16, 128) tokens
    >>> lm = zoo.load("shapes_lm")        # frozen DecoderLM over shapes_tokenizer() ids
    >>> zoo.info("shapes_lm")["metrics"]  # held-out perplexity etc., measured at build time

All use ``minivlm.data.shapes_tokenizer()`` ids ([PAD] 0, [BOS] 5, [EOS] 6). Their training
scenes are drawn with seed ``DATA_SEED + seed`` and their held-out scenes with
``HELDOUT_SEED + seed``, far from the small seeds the notebooks use for their own data.

Cost. ``minivlm zoo build`` trains both from scratch in well under a minute of CPU time each
(the JSON records each build's ``build_seconds``; :data:`BUILD_SECONDS` is the estimate printed
before a build). A build runs single-threaded (``torch.set_num_threads(1)`` for its duration),
so its bits do not depend on the thread count and it does not slow down ten-fold when other
programs compete for the cores. The same ``seed`` gives bitwise-identical weights on a CPU
(builds always run on the CPU; move the loaded model to a GPU yourself). Afterwards ``load``
takes about a second (SHA-256 check included).

Quality is measured on held-out scenes at build time and stored in the JSON under ``metrics``
(``zoo.info(name)["metrics"]``; ``minivlm zoo list`` prints the headline numbers):
shapes_clip's retrieval R@1 in both directions and zero-shot colour and shape accuracy,
shapes_lm's perplexity overall and per kind of text (captions, VQA, dialogues). Qualitatively,
shapes_clip learns colour and size but a 4x4-patch ViT does not learn shape in this budget, and
shapes_lm writes fluent shapes-world text in the right format with the prior's guess for the
content -- the image has to supply the rest, which is the point of BLIP-2 and LLaVA.

Cache. Files live in ``$MINIVLM_CACHE`` when set, else ``$XDG_CACHE_HOME/minivlm/zoo``
(default ``~/.cache/minivlm/zoo``): ``<name>-v<VERSION>.safetensors`` (the weights) and
``<name>-v<VERSION>.json`` (model config, recipe, seed, steps, build time, torch version,
SHA-256 of the weights file, held-out metrics), each written atomically. A non-default
``steps``/``seed`` adds ``-steps<N>-seed<S>`` to the names, so it never replaces the default
build. Bumping ``VERSION`` (done whenever a recipe changes) invalidates old files. A cached
file that is corrupted, partial, or built by another recipe or vocabulary is never loaded:
``load`` warns with the reason and rebuilds it; ``verify`` raises :class:`ZooCacheError`.

Freezing (BLIP-2 §3.1: "frozen image encoder", "frozen LLM"): ``load(..., frozen=True)``
sets ``requires_grad=False`` on every parameter and puts the module in ``eval()`` mode.
Neither component has dropout or batch norm, so a parent's ``.train()`` changes nothing.
Command line: ``minivlm zoo list`` and ``minivlm zoo build [--name N] [--force]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BUILD_SECONDS",
    "DATA_SEED",
    "HELDOUT_SEED",
    "VERSION",
    "ZooCacheError",
    "add_cli",
    "build",
    "default_cache_dir",
    "freeze",
    "info",
    "list_components",
    "lm_corpus",
    "load",
    "load_image_encoder",
    "paths",
    "verify",
]

VERSION = 1  # bump whenever a recipe below changes: old cache files are then rebuilt
FORMAT = "minivlm.zoo"
DATA_SEED = 7_000_000  # training scenes: ShapesWorld().generate(n, seed=DATA_SEED + seed)
HELDOUT_SEED = 7_500_000  # held-out scenes for the metrics stored with each build

# Measured build times (CPU seconds, single thread = wall seconds on an idle core) of the
# default recipes; see "Cost" above. ``build`` prints them before a cold build.
BUILD_SECONDS: dict[str, float] = {
    "shapes_clip": 25.0, "shapes_lm": 21.0, "shapes_vilt": 55.0, "shapes_clip_cnn": 55.0,
    "shapes_albef": 70.0,
}  # fmt: skip


class ZooCacheError(ValueError):
    """A cached component cannot be used (missing, corrupted, partial or built differently)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class _Recipe:
    """How a component is made: the registry model, its overrides and the training run."""

    name: str
    model: str
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    num_scenes: int
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)  # of the registry preset
    block: int | None = None  # LM: train on packed rows of this many tokens
    where_steps: int = 0  # ViLT: steps of the "where" warm-up before colour-word MLM
    max_objects: int = 4  # objects per training scene (at most)

    def scenes_for(self, steps: int) -> int:
        # never draw more scenes than the run can use (keeps tiny test builds fast)
        return max(8, min(self.num_scenes, steps * self.batch_size))


_RECIPES: dict[str, _Recipe] = {r.name: r for r in (
    _Recipe("shapes_clip", "clip_tiny", steps=250, batch_size=64, lr=1e-3, warmup_steps=20,
            num_scenes=4000, overrides={"patch_size": 16},
            description="clip_tiny (16x16 patches) trained contrastively on shapes-world "
            "captions; use .image_encoder"),
    _Recipe("shapes_lm", "lm_tiny", steps=160, batch_size=32, lr=4e-3, warmup_steps=20,
            num_scenes=600, block=64,
            description="lm_tiny trained as a causal LM on shapes-world captions, VQA and "
            "dialogues"),
    _Recipe("shapes_vilt", "vilt_tiny", steps=1000, batch_size=32, lr=1e-3, warmup_steps=30,
            num_scenes=3000, where_steps=400,
            overrides={"patch_size": 16, "max_text_len": 24, "num_answers": 0},
            description="vilt_tiny (16x16 patches) after lecture 2's 'where' warm-up and "
            "colour-word MLM on two-object scenes: binds colour to position"),
    _Recipe("shapes_clip_cnn", "clip_tiny_cnn", steps=700, batch_size=64, lr=1e-3,
            warmup_steps=10, num_scenes=4000, max_objects=1,
            description="clip_tiny_cnn trained contrastively on one-object scenes' captions: "
            "learns shape (lecture 1 section 9, recipes.clip_shape)"),
    # recipes.albef_align.train_arm(1.0, seed): its own data (the 2,000 scenes of
    # ShapesWorld().generate(2000, seed=0), as in lecture 3) and its own fan-in init, so the
    # build equals the with-ITC arm of experiments/albef_align.py bit for bit; these overrides
    # are that arm's model (albef_noise.MODEL + albef_align.FUSION_MODEL, MoD ramped over the
    # first epoch of 31 steps); tests/test_zoo.py checks that they match
    _Recipe("shapes_albef", "albef_tiny", steps=250, batch_size=64, lr=1e-3, warmup_steps=20,
            num_scenes=2000,
            overrides={
                "vision_dim": 64, "vision_depth": 2, "vision_mlp_hidden": 128, "patch_size": 16,
                "text_dim": 64, "text_depth": 4, "text_mlp_hidden": 128, "fusion_from": 2,
                "embed_dim": 64, "queue_size": 64, "momentum": 0.9, "alpha": 0.4, "temp": 0.07,
                "temp_min": 0.07, "temp_max": 0.07, "itm_weight": 1.0, "mlm_weight": 1.0,
                "itc_weight": 1.0, "distill": True, "alpha_warmup_steps": 31,
            },
            description="lecture 3's ALBEF (ITC + ITM + MLM with momentum distillation) after "
            "250 steps on clean captions (recipes.albef_align.train_arm(1.0, seed))"),
)}  # fmt: skip


def list_components() -> list[str]:
    """Names of the zoo's components:
    ``["shapes_clip", "shapes_lm", "shapes_vilt", "shapes_clip_cnn", "shapes_albef"]``."""
    return list(_RECIPES)


def _recipe(name: str) -> _Recipe:
    if not isinstance(name, str) or name not in _RECIPES:
        raise ValueError(
            f"minivlm.zoo: unknown component {name!r}; expected one of {list_components()}"
        )
    return _RECIPES[name]


def _check_run(steps: int | None, seed: int, recipe: _Recipe) -> int:
    steps = recipe.steps if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"minivlm.zoo: steps must be a positive int, got {steps!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"minivlm.zoo: seed must be an int >= 0, got {seed!r}")
    return steps


def _tokenizer() -> Any:
    from minivlm.data import shapes_tokenizer

    return shapes_tokenizer()


def _vocab_sha256(tok: Any) -> str:
    return hashlib.sha256("\x00".join(tok.tokens).encode("utf-8")).hexdigest()


def _make_model(recipe: _Recipe, tok: Any) -> nn.Module:
    from minivlm.presets import create_model

    return create_model(recipe.model, vocab_size=tok.vocab_size, **recipe.overrides)


def _tied_aliases(model: nn.Module) -> set[str]:
    """State-dict keys that share storage with an earlier key (tied weights, e.g. ViLT's MLM
    decoder and its word embeddings): stored once, restored through the tie when loading."""
    seen, aliases = set(), set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            aliases.add(k)
        seen.add(v.data_ptr())
    return aliases


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _expected_recipe(recipe: _Recipe, steps: int, seed: int, tok: Any) -> dict[str, Any]:
    """What a cache file's JSON must say to be loadable for this (name, steps, seed)."""
    from minivlm.presets import preset_config

    # the model's config without building the model (``model.config`` is this object; even a
    # meta-device model would import torch's meta kernels, 2 s of CPU in every process that
    # loads a component; tests/test_zoo.py checks that they agree)
    config = preset_config(recipe.model, vocab_size=tok.vocab_size, **recipe.overrides)
    return _jsonable(
        {
            "model": recipe.model,
            "overrides": recipe.overrides,
            "config": dataclasses.asdict(config),
            "steps": steps,
            "seed": seed,
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            "warmup_steps": recipe.warmup_steps,
            "num_scenes": recipe.scenes_for(steps),
            "block": recipe.block,
            "data_seed": DATA_SEED + seed,
            "vocab_size": tok.vocab_size,
            "vocab_sha256": _vocab_sha256(tok),
            **({"where_steps": recipe.where_steps} if recipe.where_steps else {}),
            **({"max_objects": recipe.max_objects} if recipe.max_objects != 4 else {}),
        }
    )


# --------------------------------------------------------------------------- cache paths


def default_cache_dir() -> Path:
    """``$MINIVLM_CACHE`` if set, else ``$XDG_CACHE_HOME/minivlm/zoo`` (``~/.cache/...``)."""
    env = os.environ.get("MINIVLM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "minivlm" / "zoo"


def paths(
    name: str, cache_dir: str | os.PathLike | None = None, steps: int | None = None, seed: int = 0
) -> tuple[Path, Path]:
    """``(weights .safetensors, description .json)`` of a component in the cache."""
    recipe = _recipe(name)
    steps = _check_run(steps, seed, recipe)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = f"{name}-v{VERSION}"
    if steps != recipe.steps or seed != 0:
        stem += f"-steps{steps}-seed{seed}"
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- text corpus


def lm_corpus(data: Any, tokenizer: Any, kinds: Sequence[str] | None = None) -> list[list[int]]:
    """The shapes-world text ``shapes_lm`` is trained on, as token-id lists, scene by scene.

    For each scene of ``data`` (a ``ShapesData``), in this order:

    * ``"caption"``: every caption, ``[BOS] a small red circle [EOS]``;
    * ``"vqa"``: every question with its short answer, in the chat format of
      ``minivlm.data.encode_chat`` without the image: ``[BOS] user: what color is the
      circle?\\n assistant: red [EOS]``;
    * ``"dialogue"``: one conversation per dialogue task (``DIALOGUE_TASKS``; "compare" only
      with two or more objects), ``<image>`` removed: ``[BOS] user: where is the red
      circle?\\n assistant: the red circle is in the top left. [EOS] user: ...``.

    ``kinds`` keeps some of them (default all three).
    """
    from minivlm.data import DIALOGUE_TASKS, ShapesData, encode_chat
    from minivlm.data.tokenizer import IMAGE

    if not isinstance(data, ShapesData):
        raise TypeError(
            f"lm_corpus: expected ShapesData (ShapesWorld().generate(...)), got "
            f"{type(data).__name__}"
        )
    kinds = ("caption", "vqa", "dialogue") if kinds is None else tuple(kinds)
    bad = [k for k in kinds if k not in ("caption", "vqa", "dialogue")]
    if bad or not kinds:
        raise ValueError(
            f"lm_corpus: kinds must be a non-empty subset of ('caption', 'vqa', "
            f"'dialogue'), got {list(kinds)}"
        )
    seqs: list[list[int]] = []
    for i in range(len(data)):
        if "caption" in kinds:
            seqs += [tokenizer.encode(c, add_bos=True, add_eos=True) for c in data.captions(i)]
        if "vqa" in kinds:
            for q, a, _ in data.vqa(i):
                turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
                seqs.append(encode_chat(tokenizer, turns)["input_ids"])
        if "dialogue" in kinds:
            for task in DIALOGUE_TASKS:
                if task == "compare" and len(data.scenes[i].objects) < 2:
                    continue
                turns = [
                    {**t, "value": t["value"].replace(IMAGE + "\n", "").replace(IMAGE, "")}
                    for t in data.dialogue(i, task)
                ]
                seqs.append(encode_chat(tokenizer, turns)["input_ids"])
    return seqs


class _TokenDataset(torch.utils.data.Dataset):
    """Token-id lists -> batches ``input_ids``, ``attention_mask``, ``labels`` (-100 on pads)."""

    def __init__(self, seqs: list[list[int]], tokenizer: Any) -> None:
        self.seqs, self.tokenizer = seqs, tokenizer

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> list[int]:
        return self.seqs[i]

    def collate(self, items: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        from minivlm.data import IGNORE_INDEX

        batch = self.tokenizer.pad(list(items))  # right-padded with [PAD] = 0
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        return batch


class _PackedDataset(torch.utils.data.Dataset):
    """GPT-style packing: documents, shuffled by ``seed``, concatenated into one token stream
    cut into rows of ``block`` tokens (the remainder is dropped). No padding is wasted; a row
    may start inside a document and attend across a [EOS] [BOS] boundary, as in GPT-2 and
    Llama pre-training. Batch: ``input_ids`` = ``labels`` (B, block), ``attention_mask`` ones.
    """

    def __init__(self, seqs: list[list[int]], block: int, seed: int) -> None:
        order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed))
        stream = [t for i in order.tolist() for t in seqs[i]]
        n = len(stream) // block
        if n < 1:
            raise ValueError(f"_PackedDataset: {len(stream)} tokens do not fill one row of {block}")
        self.rows = torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = torch.stack(list(items))  # (B, block)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# --------------------------------------------------------------------------- training


def _train(recipe: _Recipe, model: nn.Module, steps: int, seed: int, tok: Any) -> Any:
    from minivlm.data import CaptionDataset, ShapesWorld
    from minivlm.train import TrainConfig, train

    if recipe.name == "shapes_vilt":  # lecture 2's recipe, from minivlm.recipes.vilt_binding
        from types import SimpleNamespace

        from minivlm.recipes import vilt_binding as vb

        # the same draw as vilt_binding.make_model("vilt warm-up"): positions with std 0.5
        nn.init.trunc_normal_(model.pos_embed, std=0.5, a=-1.5, b=1.5)
        two = ShapesWorld(min_objects=2, max_objects=2)
        data = two.generate(recipe.scenes_for(steps), seed=DATA_SEED + seed)
        losses = vb.pretrain(model, data, seed, steps, min(recipe.where_steps, steps),
                             recipe.lr, recipe.batch_size)  # fmt: skip
        return SimpleNamespace(history={"loss": losses})  # what build reads of a TrainResult
    if recipe.name == "shapes_albef":  # lecture 3's recipe, from minivlm.recipes.albef_align
        from types import SimpleNamespace

        from minivlm.recipes import albef_align

        record, trained = albef_align.train_arm(1.0, seed=seed, steps=steps)
        model.load_state_dict(trained.state_dict())
        return SimpleNamespace(history={"loss": [record["final_loss"]]})
    data = ShapesWorld().generate(
        recipe.scenes_for(steps), seed=DATA_SEED + seed, max_objects=recipe.max_objects
    )
    if recipe.model.startswith("clip"):
        dataset: torch.utils.data.Dataset = CaptionDataset(data, tok, mode="fixed")
    else:
        dataset = _PackedDataset(lm_corpus(data, tok), recipe.block or 64, seed)
    cfg = TrainConfig(
        steps=steps, batch_size=recipe.batch_size, lr=recipe.lr,
        warmup_steps=min(recipe.warmup_steps, steps - 1), seed=seed, progress=False, amp="off",
    )  # fmt: skip
    return train(model, dataset, cfg, device="cpu")


@torch.no_grad()
def _evaluate(recipe: _Recipe, model: nn.Module, seed: int, tok: Any) -> dict[str, Any]:
    """Held-out quality, stored in the JSON: retrieval / zero-shot (CLIP), perplexity (LM)."""
    from minivlm.data import COLORS, SHAPES, ShapesWorld

    model.eval()
    world = ShapesWorld()
    if recipe.model.startswith("clip"):
        import torch.nn.functional as F

        from minivlm.eval import retrieval_metrics
        from minivlm.models.clip import build_zero_shot_classifier, zero_shot_predict

        test = world.generate(500, seed=HELDOUT_SEED + seed)
        img = F.normalize(model.encode_image(test.pixel_values()), dim=-1)  # (500, E)
        b = tok([test.caption(i) for i in range(len(test))], add_bos=True, add_eos=True)
        txt = F.normalize(model.encode_text(b["input_ids"], b["attention_mask"]), dim=-1)
        r = retrieval_metrics(img @ txt.T, ks=(1, 5))  # canonical captions, 500 x 500
        single = world.generate(300, seed=HELDOUT_SEED + 1 + seed, min_objects=1, max_objects=1)
        out: dict[str, Any] = {
            k: round(r[k], 4) for k in ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "chance_R@1")
        }

        def an(phrase: str) -> str:
            return ("an " if phrase[0] in "aeiou" else "a ") + phrase

        prompts = {  # prompt ensembles over the other attribute (CLIP §3.1.4)
            "color": (list(COLORS), [lambda c, s=s: an(f"{c} {s}") for s in SHAPES]),
            "shape": (list(SHAPES), [lambda s, c=c: an(f"{c} {s}") for c in COLORS]),
        }
        for task, (classes, templates) in prompts.items():
            weights = build_zero_shot_classifier(model, tok, classes, templates)  # (C, E)
            _, pred = zero_shot_predict(model, single.pixel_values(), weights)
            acc = (pred == single.labels(task)).float().mean().item()
            out[f"zero_shot_{task}"] = round(acc, 4)
        out["heldout"] = "500 scenes (retrieval), 300 single-object scenes (zero-shot)"
        return out
    if recipe.name == "shapes_albef":
        from minivlm.recipes import albef_align, albef_noise

        images, captions = albef_noise.eval_pairs()
        r1 = albef_noise.retrieval_r1(model, tok, images, captions)["mean_R@1"]
        fusion = albef_align.evaluate_fusion(model, albef_align.test_set())
        out = {k: round(float(v), 5) for k, v in {"r1": r1, **fusion}.items()}
        out["heldout"] = "256 pairs (R@1), 200 scenes with a one-colour-changed caption (ITM, MLM)"
        return out
    if recipe.name == "shapes_vilt":
        from minivlm.recipes import vilt_binding as vb

        test = ShapesWorld(min_objects=2, max_objects=2).generate(400, seed=HELDOUT_SEED + seed)
        acc = vb.binding_accuracy(model, test)  # MLM pseudo-likelihood; chance 0.5
        out = {f"binding_{k}": round(v, 4) for k, v in acc.items()}
        out["heldout"] = "binding pairs of 400 two-object scenes (chance 0.5)"
        return out

    test = world.generate(30, seed=HELDOUT_SEED + seed)
    out = {}
    sums = [0.0, 0]  # summed negative log-likelihood, predicted tokens
    for kind in ("caption", "vqa", "dialogue"):
        seqs = lm_corpus(test, tok, [kind])  # each document alone, from [BOS], as used later
        ds = _TokenDataset(seqs, tok)
        total, count = 0.0, 0
        for s in range(0, len(seqs), 256):
            batch = ds.collate(seqs[s : s + 256])
            n = int((batch["labels"][:, 1:] != -100).sum())  # predicted tokens
            total += float(model(**batch).loss) * n
            count += n
        out[f"perplexity_{kind}"] = round(math.exp(total / count), 4)
        sums[0] += total
        sums[1] += count
    out["perplexity_all"] = round(math.exp(sums[0] / sums[1]), 4)
    samples = {}
    for prompt in (
        "",
        "user: what color is the circle?\nassistant:",
        "user: describe the image.\nassistant:",
    ):
        ids = torch.tensor([[tok.bos_id] + tok.encode(prompt)])
        new = model.generate(ids, max_new_tokens=40, do_sample=False)
        samples[prompt] = tok.decode(new[0])
    out["greedy_samples"] = samples
    out["heldout"] = "lm_corpus of 30 held-out scenes, one document at a time"
    return out


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"minivlm.zoo: {msg}", file=sys.stderr, flush=True)


def build(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    *,
    verbose: bool = True,
) -> nn.Module:
    """Train component ``name`` on the CPU, write it to the cache, return it (trainable).

    ``steps`` defaults to the recipe's; ``seed`` fixes initialisation, data and order, so the
    same (steps, seed) gives bitwise-identical weights. Replaces any cached copy of the same
    (name, steps, seed).
    """
    from safetensors.torch import save_file

    from minivlm.utils import atomic_write, seed_everything

    recipe = _recipe(name)
    steps = _check_run(steps, seed, recipe)
    weights_path, json_path = paths(name, cache_dir, steps, seed)
    est = BUILD_SECONDS.get(name, 0.0) * steps / recipe.steps
    _log(
        verbose,
        f"building {name} ({steps} steps, about {est:.0f} s on an idle CPU core, once) "
        f"into {weights_path.parent}",
    )
    tok = _tokenizer()
    expected = _expected_recipe(recipe, steps, seed, tok)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same bits whatever the machine's thread count (see docstring)
    try:
        t0 = time.perf_counter()
        seed_everything(seed)
        model = _make_model(recipe, tok)
        result = _train(recipe, model, steps, seed, tok)
        train_seconds = time.perf_counter() - t0
        metrics = _evaluate(recipe, model, seed, tok)
        build_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)

    tied = _tied_aliases(model)
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in tied
    }
    digest: dict[str, str] = {}

    def write_weights(tmp: Path) -> None:
        # one metadata key: safetensors writes a metadata map in hash order, and the file's
        # bytes (hence its SHA-256) must not depend on that
        label = json.dumps({"name": name, "version": VERSION}, sort_keys=True)
        save_file(tensors, str(tmp), metadata={FORMAT: label})
        digest["sha256"] = _sha256(tmp)

    atomic_write(weights_path, write_weights)
    record = {
        "format": FORMAT,
        "name": name,
        "version": VERSION,
        "description": recipe.description,
        "file": weights_path.name,
        "sha256": digest["sha256"],
        "bytes": weights_path.stat().st_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),  # not buffers (queues)
        "recipe": expected,
        "final_loss": round(
            sum(result.history["loss"][-10:]) / len(result.history["loss"][-10:]), 4
        ),
        "train_seconds": round(train_seconds, 2),
        "build_seconds": round(build_seconds, 2),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": metrics,
    }
    atomic_write(
        json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    )
    _log(verbose, f"built {name} in {build_seconds:.1f} s -> {weights_path}")
    model.train()
    return model


# --------------------------------------------------------------------------- loading


def _read_record(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise ZooCacheError(
            f"{json_path} is missing (the description written after the "
            "weights): the cached copy is incomplete",
            json_path,
        )
    try:
        record = json.loads(json_path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooCacheError(f"{json_path} is not valid JSON ({e})", json_path) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ZooCacheError(
            f'{json_path} is not a minivlm zoo file (expected "format": "{FORMAT}")', json_path
        )
    return record


def verify(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Check the cached copy of ``name`` and return its JSON description.

    Raises :class:`ZooCacheError` saying what is wrong: files missing, the weights' SHA-256
    differing from the recorded one (corrupted or partial file), another version, or a
    recipe/vocabulary that differs from what this code builds.
    """
    recipe = _recipe(name)
    steps = _check_run(steps, seed, recipe)
    weights_path, json_path = paths(name, cache_dir, steps, seed)
    if not weights_path.is_file():
        raise ZooCacheError(f"{weights_path} is missing", weights_path)
    record = _read_record(json_path)
    if record.get("name") != name or record.get("version") != VERSION:
        raise ZooCacheError(
            f"{json_path} describes {record.get('name')!r} version {record.get('version')!r}, "
            f"expected {name!r} version {VERSION}", json_path)  # fmt: skip
    actual = _sha256(weights_path)
    if actual != record.get("sha256"):
        raise ZooCacheError(
            f"{weights_path} is corrupted or partially written: its SHA-256 {actual[:12]}... "
            f"differs from the recorded {str(record.get('sha256'))[:12]}...",
            weights_path,
        )
    expected = _expected_recipe(recipe, steps, seed, _tokenizer())
    got = record.get("recipe")
    if got != expected:
        got = got if isinstance(got, dict) else {}
        diff = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
        raise ZooCacheError(
            f"{weights_path} was built by another recipe or vocabulary (differs in "
            f"{diff}); this code builds {name} version {VERSION} differently",
            json_path,
        )
    return record


def _load_verified(name: str, cache_dir: Any, steps: int, seed: int) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    verify(name, cache_dir, steps, seed)
    weights_path, _ = paths(name, cache_dir, steps, seed)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ZooCacheError(
            f"{weights_path}: not a readable safetensors file ({e})", weights_path
        ) from None
    model = _make_model(_recipe(name), _tokenizer())
    tied = _tied_aliases(model)
    want = {k: v for k, v in model.state_dict().items() if k not in tied}
    problems = [f"missing {k}" for k in want if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in want]
    problems += [
        f"{k}: {tuple(tensors[k].shape)} {tensors[k].dtype}, expected {tuple(v.shape)} {v.dtype}"
        for k, v in want.items()
        if k in tensors and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)
    ]
    if problems:
        raise ZooCacheError(
            f"{weights_path} does not fit {name}: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
            weights_path,
        )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert set(missing) == tied and not unexpected, (missing, unexpected)  # tied keys only
    return model


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad=False`` on every parameter and ``eval()`` mode; returns ``module``.

    A frozen module's parameters get no gradient, so no optimiser changes them (not even
    AdamW's weight decay: PyTorch optimisers skip parameters whose ``.grad`` is None).
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def load(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    frozen: bool = True,
    steps: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> nn.Module:
    """The pretrained component ``name``, on the CPU, built and cached on first use.

    ``shapes_clip`` is a :class:`~minivlm.models.clip.CLIP` (its image encoder is
    ``.image_encoder``, see :func:`load_image_encoder`); ``shapes_lm`` a
    :class:`~minivlm.nn.lm.DecoderLM`. ``frozen=True`` (default) applies :func:`freeze`;
    ``frozen=False`` returns it trainable, in train mode. ``rebuild=True`` trains it again
    even if cached. A cached copy that fails :func:`verify` is rebuilt, with a warning that
    says why. ``steps``/``seed`` pick a non-default build (a separate cache file).
    """
    recipe = _recipe(name)
    steps = _check_run(steps, seed, recipe)
    weights_path, json_path = paths(name, cache_dir, steps, seed)
    model: nn.Module | None = None
    if not rebuild and (weights_path.exists() or json_path.exists()):
        try:
            model = _load_verified(name, cache_dir, steps, seed)
        except ZooCacheError as e:
            warnings.warn(
                f"minivlm.zoo: cannot use the cached {name}: {e}. Rebuilding it "
                f"(about {BUILD_SECONDS.get(name, 0.0):.0f} s).",
                stacklevel=2,
            )
    if model is None:
        model = build(name, cache_dir, steps, seed, verbose=verbose)
    return freeze(model) if frozen else model.train()


def load_image_encoder(**kwargs: Any) -> nn.Module:
    """The image encoder of ``shapes_clip`` (a ViT; frozen by default): ``vit(pixel_values)``
    maps (B, 3, 64, 64) in [-1, 1] to all tokens after the final LayerNorm, (B, 1+16, 128):
    CLS first, then the 4x4 patches in raster order. Keyword arguments go to :func:`load`."""
    return load("shapes_clip", **kwargs).image_encoder


def info(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The JSON description of a cached, valid component (None if it is not cached)."""
    try:
        return verify(name, cache_dir, steps, seed)
    except ZooCacheError:
        return None


# --------------------------------------------------------------------------- command line


def _summary(record: dict[str, Any]) -> str:
    m = record.get("metrics", {})
    if "perplexity_all" in m:
        return f"held-out perplexity {m['perplexity_all']:.2f}"
    if "binding_region" in m:
        return "held-out binding " + ", ".join(
            f"{k} {m['binding_' + k]:.2f}" for k in ("region", "relation", "size")
        )
    if "mlm_colour" in m:
        return (
            f"held-out R@1 {m['r1']:.2f}, ITM true vs one colour changed "
            f"{m['itm_vs_wrong_colour']:.2f}, MLM colour {m['mlm_colour']:.2f}"
        )
    if "i2t_R@1" in m:
        return (
            f"held-out R@1 i2t {m['i2t_R@1']:.2f} t2i {m['t2i_R@1']:.2f}, zero-shot colour "
            f"{m['zero_shot_color']:.2f} shape {m['zero_shot_shape']:.2f}"
        )
    return ""


def _cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    print(f"zoo cache: {root}  (version {VERSION})")
    for name in list_components():
        weights_path, _ = paths(name, root)
        try:
            rec = verify(name, root)
            state = (
                f"cached, {rec['bytes'] / 1e6:.1f} MB, built in {rec['build_seconds']:.0f}"
                f" s; {_summary(rec)}"
            )
        except ZooCacheError as e:
            state = "not built" if not weights_path.exists() else f"invalid ({e})"
        print(f"  {name:12s} {state}")
        print(f"  {'':12s} {_recipe(name).description}")
    return 0


def _build_quietly(name: str, root: Path, steps: int | None, seed: int) -> str:
    """Worker of ``zoo build --jobs N``: build one component in its own process."""
    build(name, root, steps, seed)
    return name


def _report_built(name: str, root: Path, steps: int | None, seed: int) -> None:
    rec = verify(name, root, steps, seed)
    print(
        f"{name}: built in {rec['build_seconds']:.1f} s, {rec['bytes'] / 1e6:.1f} MB; "
        f"{_summary(rec)}",
        flush=True,
    )


def _cmd_build(args: argparse.Namespace) -> int:
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    names = args.name or list_components()
    todo = []
    for name in names:
        if not args.force:
            try:
                verify(name, root, args.steps, args.seed)
                print(
                    f"{name}: up to date ({paths(name, root, args.steps, args.seed)[0]}); "
                    "--force rebuilds it"
                )
                continue
            except ZooCacheError:
                pass
        todo.append(name)
    if args.jobs < 1:
        raise SystemExit(f"minivlm zoo build: --jobs must be at least 1, got {args.jobs}")
    if args.jobs == 1 or len(todo) < 2:
        for name in todo:
            build(name, root, args.steps, args.seed)
            _report_built(name, root, args.steps, args.seed)
        return 0
    # Components are independent and each build is single-threaded with its own seed, so
    # building them in separate processes gives the same bits, one core each.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(todo)), mp_context=ctx) as pool:
        futures = [
            pool.submit(_build_quietly, name, root, args.steps, args.seed) for name in todo
        ]
        for fut in as_completed(futures):
            _report_built(fut.result(), root, args.steps, args.seed)
    return 0


def add_cli(subparsers: Any) -> None:
    """Add ``minivlm zoo build [--name N] [--cache-dir D] [--force]`` and ``minivlm zoo list``."""
    p = subparsers.add_parser(
        "zoo", help="build (or show) the cached pretrained shapes-world components",
        description="Pretrained shapes-world components for BLIP-2 and LLaVA (minivlm.zoo), "
                    "trained on the CPU on first use and cached (default: $MINIVLM_CACHE, else "
                    "~/.cache/minivlm/zoo).")  # fmt: skip
    sub = p.add_subparsers(dest="zoo_command", required=True)
    b = sub.add_parser("build", help="build the components that are not cached yet")
    b.add_argument(
        "--name",
        action="append",
        choices=list_components(),
        help="component to build (repeat for several; default: all)",
    )
    b.add_argument("--cache-dir", default=None, help="cache folder (default: see above)")
    b.add_argument("--force", action="store_true", help="rebuild even if a valid copy exists")
    b.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: the recipe's; other values are cached separately)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    b.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="build this many components at once, one process (and one core) each; the "
        "weights are the same bits as a serial build (default 1)",
    )
    b.set_defaults(func=_cmd_build)
    ls = sub.add_parser("list", help="show the components and their cache state")
    ls.add_argument("--cache-dir", default=None, help="cache folder (default: see above)")
    ls.set_defaults(func=_cmd_list)
