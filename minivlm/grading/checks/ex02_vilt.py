"""Checks of exercise 02 (ViLT): the single-stream input and the image-text matching loss.

References: ``minivlm.models.vilt.build_single_stream_input`` (Kim et al. 2021, §3.1:
``z0 = [t + t^type; v + v^type]``) and the ITM objective of §3.2 (a 2-way cross-entropy on
the pooled token, label 1 for a matching pair, 0 for a sampled negative). The "mistakes"
are wrong versions whose output, when it equals the learner's, names the mistake.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "02_vilt_fusion"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- single stream
def _ref_single_stream(text_embeds: Tensor, image_embeds: Tensor, text_mask: Tensor,
                       image_mask: Tensor, type_embedding: nn.Embedding) -> tuple[Tensor, Tensor]:
    from minivlm.models.vilt import build_single_stream_input

    return build_single_stream_input(text_embeds, image_embeds, text_mask, image_mask,
                                     type_embedding)


def _types(type_embedding: nn.Embedding, n: int, row: int, like: Tensor) -> Tensor:
    ids = torch.full((like.shape[0], n), row, dtype=torch.long)
    return type_embedding(ids).to(like.dtype)  # (B, n, D)


def _stream_variant(*, image_first: bool = False, text_type: int | None = 0, image_type: int = 1,
                    add_types: bool = True, mask_order: str = "text_first",
                    ones_mask: bool = False):
    """A wrong single-stream input: the recipe with one step changed."""

    def build_single_stream_input(text_embeds, image_embeds, text_mask, image_mask,
                                  type_embedding):
        T, N1 = text_embeds.shape[1], image_embeds.shape[1]
        text, image = text_embeds, image_embeds
        if add_types:
            if text_type is not None:
                text = text + _types(type_embedding, T, text_type, text_embeds)
            image = image + _types(type_embedding, N1, image_type, image_embeds)
        x = torch.cat([image, text] if image_first else [text, image], dim=1)
        im = image_mask.to(text_mask.dtype)
        if mask_order == "same_as_x":
            first, second = (im, text_mask) if image_first else (text_mask, im)
        elif mask_order == "image_first":
            first, second = im, text_mask
        else:
            first, second = text_mask, im
        mask = torch.cat([first, second], dim=1)
        if ones_mask:
            mask = torch.ones_like(mask)
        return x, mask

    return build_single_stream_input


def _explain_stream(case: Case, got: list, expected: list) -> str | None:
    x, mask = got
    if torch.allclose(x.double(), expected[0].double(), rtol=1e-4, atol=1e-5):
        if mask.dtype == expected[1].dtype and not torch.equal(mask, expected[1]):
            return ("the sequence x is right but the mask is not: it must be "
                    "torch.cat([text_mask, image_mask], dim=1), in the same order as x, "
                    "with 1 for real tokens and 0 for padding")
    return None


@register_check(
    "build_single_stream_input(text_embeds, image_embeds, text_mask, image_mask, type_embedding)",
    _ref_single_stream, points=3, grad=True,
    returns={"x": "(B, T+1+N, D)", "mask": "(B, T+1+N)"},
    mistakes=[
        ("the mask is concatenated in the wrong order: x is [text; image], so the mask must "
         "be torch.cat([text_mask, image_mask], dim=1)", _stream_variant(mask_order="image_first")),
        ("the mask is all ones: padded text tokens (text_mask 0) and padded patches "
         "(image_mask 0) must stay 0 so that attention ignores them",
         _stream_variant(ones_mask=True)),
        ("the image comes first: ViLT puts the text first, [text; image] along dim=1 (and "
         "the mask in the same order), so position 0 is the text [CLS] token that the pooler "
         "and the ITM head read", _stream_variant(image_first=True, mask_order="same_as_x")),
        ("the modality-type ids are swapped: text tokens get type_embedding row 0, image "
         "tokens (the image CLS included) row 1", _stream_variant(text_type=1, image_type=0)),
        ("no modality-type embedding was added: add type_embedding(0) to every text token and "
         "type_embedding(1) to every image token", _stream_variant(add_types=False)),
        ("only the image tokens got a modality-type embedding: the text tokens need "
         "type_embedding row 0 too", _stream_variant(text_type=None)),
    ],
    explain=_explain_stream,
)
def single_stream_cases(gen: torch.Generator):
    def case(label: str, B: int, T: int, N1: int, D: int, *, dtype=torch.float32,
             pad_text: bool = True, pad_image: bool = False, hint: str | None = None) -> Case:
        text = torch.randn(B, T, D, generator=gen, dtype=dtype)
        image = torch.randn(B, N1, D, generator=gen, dtype=dtype)
        tmask = torch.ones(B, T, dtype=torch.long)
        if pad_text and T > 1:  # each caption has its own length; at least one token is real
            lengths = torch.randint(1, T + 1, (B,), generator=gen)
            lengths[0] = max(1, T - 2)
            tmask = (torch.arange(T)[None] < lengths[:, None]).long()
        imask = torch.ones(B, N1, dtype=torch.long)
        if pad_image and N1 > 2:  # the last patches of image 0 are padding
            imask[0, -2:] = 0
        emb = nn.Embedding(2, D)
        with torch.no_grad():
            emb.weight.copy_(torch.randn(2, D, generator=gen) * 2.0)
        emb = emb.to(dtype)
        return Case(label, text, image, tmask, imask, emb, hint=hint)

    yield case("3 captions of up to 5 tokens, 1+4 image tokens, D=8, padded text", 3, 5, 5, 8)
    yield case("a batch of size 1", 1, 4, 5, 6,
               hint="with B = 1, .squeeze() also removes the batch axis; keep (B, L, D)")
    yield case("odd lengths: T=7 text tokens, 1+9 image tokens, D=5, padded patches",
               2, 7, 10, 5, pad_image=True)
    yield case("a single text token (T=1)", 2, 1, 5, 4, pad_text=False,
               hint="T = 1 here: build the type ids with the real T, not a fixed length")
    yield case("more text than image tokens (T=9, 1+1 image tokens)", 2, 9, 2, 4)
    yield case("float64 embeddings", 2, 6, 5, 8, dtype=torch.float64, pad_image=True,
               hint="keep the input's dtype: don't convert to float32")


# ----------------------------------------------------------------------------- ITM loss
def _ref_itm_loss(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    logits = torch.cat([pos_logits, neg_logits], dim=0)  # (B+M, 2)
    labels = torch.cat([
        torch.ones(pos_logits.shape[0], dtype=torch.long),
        torch.zeros(neg_logits.shape[0], dtype=torch.long),
    ]).to(logits.device)  # (B+M,) 1 = match
    return F.cross_entropy(logits, labels)


def _itm_variant(*, flip: bool = False, softmax_dim: int = 1, reduce: str = "mean_rows",
                 sign: float = 1.0, logits_as_probs: bool = False):
    """A wrong ITM loss."""

    def itm_loss(pos_logits, neg_logits):
        pos_label, neg_label = (0, 1) if flip else (1, 0)
        if logits_as_probs:  # NLL on raw logits, no log-softmax
            lp_pos, lp_neg = pos_logits, neg_logits
        else:
            logp = torch.cat([pos_logits, neg_logits]).log_softmax(dim=softmax_dim)
            lp_pos, lp_neg = logp[: pos_logits.shape[0]], logp[pos_logits.shape[0]:]
        nll_pos = -lp_pos[:, pos_label]  # (B,)
        nll_neg = -lp_neg[:, neg_label]  # (M,)
        if reduce == "mean_rows":
            loss = torch.cat([nll_pos, nll_neg]).mean()
        elif reduce == "mean_of_means":
            loss = (nll_pos.mean() + nll_neg.mean()) / 2
        elif reduce == "sum_of_means":
            loss = nll_pos.mean() + nll_neg.mean()
        elif reduce == "mean_all":  # mean over rows *and* the 2 classes of a one-hot product
            onehot_pos = F.one_hot(torch.full_like(nll_pos, pos_label, dtype=torch.long), 2)
            onehot_neg = F.one_hot(torch.full_like(nll_neg, neg_label, dtype=torch.long), 2)
            lp = torch.cat([lp_pos * onehot_pos, lp_neg * onehot_neg])
            loss = -lp.mean()
        else:  # "sum"
            loss = torch.cat([nll_pos, nll_neg]).sum()
        return sign * loss

    return itm_loss


@register_check(
    "itm_loss(pos_logits, neg_logits)", _ref_itm_loss, points=2, grad=True,
    returns="()",
    mistakes=[
        ("the labels are flipped: a matching pair (pos_logits) has label 1, a negative label 0 "
         "(column 1 of the logits is 'match')", _itm_variant(flip=True)),
        ("the softmax runs over the batch (dim=0): ITM is a 2-way classification of each "
         "pair, so normalise over the 2 classes, dim=1 (F.cross_entropy does)",
         _itm_variant(softmax_dim=0)),
        ("you averaged over the 2 classes as well as over the rows (a mean of one-hot times "
         "log-probabilities): that halves the loss; average the per-pair losses only",
         _itm_variant(reduce="mean_all")),
        ("you averaged the positives' mean and the negatives' mean: with M != B negatives "
         "that weighs pairs unequally; average over all B+M pairs",
         _itm_variant(reduce="mean_of_means")),
        ("you added the positives' mean and the negatives' mean: average over all B+M pairs "
         "instead", _itm_variant(reduce="sum_of_means")),
        ("you summed the losses of the pairs: take their mean", _itm_variant(reduce="sum")),
        ("the sign is flipped: the loss is the negative log-probability of the right label",
         _itm_variant(sign=-1.0)),
        ("you used the logits as log-probabilities: apply log_softmax over the 2 classes "
         "first (or use F.cross_entropy)", _itm_variant(logits_as_probs=True)),
    ],
)
def itm_loss_cases(gen: torch.Generator):
    def logits(n: int, dtype=torch.float32, scale: float = 2.0) -> Tensor:
        return torch.randn(n, 2, generator=gen, dtype=dtype) * scale

    yield Case("4 positives, 4 negatives", logits(4), logits(4))
    yield Case("3 positives, 6 negatives (hard and in-batch negatives: M = 2B)",
               logits(3), logits(6),
               hint="there are more negatives than positives here: average over all B+M pairs")
    yield Case("a batch of size 1 (1 positive, 1 negative)", logits(1), logits(1),
               hint="with B = 1, .squeeze() turns (1, 2) into (2,); keep the (B, 2) shape")
    yield Case("5 positives, 2 negatives", logits(5), logits(2))
    yield Case("confident logits (|logit| up to ~40)", logits(4, scale=20.0),
               logits(4, scale=20.0),
               hint="large logits: compute log-probabilities with log_softmax (or "
                    "F.cross_entropy), not log(softmax(...)), which underflows to log(0)")
    yield Case("float64 logits", logits(3, torch.float64), logits(4, torch.float64),
               hint="keep the input's dtype: don't convert to float32")
