"""ViLT: parity with tiny random Hugging Face ViLT models, heads, losses, pre-training helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import minivlm
from minivlm.models.vilt import (
    ViLT,
    ViLTConfig,
    ViLTOutput,
    build_single_stream_input,
    mask_tokens,
    sample_itm_negatives,
)
from minivlm.objectives import (
    cost_matrix_cosine,
    ipot,
    itm_loss_with_negatives,
    make_pretraining_batch,
    wasserstein_distance,
    wpa_loss,
)

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    ViltConfig,
    ViltForImageAndTextRetrieval,
    ViltForMaskedLM,
    ViltForQuestionAnswering,
    ViltModel,
)

ATOL = 1e-4

# Random HF configs: widths, heads, depths, patch and image sizes, text positions, eps, acts.
HF_CONFIGS = [
    dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=48, image_size=32, patch_size=8, max_position_embeddings=12,
         layer_norm_eps=1e-12),
    dict(vocab_size=70, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
         intermediate_size=64, image_size=48, patch_size=16, max_position_embeddings=20,
         layer_norm_eps=1e-6, qkv_bias=False, hidden_act="gelu_new"),
    dict(vocab_size=33, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
         intermediate_size=40, image_size=24, patch_size=4, max_position_embeddings=9,
         layer_norm_eps=1e-5, hidden_act="relu", pad_token_id=0),
]  # fmt: skip
# another image size (H, W) per config, divisible by its patch size
OTHER_SIZES = [(40, 24), (64, 32), (28, 20)]


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every parameter random (biases, LayerNorms, CLS, positions) so a wrong copy shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _hf(cls, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return _perturb(cls(ViltConfig(**cfg)), seed)


def _text(vocab: int, B: int = 3, T: int = 7, seed: int = 0):
    """Token ids with padding on the right of rows 1 and 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, T - 3 :] = 0
    am[2, 2:] = 0
    ids[am == 0] = 0
    return ids, am


def _images(B: int, H: int, W: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread avoids OpenMP contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def identity_sampling(monkeypatch):
    """Make HF's patch sampling (``torch.multinomial`` in ``visual_embed``) the identity."""

    def first_n(input, num_samples, replacement=False, *args, **kwargs):  # noqa: A002
        return torch.arange(num_samples, device=input.device) % input.shape[-1]

    monkeypatch.setattr(torch, "multinomial", first_n)


# ---------------------------------------------------------------------------
# Parity with Hugging Face
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(HF_CONFIGS)))
def test_parity_with_hf_vilt_model(i, identity_sampling):
    cfg = HF_CONFIGS[i]
    hf = _hf(ViltModel, seed=i, **cfg)
    ours = ViLT.from_hf(hf)
    assert ours.config.eps == cfg["layer_norm_eps"] and ours.config.depth == hf.config.num_hidden_layers
    assert not ours.training
    ids, am = _text(cfg["vocab_size"], T=cfg["max_position_embeddings"] - 2, seed=i)
    s = cfg["image_size"]
    for H, W in [(s, s), OTHER_SIZES[i]]:  # the config's size, then another (interpolated positions)
        px = _images(3, H, W, seed=i)
        with torch.no_grad():
            ref = hf(input_ids=ids, pixel_values=px, attention_mask=am)
            out = ours(ids, px, am)
        n = (H // cfg["patch_size"]) * (W // cfg["patch_size"])
        assert out.last_hidden_state.shape == (3, ids.shape[1] + 1 + n, cfg["hidden_size"])
        assert out.last_hidden_state.shape == ref.last_hidden_state.shape
        assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < ATOL, (H, W)
        assert (out.pooler_output - ref.pooler_output).abs().max() < ATOL, (H, W)
    # without an attention mask every token is real (unpadded ids: HF warns on padded ones)
    full = ids.clamp_min(1)
    with torch.no_grad():
        ref = hf(input_ids=full, pixel_values=px)
        out = ours(full, px)
    assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < ATOL


def test_parity_with_padded_images(identity_sampling):
    """pixel_mask: HF keeps the real patches (then random padding patches); compare real ones."""
    cfg = HF_CONFIGS[0]
    hf = _hf(ViltModel, **cfg)
    ours = ViLT.from_hf(hf)
    ids, am = _text(cfg["vocab_size"])
    px = _images(3, 48, 40)
    pm = torch.ones(3, 48, 40, dtype=torch.long)
    pm[1, 32:] = 0  # bottom two patch rows are padding
    pm[2, :, 24:] = 0  # right two patch columns are padding
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, attention_mask=am, pixel_mask=pm)
        out = ours(ids, px, am, pixel_mask=pm)
    T = ids.shape[1]
    assert out.joint_mask[:, T:].sum(1).tolist() == [1 + 30, 1 + 20, 1 + 18]
    assert (out.pooler_output - ref.pooler_output).abs().max() < ATOL
    for b in range(3):
        real = out.joint_mask[b, T:].bool()
        img = out.last_hidden_state[b, T:][real]  # image CLS + real patches, raster order
        assert (out.last_hidden_state[b, :T] - ref.last_hidden_state[b, :T]).abs().max() < ATOL
        assert (img - ref.last_hidden_state[b, T : T + len(img)]).abs().max() < ATOL


