"""BEiT: blockwise masking, relative positions, parity with BeitForMaskedImageModeling, VQ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import minivlm
from minivlm.models.beit import (
    Beit,
    BeitConfig,
    VQTokenizer,
    blockwise_mask_batch,
    blockwise_masking,
    relative_position_index,
)

transformers = pytest.importorskip("transformers")
from parity_helpers import random_reference  # noqa: E402
from transformers import BeitConfig as HFBeitConfig  # noqa: E402
from transformers import BeitForMaskedImageModeling  # noqa: E402

BASE = dict(image_size=24, patch_size=8, hidden_size=24, num_hidden_layers=2,
            num_attention_heads=3, intermediate_size=37, vocab_size=11, use_mask_token=True)
HF_CONFIGS = {
    "shared_bias_layer_scale": dict(BASE, use_shared_relative_position_bias=True),
    "per_layer_bias_no_layer_scale_final_norm": dict(
        BASE, use_relative_position_bias=True, layer_scale_init_value=0.0, use_mean_pooling=False),
    "absolute_positions_patch4": dict(BASE, image_size=20, patch_size=4, hidden_size=32,
                                      num_attention_heads=4, num_hidden_layers=3,
                                      use_absolute_position_embeddings=True,
                                      layer_scale_init_value=0.5, hidden_act="gelu_new"),
}


def _random_hf(kw: dict, seed: int = 0) -> BeitForMaskedImageModeling:
    return random_reference(lambda: BeitForMaskedImageModeling(HFBeitConfig(**kw)), seed)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_from_hf_matches_logits_and_masked_loss(name):
    hf = _random_hf(HF_CONFIGS[name])
    beit = Beit.from_hf(hf)
    c = hf.config
    n = (c.image_size // c.patch_size) ** 2
    torch.manual_seed(1)
    x = torch.randn(3, 3, c.image_size, c.image_size)
    masked = blockwise_mask_batch(3, c.image_size // c.patch_size, 0.4, seed=0, min_block=2)
    labels = torch.randint(0, c.vocab_size, (3, n))
    with torch.no_grad():
        ref = hf(x, bool_masked_pos=masked, labels=labels[masked])
        out = beit(x, masked, labels)
    assert out.logits.shape == (3, n, c.vocab_size)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-4, rtol=1e-4)
    # the loss ignores the labels of visible patches
    other = torch.where(masked, labels, (labels + 1) % c.vocab_size)
    assert beit(x, masked, other).loss.item() == pytest.approx(out.loss.item())


def test_shared_bias_is_one_table_per_layer_bias_is_many():
    shared = Beit(BeitConfig(image_size=16, patch_size=4, dim=16, depth=3, num_heads=2,
                             mlp_hidden=8, vocab_size=5, rel_pos="shared"))
    layer = Beit(shared.config, rel_pos="layer")
    assert sum(".rel_pos.table" in n or n == "rel_pos.table" for n, _ in shared.named_parameters()) == 1
    assert sum("rel_pos.table" in n for n, _ in layer.named_parameters()) == 3


def test_relative_position_index_equals_transformers_on_square_and_rectangular_grids():
    """nn.relpos (BEiT's index, also VLMo's: a text is a 1 x (T-1) grid) vs transformers'."""
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias as HFBias

    if not hasattr(HFBias, "generate_relative_position_index"):
        pytest.skip("this transformers builds the index inside __init__ only")
    for grid in ((4, 4), (2, 3), (1, 7), (3, 1)):
        assert torch.equal(relative_position_index(grid),
                           HFBias.generate_relative_position_index(grid))  # fmt: skip


def test_relative_position_index_is_translation_invariant():
    idx = relative_position_index(3)  # 1 + 9 tokens
    assert idx.shape == (10, 10)
    # (0,0)->(0,1) and (1,1)->(1,2) have the same offset, hence the same table row
    assert idx[1 + 0, 1 + 1] == idx[1 + 4, 1 + 5]
    assert idx[1 + 0, 1 + 1] != idx[1 + 1, 1 + 0]
    n_rel = 5 * 5 + 3
    assert idx[0, 0] == n_rel - 1 and idx[0, 3] == n_rel - 3 and idx[3, 0] == n_rel - 2
    assert idx[1:, 1:].max() < n_rel - 3


def test_blockwise_masking_count_and_blocks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = blockwise_masking(14, 75, rng, min_block=16)
        assert m.shape == (14, 14) and m.dtype == torch.bool
        assert m.sum().item() == 75  # exactly the target: blocks never overshoot
    # blocks: masked patches have more masked neighbours than under uniform random masking
    def neighbours(mask: torch.Tensor) -> float:
        m = mask.float()
        nb = torch.zeros_like(m)
        nb[1:] += m[:-1]
        nb[:-1] += m[1:]
        nb[:, 1:] += m[:, :-1]
        nb[:, :-1] += m[:, 1:]
        return (nb[mask]).mean().item()

    block = np.mean([neighbours(blockwise_masking(14, 75, rng, min_block=16)) for _ in range(20)])
    rand = np.mean([neighbours(torch.from_numpy(
        rng.permutation(196).reshape(14, 14) < 75)) for _ in range(20)])
    assert block > rand + 1.0
    batch = blockwise_mask_batch(4, 8, 0.4, seed=3)
    assert batch.shape == (4, 64) and (batch.sum(1) == 26).all()
    assert torch.equal(batch, blockwise_mask_batch(4, 8, 0.4, seed=3))
    with pytest.raises(ValueError, match="num_masked"):
        blockwise_masking(4, 17, rng)


def test_vq_tokenizer_learns_to_reconstruct():
    torch.manual_seed(0)
    colours = torch.randn(4, 48)  # four kinds of "patch"
    patches = colours[torch.randint(0, 4, (512,))] + 0.01 * torch.randn(512, 48)
    vq = VQTokenizer(patch_size=4, codebook_size=8, code_dim=4, hidden=32)
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss, ids = vq.loss(patches)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    ids = vq.tokenize(patches.reshape(512, 3, 4, 4).reshape(-1, 3, 4, 4)[:8])
    assert ids.shape == (8, 1) and ids.dtype == torch.long


def test_errors():
    beit = minivlm.create_model("beit_tiny")
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="bool_masked_pos of shape"):
        beit(x, torch.zeros(2, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels need"):
        beit(x, None, torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="rel_pos"):
        BeitConfig(rel_pos="both")
    with pytest.raises(TypeError, match="BeitForMaskedImageModeling"):
        Beit.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="use_mask_token"):
        Beit.from_hf(_random_hf(dict(BASE, use_mask_token=False)))


def test_presets_count_parameters():
    with torch.device("meta"):  # shapes only: no memory, no init
        n = sum(p.numel() for p in minivlm.create_model("beit_base_pt").parameters())
    assert n == 91_965_776  # BeitForMaskedImageModeling(BeitConfig(use_mask_token=True,
    #                         use_shared_relative_position_bias=True))
    tiny = minivlm.create_model("beit_tiny")
    assert tiny(torch.randn(1, 3, 64, 64)).logits.shape == (1, 64, 64)
