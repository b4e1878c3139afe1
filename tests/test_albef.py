"""ALBEF: momentum model (EMA), queues, momentum distillation, hard negatives, Grad-CAM, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.interpret import gradcam
from minivlm.models.albef import ALBEF, MOMENTUM_MODULES, ALBEFConfig, ALBEFOutput
from minivlm.objectives import (
    distill_targets,
    ema_update_,
    enqueue_,
    mlm_distill_loss,
    same_pair_mask,
    sample_hard_negatives,
    soft_cross_entropy,
)
from minivlm.train import TrainConfig, default_param_groups, train
from minivlm.utils import count_parameters

B, T, IMG = 4, 7, 32


def small(**kw) -> ALBEF:
    """albef_tiny on 32 px images with a short queue (fast enough for unit tests)."""
    torch.manual_seed(kw.pop("seed", 0))
    base = dict(image_size=IMG, queue_size=16, alpha_warmup_steps=0)
    return minivlm.create_model("albef_tiny", **{**base, **kw})


def batch(b: int = B, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 60, (b, T), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones(b, T, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = 0, 0  # padding on the right
    ids[1, 4] = 3  # [SEP]
    return {
        "pixel_values": torch.randn(b, 3, IMG, IMG, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
    }


def momentum_params(model: ALBEF) -> list[torch.nn.Parameter]:
    return [p for m in model.momentum_modules() for p in m.parameters()]


# --------------------------------------------------------------------------- momentum model


def test_ema_update_follows_the_formula_and_updates_tied_weights_once():
    model = small(momentum=0.9)
    with torch.no_grad():  # make online and momentum differ everywhere
        for p, _ in model.momentum_pairs():
            p.add_(torch.randn_like(p))
    pairs = list(model.momentum_pairs())
    online = [p.detach().clone() for p, _ in pairs]
    before = [pm.detach().clone() for _, pm in pairs]
    model.momentum_update()
    for p, pm0, (_, pm) in zip(online, before, pairs, strict=True):
        torch.testing.assert_close(pm, 0.9 * pm0 + 0.1 * p, rtol=0, atol=1e-6)
    # the MLM decoder of the copy stays tied to its word embeddings (averaged once, above)
    m = model.momentum
    assert m.mlm_head.decoder.weight is m.text_encoder.word_embeddings.weight
    assert model.mlm_head.decoder.weight is model.text_encoder.word_embeddings.weight
    # every momentum parameter has an online partner
    assert {id(pm) for _, pm in pairs} == {id(p) for p in momentum_params(model)}

    # the plain function
    p, pm = torch.randn(3, 2), torch.randn(3, 2)
    expected = 0.995 * pm + 0.005 * p
    ema_update_([(p, pm)], 0.995)
    torch.testing.assert_close(pm, expected)


def test_training_forward_updates_momentum_first_and_eval_forward_changes_nothing():
    model = small(momentum=0.5)
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            p.add_(0.1)
    ref = model.momentum.image_encoder.patch_embed.weight.detach().clone()
    online = model.image_encoder.patch_embed.weight.detach().clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model(**batch())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"eval-mode forward changed {k}"
    model.train()
    model(**batch())
    torch.testing.assert_close(
        model.momentum.image_encoder.patch_embed.weight, 0.5 * ref + 0.5 * online
    )
    assert int(model.num_steps) == 1 and int(model.queue_ptr) == B


def test_momentum_model_gets_no_gradient_and_is_not_optimised():
    model = small()
    assert all(not p.requires_grad for p in momentum_params(model))
    out = model(**batch())
    out.loss.backward()
    assert all(p.grad is None for p in momentum_params(model))
    assert model.image_encoder.patch_embed.weight.grad is not None
    assert model.temp.grad is not None
    groups = default_param_groups(model, 0.02)
    optimised = {id(p) for g in groups for p in g["params"]}
    assert optimised.isdisjoint({id(p) for p in momentum_params(model)})
    online = {id(p) for name in MOMENTUM_MODULES for p in getattr(model, name).parameters()}
    online |= {id(p) for p in model.itm_head.parameters()} | {id(model.temp)}
    assert optimised == online
    # the momentum copies stay in eval mode whatever the model's mode
    model.train()
    assert model.training and not any(m.training for m in model.momentum_modules())


# --------------------------------------------------------------------------- queues


def test_enqueue_wraps_around_the_end_of_the_queue():
    E, K = 3, 10
    queue, ptr = torch.zeros(E, K), torch.zeros((), dtype=torch.long)
    ring = [0.0] * K  # reference: write features one by one
    pos, n = 0, 0
    for b in (4, 4, 4, 3, 7, 10, 13):  # crosses the end, exactly K, more than K
        feats = torch.arange(n, n + b, dtype=torch.float32)[:, None].repeat(1, E)  # (b, E)
        n += b
        enqueue_(queue, ptr, feats)
        for f in feats[:, 0].tolist():
            ring[pos] = f
            pos = (pos + 1) % K
        assert int(ptr) == pos
        assert queue[0].tolist() == ring
        assert torch.equal(queue[0], queue[2])
    # the first wrap: after 4 + 4 the third batch fills columns 8, 9, 0, 1
    q, p = torch.zeros(1, K), torch.zeros((), dtype=torch.long)
    for k in range(3):
        enqueue_(q, p, torch.full((4, 1), float(k + 1)))
    assert q[0].tolist() == [3, 3, 1, 1, 2, 2, 2, 2, 3, 3] and int(p) == 2
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        enqueue_(q, p, torch.zeros(4, 2))


def test_model_queues_wrap_around_with_a_batch_that_does_not_divide_k():
    model = small(queue_size=10)
    img, txt = F.normalize(torch.randn(4, 64), dim=1), F.normalize(torch.randn(4, 64), dim=1)
    for _ in range(2):
        model.dequeue_and_enqueue(img, txt)
    old_iq, old_tq = model.image_queue.clone(), model.text_queue.clone()
    model.dequeue_and_enqueue(2 * img, 3 * txt)  # columns 8, 9, 0, 1
    assert int(model.queue_ptr) == 2
    cols = [8, 9, 0, 1]
    torch.testing.assert_close(model.image_queue[:, cols], 2 * img.t())
    torch.testing.assert_close(model.text_queue[:, cols], 3 * txt.t())
    torch.testing.assert_close(model.image_queue[:, 2:8], old_iq[:, 2:8])
    torch.testing.assert_close(model.text_queue[:, 2:8], old_tq[:, 2:8])


# --------------------------------------------------------------------------- ITC and distillation


def test_distill_targets_rows_sum_to_one_and_alpha_zero_is_one_hot():
    sim = torch.randn(5, 12) * 10
    for alpha in (0.0, 0.4, 1.0):
        t = distill_targets(sim, alpha)
        assert t.shape == (5, 12) and (t >= 0).all()
        torch.testing.assert_close(t.sum(1), torch.ones(5))
    assert torch.equal(distill_targets(sim, 0.0), torch.eye(5, 12))
    torch.testing.assert_close(distill_targets(sim, 1.0), sim.softmax(1))
    torch.testing.assert_close(
        distill_targets(sim, 0.4), 0.4 * sim.softmax(1) + 0.6 * torch.eye(5, 12)
    )
    # soft cross-entropy with one-hot targets is the ordinary cross-entropy
    torch.testing.assert_close(
        soft_cross_entropy(sim, torch.eye(5, 12)), F.cross_entropy(sim, torch.arange(5))
    )


def test_soft_targets_hook_uses_the_momentum_model_and_the_queue():
    model = small(queue_size=8).eval()
    b = batch()
    t = model.soft_targets(**b)
    assert t.shape == (B, B + 8)
    torch.testing.assert_close(t.sum(1), torch.ones(B))
    assert torch.equal(model.soft_targets(**b, alpha=0.0), torch.eye(B, B + 8))
    # α = 1: softmax of momentum similarities over [batch texts; queue] / τ
    with torch.no_grad():  # fresh model: the momentum copy equals the online model
        img, txt = (
            model.encode_image(b["pixel_values"]),
            model.encode_text(b["input_ids"], b["attention_mask"]),
        )
    sim = img @ torch.cat([txt.t(), model.text_queue], 1) / 0.07
    torch.testing.assert_close(
        model.soft_targets(**b, alpha=1.0), sim.softmax(1), atol=1e-5, rtol=0
    )
    sim_t = txt @ torch.cat([img.t(), model.image_queue], 1) / 0.07
    torch.testing.assert_close(
        model.soft_targets(**b, alpha=1.0, direction="t2i"), sim_t.softmax(1), atol=1e-5, rtol=0
    )
    # it reads the momentum model, not the online one
    with torch.no_grad():
        model.momentum.text_proj.weight.mul_(-1)
    assert not torch.allclose(model.soft_targets(**b, alpha=1.0), sim.softmax(1), atol=1e-3)


def test_itc_loss_equals_hand_computed_cross_entropy_against_the_queue():
    model = small(distill=False, itm_weight=0.0, mlm_weight=0.0)
    b = batch()
    iq, tq = model.image_queue.clone(), model.text_queue.clone()
    with torch.no_grad():
        img, txt = (
            model.encode_image(b["pixel_values"]),
            model.encode_text(b["input_ids"], b["attention_mask"]),
        )
    out = model(**b)
    assert isinstance(out, ALBEFOutput) and out.alpha == 0.0
    i2t = img @ torch.cat([txt.t(), tq], 1) / 0.07  # (B, B+K); momentum == online at init
    t2i = txt @ torch.cat([img.t(), iq], 1) / 0.07
    labels = torch.arange(B)
    expected = (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels)) / 2
    torch.testing.assert_close(out.loss_itc, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, out.loss_itc)
    # the momentum features were enqueued after the loss: columns 0..B-1 now hold them
    torch.testing.assert_close(model.text_queue[:, :B], txt.t(), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.image_queue[:, :B], img.t(), atol=1e-6, rtol=0)


def test_temperature_is_clamped_as_in_the_paper():
    model = small()
    for value, clamped in ((5.0, 0.5), (1e-5, 0.001), (0.2, 0.2)):
        with torch.no_grad():
            model.temp.fill_(value)
        out = model(**batch())
        assert model.temp.item() == pytest.approx(clamped)
        assert out.temperature.item() == pytest.approx(clamped)
        assert model.temperature == pytest.approx(clamped)
        # the similarities are cosines / τ: |sim| <= 1/τ
        assert out.sim_i2t.abs().max().item() <= 1 / clamped + 1e-3


def test_alpha_ramps_linearly_over_the_warmup_steps():
    model = small(alpha=0.4, alpha_warmup_steps=10)
    assert model.current_alpha() == 0.0
    model.on_after_step(5, 100)
    assert model.current_alpha() == pytest.approx(0.2)
    out = model(**batch())  # uses α(5), then counts a step
    assert out.alpha == pytest.approx(0.2) and int(model.num_steps) == 6
    model.on_after_step(25, 100)
    assert model.current_alpha() == pytest.approx(0.4)
    assert model(**batch(), alpha=0.1).alpha == pytest.approx(0.1)
    assert small(distill=False).current_alpha() == 0.0


def test_mlm_distill_loss_mixes_hard_and_soft_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    soft = torch.randn(2, 5, 11, generator=g).softmax(-1)
    sel = labels != -100
    ce = F.cross_entropy(logits[sel], labels[sel])
    h = -(soft[sel] * logits[sel].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(mlm_distill_loss(logits, labels), ce)
    torch.testing.assert_close(mlm_distill_loss(logits, labels, soft, 0.4), 0.6 * ce + 0.4 * h)
    none = mlm_distill_loss(logits.requires_grad_(), torch.full((2, 5), -100), soft, 0.4)
    assert none.item() == 0.0 and none.requires_grad


# --------------------------------------------------------------------------- ITM hard negatives


def test_hard_negatives_never_pick_the_positive():
    n = 8
    strong = torch.full((n, n + 3), -50.0)
    strong[:, :n] += 1000 * torch.eye(n)  # the similarities all but say "pick the positive"
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        neg_t, neg_i = sample_hard_negatives(strong, strong.clone(), generator=g)
        assert (neg_t != torch.arange(n)).all() and (neg_i != torch.arange(n)).all()
    with pytest.raises(ValueError, match="at least 2"):
        sample_hard_negatives(torch.zeros(1, 5), torch.zeros(1, 5))


def test_hard_negatives_follow_the_softmax_of_the_similarities():
    sim = torch.tensor([[9.0, 2.0, 1.0, 0.0], [0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 3.0],
                        [1.0, 1.0, 1.0, 9.0]])  # fmt: skip
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(sim, sim, generator=g)[0] for _ in range(2500)])
    freq = torch.stack([(draws == j).float().mean(0) for j in range(4)], 1)  # (4, 4)
    expected = sim.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf")).softmax(1)
    torch.testing.assert_close(freq, expected, atol=0.035, rtol=0)  # ~3.5 sigma


def test_hard_negatives_skip_duplicates_and_fall_back_when_none_is_left():
    n = 4
    sim = torch.zeros(n, n)
    exclude = torch.zeros(n, n, dtype=torch.bool)
    exclude[0, 1] = exclude[1, 0] = True  # pairs 0 and 1 have the same caption
    exclude[2, :] = True  # row 2: everything excluded -> any j != 2
    g = torch.Generator().manual_seed(0)
    seen_row2 = set()
    for _ in range(200):
        neg_t, neg_i = sample_hard_negatives(sim, sim, exclude, generator=g)
        assert neg_t[0] not in (0, 1) and neg_t[1] not in (0, 1)
        assert neg_t[2] != 2 and neg_i[3] != 3
        seen_row2.add(int(neg_t[2]))
    assert seen_row2 == {0, 1, 3}


def test_model_itm_batch_layout_and_duplicate_captions():
    model = small(mlm_weight=0.0)
    b = batch(b=6)
    b["input_ids"][3] = b["input_ids"][0]  # the same caption twice
    b["attention_mask"][3] = b["attention_mask"][0]
    index = torch.tensor([0, 1, 2, 3, 4, 1])  # and the same image twice (rows 1 and 5)
    out = model(**b, index=index)
    assert out.itm_logits.shape == (18, 2)
    assert out.itm_labels.tolist() == [1] * 6 + [0] * 12
    assert out.sim_i2t.shape == (6, 6 + 16) and out.sim_t2i.shape == (6, 6 + 16)
    # rows: (image i, caption i); (image i, hard-negative caption); (hard-negative image, caption i)
    nt, ni = out.neg_text_idx, out.neg_image_idx
    px, ids, am = b["pixel_values"], b["input_ids"], b["attention_mask"]
    with torch.no_grad():  # the forward only moved the momentum copy: online weights as before
        expected = torch.cat([model.itm_logits(px, ids, am), model.itm_logits(px, ids[nt], am[nt]),
                              model.itm_logits(px[ni], ids, am)])  # fmt: skip
    torch.testing.assert_close(out.itm_logits, expected, atol=1e-5, rtol=1e-4)
    # duplicates of a positive are never drawn as its negative
    exclude = same_pair_mask(ids, am, index)
    dup = torch.eye(6, dtype=torch.bool)
    dup[0, 3] = dup[3, 0] = dup[1, 5] = dup[5, 1] = True
    assert torch.equal(exclude, dup)
    g = torch.Generator().manual_seed(0)
    sim = out.sim_i2t.detach()
    for _ in range(200):
        for neg in sample_hard_negatives(sim, sim, exclude, generator=g):
            assert not dup[torch.arange(6), neg].any()


def test_itm_score_and_fusion_maps():
    model = small().eval()
    b = batch()
    with torch.no_grad():
        score = model.itm_score(**b)
        out = model.fusion(**b, need_weights=True)
    assert score.shape == (B,) and ((score > 0) & (score < 1)).all()
    assert len(out.cross_attentions) == 2  # albef_tiny: 2 fusion layers
    n = (IMG // 8) ** 2
    assert out.cross_attentions[0].shape == (B, 4, T, 1 + n)
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(B, 4, T))
    assert out.last_hidden_state.shape == (B, T, 128)


# --------------------------------------------------------------------------- Grad-CAM


def test_gradcam_shape_non_negative_and_zero_on_padding():
    model = small().eval()
    b = batch()
    cam = gradcam(model, **b)
    assert cam.shape == (B, T, (IMG // 8) ** 2)
    assert (cam >= 0).all() and cam.sum() > 0
    assert (cam[1, 5:] == 0).all()  # padded text positions
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients left
    # it is the mean over heads of attention · relu(gradient) of the ITM match logit
    with torch.enable_grad():
        out = model.fusion(**b, need_weights=True)
        attn = out.cross_attentions[-1]
        score = model.itm_head(out.last_hidden_state[:, 0])[:, 1].sum()
        (grad,) = torch.autograd.grad(score, attn)
    manual = (attn[..., 1:] * grad[..., 1:].clamp(min=0)).mean(1)
    manual = manual * b["attention_mask"][:, :, None]
    torch.testing.assert_close(gradcam(model, **b, layer=-1), manual.detach(), atol=1e-7, rtol=1e-4)
    with pytest.raises(ValueError, match="fusion layers"):
        gradcam(model, **b, layer=2)
    # in the last fusion layer only the [CLS] row reaches the ITM head: word maps are zero
    # there, so the default must pick an earlier layer whose word maps are not
    assert (gradcam(model, **b, layer=-1)[:, 1:] == 0).all()
    assert gradcam(model, **b)[:, 1:].sum() > 0


# --------------------------------------------------------------------------- presets and errors


def test_tiny_preset_config_and_overrides():
    model = minivlm.create_model("albef_tiny", vocab_size=81, queue_size=64)
    cfg = model.config
    assert cfg.text.vocab_size == 81 and model.mlm_head.decoder.out_features == 81
    assert cfg.text.cross_attention_ids == (2, 3) and cfg.fusion_from == 2
    assert cfg.vision.image_size == 64 and cfg.vision.patch_size == 8 and cfg.vision.depth == 3
    assert model.image_queue.shape == (64, 64) and model.text_queue.shape == (64, 64)
    assert [b.cross_attention for b in model.text_encoder.blocks] == [False, False, True, True]
    assert model.temp.item() == pytest.approx(0.07)
    m2 = minivlm.create_model("albef_tiny", vision_depth=1, text={"depth": 3}, fusion_from=1)
    assert m2.config.vision.depth == 1 and m2.config.text.cross_attention_ids == (1, 2)
    assert m2.config.vision.dim == 128  # nested dicts merge into the preset
    with pytest.raises(ValueError, match="unknown override"):
        minivlm.create_model("albef_tiny", colour=3)
    with pytest.raises(ValueError, match="fusion_from"):
        ALBEFConfig(fusion_from=12)
    with pytest.raises(ValueError, match="mask_token_id"):
        minivlm.create_model("albef_tiny", vocab_size=4)


def test_bad_inputs_raise_clear_errors():
    model = small()
    b = batch()
    with pytest.raises(ValueError, match="as many images as captions"):
        model(b["pixel_values"][:3], b["input_ids"], b["attention_mask"])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        model(b["pixel_values"][:1], b["input_ids"][:1], b["attention_mask"][:1])
    with pytest.raises(ValueError, match="expected pixel_values"):
        model(input_ids=b["input_ids"])
    with pytest.raises(ValueError, match="vocabulary"):
        model(b["pixel_values"], b["input_ids"] + 300, b["attention_mask"])


def test_albef_base_builds_on_meta_with_about_210m_parameters():
    with torch.device("meta"):
        model = minivlm.create_model("albef_base")
    n = count_parameters(model, trainable_only=True)
    # ViT-B/16 at 256 px (85.8M + 60 more positions) + BERT-base without pooler (108.9M)
    # + 6 cross-attention layers + projections, ITM head, MLM head transform/bias, τ
    vit = 85_798_656 + 60 * 768
    bert = 109_482_240 - (768 * 768 + 768)
    cross = 6 * (4 * (768 * 768 + 768) + 2 * 768)
    heads = 2 * (768 * 256 + 256) + (768 * 2 + 2) + (768 * 768 + 768 + 2 * 768 + 30522) + 1
    print(f"albef_base: {n:,} trainable parameters (paper: ~210M); {count_parameters(model):,} "
          "with the momentum copy")  # fmt: skip
    assert n == vit + bert + cross + heads
    assert 209e6 < n < 211e6
    assert model.image_queue.shape == (256, 65536)
    assert model.config.text.cross_attention_ids == (6, 7, 8, 9, 10, 11)


# --------------------------------------------------------------------------- training


def test_loss_decreases_on_shapes_world_with_the_training_loop():
    from minivlm.data import CaptionDataset, ShapesWorld, shapes_tokenizer

    tok = shapes_tokenizer()
    # 32 px scenes and batches of 8 keep this to ~4 s of CPU; the loss still falls by ~1.6
    data = ShapesWorld(image_size=IMG).generate(256, seed=0)
    ds = CaptionDataset(data, tok, add_cls=True, add_sep=True, add_bos=False, add_eos=False)
    torch.manual_seed(0)
    model = minivlm.create_model(
        "albef_tiny", vocab_size=tok.vocab_size, vision_depth=2, queue_size=256,
        alpha_warmup_steps=10, image_size=IMG,
    )  # fmt: skip
    cfg = TrainConfig(steps=30, lr=1e-3, batch_size=8, warmup_steps=3, progress=False,
                      log_every=5, seed=0)  # fmt: skip
    res = train(model, ds, cfg, device="cpu")
    h = res.history
    first, last = sum(h["loss"][:5]) / 5, sum(h["loss"][-5:]) / 5
    assert last < first - 0.5, (first, last)
    for part in ("loss_itc", "loss_itm", "loss_mlm"):
        assert len(h[part]) == 30
    assert sum(h["loss_mlm"][-5:]) < sum(h["loss_mlm"][:5])
    assert int(model.num_steps) == 30 and model.current_alpha() == pytest.approx(0.4)
    assert int(model.queue_ptr) == (30 * 8) % 256
    # the momentum model moved towards the trained weights but lags behind them
    w, w_m = model.text_proj.weight, model.momentum.text_proj.weight
    assert not torch.equal(w, w_m)
    assert all(not p.requires_grad for p in momentum_params(model))