def test_hf_random_patch_order_only_permutes_image_tokens():
    """Without the identity sampling HF shuffles the patches: the text tokens and the pooled
    output are unchanged (positions travel with patches), image tokens are a permutation."""
    cfg = HF_CONFIGS[0]
    hf = _hf(ViltModel, **cfg)
    ours = ViLT.from_hf(hf)
    ids, am = _text(cfg["vocab_size"])
    px = _images(3, 32, 32)
    torch.manual_seed(3)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, attention_mask=am).last_hidden_state
        out = ours(ids, px, am).last_hidden_state
    T = ids.shape[1]
    assert (out[:, : T + 1] - ref[:, : T + 1]).abs().max() < ATOL
    assert (out[:, T + 1 :] - ref[:, T + 1 :]).abs().max() > 1e-2  # shuffled order
    nearest = torch.cdist(ref[:, T + 1 :], out[:, T + 1 :]).min(dim=-1).values
    assert nearest.max() < ATOL


def test_from_hf_heads(identity_sampling):
    cfg = HF_CONFIGS[0]
    ids, am = _text(cfg["vocab_size"])
    px = _images(3, 32, 32)

    mlm = _hf(ViltForMaskedLM, **cfg)
    ours = ViLT.from_hf(mlm)
    assert ours.mlm_head.decoder.weight is ours.text_embeddings.word_embeddings.weight
    assert ours.itm_head is None and ours.vqa_head is None
    labels = torch.full_like(ids, -100)
    labels[0, 1:3] = ids[0, 1:3]
    with torch.no_grad():
        ref = mlm(input_ids=ids, pixel_values=px, attention_mask=am, labels=labels)
        out = ours(ids, px, am, mlm_labels=labels)
    assert (out.mlm_logits - ref.logits).abs().max() < ATOL
    assert abs(out.loss_mlm - ref.loss) < ATOL and out.loss == out.loss_mlm

    vqa = _hf(ViltForQuestionAnswering, num_labels=6, **cfg)
    ours = ViLT.from_hf(vqa)
    assert ours.config.num_answers == 6
    soft = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vqa(input_ids=ids, pixel_values=px, attention_mask=am, labels=soft)
        out = ours(ids, px, am, vqa_labels=soft)
    assert (out.vqa_logits - ref.logits).abs().max() < ATOL
    assert abs(out.loss_vqa - ref.loss) < ATOL  # BCE on soft scores, times the answer count

    ret = _hf(ViltForImageAndTextRetrieval, **cfg)
    ours = ViLT.from_hf(ret)
    with torch.no_grad():
        ref = ret(input_ids=ids, pixel_values=px, attention_mask=am)
        out = ours(ids, px, am)
    assert out.itm_logits.shape == (3, 2)
    assert (out.itm_logits[:, 1] - ref.logits[:, 0]).abs().max() < ATOL
    assert out.itm_logits[:, 0].abs().max() == 0


def test_from_hf_rejects_other_models():
    with pytest.raises(TypeError, match="ViltModel"):
        ViLT.from_hf(nn.Linear(2, 2))


def test_vilt_b32_parameter_count_equals_hf():
    with torch.device("meta"):
        ours = minivlm.create_model("vilt_b32")
        hf = ViltModel(ViltConfig())
    assert next(ours.parameters()).is_meta
    n_hf = sum(p.numel() for p in hf.parameters())
    assert minivlm.count_parameters(ours) == n_hf
    assert n_hf == 111_595_008  # 23.4M of them are the 30522 x 768 word embeddings


# ---------------------------------------------------------------------------
# The single-stream input
# ---------------------------------------------------------------------------


