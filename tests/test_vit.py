"""ViT image encoder: patch embedding, timm parity, position interpolation, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import minivlm
from minivlm.nn.vit import ViT, ViTConfig, ViTOutput, patchify, resample_pos_embed

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TIMM_CONFIGS = {
    "plain": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10),
    # CLIP-like: LayerNorm before the blocks (timm then drops the patch bias), quick GELU
    "prenorm_quickgelu": dict(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=2,
        pre_norm=True,
        act_layer="quick_gelu",
        num_classes=5,
    ),
    # patch 4, three layers, no qkv bias, mean pooling (timm moves the final norm after the pool)
    "p4_noqkvbias_avg": dict(
        img_size=48,
        patch_size=4,
        embed_dim=96,
        depth=3,
        num_heads=3,
        qkv_bias=False,
        global_pool="avg",
        num_classes=7,
    ),
    # no class token, head-less, accepts any image size
    "nocls_dynamic": dict(
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        class_token=False,
        global_pool="avg",
        num_classes=0,
        dynamic_img_size=True,
        mlp_ratio=3.0,
    ),
}


def _random_timm(kw: dict, seed: int = 0) -> nn.Module:
    """A timm ViT whose every parameter (biases, norms, CLS, positions) is random."""
    torch.manual_seed(seed)
    m = VisionTransformer(**kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def test_patch_embedding_is_patchify_plus_linear():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=32, patch_size=8, dim=40, depth=1, num_heads=4))
    x = torch.randn(2, 3, 32, 32)
    conv = vit.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
    W = vit.patch_embed.weight.reshape(40, -1)  # (D, C*p*p)
    lin = patchify(x, 8) @ W.T + vit.patch_embed.bias
    assert conv.shape == (2, 16, 40)
    torch.testing.assert_close(conv, lin, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(TIMM_CONFIGS))
def test_from_timm_matches_forward_features(name):
    kw = TIMM_CONFIGS[name]
    tm = _random_timm(kw)
    vit = ViT.from_timm(tm)
    assert not vit.training
    cfg = vit.config
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.depth) == (
        kw["img_size"],
        kw["patch_size"],
        kw["embed_dim"],
        kw["depth"],
    )
    assert cfg.pre_norm == kw.get("pre_norm", False)
    assert cfg.qkv_bias == kw.get("qkv_bias", True)
    assert cfg.class_token == kw.get("class_token", True)
    torch.manual_seed(1)
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        ref = tm.forward_features(x)
        out = vit(x)
        n_tokens = (kw["img_size"] // kw["patch_size"]) ** 2 + int(cfg.class_token)
        assert out.shape == (2, n_tokens, kw["embed_dim"])
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        # classifier head (or pooled features when there is none) equals timm's forward
        torch.testing.assert_close(vit.forward_head(out), tm(x), atol=1e-4, rtol=1e-4)


def test_from_timm_hidden_states_and_attention_weights():
    tm = _random_timm(TIMM_CONFIGS["prenorm_quickgelu"])
    vit = ViT.from_timm(tm)
    block_outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: block_outputs.append(o)) for b in tm.blocks]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = tm.forward_features(x)
        enc = vit.encode(x, need_weights=True, return_layers=True)
    for h in hooks:
        h.remove()
    assert isinstance(enc, ViTOutput)
    # explicit-math attention path gives the same tokens as the SDPA path / timm
    torch.testing.assert_close(enc.last_hidden_state, ref, atol=1e-4, rtol=1e-4)
    assert len(enc.hidden_states) == vit.config.depth + 1
    # hidden_states[0] is the (pre-normed) input to block 0; then each block's output
    torch.testing.assert_close(enc.hidden_states[0], tm.norm_pre(tm._pos_embed(tm.patch_embed(x))))
    for ours, theirs in zip(enc.hidden_states[1:], block_outputs):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert len(enc.attentions) == vit.config.depth
    T = 1 + 16
    for a in enc.attentions:
        assert a.shape == (3, vit.config.num_heads, T, T)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, vit.config.num_heads, T))
    plain = vit.encode(x)
    assert plain.hidden_states is None and plain.attentions is None


def test_position_interpolation_matches_timm_dynamic_size():
    tm = _random_timm(TIMM_CONFIGS["nocls_dynamic"])
    vit = ViT.from_timm(tm)
    x = torch.randn(2, 3, 48, 40)  # 6x5 patch grid instead of 4x4
    with torch.no_grad():
        out = vit(x)
        torch.testing.assert_close(out, tm.forward_features(x), atol=1e-4, rtol=1e-4)
    assert out.shape == (2, 30, 64)


def test_position_interpolation_keeps_cls_and_identity_at_same_size():
    torch.manual_seed(0)
    vit = minivlm.create_model("vit_tiny_shapes")
    g = vit.config.grid_size
    assert vit.pos_embed_for((g, g)) is vit.pos_embed  # identity, not a resampled copy
    same = resample_pos_embed(vit.pos_embed, (g, g), (g, g), 1)
    torch.testing.assert_close(same, vit.pos_embed)
    big = vit.pos_embed_for((12, 10))
    assert big.shape == (1, 1 + 120, vit.config.dim)
    torch.testing.assert_close(big[:, :1], vit.pos_embed[:, :1])  # CLS position kept
    with torch.no_grad():
        out = vit(torch.randn(1, 3, 96, 80))  # 12x10 patches of 8 px
    assert out.shape == (1, 1 + 120, vit.config.dim)
    # a constant position grid stays constant after bicubic resampling
    const = torch.cat([torch.zeros(1, 1, 4), torch.ones(1, 16, 4) * 0.5], dim=1)
    torch.testing.assert_close(
        resample_pos_embed(const, (7, 3), (4, 4), 1)[:, 1:], torch.full((1, 21, 4), 0.5)
    )


def test_tiny_preset_forward_backward_and_classifier():
    torch.manual_seed(0)
    vit = minivlm.create_model("vit_tiny_shapes", num_classes=6)
    x = torch.randn(2, 3, 64, 64)
    tokens = vit(x)
    assert tokens.shape == (2, 65, 128)
    logits = vit.classify(x)
    assert logits.shape == (2, 6)
    logits.sum().backward()
    assert vit.patch_embed.weight.grad is not None and vit.pos_embed.grad.abs().sum() > 0
    # seeded construction is reproducible
    torch.manual_seed(3)
    a = minivlm.create_model("vit_tiny_shapes")
    torch.manual_seed(3)
    b = minivlm.create_model("vit_tiny_shapes")
    torch.testing.assert_close(a.pos_embed, b.pos_embed, atol=0, rtol=0)


@pytest.mark.parametrize(
    "ours, timm_name, expected",
    [
        ("vit_b16", "vit_base_patch16_224", 85_798_656),
        ("vit_b32", "vit_base_patch32_224", 87_455_232),
        ("vit_l14", "vit_large_patch14_224", None),
    ],
)
def test_preset_parameter_counts_match_timm(ours, timm_name, expected):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        vit = minivlm.create_model(ours)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=0)
        vit_head = minivlm.create_model(ours, num_classes=1000)
        ref_head = timm.create_model(timm_name, pretrained=False)
    n = minivlm.count_parameters(vit)
    assert n == sum(p.numel() for p in ref.parameters())
    assert minivlm.count_parameters(vit_head) == sum(p.numel() for p in ref_head.parameters())
    if expected is not None:
        assert n == expected
    if ours == "vit_b16":
        assert minivlm.count_parameters(vit_head) == 86_567_656  # the famous 86.6M


def test_bad_inputs_raise_clear_errors():
    vit = ViT(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="channels"):
        vit(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by patch_size 8"):
        vit(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vit(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        vit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no head"):
        vit.classify(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="class_token"):
        ViTConfig(class_token=False, global_pool="token")
    with pytest.raises(ValueError, match="unknown activation"):
        ViTConfig(act="swish-ish")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(init_values=1e-5), "layer scale"),
        (dict(reg_tokens=4), "register tokens"),
        (dict(qk_norm=True), "QK-norm"),
        (dict(global_pool="map"), "attention pooling"),
        (dict(no_embed_class=True), "no_embed_class"),
    ],
)
def test_from_timm_rejects_unsupported_features(kw, match):
    base = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    tm = VisionTransformer(**{**base, **kw})
    with pytest.raises(ValueError, match=match):
        ViT.from_timm(tm)


def test_from_timm_rejects_other_modules():
    with pytest.raises(TypeError, match="VisionTransformer"):
        ViT.from_timm(nn.Linear(2, 2))
