"""Flamingo: the interleaved image mask, the resampler, gated blocks (identity at α = 0),
freezing, presets and parity with transformers' IDEFICS (tiny random models)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import minivlm
from minivlm.models.flamingo import (
    Flamingo,
    FlamingoConfig,
    GatedCrossAttentionBlock,
    PerceiverResampler,
    image_attention_mask,
)
from minivlm.nn.lm import DecoderLM, LMConfig
from minivlm.nn.vit import ViTConfig

IMG = 7


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(**kw) -> Flamingo:
    torch.manual_seed(0)
    cfg = FlamingoConfig(
        vision=ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_hidden=64,
                         pre_norm=True),
        text=LMConfig(vocab_size=40, dim=32, depth=4, num_heads=4, num_kv_heads=2, mlp_hidden=48,
                      max_len=64),
        resampler_latents=3, resampler_heads=2, resampler_head_dim=8, **kw)
    return Flamingo(cfg)


def test_mask_previous_and_all():
    ids = torch.tensor([[1, IMG, 2, 3, IMG, 4, 5]])
    prev = image_attention_mask(ids, IMG, 3)
    assert prev.shape == (1, 7, 3) and prev.dtype == torch.bool
    assert prev[0, :, 0].tolist() == [False, True, True, True, False, False, False]
    assert prev[0, :, 1].tolist() == [False] * 4 + [True] * 3
    assert not prev[0, :, 2].any() and not prev[0, 0].any()  # before the first image: nothing
    allm = image_attention_mask(ids, IMG, 3, mode="all")
    assert allm[0, 5].tolist() == [True, True, False] and not allm[0, 0].any()
    with pytest.raises(ValueError, match="num_images=1"):
        image_attention_mask(ids, IMG, 1)
    with pytest.raises(ValueError, match="mode"):
        image_attention_mask(ids, IMG, 3, mode="next")


def test_resampler_shapes_and_attention_over_x_and_latents():
    torch.manual_seed(0)
    r = PerceiverResampler(16, num_latents=5, depth=2, num_heads=2, head_dim=4)
    out = r(torch.randn(3, 9, 16), need_weights=True)
    assert out.shape == (3, 5, 16)
    w = r.last_attn[0]
    assert w.shape == (3, 2, 5, 9 + 5)  # latents attend to [x; latents]
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 5))
    # a variable number of visual tokens gives the same number of outputs
    assert r(torch.randn(3, 20, 16)).shape == (3, 5, 16)


def test_gated_block_is_identity_at_zero_and_zero_for_imageless_tokens():
    torch.manual_seed(0)
    blk = GatedCrossAttentionBlock(16, 2, kv_dim=8, mlp_hidden=24)
    x, img = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    mask = torch.ones(2, 5, 6, dtype=torch.bool)
    mask[:, 0] = False
    assert torch.equal(blk(x, img, mask), x)
    with torch.no_grad():
        blk.alpha_xattn.fill_(1.0)
    y = blk(x, img, mask)
    assert torch.equal(y[:, 0], x[:, 0])  # sees no image, dense gate still 0
    assert not torch.allclose(y[:, 1:], x[:, 1:])


def test_gates_at_zero_give_the_lm_logits_bit_for_bit():
    model = _tiny()
    ids = torch.tensor([[IMG, 9, 10, IMG, 11, 12], [3, IMG, 13, 14, 15, 16]])
    pix = torch.randn(2, 2, 3, 16, 16)
    got = model(ids, pix).logits
    assert torch.equal(got, model.lm(ids).logits)
    with torch.no_grad():
        for b in model.xattn:
            b.alpha_xattn.fill_(0.5)
    assert not torch.equal(model(ids, pix).logits, got)


def test_freeze_and_trainable_parts_and_training_step():
    model = _tiny(additional_vocab_size=2).freeze_pretrained()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"resampler", "xattn", "extra_embed", "extra_head"}
    ids = torch.tensor([[IMG, 40, 41, IMG, 41, 2]])
    out = model(ids, torch.randn(1, 2, 3, 16, 16), labels=ids)
    assert out.logits.shape == (1, 6, 42) and out.loss is not None
    out.loss.backward()
    g = model.xattn[0].alpha_xattn.grad
    assert g is not None and g.abs().item() > 0  # the gate learns first (others: tanh(0) = 0)
    assert model.lm.blocks[0].attn.q_proj.weight.grad is None


def test_bad_inputs_raise_clear_errors():
    model = _tiny()
    ids = torch.tensor([[IMG, 1, 2]])
    with pytest.raises(ValueError, match="N_img, C, H, W"):
        model(ids, torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="image_attention_mask of shape"):
        model(ids, torch.randn(1, 1, 3, 16, 16), torch.ones(1, 3, 2))
    with pytest.raises(ValueError, match="token ids must lie"):
        model(torch.tensor([[IMG, 40]]), torch.randn(1, 1, 3, 16, 16))
    with pytest.raises(ValueError, match="cross_layer_interval"):
        _tiny(cross_layer_interval=5)
    with pytest.raises(TypeError, match="language_model"):
        Flamingo(language_model=torch.nn.Linear(2, 2))


def test_wraps_trained_parts_without_copying():
    lm = DecoderLM(LMConfig(vocab_size=30, dim=32, depth=2, num_heads=4, num_kv_heads=2,
                            mlp_hidden=48))
    model = Flamingo(language_model=lm)
    assert model.lm is lm and model.config.text == lm.config and len(model.xattn) == 2
    with pytest.raises(ValueError, match=r"language_model.*config\.text.*mlp_hidden: 48 vs 64"):
        Flamingo(model.config, language_model=lm, text=replace(lm.config, mlp_hidden=64))


def test_preset_registered():
    assert "flamingo_tiny" in minivlm.list_models("flamingo*")
    m = minivlm.create_model("flamingo_tiny", cross_layer_interval=2)
    assert len(m.xattn) == 2 and m.resampler is not None


# ------------------------------------------------------------------------- parity with IDEFICS

transformers = pytest.importorskip("transformers")


def _hf(use_resampler: bool, interval: int, alpha_type: str, extra: int, act: str = "gelu"):
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    torch.manual_seed(0)
    cfg = IdeficsConfig(
        vocab_size=50, additional_vocab_size=extra, hidden_size=32, intermediate_size=40,
        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64,
        cross_layer_interval=interval, use_resampler=use_resampler, alpha_type=alpha_type,
        vision_config=dict(embed_dim=24, image_size=16, patch_size=4, intermediate_size=36,
                           num_hidden_layers=2, num_attention_heads=2, hidden_act=act),
        perceiver_config=dict(use_resampler=use_resampler, resampler_n_latents=3,
                              resampler_depth=2, resampler_n_heads=2, resampler_head_dim=5),
    )
    cfg._attn_implementation = "eager"
    model = IdeficsForVisionText2Text(cfg).eval()
    with torch.no_grad():  # open gates, random norms: every weight matters
        for n, p in model.named_parameters():
            if "alpha" in n:
                p.normal_(0, 0.8)
            elif "norm" in n and n.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif "norm" in n or "ln." in n:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("use_resampler,interval,alpha_type,extra,act", [
    (True, 1, "float", 0, "gelu"),
    (False, 2, "vector", 2, "quick_gelu"),
    (True, 4, "vector", 3, "gelu"),
    (False, 1, "float", 0, "gelu"),
])
def test_parity_with_idefics(use_resampler, interval, alpha_type, extra, act):
    hf = _hf(use_resampler, interval, alpha_type, extra, act)
    ours = Flamingo.from_hf(hf)
    torch.manual_seed(1)
    B, T, N = 2, 9, 3
    ids = torch.randint(3, 50 + extra, (B, T))
    pix = torch.randn(B, N, 3, 16, 16)
    pix[1, 2] = 0  # an empty image slot
    img_mask = torch.zeros(B, T, N, dtype=torch.long)
    img_mask[0, 1:4, 0] = 1
    img_mask[0, 4:, 1] = 1
    img_mask[0, 7:, 2] = 1  # some tokens see two images
    img_mask[1, 3:, 0] = 1
    img_mask[1, 6:, 1] = 1  # row 1 leaves image 2 unused; tokens 0-2 see none
    am = torch.ones(B, T, dtype=torch.long)
    am[1, -2:] = 0  # right padding
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pix, image_attention_mask=img_mask,
                  attention_mask=am).logits
        got = ours(ids, pix, img_mask, attention_mask=am).logits
    assert got.shape == want.shape == (B, T, 50 + extra)
    real = am.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    assert ours.gates().abs().min() > 0  # the gates are open: the image path is compared too


def test_from_hf_refuses_qk_layer_norms():
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    cfg = IdeficsConfig(vocab_size=20, hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                        num_attention_heads=2, qk_layer_norms=True,
                        vision_config=dict(embed_dim=8, image_size=8, patch_size=4,
                                           intermediate_size=8, num_hidden_layers=1,
                                           num_attention_heads=2))
    with pytest.raises(ValueError, match="qk_layer_norms"):
        Flamingo.from_hf(IdeficsForVisionText2Text(cfg))