def test_build_single_stream_input():
    B, T, N1, D = 2, 3, 5, 4
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(B, T, D, generator=g), torch.randn(B, N1, D, generator=g)
    tm = torch.tensor([[1, 1, 0], [1, 1, 1]])
    im = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    emb = nn.Embedding(2, D)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1.0] * D, [10.0] * D]))
    x, mask = build_single_stream_input(text, image, tm, im, emb)
    assert x.shape == (B, T + N1, D) and mask.shape == (B, T + N1)
    assert torch.equal(x[:, :T], text + 1.0)  # text first, modality type 0
    assert torch.equal(x[:, T:], image + 10.0)  # then image (CLS included), modality type 1
    assert torch.equal(mask, torch.cat([tm, im], dim=1)) and mask.dtype == tm.dtype
    with pytest.raises(ValueError, match="image_mask"):
        build_single_stream_input(text, image, tm, im[:, :-1], emb)
    with pytest.raises(ValueError, match="image_embeds"):
        build_single_stream_input(text, image[:1], tm, im[:1], emb)


def test_model_input_uses_modality_embeddings():
    """Changing the image modality row moves only image tokens of the input, not text ones."""
    model = minivlm.create_model("vilt_tiny", depth=1).eval()
    ids, am = _text(50)
    px = _images(3, 64, 64)
    x0, m0 = model.embed(ids, px, am)
    with torch.no_grad():
        model.modality_embeddings.weight[1] += 1.0
    x1, m1 = model.embed(ids, px, am)
    T = ids.shape[1]
    assert torch.equal(x0[:, :T], x1[:, :T])
    assert torch.allclose(x1[:, T:] - x0[:, T:], torch.ones_like(x0[:, T:]))
    assert torch.equal(m0, torch.cat([am, torch.ones(3, 1 + 64, dtype=torch.long)], dim=1))


# ---------------------------------------------------------------------------
# Heads, losses, attention paths
# ---------------------------------------------------------------------------


