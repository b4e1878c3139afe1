"""CLIP: contrastive loss, temperature, zero-shot classifier, presets and HF parity."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.models.clip import (
    CLIP,
    CLIPConfig,
    build_zero_shot_classifier,
    clip_loss,
    clip_loss_parts,
    clip_vision_config,
    contrastive_logits,
    zero_shot_predict,
)
from minivlm.nn.bert import TextConfig

transformers = pytest.importorskip("transformers")

LN100 = math.log(100.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and robust when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(**kw) -> CLIP:
    """A very small CLIP (8 tokens per image, 2+2 layers) for fast behaviour tests."""
    torch.manual_seed(0)
    cfg = CLIPConfig(
        vision=clip_vision_config(image_size=16, patch_size=8, dim=32, depth=2, num_heads=2),
        text=TextConfig.clip(vocab_size=50, max_len=12, dim=32, depth=2, num_heads=2,
                             eos_token_id=6),
        embed_dim=16,
        **kw,
    )  # fmt: skip
    return CLIP(cfg)


def _ids(lengths: list[int], T: int, vocab: int, eos: int, seed: int = 0, pad: int = 0):
    """Right-padded captions: random words, [EOS] at position length-1, then ``pad``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, vocab, (len(lengths), T), generator=g)
    ids[ids == eos] = 8
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, n - 1] = eos
        ids[i, n:] = pad
        mask[i, :n] = 1
    return ids, mask


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def test_loss_equals_hand_computed_cross_entropy_3x3():
    L = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.0, 0.3], [-0.4, 2.5, 0.2]])
    rows = [[2.0, 0.5, -1.0], [0.1, 1.0, 0.3], [-0.4, 2.5, 0.2]]
    cols = [list(c) for c in zip(*rows)]

    def ce(vectors):  # mean over i of -log softmax(v_i)[i], in plain Python
        return sum(math.log(sum(math.exp(x) for x in v)) - v[i] for i, v in enumerate(vectors)) / 3

    i2t, t2i = clip_loss_parts(L)
    assert i2t.item() == pytest.approx(ce(rows), abs=1e-6)
    assert t2i.item() == pytest.approx(ce(cols), abs=1e-6)
    assert clip_loss(L).item() == pytest.approx((ce(rows) + ce(cols)) / 2, abs=1e-6)
    assert ce(rows) != pytest.approx(ce(cols), abs=1e-3)  # the two halves really differ here
    # symmetric: swapping images and texts swaps the halves, the loss is unchanged
    i2t_T, t2i_T = clip_loss_parts(L.t())
    assert torch.allclose(i2t_T, t2i) and torch.allclose(t2i_T, i2t)
    assert torch.allclose(clip_loss(L.t()), clip_loss(L))
    with pytest.raises(ValueError, match="square"):
        clip_loss(torch.zeros(2, 3))


def test_contrastive_logits_are_scaled_cosines():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    b = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    s = torch.tensor(math.log(20.0))
    logits = contrastive_logits(a, b, s)
    assert logits.shape == (4, 5)
    assert torch.allclose(logits[1, 3], 20 * (a[1] * b[3]).sum(), atol=1e-5)
    with pytest.raises(ValueError, match="embedding sizes"):
        contrastive_logits(a, torch.randn(3, 7), s)


