"""CoCa: open_clip parity (embeddings and captioning logits, both [CLS] masks), the appended
[CLS] and padding, the two-part loss, decoding, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.models.coca import CoCa, cls_text_mask, coca_loss
from minivlm.utils import count_parameters

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ODD = [
    dict(embed_dim=32,
         multimodal_cfg=dict(context_length=12, vocab_size=50, width=32, heads=4, layers=2),
         text_cfg=dict(context_length=12, vocab_size=50, width=32, heads=2, layers=2,
                       embed_cls=True, output_tokens=True),
         vision_cfg=dict(image_size=24, layers=2, width=48, head_width=16, patch_size=8,
                         attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=5,
                         output_tokens=True)),
    dict(embed_dim=24, quick_gelu=True,
         multimodal_cfg=dict(context_length=10, vocab_size=37, width=24, heads=3, layers=1,
                             mlp_ratio=3),
         text_cfg=dict(context_length=10, vocab_size=37, width=24, heads=4, layers=3,
                       mlp_ratio=2, embed_cls=True, output_tokens=True),
         vision_cfg=dict(image_size=30, layers=1, width=20, head_width=10, patch_size=10,
                         mlp_ratio=3, attentional_pool=True, attn_pooler_heads=3,
                         attn_pooler_queries=3, output_tokens=True)),
]  # fmt: skip


@pytest.mark.parametrize("odd", [0, 1])
@pytest.mark.parametrize("correct", [False, True])
def test_from_open_clip_matches(odd, correct):
    torch.manual_seed(odd)
    ref = open_clip.coca_model.CoCa(**ODD[odd]).eval()
    # open_clip leaves the multimodal decoder's output projection as torch.empty (no init call)
    torch.nn.init.normal_(ref.text_decoder.text_projection, std=0.1)
    ref.text.correct_cls_mask = correct
    model = CoCa.from_open_clip(ref).eval()
    assert model.config.legacy_cls_mask is not correct
    g = torch.Generator().manual_seed(odd)
    S, V = ODD[odd]["vision_cfg"]["image_size"], ODD[odd]["text_cfg"]["vocab_size"]
    px = torch.randn(3, 3, S, S, generator=g)
    ids = torch.randint(1, V, (3, 9), generator=g)
    ids[1, 6:], ids[2, 3:] = 0, 0
    with torch.no_grad():
        r, o = ref(px, ids), model(px, ids)
    torch.testing.assert_close(o.image_embeds, r["image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o.text_embeds, r["text_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o.logits, r["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o.logit_scale.exp(), r["logit_scale"])
    assert count_parameters(model) == sum(p.numel() for p in ref.parameters())


def test_coca_vit_b32_counts_like_open_clip():
    with torch.device("meta"):
        ours = count_parameters(minivlm.create_model("coca_vit_b32"))
    assert ours == 253_560_065  # open_clip.create_model("coca_ViT-B-32"), counted once


def test_cls_sees_every_word_and_no_padding():
    ids = torch.tensor([[5, 9, 6, 0, 0]])
    m = cls_text_mask(ids)[0]  # (6, 6)
    assert m[-1].tolist() == [True, True, True, False, False, True]
    assert torch.equal(m[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    legacy = cls_text_mask(ids, legacy=True)[0]
    assert legacy[-1].tolist() == [True, True, True, True, False, False]  # open_clip's shift
    torch.manual_seed(0)
    model = minivlm.create_model("coca_tiny", vocab_size=81, image_size=32).eval()
    with torch.no_grad():  # what the pad embedding holds reaches the [CLS] only with the legacy mask
        a = model.encode_text(ids)
        model.config.legacy_cls_mask = True
        legacy_a = model.encode_text(ids)
        model.token_embedding.weight[0] += 1.0
        legacy_b = model.encode_text(ids)
        model.config.legacy_cls_mask = False
        b = model.encode_text(ids)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(legacy_a, legacy_b)


def test_loss_is_weighted_sum_and_ignores_padding():
    torch.manual_seed(0)
    model = minivlm.create_model("coca_tiny", vocab_size=81, image_size=32)
    px = torch.randn(3, 3, 32, 32)
    ids = torch.randint(8, 81, (3, 6))
    ids[:, 0], ids[0, 4:] = 5, 0
    out = model(px, ids, return_loss=True)
    sim = out.logit_scale.exp() * out.image_embeds @ out.text_embeds.T
    con = (F.cross_entropy(sim, torch.arange(3)) + F.cross_entropy(sim.T, torch.arange(3))) / 2
    keep = ids[:, 1:] != 0
    cap = F.cross_entropy(out.logits[keep], ids[:, 1:][keep])
    torch.testing.assert_close(out.loss_contrastive, con)
    torch.testing.assert_close(out.loss_caption, cap)
    torch.testing.assert_close(out.loss, 2 * cap + con)
    loss, _, _ = coca_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logits,
                           ids[:, 1:], caption_weight=0.0)  # fmt: skip
    torch.testing.assert_close(loss, con)
    out.loss.backward()
    assert model.pooler.query.grad.abs().sum() > 0 and model.cls_emb.grad.abs().sum() > 0


def test_generation_and_errors():
    torch.manual_seed(0)
    model = minivlm.create_model("coca_tiny", vocab_size=81, image_size=32).eval()
    px = torch.randn(2, 3, 32, 32)
    greedy = model.generate(px, "greedy", max_new_tokens=4)
    assert greedy.shape[0] == 2 and (greedy[:, 0] == 5).all()
    torch.testing.assert_close(model.generate(px, "beam", max_new_tokens=4, num_beams=1), greedy)
    with pytest.raises(ValueError, match="method"):
        model.generate(px, "topk")
    with pytest.raises(ValueError, match="as many images"):
        model(px, torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_queries"):
        minivlm.create_model("coca_tiny", n_queries=1)