def test_heads_shapes_and_losses():
    torch.manual_seed(0)
    model = minivlm.create_model("vilt_tiny", vocab_size=60, depth=2)
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.num_heads) == (64, 8, 128, 2, 4)
    assert cfg.max_text_len == 32 and cfg.num_answers == 29  # the shapes world's answers
    ids, am = _text(60, B=4, T=9)
    px = _images(4, 64, 64)
    masked, mlm = mask_tokens(ids, 4, 60, [0, 1, 2, 3, 4], prob=0.5,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    out = model(masked, px, am, itm_labels=torch.tensor([1, 0, 1, -100]), mlm_labels=mlm,
                vqa_labels=torch.tensor([3, 0, 28, -100]))  # fmt: skip
    assert isinstance(out, ViLTOutput)
    assert out.last_hidden_state.shape == (4, 9 + 1 + 64, 128) and out.text_len == 9
    assert out.pooler_output.shape == (4, 128)
    assert out.itm_logits.shape == (4, 2)
    assert out.mlm_logits.shape == (4, 9, 60)
    assert out.vqa_logits.shape == (4, 29)
    assert out.attentions is None and out.loss_wpa is None
    total = out.loss_itm + out.loss_mlm + out.loss_vqa
    assert torch.isfinite(total) and torch.allclose(out.loss, total)
    out.loss.backward()
    assert model.text_embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.patch_embed.weight.grad.abs().sum() > 0
    # no targets, no loss
    assert model(ids, px, am).loss is None


def test_vqa_loss_variants():
    torch.manual_seed(0)
    model = minivlm.create_model("vilt_tiny", vocab_size=60, depth=1, num_answers=5).eval()
    ids, am = _text(60)
    px = _images(3, 64, 64)
    ans = torch.tensor([0, 4, 2])
    with torch.no_grad():
        bce = model(ids, px, am, vqa_labels=ans)
        logits = bce.vqa_logits
        soft = model(ids, px, am, vqa_labels=torch.eye(5)[ans])
        model.config.vqa_loss = "ce"
        ce = model(ids, px, am, vqa_labels=ans)
    one_hot_bce = nn.functional.binary_cross_entropy_with_logits(logits, torch.eye(5)[ans]) * 5
    assert torch.allclose(bce.loss_vqa, one_hot_bce, atol=1e-6)
    assert torch.allclose(soft.loss_vqa, one_hot_bce, atol=1e-6)
    assert torch.allclose(ce.loss_vqa, nn.functional.cross_entropy(logits, ans), atol=1e-6)
    with pytest.raises(ValueError, match="answer ids"):
        model(ids, px, am, vqa_labels=torch.tensor([0, 5, 1]))


def test_need_weights_path_equals_sdpa_path():
    torch.manual_seed(0)
    model = minivlm.create_model("vilt_tiny", vocab_size=60, depth=2).eval()
    ids, am = _text(60)
    px = _images(3, 64, 64)
    with torch.no_grad():
        fast = model(ids, px, am)
        slow = model(ids, px, am, need_weights=True)
    assert (fast.last_hidden_state - slow.last_hidden_state).abs().max() < 1e-5
    assert len(slow.attentions) == 2
    L = ids.shape[1] + 1 + 64
    w = slow.attentions[0]
    assert w.shape == (3, 4, L, L)
    assert torch.allclose(w.sum(-1), torch.ones(3, 4, L), atol=1e-5)
    pad_keys = slow.joint_mask == 0  # (B, L)
    assert w.masked_select(pad_keys[:, None, None, :].expand_as(w)).abs().max() == 0


def test_bad_inputs_raise_clear_errors():
    model = minivlm.create_model("vilt_tiny", vocab_size=60, depth=1)
    ids, am = _text(60)
    px = _images(3, 64, 64)
    with pytest.raises(ValueError, match="channels"):
        model(ids, px[:, :1])
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(ids, _images(3, 60, 64))
    with pytest.raises(TypeError, match="floating-point"):
        model(ids, px.to(torch.uint8))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, px, am[:, :-1])
    with pytest.raises(ValueError, match="one image per caption"):
        model(ids, px[:2])
    with pytest.raises(ValueError, match="max_text_len"):
        model(torch.ones(3, 33, dtype=torch.long), px)
    with pytest.raises(ValueError, match="vocabulary"):
        model(ids + 100, px)
    with pytest.raises(ValueError, match="pixel_mask"):
        model(ids, px, pixel_mask=torch.ones(3, 32, 32))
    with pytest.raises(ValueError, match="itm_labels"):
        model(ids, px, itm_labels=torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="labels"):  # an unknown keyword is an error, not dropped
        model(ids, px, labels=torch.tensor([1, 0, 1]))
    with pytest.raises(TypeError, match="note"):  # minivlm.train filters batch keys instead
        model(ids, px, note="extra batch keys")
    assert model(ids, px).loss is None
    no_heads = minivlm.create_model("vilt_tiny", vocab_size=60, depth=1, itm_head=False,
                                    mlm_head=False, num_answers=0)  # fmt: skip
    with pytest.raises(ValueError, match="no MLM head"):
        no_heads(ids, px, mlm_labels=ids)
    with pytest.raises(ValueError, match="divisible"):
        ViLTConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="pooler"):
        ViLTConfig(pooler=False)


def test_same_seed_same_model():
    torch.manual_seed(5)
    a = minivlm.create_model("vilt_tiny", depth=1)
    torch.manual_seed(5)
    b = minivlm.create_model("vilt_tiny", depth=1)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    assert a.text_embeddings.word_embeddings.weight[0].abs().max() == 0  # [PAD] row


# ---------------------------------------------------------------------------
# MLM masking and ITM negatives
# ---------------------------------------------------------------------------


def test_mask_tokens_statistics():
    special = [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (400, 50), generator=g)
    ids[:, 0] = 2  # [CLS]
    ids[:, 40:] = 0  # padding
    masked, labels = mask_tokens(ids, 4, 100, special, prob=0.15, generator=g)
    chosen = labels != -100
    normal = ~torch.isin(ids, torch.tensor(special))
    assert not chosen[~normal].any()  # special tokens are never chosen
    assert torch.equal(masked[~normal], ids[~normal])
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids
    rate = chosen.sum() / normal.sum()
    assert abs(rate - 0.15) < 0.01
    n = chosen.sum()
    to_mask = (masked[chosen] == 4).sum() / n
    kept = (masked[chosen] == ids[chosen]).sum() / n
    assert abs(to_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02  # (a random draw equal to the token adds ~1%)
    assert abs(1 - to_mask - kept - 0.1) < 0.02
    assert not torch.isin(masked[chosen & (masked != 4)], torch.tensor(special)).any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    # reproducible with the same generator seed
    again = mask_tokens(ids, 4, 100, special, generator=torch.Generator().manual_seed(1))
    same = mask_tokens(ids, 4, 100, special, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], same[0]) and torch.equal(again[1], same[1])