def test_forward_outputs_match_the_formula_and_non_square_batches():
    model = _tiny().eval()
    x = torch.randn(3, 3, 16, 16)
    ids, mask = _ids([5, 12, 3, 7, 9], 12, 50, 6)
    out = model(x, ids, mask)
    assert out.logits_per_image.shape == (3, 5) and out.logits_per_text.shape == (5, 3)
    assert out.loss is None and out.loss_i2t is None  # no diagonal for 3 images x 5 captions
    img = F.normalize(model.encode_image(x), dim=-1)
    txt = F.normalize(model.encode_text(ids, mask), dim=-1)
    # the image feature is the CLS token of the shared ViT's output (all tokens final-normed)
    cls = model.visual_projection(model.image_encoder(x)[:, 0])
    assert torch.allclose(model.encode_image(x), cls, atol=1e-6)
    assert torch.allclose(out.image_embeds, img, atol=1e-6)
    assert torch.allclose(out.text_embeds, txt, atol=1e-6)
    assert out.image_embeds.norm(dim=-1).sub(1).abs().max() < 1e-5
    expected = math.exp(math.log(1 / 0.07)) * img @ txt.T
    assert torch.allclose(out.logits_per_image, expected, atol=1e-5)
    assert torch.equal(out.logits_per_text, out.logits_per_image.T)
    with pytest.raises(ValueError, match="as many images as captions"):
        model(x, ids, mask, return_loss=True)
    with pytest.raises(TypeError, match="index"):  # unknown keywords raise; train() filters
        model(x[:2], ids[:2], mask[:2], index=torch.arange(2))
    out2 = model(x[:2], ids[:2], mask[:2])
    assert out2.loss is not None
    assert torch.allclose(out2.loss, (out2.loss_i2t + out2.loss_t2i) / 2)
    assert torch.allclose(out2.loss, clip_loss(out2.logits_per_image))
    with pytest.raises(ValueError, match="both pixel_values"):
        model(pixel_values=x)


def test_batch_of_one_has_zero_loss_and_finite_gradients():
    model = _tiny()
    ids, mask = _ids([4], 12, 50, 6)
    out = model(torch.randn(1, 3, 16, 16), ids, mask)
    assert out.logits_per_image.shape == (1, 1)
    assert out.loss.item() == 0.0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------------------
# Temperature
# ---------------------------------------------------------------------------


def test_logit_scale_is_clamped_at_log_100():
    model = _tiny()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)  # e^7 ~ 1097 would be far above the clamp
    x = torch.randn(2, 3, 16, 16)
    ids, mask = _ids([5, 8], 12, 50, 6)
    out = model(x, ids, mask)
    assert out.logit_scale.item() == pytest.approx(LN100, abs=1e-6)
    assert out.logits_per_image.abs().max() <= 100 + 1e-4
    assert model.temperature == pytest.approx(0.01, rel=1e-5)
    out.loss.backward()
    assert model.logit_scale.grad.item() == 0.0  # no gradient pushes it further up
    model.on_after_step(1)  # what the train loop calls after optimizer.step()
    assert model.logit_scale.item() == pytest.approx(LN100, abs=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.on_after_step(2)
    assert model.logit_scale.item() == 2.0  # below the clamp: untouched
    with pytest.raises(ValueError, match="above the clamp"):
        CLIPConfig(temperature=0.001)
    with pytest.raises(ValueError, match="CLS token"):
        CLIPConfig(vision=dict(global_pool="avg"))


@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01])
def test_fixed_temperature_gets_no_gradient(tau):
    model = _tiny(temperature=tau, learn_temperature=False)
    assert not model.logit_scale.requires_grad
    assert model.temperature == pytest.approx(tau, rel=1e-5)
    ids, mask = _ids([5, 8, 3], 12, 50, 6)
    out = model(torch.randn(3, 3, 16, 16), ids, mask)
    cos = out.image_embeds @ out.text_embeds.T
    assert torch.allclose(out.logits_per_image, cos / tau, atol=1e-4 / tau)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    out.loss.backward()
    assert model.logit_scale.grad is None
    assert model.text_projection.weight.grad.abs().sum() > 0
    opt.step()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / tau), abs=1e-6)


def test_learned_temperature_trains_through_the_loop_and_stays_clamped():
    from minivlm.train import TrainConfig, train

    model = _tiny()
    with torch.no_grad():
        model.logit_scale.fill_(LN100 - 0.01)
    ids, mask = _ids([5, 8, 3, 6], 12, 50, 6)
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "input_ids": ids,
             "attention_mask": mask, "index": torch.arange(4)}  # fmt: skip
    cfg = TrainConfig(steps=4, lr=0.5, grad_clip=None, weight_decay=0.0, progress=False)
    res = train(model, [batch], cfg, device="cpu")
    assert set(res.history) >= {"loss", "loss_i2t", "loss_t2i"}
    assert model.logit_scale.item() <= LN100 + 1e-6  # AdamW moved it; the hook clamped it
    assert model.logit_scale.item() != pytest.approx(LN100 - 0.01, abs=1e-4)


