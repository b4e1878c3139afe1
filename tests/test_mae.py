"""MAE: masking, loss, parity with transformers' ViTMAEForPreTraining, presets."""

from __future__ import annotations

import pytest
import torch

import minivlm
from minivlm.models.mae import (
    MAE,
    MAEConfig,
    mae_loss,
    patchify_hwc,
    random_masking,
    sincos_pos_embed,
    unpatchify_hwc,
)

transformers = pytest.importorskip("transformers")
from parity_helpers import random_reference  # noqa: E402
from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402
from transformers.models.vit_mae import modeling_vit_mae  # noqa: E402

HF_CONFIGS = {
    "plain": dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=37, decoder_hidden_size=16,
                  decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                  decoder_intermediate_size=20, mask_ratio=0.6),
    "norm_pix_noqkvbias_gelunew": dict(image_size=24, patch_size=4, num_channels=2, hidden_size=36,
                                       num_hidden_layers=3, num_attention_heads=3,
                                       intermediate_size=50, decoder_hidden_size=12,
                                       decoder_num_hidden_layers=2, decoder_num_attention_heads=3,
                                       decoder_intermediate_size=16, mask_ratio=0.75,
                                       norm_pix_loss=True, qkv_bias=False, hidden_act="gelu_new",
                                       layer_norm_eps=1e-6),
    "ratio_90_eps": dict(image_size=40, patch_size=8, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=64, decoder_hidden_size=20,
                         decoder_num_hidden_layers=1, decoder_num_attention_heads=5,
                         decoder_intermediate_size=24, mask_ratio=0.9, norm_pix_loss=True),
}


def _random_hf(kw: dict, seed: int = 0) -> ViTMAEForPreTraining:
    """A tiny HF MAE whose every parameter (positions and mask token too) is random."""
    return random_reference(lambda: ViTMAEForPreTraining(ViTMAEConfig(**kw)), seed)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_from_hf_matches_loss_logits_mask(name):
    hf = _random_hf(HF_CONFIGS[name])
    mae = MAE.from_hf(hf)
    cfg = hf.config
    n = (cfg.image_size // cfg.patch_size) ** 2
    torch.manual_seed(1)
    x = torch.randn(3, cfg.num_channels, cfg.image_size, cfg.image_size)
    noise = torch.rand(3, n)
    with torch.no_grad():
        ref, out = hf(x, noise=noise), mae(x, noise=noise)
    assert out.logits.shape == (3, n, cfg.patch_size**2 * cfg.num_channels)
    torch.testing.assert_close(out.mask, ref.mask, atol=0, rtol=0)
    torch.testing.assert_close(out.ids_restore, ref.ids_restore)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-4, rtol=1e-4)
    assert int(out.mask.sum(1)[0]) == n - int(n * (1 - cfg.mask_ratio))


def test_from_hf_gradients_match():
    hf = _random_hf(HF_CONFIGS["plain"]).train()
    mae = MAE.from_hf(hf)
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    hf(x, noise=noise).loss.backward()
    mae(x, noise=noise).loss.backward()
    torch.testing.assert_close(mae.decoder_pred.weight.grad, hf.decoder.decoder_pred.weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mae.encoder.patch_embed.weight.grad,
                               hf.vit.embeddings.patch_embeddings.projection.weight.grad,
                               atol=1e-5, rtol=1e-4)
    assert mae.encoder.pos_embed.grad is None  # the sin-cos table is frozen


def test_sincos_table_equals_hf_init():
    hf_table = modeling_vit_mae.build_2d_sinusoidal_position_embedding(5, 5, 24, cls_token=True)
    hf_table = torch.cat([hf_table[:, 12:], hf_table[:, :12]], dim=-1)  # HF's w-first layout
    torch.testing.assert_close(sincos_pos_embed(5, 24)[0], hf_table)


def test_random_masking_keeps_lowest_noise_and_restores_order():
    x = torch.arange(2 * 8 * 3, dtype=torch.float).reshape(2, 8, 3)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4],
                          [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    kept, mask, ids_restore, ids_keep = random_masking(x, 0.75, noise)
    assert kept.shape == (2, 2, 3)
    assert ids_keep.tolist() == [[1, 5], [0, 1]]
    assert mask.tolist()[0] == [1, 0, 1, 1, 1, 0, 1, 1]
    torch.testing.assert_close(kept[0], x[0, [1, 5]])
    shuffled = x.gather(1, noise.argsort(1)[..., None].expand(-1, -1, 3))
    torch.testing.assert_close(shuffled.gather(1, ids_restore[..., None].expand(-1, -1, 3)), x)
    with pytest.raises(ValueError, match="noise of shape"):
        random_masking(x, 0.5, torch.rand(2, 7))


def test_loss_only_counts_masked_patches_and_norm_pix():
    torch.manual_seed(0)
    target = torch.randn(2, 4, 6)
    pred = target.clone()
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 0]])
    pred[0, 1] += 5.0  # error on a visible patch: not scored
    assert mae_loss(pred, target, mask).item() == 0.0
    pred[0, 0] += 1.0
    assert mae_loss(pred, target, mask).item() == pytest.approx(1.0 / 3)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert mae_loss(normed, target, mask, norm_pix_loss=True).item() < 1e-10


def test_patchify_layout_round_trip():
    x = torch.randn(2, 3, 16, 16)
    p = patchify_hwc(x, 4)
    assert p.shape == (2, 16, 48)
    torch.testing.assert_close(p[0, 1, :3], x[0, :, 0, 4])  # channel fastest, patch (0, 1)
    torch.testing.assert_close(unpatchify_hwc(p, 4, 3), x)


def test_encoder_sees_only_visible_patches_and_reconstruct_shape():
    mae = minivlm.create_model("mae_tiny")
    x = torch.randn(2, 3, 64, 64)
    latent, mask, _ = mae.encode_visible(x, mask_ratio=0.75)
    assert latent.shape == (2, 1 + 16, 64) and mask.sum().item() == 2 * 48
    out = mae(x)
    assert mae.reconstruct(x, out).shape == x.shape
    assert mae.features(x).shape == (2, 64)


def test_config_errors():
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        MAEConfig(decoder_dim=18)
    with pytest.raises(TypeError, match="ViTMAEForPreTraining"):
        MAE.from_hf(torch.nn.Linear(2, 2))


def test_presets_count_parameters():
    with torch.device("meta"):  # shapes only: no memory, no init
        n = sum(p.numel() for p in minivlm.create_model("mae_vit_b16").parameters())
    assert n == 111_907_840  # ViTMAEForPreTraining(ViTMAEConfig()), frozen sin-cos tables included
    assert "mae_tiny" in minivlm.list_models("mae_*")