def test_mask_tokens_whole_words():
    # ViLT §3.3: with WordPiece pieces ("gi ##raf ##fe"), a word is chosen or not as a whole
    special = [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (300, 30), generator=g)
    ids[:, 0], ids[:, 25:] = 2, 0  # [CLS], padding
    cont = torch.rand(300, 30, generator=g) < 0.4
    cont[:, :2] = cont[:, 25:] = False  # [CLS] and the padding are words of their own
    masked, labels = mask_tokens(ids, 4, 100, special, prob=0.3, generator=g, continuation=cont)
    chosen = labels != -100
    word = (~cont).long().cumsum(1) - 1  # (B, T) word index of each token
    for b in range(0, 300, 7):  # every piece of a word shares its word's choice
        for w in word[b].unique():
            assert chosen[b][word[b] == w].unique().numel() == 1
    pieces = chosen & cont  # chosen continuation pieces: their word's first piece is chosen
    assert pieces.any() and chosen[:, :-1][pieces[:, 1:]].all()
    normal = ~torch.isin(ids, torch.tensor(special))
    assert not chosen[~normal].any() and abs(chosen.sum() / normal.sum() - 0.3) < 0.02
    # without continuation pieces it is token masking, draw for draw
    a = mask_tokens(ids, 4, 100, special, 0.3, torch.Generator().manual_seed(3),
                    continuation=torch.zeros_like(cont))
    b = mask_tokens(ids, 4, 100, special, 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sample_itm_negatives():
    B = 6
    ids = torch.arange(B)[:, None].repeat(1, 4)  # caption i is full of i
    am = torch.ones(B, 4, dtype=torch.long)
    px = torch.arange(B).float()[:, None, None, None].expand(B, 3, 8, 8)  # image i is all i
    batch = {"input_ids": ids, "attention_mask": am, "pixel_values": px, "note": "ignored"}
    swaps = []
    for seed in range(30):
        out = sample_itm_negatives(batch, torch.Generator().manual_seed(seed))
        assert out["input_ids"].shape == (2 * B, 4) and out["pixel_values"].shape[0] == 2 * B
        assert out["itm_labels"].tolist() == [1] * B + [0] * B
        assert torch.equal(out["input_ids"][:B], ids) and torch.equal(out["pixel_values"][:B], px)
        cap = out["input_ids"][B:, 0]
        img = out["pixel_values"][B:, 0, 0, 0].long()
        assert (cap != img).all()  # a negative never pairs an item with itself
        me = torch.arange(B)
        sw = out["swapped_image"]
        assert torch.equal(cap[sw], me[sw]) and torch.equal(img[~sw], me[~sw])
        assert (out["partner"] != me).all()
        swaps.append(sw.float().mean())
    assert 0.35 < torch.stack(swaps).mean() < 0.65  # image or caption, 50/50
    only_images = sample_itm_negatives(batch, torch.Generator().manual_seed(0), image_prob=1.0)
    assert only_images["swapped_image"].all()
    with pytest.raises(ValueError, match="at least 2"):
        sample_itm_negatives({"input_ids": ids[:1], "pixel_values": px[:1]})


def test_itm_and_pretraining_batch_losses():
    torch.manual_seed(0)
    model = minivlm.create_model("vilt_tiny", vocab_size=60, depth=1, wpa_weight=0.1)
    ids, am = _text(60, B=4)
    ids[:, 0] = 2
    px = _images(4, 64, 64)
    batch = {"input_ids": ids, "attention_mask": am, "pixel_values": px}
    out = itm_loss_with_negatives(model, batch, torch.Generator().manual_seed(0))
    assert out.itm_logits.shape == (8, 2) and out.loss_mlm is None
    assert torch.allclose(out.loss, out.loss_itm + 0.1 * out.loss_wpa)
    pre = make_pretraining_batch(batch, mask_id=4, vocab_size=60, special_ids=[0, 1, 2, 3, 4],
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert pre["input_ids"].shape == (12, ids.shape[1]) and pre["pixel_values"].shape[0] == 12
    assert pre["itm_labels"].tolist() == [-100] * 4 + [1] * 4 + [0] * 4
    assert (pre["mlm_labels"][4:] == -100).all() and (pre["mlm_labels"][:4] != -100).any()
    assert torch.equal(pre["pixel_values"][:4], px)  # MLM rows see their own images
    assert torch.equal(pre["input_ids"][4:8], ids)  # ITM rows read unmasked captions
    out = model(**pre)
    assert torch.allclose(out.loss, out.loss_itm + out.loss_mlm + 0.1 * out.loss_wpa)


def test_pretraining_reduces_loss():
    """A few AdamW steps on one fixed pre-training batch lower ITM + MLM: gradients flow."""
    torch.manual_seed(0)
    model = minivlm.create_model("vilt_tiny", vocab_size=40, dim=64, depth=2, num_heads=2,
                                 image_size=32)  # fmt: skip
    ids, am = _text(40, B=8, T=6)
    batch = {"input_ids": ids, "attention_mask": am, "pixel_values": _images(8, 32, 32)}
    pre = make_pretraining_batch(batch, 4, 40, [0, 1, 2, 3, 4], mlm_prob=0.3,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = model(**pre).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ---------------------------------------------------------------------------
# Word-patch alignment
# ---------------------------------------------------------------------------


def test_ipot_plan_has_the_right_marginals():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 5, 8, generator=g), torch.randn(2, 7, 8, generator=g)
    xm = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    ym = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]]).bool()
    cost = cost_matrix_cosine(x, y)
    assert cost.shape == (2, 5, 7) and cost.min() >= 0 and cost.max() <= 2
    plan = ipot(cost, xm, ym, beta=0.5, iters=200)
    assert plan[0, 4].abs().max() == 0 and plan[1, :, 3:].abs().max() == 0  # padding: no mass
    mu = xm.float() / xm.sum(1, keepdim=True)
    nu = ym.float() / ym.sum(1, keepdim=True)
    assert torch.allclose(plan.sum(2), mu, atol=1e-4)
    assert torch.allclose(plan.sum(1), nu, atol=1e-4)
    # the plan is close to optimal: it beats the independent coupling mu nu^T
    assert ((cost * plan).sum((1, 2)) < (cost * mu[:, :, None] * nu[:, None]).sum((1, 2))).all()


