"""Checks of exercise 08 (VLMo / BEiT-3): the Multiway FFN's routing, stage-wise freezing, and
two-mode (dual, then fusion) ranking.

References: ``minivlm.nn.blocks.MultiwayBlock.ffn_step`` (VLMo §2.1; here without the experts'
LayerNorms, with GELU), ``minivlm.models.vlmo.stage_plan`` (§2.3) and the dual-then-fusion
re-ranking of VLMo §3.3. The "mistakes" are wrong versions whose output, when it equals the
learner's, names the mistake.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "08_vlmo"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- Multiway FFN
def _ffn_variant(how: str = "right"):
    def multiway_ffn(x, route, w1, b1, w2, b2):
        h = torch.zeros_like(x)
        r = route
        if how == "first_row":
            r = route[:1].expand_as(route)
        if how == "one_expert":
            r = torch.zeros_like(route)
        for e in range(w1.shape[0]):
            sel = r == e
            ee = (e + 1) % w1.shape[0] if how == "shifted" else e
            act = torch.tanh if how == "tanh" else F.gelu
            h[sel] = act(x[sel] @ w1[ee] + b1[ee]) @ w2[ee] + b2[ee]
        if how == "all_mixed":
            h = sum(F.gelu(x @ w1[e] + b1[e]) @ w2[e] + b2[e] for e in range(w1.shape[0]))
            h = h / w1.shape[0]
        return h if how == "no_residual" else x + h

    return multiway_ffn


@register_check(
    "multiway_ffn(x, route, w1, b1, w2, b2)", _ffn_variant(), points=3, grad=True,
    returns="(B, T, D)",
    mistakes=[
        ("every token went through expert 0; each token must use the expert route[b, t] names",
         _ffn_variant("one_expert")),
        ("the route of the first batch row was used for every row; the route is per (b, t)",
         _ffn_variant("first_row")),
        ("token with route e used expert e + 1: index the weights with the token's own id",
         _ffn_variant("shifted")),
        ("every token got the mean of all experts (a soft mixture); VLMo switches: exactly one "
         "expert per token", _ffn_variant("all_mixed")),
        ("the residual is missing: return x + FFN_e(x)", _ffn_variant("no_residual")),
        ("the activation is tanh; the experts are GELU MLPs (F.gelu)", _ffn_variant("tanh")),
    ],
)
def multiway_ffn_cases(gen: torch.Generator):
    def case(label: str, B: int, T: int, D: int, H: int, E: int, route=None, **kw) -> Case:
        x = torch.randn(B, T, D, generator=gen)
        if route is None:
            route = torch.randint(0, E, (B, T), generator=gen)
        return Case(label, x, route, torch.randn(E, D, H, generator=gen) / D**0.5,
                    torch.randn(E, H, generator=gen) * 0.1,
                    torch.randn(E, H, D, generator=gen) / H**0.5,
                    torch.randn(E, D, generator=gen) * 0.1, **kw)  # fmt: skip

    yield case("B=2, T=6, two experts (V, L)", 2, 6, 8, 16, 2)
    text_then_image = torch.tensor([[1, 1, 1, 0, 0, 0, 0]] * 3)
    yield case("a fused pair: text (L = 1) then image (V = 0) tokens", 3, 7, 8, 12, 2,
               route=text_then_image)  # fmt: skip
    rows = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
    yield case("three rows, each on its own expert (image only, text only, VL)", 3, 4, 6, 10, 3,
               route=rows, hint="the route differs between rows")  # fmt: skip
    yield case("three experts, random routes", 2, 9, 8, 16, 3)
    yield case("a batch of size 1", 1, 5, 4, 8, 2)


# ----------------------------------------------------------------------------- stage-wise freezing
def _ref_stage(names: list[str], stage: str) -> Tensor:
    from minivlm.models.vlmo import stage_plan

    plan = stage_plan(list(names), stage)
    return torch.tensor([plan[n] for n in names])


def _stage_variant(how: str):
    def stage_trainable(names, stage):
        out = _ref_stage(names, stage).clone()
        for k, n in enumerate(names):
            p = n.split(".")
            attn = p[0] == "blocks" and p[2] in ("attn", "norm1")
            expert = int(p[3]) if p[0] == "blocks" and p[2] in ("ffns", "norms") else None
            if how == "text_attention_free" and stage == "text" and attn:
                out[k] = True
            if how == "text_vffn" and stage == "text" and expert == 0:
                out[k] = True
            if how == "image_attention_frozen" and stage == "image" and attn:
                out[k] = False
            if how == "text_lffn_frozen" and stage == "text" and expert == 1:
                out[k] = False
            if how == "pair_frozen" and stage == "pair" and attn:
                out[k] = False
            if how == "text_final_norm" and stage == "text" and n.startswith("norm."):
                out[k] = True
        return out

    return stage_trainable


_MODEL_NAMES = [
    "text_embeddings.word_embeddings.weight", "text_embeddings.position_embeddings.weight",
    "text_embeddings.embed_norm.weight", "patch_embed.weight", "patch_embed.bias", "cls_token",
    "pos_embed", "mask_embed", "modality_embeddings.weight",
    *[f"blocks.{i}.{p}" for i in range(3) for p in (
        "norm1.weight", "norm1.bias", "attn.q_proj.weight", "attn.k_proj.weight",
        "attn.v_proj.weight", "attn.out_proj.weight", "attn.out_proj.bias",
        "norms.0.weight", "ffns.0.fc1.weight", "ffns.0.fc2.bias",
        "norms.1.weight", "ffns.1.fc1.weight", "ffns.1.fc2.bias")],
    "blocks.2.norms.2.weight", "blocks.2.ffns.2.fc1.weight", "blocks.2.ffns.2.fc2.bias",
    "norm.weight", "norm.bias", "text_proj.weight", "image_proj.weight", "logit_scale",
    "pooler.weight", "itm_head.weight", "mlm_head.dense.weight", "mlm_head.decoder.bias",
    "mim_head.weight", "mim_head.bias",
]  # fmt: skip


@register_check(
    "stage_trainable(names, stage)", _ref_stage, points=3,
    returns="(P,)",
    mistakes=[
        ("the attention trains in the text stage; VLMo freezes it there (it was learned on "
         "images)", _stage_variant("text_attention_free")),
        ("V-FFN trains in the text stage; only L-FFN (and the word embeddings, MLM head) train",
         _stage_variant("text_vffn")),
        ("the attention is frozen in the image stage; it is learned there, with V-FFN",
         _stage_variant("image_attention_frozen")),
        ("L-FFN is frozen in the text stage; it is what that stage trains",
         _stage_variant("text_lffn_frozen")),
        ("the final LayerNorm trains in the text stage; it belongs to the shared stack, frozen "
         "with the attention", _stage_variant("text_final_norm")),
        ("something is frozen in the pair stage; everything trains there",
         _stage_variant("pair_frozen")),
    ],
)
def stage_cases(gen: torch.Generator):
    order = torch.randperm(len(_MODEL_NAMES), generator=gen).tolist()
    shuffled = [_MODEL_NAMES[k] for k in order]
    yield Case("image stage", _MODEL_NAMES, "image")
    yield Case("text stage", _MODEL_NAMES, "text",
               hint="the text stage: word embeddings, L-FFN, MLM head, modality table")
    yield Case("pair stage", _MODEL_NAMES, "pair")
    yield Case("text stage, names in another order", shuffled, "text")
    yield Case("image stage, names in another order", shuffled, "image")


# ----------------------------------------------------------------------------- two-mode ranking
def _rank_variant(how: str = "right"):
    def two_mode_rank(text_emb, image_embs, itm_logits, k):
        t, v = text_emb, image_embs
        if how != "no_norm":
            t, v = F.normalize(t, dim=-1), F.normalize(v, dim=-1)
        dual = v @ t  # (N,)
        order = dual.argsort(descending=how != "ascending")
        if how == "rerank_all":
            k = len(order)
        top = order[:k]
        match = itm_logits.log_softmax(-1)[:, 0 if how == "column0" else 1]
        if how == "raw_logit":
            match = itm_logits[:, 1]
        if how == "keep_dual":
            return order
        best = top[match[top].argsort(descending=True)]
        return torch.cat([best, order[k:]])

    return two_mode_rank


@register_check(
    "two_mode_rank(text_emb, image_embs, itm_logits, k)", _rank_variant(), points=3,
    returns="(N,)",
    mistakes=[
        ("the dual score is a raw dot product; VLMo's is the cosine (normalise both embeddings)",
         _rank_variant("no_norm")),
        ("the dual ranking is ascending; the most similar image comes first",
         _rank_variant("ascending")),
        ("every image was re-ranked by the fusion score; only the dual mode's top k are "
         "(the rest keep their dual order)", _rank_variant("rerank_all")),
        ("the fusion score read column 0 of the ITM logits; column 1 is 'match'",
         _rank_variant("column0")),
        ("the fusion score ranks like the raw match logit: use log p(match) = "
         "log_softmax(logits, dim=-1)[:, 1], normalised over each image's 2 classes (a "
         "log_softmax over the images, dim=0, ranks exactly like the raw logit)",
         _rank_variant("raw_logit")),
        ("the top k were not re-ranked: sort them by the fusion score",
         _rank_variant("keep_dual")),
    ],
)
def rank_cases(gen: torch.Generator):
    def case(label: str, N: int, E: int, k: int, **kw) -> Case:
        t = torch.randn(E, generator=gen)
        v = torch.randn(N, E, generator=gen) * torch.rand(N, 1, generator=gen).mul(3).add(0.2)
        return Case(label, t, v, torch.randn(N, 2, generator=gen) * 2, k, **kw)

    yield case("8 images, re-rank the top 3", 8, 6, 3)
    yield case("12 images of very different norms, top 5", 12, 4, 5,
               hint="cosine, not dot product: a long embedding is not a better match")
    yield case("k = 1: only the best dual match is kept first", 6, 5, 1)
    yield case("k = N: the fusion score orders everything", 5, 3, 5)
    yield case("20 images, top 4", 20, 8, 4)
