"""Lecture 11's models: ResNet/plain CNN, RoI-Align, LXMERT parity, UNITER's and Pixel-BERT's
losses and sampling."""

from __future__ import annotations

import pytest
import torch

import minivlm
from minivlm.models.lxmert import Lxmert
from minivlm.models.pixel_bert import sample_pixels
from minivlm.models.uniter import mrc_kl_loss, mrc_loss, mrfr_loss
from minivlm.nn.convnet import box_position_features, roi_align

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, intermediate_size=48,
            l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=20, visual_pos_dim=4,
            max_position_embeddings=16)  # fmt: skip
HF_CONFIGS = {
    "base_shape": BASE,
    "odd": dict(BASE, hidden_size=36, num_attention_heads=3, intermediate_size=29, l_layers=1,
                x_layers=3, r_layers=2, visual_feat_dim=13, visual_pos_dim=7,
                hidden_act="gelu_new", type_vocab_size=3),
}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_lxmert_from_hf_matches(name):
    torch.manual_seed(0)
    ref = transformers.LxmertModel(transformers.LxmertConfig(**HF_CONFIGS[name])).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = Lxmert.from_hf(ref)
    c = ref.config
    ids = torch.randint(1, c.vocab_size, (3, 7))
    am = torch.ones(3, 7, dtype=torch.long)
    am[1, 5:] = 0
    feats, pos = torch.randn(3, 5, c.visual_feat_dim), torch.rand(3, 5, c.visual_pos_dim)
    vm = torch.ones(3, 5, dtype=torch.long)
    vm[0, 3:] = 0
    types = torch.randint(0, c.type_vocab_size, (3, 7))
    with torch.no_grad():
        r = ref(input_ids=ids, visual_feats=feats, visual_pos=pos, attention_mask=am,
                visual_attention_mask=vm, token_type_ids=types)  # fmt: skip
        o = model(ids, feats, pos, am, vm, token_type_ids=types)
    torch.testing.assert_close(o.language_output[am.bool()], r.language_output[am.bool()],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(o.vision_output[vm.bool()], r.vision_output[vm.bool()],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(o.pooled_output, r.pooled_output, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_lxmert_base_counts_like_hf_and_rejects_bad_boxes():
    with torch.device("meta"):
        n = sum(p.numel() for p in minivlm.create_model("lxmert_base").parameters())
    assert n == 207_936_768
    m = minivlm.create_model("lxmert_tiny")
    with pytest.raises(ValueError, match="visual_pos"):
        m(torch.ones(1, 3, dtype=torch.long), torch.randn(1, 2, 48), torch.rand(1, 2, 7))


def test_roi_align_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    f = torch.randn(2, 5, 8, 9)
    b = torch.rand(2, 3, 4) * 8
    b[..., 2:] += b[..., :2]
    b[0, 0] = torch.tensor([-1.5, 2.0, 12.0, 9.5])  # partly outside the map
    rois = torch.cat([torch.cat([torch.full((3, 1), float(i)), b[i]], 1) for i in range(2)])
    for scale, size in ((1.0, 3), (0.5, 2)):
        ours = roi_align(f, b, size, scale, 2)
        ref = tv.ops.roi_align(f, rois, size, scale, 2, aligned=True).view(2, 3, 5, size, size)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    pos = box_position_features(torch.tensor([[8.0, 16.0, 24.0, 48.0]]), 64)
    torch.testing.assert_close(pos, torch.tensor([[0.125, 0.25, 0.375, 0.75, 0.25, 0.5, 0.125]]))


def test_resnet_and_plain_twin_share_depth_and_grid():
    torch.manual_seed(0)
    res, plain = minivlm.create_model("resnet_tiny"), minivlm.create_model("plain_cnn_tiny")
    assert res.config.depth == plain.config.depth == 13
    x = torch.randn(2, 3, 64, 64)
    assert res.features(x).shape == plain.features(x).shape == (2, 64, 8, 8)
    # the only extra parameters of the ResNet are its two projection shortcuts
    extra = sum(p.numel() for p in res.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    with pytest.raises(ValueError, match="expected images"):
        res(torch.randn(2, 64, 64))


def test_region_losses_by_hand():
    masked = torch.tensor([[True, False, True]])
    pred, feats = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [5.0, 5.0], [0.0, 2.0]]])
    assert float(mrfr_loss(pred, feats, masked)) == pytest.approx((2 + 4) / 2)
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]]])
    q = torch.tensor([[[0.7, 0.3], [0.5, 0.5], [0.2, 0.8]]])
    p = logits.softmax(-1)
    kl = (q * (q.log() - p.log())).sum(-1)[masked].mean()
    assert float(mrc_kl_loss(logits, q, masked)) == pytest.approx(float(kl), abs=1e-6)
    ce = -p.log()[0, [0, 2], [0, 1]].mean()
    assert float(mrc_loss(logits, torch.tensor([[0, 1, 1]]), masked)) == pytest.approx(float(ce))
    assert float(mrc_kl_loss(logits, logits.softmax(-1), masked)) == pytest.approx(0, abs=1e-6)


def test_uniter_heads_losses_and_wra_padding():
    torch.manual_seed(0)
    m = minivlm.create_model("uniter_tiny", wra_weight=0.1)
    ids = torch.randint(8, 50, (3, 6))
    am = torch.ones(3, 6, dtype=torch.long)
    am[2, 4:] = 0
    f, p = torch.randn(3, 4, 48), torch.rand(3, 4, 7)
    rm = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    out = m(ids, f, p, am, rm, mlm_labels=ids, region_masked=torch.rand(3, 4) < 0.5,
            region_labels=torch.randint(0, 5, (3, 4)),
            region_probs=torch.softmax(torch.randn(3, 4, 5), -1), itm_labels=torch.tensor([1, 0, 1]))
    for part in ("loss_mlm", "loss_mrfr", "loss_mrc", "loss_mrc_kl", "loss_itm", "loss_wra"):
        assert torch.isfinite(getattr(out, part)), part
    out.loss.backward()
    assert m.feat_fc.weight.grad.abs().sum() > 0
    # padding regions change nothing for the real tokens
    f2 = f.clone()
    f2[1, 2:] = 100.0
    m.eval()
    with torch.no_grad():
        h1 = m(ids, f, p, am, rm).last_hidden_state
        h2 = m(ids, f2, p, am, rm).last_hidden_state
    torch.testing.assert_close(h1[1, :8], h2[1, :8])


def test_pixel_bert_samples_pixels_in_training_only():
    torch.manual_seed(0)
    m = minivlm.create_model("pixel_bert_tiny", sample_pixels=10)
    ids, x = torch.randint(8, 50, (2, 5)), torch.randn(2, 3, 64, 64)
    out = m(ids, x, mlm_labels=ids, itm_labels=torch.tensor([1, 0]))
    assert out.last_hidden_state.shape == (2, 15, 64) and out.pixel_index.shape == (2, 10)
    assert not torch.equal(out.pixel_index[0], out.pixel_index[1])  # a fresh subset per image
    out.loss.backward()
    assert m.cnn.stem[0].weight.grad.abs().sum() > 0  # trained end to end
    m.eval()
    assert m(ids, x).last_hidden_state.shape == (2, 5 + 64, 64)
    v = torch.arange(12.0).view(1, 6, 2)
    kept, idx = sample_pixels(v, 3, torch.Generator().manual_seed(0))
    assert torch.equal(kept, v[0, idx[0]][None]) and bool((idx.diff() > 0).all())
    with pytest.raises(ValueError, match="k must be in 1..6"):
        sample_pixels(v, 7)
