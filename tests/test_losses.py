"""minivlm.losses gathers the losses that live in the model files (the same objects)."""

import math

import torch
import torch.nn.functional as F

import minivlm.losses as L
from minivlm.models import albef, clip, vilt
from minivlm.nn import lm


def test_losses_are_the_model_files_functions_not_copies():
    assert L.clip_loss is clip.clip_loss and L.contrastive_logits is clip.contrastive_logits
    assert L.soft_cross_entropy is albef.soft_cross_entropy
    assert L.distill_targets is albef.distill_targets
    assert L.itm_loss_with_negatives is vilt.itm_loss_with_negatives
    assert L.lm_loss is lm.lm_loss
    assert sorted(L.__all__) == L.__all__ and all(hasattr(L, n) for n in L.__all__)


def test_clip_loss_is_low_for_matched_pairs_and_chance_for_uninformative_ones():
    e = F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    matched = L.clip_loss(L.contrastive_logits(e, e, torch.tensor(math.log(100.0))))
    flat = L.clip_loss(L.contrastive_logits(e, e, torch.tensor(-30.0)))  # scale ~ 0
    assert matched < 0.1
    assert abs(float(flat) - math.log(8)) < 1e-4
