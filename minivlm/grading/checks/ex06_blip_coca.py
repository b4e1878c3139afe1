"""Checks of exercise 06 (BLIP and CoCa): the decoder's inputs with [DEC] and its causal mask,
CoCa's mask for the appended [CLS] on padded captions, CoCa's two-part loss, nucleus filtering.

References: ``minivlm.models.blip.decoder_inputs`` (Li et al. 2022, BLIP §3.2: [DEC] replaces
the first token, causal AND padding mask, labels -100 at padding and at [DEC]);
``minivlm.models.coca.cls_text_mask`` and ``coca_loss`` (Yu et al. 2022, CoCa §3.2: the [CLS]
appended after the words sees every real word and itself, no padding; loss = λ_cap · caption CE
over real tokens + λ_con · symmetric contrastive CE); ``minivlm.nn.decoding.top_p_filter`` (Holtzman
et al. 2020, §3.1: keep the smallest set of most likely tokens whose mass reaches p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "06_blip_coca"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- [DEC] and mask
def _ref_decoder(input_ids: Tensor, attention_mask: Tensor, dec_token_id: int):
    from minivlm.models.blip import decoder_inputs

    return decoder_inputs(input_ids, attention_mask, dec_token_id)


def _decoder_variant(how: str):
    def decoder_inputs(input_ids, attention_mask, dec_token_id):
        ids = input_ids.clone()
        if how != "no_dec":
            ids[:, 0] = dec_token_id
        B, T = ids.shape
        tri = torch.ones(T, T, dtype=torch.bool).tril(-1 if how == "strict" else 0)
        keys = attention_mask.bool()[:, None, :]  # (B, 1, T)
        if how == "bidirectional":
            mask = keys.expand(B, T, T)
        elif how == "no_padding":
            mask = tri.expand(B, T, T)
        else:
            mask = tri & keys
        labels = ids.clone() if how == "labels_pad" else ids.masked_fill(attention_mask == 0, -100)
        if how != "labels_dec":
            labels[:, 0] = -100
        if how == "shifted":  # position t labelled with token t+1
            labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        return ids, mask, labels

    return decoder_inputs


@register_check(
    "decoder_inputs(input_ids, attention_mask, dec_token_id)", _ref_decoder, points=2,
    returns={"ids": "(B, T)", "mask": "(B, T, T)", "labels": "(B, T)"},
    mistakes=[
        ("the first token must become [DEC] (dec_token_id): the decoder is told which job it "
         "does by its first token (BLIP §3.1)", _decoder_variant("no_dec")),
        ("the mask is not causal: the decoder may only look at earlier tokens and itself",
         _decoder_variant("bidirectional")),
        ("the diagonal is missing: a token may attend to itself (tril(0), not tril(-1))",
         _decoder_variant("strict")),
        ("padding keys are visible: AND the causal mask with attention_mask",
         _decoder_variant("no_padding")),
        ("padding positions need label -100, so the loss skips them",
         _decoder_variant("labels_pad")),
        ("nothing predicts [DEC]: its label must be -100 too", _decoder_variant("labels_dec")),
        ("the labels are shifted one position to the left: keep them aligned with the ids "
         "(labels[t] = ids[t]); the decoder's loss compares logits[:, :-1] with labels[:, 1:] "
         "itself", _decoder_variant("shifted")),
    ],
)
def decoder_cases(gen: torch.Generator):
    def case(label: str, lengths: list[int], T: int, dec: int = 5, hint: str | None = None):
        ids = torch.randint(8, 60, (len(lengths), T), generator=gen)
        ids[:, 0] = 2
        mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
        return Case(label, ids * mask, mask, dec, hint=hint)

    yield case("two captions, one padded", [6, 4], 6)
    yield case("batch of one, no padding", [5], 5)
    yield case("three captions of lengths 7, 3, 5", [7, 3, 5], 7, dec=30)
    yield case("a caption of one token ([DEC] alone)", [1, 4], 4,
               hint="a row of length 1 keeps only [DEC], which sees itself")


# ----------------------------------------------------------------------------- CoCa's [CLS] mask
def _ref_cls(input_ids: Tensor, pad_id: int) -> Tensor:
    from minivlm.models.coca import cls_text_mask

    return cls_text_mask(input_ids, pad_id)


def _cls_variant(how: str):
    def cls_text_mask(input_ids, pad_id):
        B, T = input_ids.shape
        real = input_ids != pad_id
        ones = real.new_ones(B, 1)
        keys = torch.cat([ones, real] if how == "legacy" else [real, ones], 1)
        tri = torch.ones(T + 1, T + 1, dtype=torch.bool).tril()
        if how == "no_padding":
            return tri.expand(B, T + 1, T + 1)
        if how == "bidirectional":
            return keys[:, None, :].expand(B, T + 1, T + 1)
        return tri & keys[:, None, :]

    return cls_text_mask


@register_check(
    "cls_text_mask(input_ids, pad_id)", _ref_cls, points=2,
    returns="(B, T+1, T+1)",
    mistakes=[
        ("padding is visible: the [CLS] appended after the words would read the padding "
         "(key mask = tokens != pad_id, and True for the [CLS] itself)",
         _cls_variant("no_padding")),
        ("the key mask is shifted by one: [CLS] sits at the END, so its key entry is the last "
         "(this is open_clip's original, shifted mask)", _cls_variant("legacy")),
        ("the mask must stay causal: the unimodal decoder is a decoder",
         _cls_variant("bidirectional")),
    ],
)
def cls_cases(gen: torch.Generator):
    def case(label: str, lengths: list[int], T: int, pad: int = 0):
        ids = torch.randint(8, 60, (len(lengths), T), generator=gen)
        for b, n in enumerate(lengths):
            ids[b, n:] = pad
        return Case(label, ids, pad)

    yield case("two captions, one padded", [5, 3], 5)
    yield case("no padding", [4], 4)
    yield case("pad id 1, three captions", [6, 2, 4], 6, pad=1)


# ----------------------------------------------------------------------------- CoCa's loss
def _ref_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor, logits: Tensor,
              labels: Tensor, pad_id: int, caption_weight: float,
              contrastive_weight: float) -> Tensor:  # fmt: skip
    from minivlm.models.coca import coca_loss

    return coca_loss(image_embeds, text_embeds, logit_scale, logits, labels, pad_id,
                     caption_weight, contrastive_weight)[0]  # fmt: skip


def _loss_variant(how: str):
    def coca_loss(image_embeds, text_embeds, logit_scale, logits, labels, pad_id,
                  caption_weight, contrastive_weight):  # fmt: skip
        scale = logit_scale if how == "no_exp" else logit_scale.exp()
        sim = scale * image_embeds @ text_embeds.T
        t = torch.arange(len(sim))
        con = F.cross_entropy(sim, t)
        if how == "other_way":
            con = F.cross_entropy(sim.T, t)
        elif how == "halves_summed":
            con = con + F.cross_entropy(sim.T, t)
        elif how != "one_way":
            con = (con + F.cross_entropy(sim.T, t)) / 2
        ignore = -100 if how == "padding" else pad_id
        cap = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore,
                              reduction="sum" if how == "caption_sum" else "mean")
        if how == "per_caption":  # each caption's mean over its tokens, then the captions'
            per = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=pad_id,
                                  reduction="none")  # (B, T), 0 at padding
            cap = (per.sum(1) / (labels != pad_id).sum(1).clamp_min(1)).mean()
        if how == "swapped":
            return contrastive_weight * cap + caption_weight * con
        return caption_weight * cap + contrastive_weight * con

    return coca_loss


@register_check(
    "coca_loss(image_embeds, text_embeds, logit_scale, logits, labels, pad_id, caption_weight, "
    "contrastive_weight)",
    _ref_loss, points=3, grad=True,
    returns="()",
    mistakes=[
        ("padded positions are counted in the captioning loss: pass ignore_index=pad_id",
         _loss_variant("padding")),
        ("logit_scale is the LOG of the inverse temperature: multiply by logit_scale.exp()",
         _loss_variant("no_exp")),
        ("the contrastive loss is symmetric: average image->text and text->image",
         _loss_variant("one_way")),
        ("only the text->image half (the cross-entropy of sim.T): the contrastive loss "
         "averages image->text and text->image", _loss_variant("other_way")),
        ("the two contrastive halves are added: the loss is their mean, (i2t + t2i) / 2",
         _loss_variant("halves_summed")),
        ("the captioning cross-entropy is summed over the tokens: take its mean over the "
         "non-pad tokens (F.cross_entropy's default reduction)", _loss_variant("caption_sum")),
        ("the captioning loss is averaged per caption, then over the captions: CoCa takes one "
         "mean over every non-pad token of the batch, so captions of different lengths weigh "
         "by their length", _loss_variant("per_caption")),
        ("the weights are swapped: caption_weight multiplies the captioning loss",
         _loss_variant("swapped")),
    ],
)
def loss_cases(gen: torch.Generator):
    def case(label: str, B: int, T: int, V: int, pad_from: list[int], pad: int = 0,
             weights: tuple[float, float] = (2.0, 1.0)):
        img = F.normalize(torch.randn(B, 8, generator=gen), dim=-1)
        txt = F.normalize(torch.randn(B, 8, generator=gen), dim=-1)
        labels = torch.randint(pad + 1, V, (B, T), generator=gen)
        for b, n in enumerate(pad_from):
            labels[b, n:] = pad
        logits = torch.randn(B, T, V, generator=gen)
        return Case(label, img, txt, torch.tensor(2.3), logits, labels, pad, *weights)

    yield case("batch of 3, padded captions", 3, 5, 11, [5, 2, 3])
    yield case("λ_cap = 1, λ_con = 0.5", 2, 4, 7, [4, 1], weights=(1.0, 0.5))
    yield case("no padding, batch of 4", 4, 3, 9, [3, 3, 3, 3])
    yield case("pad id 3", 2, 6, 10, [2, 5], pad=3)


# ----------------------------------------------------------------------------- nucleus
def _ref_nucleus(logits: Tensor, top_p: float) -> Tensor:
    from minivlm.nn.decoding import top_p_filter

    return top_p_filter(logits, top_p)


def _nucleus_variant(how: str):
    def nucleus_filter(logits, top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        if how == "batch_axis":  # probabilities normalised over the rows, not the vocabulary
            probs = sorted_logits.softmax(0)
        cum = probs.cumsum(-1)
        if how == "exclusive":  # drops the token that crosses p
            drop = cum > top_p
        elif how == "ascending":
            sorted_logits, order = logits.sort(dim=-1)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs >= top_p
        else:
            drop = cum - probs >= top_p
        drop = drop.scatter(-1, order, drop) if how != "unsorted" else drop
        return logits.masked_fill(drop, float("-inf") if how != "zero" else 0.0)

    return nucleus_filter


@register_check(
    "nucleus_filter(logits, top_p)", _ref_nucleus, points=2,
    returns="(..., V)",
    library=("minivlm.nn.decoding:top_p_filter",),
    mistakes=[
        ("the token whose probability crosses top_p must be kept (keep a token when the mass "
         "of the tokens ranked above it is still below p)", _nucleus_variant("exclusive")),
        ("sort in descending order: the nucleus holds the MOST likely tokens",
         _nucleus_variant("ascending")),
        ("the softmax runs over the batch axis (dim=0): each row's probabilities are over the "
         "vocabulary, softmax(dim=-1)", _nucleus_variant("batch_axis")),
        ("the drop mask is in sorted order: scatter it back to vocabulary order",
         _nucleus_variant("unsorted")),
        ("removed tokens must get -inf (probability 0), not logit 0", _nucleus_variant("zero")),
    ],
)
def nucleus_cases(gen: torch.Generator):
    yield Case("one row, p = 0.9", torch.randn(1, 10, generator=gen) * 2, 0.9)
    yield Case("a batch of 3, p = 0.5", torch.randn(3, 12, generator=gen) * 3, 0.5)
    yield Case("p = 1 keeps everything", torch.randn(2, 6, generator=gen), 1.0)
    yield Case("a peaked row: the top token alone passes p", torch.tensor([[8.0, 0.0, 0.0, -1.0]]),
               0.6, hint="the most likely token is always kept")
    yield Case("3-D logits (B, T, V)", torch.randn(2, 3, 7, generator=gen) * 2, 0.8)
