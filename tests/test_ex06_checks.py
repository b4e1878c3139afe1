"""Exercise 06 (BLIP and CoCa) checks: right solutions pass; deliberately broken ones fail with a
message that names the mistake; the instructor source passes every check and its generated
student version fails them as "not attempted"."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from exercise_helpers import assert_broken_fails_pointedly, assert_source_passes_student_fails

from minivlm.grading import check

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "06_blip_coca.ipynb"
EXERCISE = "06_blip_coca"
SEED = 1234


def test_source_passes_and_student_is_not_attempted():
    assert_source_passes_student_fails(SOURCE, EXERCISE, 4)


# ----------------------------------------------------------------------------- [DEC] inputs
def make_decoder(how="right"):
    def decoder_inputs(input_ids, attention_mask, dec_token_id):
        ids = input_ids.clone()
        if how != "no_dec":
            ids[:, 0] = dec_token_id
        B, T = ids.shape
        tri = torch.ones(T, T, dtype=torch.bool).tril(-1 if how == "strict" else 0)
        keys = attention_mask.bool()[:, None, :]
        if how == "bidirectional":
            mask = keys.expand(B, T, T)
        elif how == "query_pad":  # hides padding QUERIES instead of keys
            mask = tri & attention_mask.bool()[:, :, None]
        else:
            mask = tri & keys
        if how == "loop":  # a loop-based right answer
            mask = torch.zeros(B, T, T, dtype=torch.bool)
            for b in range(B):
                for t in range(T):
                    for s in range(t + 1):
                        mask[b, t, s] = bool(attention_mask[b, s])
        labels = ids.masked_fill(attention_mask == 0, -100)
        if how != "labels_dec":
            labels[:, 0] = -100
        if how == "shifted":  # position t labelled with the next token
            labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        return ids, mask, labels

    return decoder_inputs


def test_decoder_right_variants_pass():
    assert check("decoder_inputs", make_decoder()).passed
    assert check("decoder_inputs", make_decoder("loop")).passed


def test_decoder_broken_versions_fail():
    assert_broken_fails_pointedly("decoder_inputs", make_decoder("bidirectional"), ["causal"],
                                  SEED)  # fmt: skip
    assert_broken_fails_pointedly("decoder_inputs", make_decoder("strict"), ["diagonal"], SEED)
    assert_broken_fails_pointedly("decoder_inputs", make_decoder("no_dec"), ["[DEC]"], SEED)
    assert_broken_fails_pointedly("decoder_inputs", make_decoder("labels_dec"), ["-100"], SEED)
    assert_broken_fails_pointedly("decoder_inputs", make_decoder("query_pad"), [], SEED)
    assert_broken_fails_pointedly("decoder_inputs", make_decoder("shifted"),
                                  ["shifted one position", "labels[t] = ids[t]"], SEED)


# ----------------------------------------------------------------------------- [CLS] mask
def make_cls(how="right"):
    def cls_text_mask(input_ids, pad_id):
        B, T = input_ids.shape
        real = input_ids != pad_id
        ones = torch.ones(B, 1, dtype=torch.bool)
        keys = torch.cat([ones, real] if how == "legacy" else [real, ones], 1)
        tri = torch.ones(T + 1, T + 1, dtype=torch.bool).tril()
        if how == "no_padding":
            return tri.expand(B, T + 1, T + 1)
        if how == "cls_hidden":  # the [CLS] cannot see itself
            keys = torch.cat([real, ~ones], 1)
        if how == "pad_zero":  # assumes pad id 0
            keys = torch.cat([input_ids != 0, ones], 1)
        return tri & keys[:, None, :]

    return cls_text_mask


def test_cls_right_passes_and_broken_fail():
    assert check("cls_text_mask", make_cls()).passed
    assert_broken_fails_pointedly("cls_text_mask", make_cls("no_padding"), ["padding"], SEED)
    assert_broken_fails_pointedly("cls_text_mask", make_cls("legacy"), ["shifted"], SEED)
    assert_broken_fails_pointedly("cls_text_mask", make_cls("cls_hidden"), [], SEED)
    assert_broken_fails_pointedly("cls_text_mask", make_cls("pad_zero"), [], SEED)


# ----------------------------------------------------------------------------- CoCa's loss
def make_loss(how="right"):
    def coca_loss(image_embeds, text_embeds, logit_scale, logits, labels, pad_id,
                  caption_weight, contrastive_weight):  # fmt: skip
        scale = logit_scale if how == "no_exp" else logit_scale.exp()
        sim = scale * image_embeds @ text_embeds.T
        t = torch.arange(len(sim))
        con = (F.cross_entropy(sim, t) + F.cross_entropy(sim.T, t)) / 2
        if how == "one_way":
            con = F.cross_entropy(sim, t)
        if how == "columns_only":  # text->image alone
            con = F.cross_entropy(sim.T, t)
        if how == "halves_summed":
            con = 2 * con
        if how == "per_caption":  # a mean per caption, then over the captions
            lp = logits.log_softmax(-1)
            nll = -lp.gather(-1, labels[..., None])[..., 0]
            keep = labels != pad_id
            cap = torch.stack([nll[b][keep[b]].mean() for b in range(len(nll))]).mean()
        elif how == "caption_sum":
            cap = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=pad_id,
                                  reduction="sum")
        elif how == "mean_of_rows":  # a right answer written out by hand
            lp = logits.log_softmax(-1)
            keep = labels != pad_id
            nll = -lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            cap = nll[keep].mean()
        else:
            ignore = -100 if how == "padding" else pad_id
            cap = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore)
        if how == "padding_zero":  # ignores label 0, whatever pad_id is
            cap = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)
        return caption_weight * cap + contrastive_weight * con

    return coca_loss


def test_loss_right_passes_and_broken_fail():
    assert check("coca_loss", make_loss()).passed
    assert check("coca_loss", make_loss("mean_of_rows")).passed
    assert_broken_fails_pointedly("coca_loss", make_loss("padding"), ["ignore_index"], SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("no_exp"), ["LOG"], SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("one_way"), ["symmetric"], SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("padding_zero"), [], SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("columns_only"), ["text->image half"],
                                  SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("halves_summed"), ["added"], SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("caption_sum"), ["summed"], SEED)
    assert_broken_fails_pointedly("coca_loss", make_loss("per_caption"), ["per caption"], SEED)


# ----------------------------------------------------------------------------- nucleus
def make_nucleus(how="right"):
    def nucleus_filter(logits, top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        cum = probs.cumsum(-1)
        drop = cum > top_p if how == "exclusive" else cum - probs >= top_p
        if how == "loop":  # per row, a right answer
            out = logits.clone().reshape(-1, logits.shape[-1])
            for row in out:
                p = row.softmax(-1)
                idx = p.argsort(descending=True)
                mass = 0.0
                for k in idx.tolist():
                    if mass >= top_p:
                        row[k] = float("-inf")
                    mass += float(p[k])
            return out.reshape(logits.shape)
        if how == "batch_axis":  # probabilities over the rows (dim 0), not the vocabulary
            ps = torch.softmax(sorted_logits, dim=0)
            drop = ps.cumsum(-1) - ps >= top_p
            drop = drop.scatter(-1, order, drop)
            return logits.masked_fill(drop, float("-inf"))
        if how == "unsorted":
            return logits.masked_fill(drop, float("-inf"))
        drop = drop.scatter(-1, order, drop)
        return logits.masked_fill(drop, 0.0 if how == "zero" else float("-inf"))

    return nucleus_filter


def test_nucleus_right_passes_and_broken_fail():
    assert check("nucleus_filter", make_nucleus()).passed
    assert check("nucleus_filter", make_nucleus("loop")).passed
    assert_broken_fails_pointedly("nucleus_filter", make_nucleus("exclusive"), ["crosses"], SEED)
    assert_broken_fails_pointedly("nucleus_filter", make_nucleus("unsorted"), ["scatter"], SEED)
    assert_broken_fails_pointedly("nucleus_filter", make_nucleus("zero"), ["-inf"], SEED)
    assert_broken_fails_pointedly("nucleus_filter", make_nucleus("batch_axis"),
                                  ["batch axis", "dim=-1"], SEED)