# ---------------------------------------------------------------------------
# Zero-shot classification
# ---------------------------------------------------------------------------


class FakeTokenizer:
    """Word-level stand-in with minivlm's interface: [PAD]=0, [BOS]=5, [EOS]=6."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.calls: list[dict] = []

    def _id(self, w: str) -> int:
        return self.vocab.setdefault(w, 8 + len(self.vocab))

    def __call__(self, texts, add_bos=False, add_eos=False, **kwargs):
        self.calls.append(dict(add_bos=add_bos, add_eos=add_eos, **kwargs))
        seqs = [([5] if add_bos else []) + [self._id(w) for w in t.split()] + ([6] if add_eos
                else []) for t in texts]  # fmt: skip
        T = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
        return {"input_ids": ids, "attention_mask": mask}


def test_zero_shot_classifier_with_prompt_ensembling_equals_manual():
    model = _tiny()
    tok = FakeTokenizer()
    classes = ["red circle", "blue square", "triangle"]
    templates = ["a photo of a {}", "{}", "a picture with one small {} in it"]
    clf = build_zero_shot_classifier(model, tok, classes, templates, batch_size=4)
    assert clf.shape == (3, 16)
    assert tok.calls[0]["add_bos"] and tok.calls[0]["add_eos"]
    assert model.training  # the mode is restored
    with torch.no_grad():
        manual = []
        for c in classes:
            embs = []
            for t in templates:  # one text at a time: no padding at all
                b = tok([t.format(c)], add_bos=True, add_eos=True)
                embs.append(F.normalize(model.encode_text(b["input_ids"]), dim=-1)[0])
            manual.append(F.normalize(torch.stack(embs).mean(0), dim=-1))
        manual = torch.stack(manual)
    assert torch.allclose(clf, manual, atol=1e-5)
    single = build_zero_shot_classifier(model, tok, classes, "{}")
    assert not torch.allclose(single, clf, atol=1e-3)  # ensembling changes the classifier

    x = torch.randn(4, 3, 16, 16)
    logits, pred = zero_shot_predict(model, x, clf)
    with torch.no_grad():
        img = F.normalize(model.encode_image(x), dim=-1)
    assert torch.allclose(logits, img @ manual.T / 0.07, atol=1e-4)
    assert torch.equal(pred, logits.argmax(-1))
    with pytest.raises(ValueError, match="placeholder"):
        build_zero_shot_classifier(model, tok, classes, ["a photo"])
    with pytest.raises(ValueError, match="classifier of shape"):
        zero_shot_predict(model, x, clf[:, :5])


# ---------------------------------------------------------------------------
# Presets and parameter counts
# ---------------------------------------------------------------------------

# (preset, HF CLIPConfig kwargs, published parameter count)
PUBLISHED = [
    ("clip_vit_b32", {}, 151_277_313),
    ("clip_vit_b16", dict(vision_config=dict(patch_size=16)), 149_620_737),
    ("clip_vit_l14", dict(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                           num_hidden_layers=24, patch_size=14, image_size=224),
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=12),
        projection_dim=768), 427_616_513),
]  # fmt: skip


@pytest.mark.parametrize("name,hf_kwargs,count", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_presets_count_like_hf(name, hf_kwargs, count):
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = minivlm.create_model(name)
        hf = transformers.CLIPModel(transformers.CLIPConfig(**hf_kwargs))
    assert minivlm.count_parameters(ours) == count
    assert sum(p.numel() for p in hf.parameters()) == count


def test_clip_tiny_preset_and_overrides():
    model = minivlm.create_model("clip_tiny", vocab_size=81, text_depth=2, embed_dim=64)
    cfg = model.config
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.dim) == (64, 8, 128)
    assert cfg.vision.pre_norm and cfg.vision.act == "quick_gelu" and cfg.vision.eps == 1e-5
    assert (cfg.text.vocab_size, cfg.text.depth, cfg.text.eos_token_id) == (81, 2, 6)
    assert cfg.embed_dim == 64 and model.text_projection.weight.shape == (64, 128)
    assert minivlm.create_model("clip_tiny").config.text.vocab_size == 256
    fixed = minivlm.create_model("clip_tiny", temperature=0.1, learn_temperature=False)
    assert fixed.logit_scale.item() == pytest.approx(math.log(10), abs=1e-6)
    with pytest.raises(ValueError, match="unknown override"):
        minivlm.create_model("clip_tiny", depth=2)
    ids, mask = _ids([10, 32], 32, 81, 6)
    out = model(torch.randn(2, 3, 64, 64), ids, mask)
    assert out.logits_per_image.shape == (2, 2) and torch.isfinite(out.loss)
    assert "clip_tiny" in minivlm.list_models("clip*")


def test_clip_tiny_cnn_preset_convnet_tower():
    """clip_tiny_cnn: clip_tiny's text tower with a ConvNet image tower (§2.4's ResNets)."""
    from minivlm.nn.convnet import ConvNet, ConvNetConfig

    model = minivlm.create_model("clip_tiny_cnn", vocab_size=81)
    assert isinstance(model.image_encoder, ConvNet)
    assert isinstance(model.config.vision, ConvNetConfig) and model.config.vision.dim == 64
    assert model.visual_projection.weight.shape == (128, 64)
    # the pooled feature is the per-channel maximum of the last feature map
    px = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fmap = model.image_encoder.features(px)  # (3, 64, 8, 8)
    assert fmap.shape == (3, 64, 8, 8)
    torch.testing.assert_close(model.image_encoder(px), fmap.flatten(2).max(-1).values)
    torch.testing.assert_close(model.encode_image(px), model.visual_projection(fmap.amax((2, 3))))
    ids, mask = _ids([10, 32, 5], 32, 81, 6)
    out = model(px, ids, mask)
    out.loss.backward()
    assert all(p.grad is not None for p in model.image_encoder.parameters())
    with pytest.raises(ValueError, match="bad override"):
        minivlm.create_model("clip_tiny_cnn", patch_size=8)  # no patches in a CNN
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode_image(torch.randn(2, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        model.encode_image(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="too small"):
        ConvNetConfig(image_size=4)
    with pytest.raises(TypeError, match="ConvNetConfig"):
        CLIPConfig(vision=3)


def test_learns_to_match_a_fixed_batch():
    model = _tiny()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ids, mask = _ids([4, 5, 6, 7, 8, 3, 5, 6], 12, 50, 6, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(20):
        out = model(x, ids, mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.on_after_step(step)
        losses.append(out.loss.item())
    assert losses[0] > 1.0  # near chance (ln 8 = 2.08) at init
    assert losses[-1] < 0.05  # 8 pairs memorised: each image picks its own caption
    out = model(x, ids, mask)
    assert torch.equal(out.logits_per_image.argmax(1), torch.arange(8))


# ---------------------------------------------------------------------------
# Hugging Face parity
# ---------------------------------------------------------------------------

HF_CONFIGS = {
    # quick_gelu, 5 heads of width 8, MLP 2.5x, first-[EOS] pooling with [EOS] also the pad id
    "quickgelu_eos_pad": dict(
        text_config=dict(vocab_size=99, hidden_size=48, intermediate_size=72,
                         num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
                         eos_token_id=7, bos_token_id=5, pad_token_id=7),
        vision_config=dict(hidden_size=40, intermediate_size=100, num_attention_heads=5,
                           num_hidden_layers=3, image_size=24, patch_size=6),
        projection_dim=24, logit_scale_init_value=1.3),
    # exact GELU in both towers, legacy eos_token_id=2: pooled at the largest id (argmax)
    "gelu_legacy_eos2": dict(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_attention_heads=2, num_hidden_layers=3, max_position_embeddings=20,
                         eos_token_id=2, bos_token_id=1, pad_token_id=0, hidden_act="gelu"),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_hidden_layers=2, image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=16, logit_scale_init_value=3.0),
    # one layer each, 4 patches of 14 px, 8 text heads of width 8, wide projection, tanh GELU
    "p14_deepheads": dict(
        text_config=dict(vocab_size=120, hidden_size=64, intermediate_size=96,
                         num_attention_heads=8, num_hidden_layers=1, max_position_embeddings=12,
                         eos_token_id=119, bos_token_id=118, pad_token_id=0,
                         hidden_act="gelu_new"),
        vision_config=dict(hidden_size=48, intermediate_size=48, num_attention_heads=3,
                           num_hidden_layers=1, image_size=28, patch_size=14),
        projection_dim=80, logit_scale_init_value=4.0),
    # grayscale images, 49 patches of 4 px, 4 vision layers
    "gray_p4": dict(
        text_config=dict(vocab_size=77, hidden_size=24, intermediate_size=40,
                         num_attention_heads=3, num_hidden_layers=2, max_position_embeddings=10,
                         eos_token_id=30, bos_token_id=29, pad_token_id=0),
        vision_config=dict(hidden_size=36, intermediate_size=60, num_attention_heads=6,
                           num_hidden_layers=4, image_size=28, patch_size=4, num_channels=1),
        projection_dim=12, logit_scale_init_value=2.0),
}  # fmt: skip


def _features(out) -> torch.Tensor:
    """HF >= 5 returns a ModelOutput whose pooler_output is projected; older ones a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _random_hf(kwargs: dict, seed: int):
    torch.manual_seed(seed)
    hf = transformers.CLIPModel(transformers.CLIPConfig(**kwargs)).eval()
    with torch.no_grad():  # perturb everything: a wrong mapping can't hide behind 0 or 1
        for name, p in hf.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.2)
    return hf


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_from_hf_matches_transformers(name):
    kw = HF_CONFIGS[name]
    hf = _random_hf(kw, seed=len(name))
    ours = CLIP.from_hf(hf)
    assert ours.logit_scale.item() == pytest.approx(kw["logit_scale_init_value"])
    assert minivlm.count_parameters(ours) == sum(p.numel() for p in hf.parameters())
    tc, vc = kw["text_config"], kw["vision_config"]
    V, T, eos = tc["vocab_size"], tc["max_position_embeddings"], tc["eos_token_id"]
    legacy = eos == 2
    eos_id = V - 1 if legacy else eos  # legacy rule: [EOS] is the largest id in the row
    pad = tc["pad_token_id"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, vc.get("num_channels", 3), vc["image_size"], vc["image_size"], generator=g)
    lengths = [T, T - 3, 2]  # full row, padded rows
    ids, mask = _ids(lengths, T, V - 1 if legacy else V, eos_id, seed=1, pad=pad)
    ids_full, mask_full = _ids([T, T - 1, T], T, V - 1 if legacy else V, eos_id, seed=2)
    with torch.no_grad():
        img_hf = _features(hf.get_image_features(pixel_values=x))
        img = ours.encode_image(x)
        assert img.shape == img_hf.shape == (3, kw["projection_dim"])
        assert (img - img_hf).abs().max() < 1e-4
        for ii, mm in ((ids, mask), (ids_full, mask_full), (ids_full, None)):
            txt_hf = _features(hf.get_text_features(input_ids=ii, attention_mask=mm))
            assert (ours.encode_text(ii, mm) - txt_hf).abs().max() < 1e-4
            out_hf = hf(input_ids=ii, pixel_values=x, attention_mask=mm)
            out = ours(x, ii, mm)
            assert (out.image_embeds - out_hf.image_embeds).abs().max() < 1e-4
            assert (out.text_embeds - out_hf.text_embeds).abs().max() < 1e-4
            assert (out.logits_per_image - out_hf.logits_per_image).abs().max() < 1e-4
            hf_loss = hf(input_ids=ii, pixel_values=x, attention_mask=mm, return_loss=True).loss
            assert out.loss.item() == pytest.approx(hf_loss.item(), abs=1e-4)


def test_from_hf_rejects_other_models():
    with pytest.raises(TypeError, match="CLIPModel"):
        CLIP.from_hf(torch.nn.Linear(2, 2))


def test_from_pretrained_offline_fails_fast_with_advice(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE") as info:
        CLIP.from_pretrained("minivlm-tests/no-such-clip-model")
    assert time.perf_counter() - t0 < 15
    msg = str(info.value)
    assert "no-such-clip-model" in msg and "save_pretrained" in msg
    assert info.value.__cause__ is not None