def test_wpa_loss_lower_for_aligned_than_shuffled_features():
    g = torch.Generator().manual_seed(0)
    B, T, N, D = 6, 5, 9, 16
    text = torch.randn(B, T, D, generator=g)
    # each image holds its caption's words (permuted, noisy) among unrelated patches
    image = torch.randn(B, N, D, generator=g)
    perm = torch.randperm(N, generator=g)[:T]
    image[:, perm] = text + 0.1 * torch.randn(B, T, D, generator=g)
    tm, im = torch.ones(B, T, dtype=torch.bool), torch.ones(B, N, dtype=torch.bool)
    pos = torch.ones(B, dtype=torch.long)
    aligned = wasserstein_distance(text, image, tm, im)
    shuffled = wasserstein_distance(text, image.roll(1, dims=0), tm, im)
    assert aligned.shape == (B,) and (aligned < shuffled).all()
    assert wpa_loss(aligned, pos) < wpa_loss(shuffled, pos)
    # negatives (label 0) are pushed apart: their distance enters with a minus sign
    neg = torch.zeros(B, dtype=torch.long)
    assert torch.allclose(wpa_loss(shuffled, neg), -shuffled.mean())
    # the gradient flows through the cost only
    t = text.clone().requires_grad_(True)
    wpa_loss(wasserstein_distance(t, image, tm, im), pos).backward()
    assert t.grad.abs().sum() > 0


def test_forward_wpa_uses_itm_rows_only():
    torch.manual_seed(0)
    model = minivlm.create_model("vilt_tiny", vocab_size=60, depth=1, wpa_weight=0.1).eval()
    ids, am = _text(60, B=4)
    px = _images(4, 64, 64)
    with torch.no_grad():
        full = model(ids, px, am, itm_labels=torch.tensor([1, 0, 1, 0]))
        part = model(ids[:2], px[:2], am[:2], itm_labels=torch.tensor([1, 0]))
        mixed = model(ids[:3], px[:3], am[:3], itm_labels=torch.tensor([1, 0, -100]))
    assert full.loss_wpa is not None and torch.isfinite(full.loss_wpa)
    assert torch.allclose(mixed.loss_wpa, part.loss_wpa, atol=1e-6)
    assert torch.allclose(mixed.loss_itm, part.loss_itm, atol=1e-6)
