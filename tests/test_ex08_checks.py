"""Exercise 08 (VLMo) checks: right solutions pass; deliberately broken ones fail with a message
that names the mistake; the instructor source passes every check and its generated student
version fails them as "not attempted"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import assert_broken_fails_pointedly, assert_source_passes_student_fails

from minivlm.grading import check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "08_vlmo.ipynb"
EXERCISE = "08_vlmo"
SEED = 808


def _differs(summary: str) -> str:
    """Integer and bool outputs: "N of M entries differ", N varies with the inputs."""
    return "entries differ" if "entries differ" in summary else summary


# ----------------------------------------------------------------------------- Multiway FFN
def make_ffn(how="right"):
    def multiway_ffn(x, route, w1, b1, w2, b2):
        if how == "gather":  # another right version: gather each token's expert weights
            W1, B1, W2, B2 = w1[route], b1[route], w2[route], b2[route]  # (B, T, ...)
            h = F.gelu(torch.einsum("btd,btdh->bth", x, W1) + B1)
            return x + torch.einsum("bth,bthd->btd", h, W2) + B2
        r = {"one_expert": torch.zeros_like(route), "first_row": route[:1].expand_as(route),
             "transposed": route.flip(1)}.get(how, route)
        h = torch.zeros_like(x)
        for e in range(w1.shape[0]):
            sel = r == e
            ee = (e + 1) % w1.shape[0] if how == "shifted" else e
            act = torch.relu if how == "relu" else F.gelu
            h[sel] = act(x[sel] @ w1[ee] + b1[ee]) @ w2[ee] + b2[ee]
        if how == "detach":
            h = h.detach()
        return h if how == "no_residual" else x + h

    return multiway_ffn


def test_ffn_right_version_passes():  # the loop version runs in the source-notebook test
    assert check("multiway_ffn", make_ffn("gather"), seed=SEED).passed


@pytest.mark.parametrize("how, words", [
    ("one_expert", ["expert 0"]),
    ("first_row", ["first batch row"]),
    ("no_residual", ["residual"]),
    ("transposed", ["differ"]),
    ("detach", ["grad"]),
])
def test_ffn_broken_versions_fail(how, words):
    assert_broken_fails_pointedly("multiway_ffn", make_ffn(how), words, SEED)


# ----------------------------------------------------------------------------- stage freezing
def make_stage(how="right"):
    def stage_trainable(names, stage):
        out = []
        for name in names:
            p = name.split(".")
            block = p[0] == "blocks"
            expert = int(p[3]) if block and p[2] in ("ffns", "norms") else None
            attn = block and expert is None
            final = name.startswith("norm.")
            img = name.startswith(("patch_embed", "cls_token", "pos_embed", "mask_embed",
                                   "mim_head"))  # fmt: skip
            txt = name.startswith(("text_embeddings", "mlm_head"))
            mod = name.startswith("modality")
            if stage == "pair":
                on = how != "pair_attention_frozen" or not attn
            elif stage == "image":
                on = img or expert == 0 or attn or final or mod
                if how == "image_vl":
                    on = on or expert == 2
            else:
                on = txt or expert == 1 or mod
                if how == "text_attention":
                    on = on or attn
                if how == "text_all_experts":
                    on = on or expert is not None
                if how == "text_final_norm":
                    on = on or final
                if how == "text_modality_frozen" and mod:
                    on = False
            out.append(on)
        return torch.tensor(out)

    return stage_trainable


def test_stage_right_version_passes():
    assert check("stage_trainable", make_stage(), seed=SEED).passed


@pytest.mark.parametrize("how, words", [
    ("text_attention", ["attention trains in the text stage"]),
    ("text_all_experts", ["differ"]),
    ("text_final_norm", ["final LayerNorm"]),
    ("pair_attention_frozen", ["pair stage"]),
])
def test_stage_broken_versions_fail(how, words):
    assert_broken_fails_pointedly("stage_trainable", make_stage(how), words, SEED, _differs)


# ----------------------------------------------------------------------------- two-mode ranking
def make_rank(how="right"):
    def two_mode_rank(text_emb, image_embs, itm_logits, k):
        if how == "cosine_fn":  # another right version
            dual = F.cosine_similarity(image_embs, text_emb[None], dim=-1)
        elif how == "dot":
            dual = image_embs @ text_emb
        else:
            dual = F.normalize(image_embs, dim=-1) @ F.normalize(text_emb, dim=-1)
        order = dual.argsort(descending=how != "ascending")
        kk = len(order) if how == "all" else k + 1 if how == "off_by_one" else k
        p = itm_logits.softmax(-1)[:, 1] if how == "prob" else itm_logits.log_softmax(-1)[:, 1]
        if how == "col0":
            p = itm_logits.log_softmax(-1)[:, 0]
        if how == "images_axis":  # normalised over the images, not each image's 2 classes
            p = itm_logits.log_softmax(0)[:, 1]
        top = order[:kk]
        return torch.cat([top[p[top].argsort(descending=True)], order[kk:]])

    return two_mode_rank


@pytest.mark.parametrize("how", ["cosine_fn", "prob"])
def test_rank_right_versions_pass(how):  # p(match) orders like log p(match)
    assert check("two_mode_rank", make_rank(how), seed=SEED).passed


@pytest.mark.parametrize("how, words", [
    ("dot", ["cosine"]),
    ("all", ["only the dual mode's top k"]),
    ("col0", ["column 1"]),
    ("images_axis", ["dim=0", "each image's 2 classes"]),
    ("off_by_one", ["differ"]),
])
def test_rank_broken_versions_fail(how, words):
    assert_broken_fails_pointedly("two_mode_rank", make_rank(how), words, SEED, _differs)


def test_source_passes_and_student_is_not_attempted():
    code = assert_source_passes_student_fails(SOURCE, EXERCISE, 3, timeout=20.0)
    assert "raise NotImplementedError" in code
