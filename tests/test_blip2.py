"""BLIP-2 / InstructBLIP: Q-Former masks, the three stage-1 losses, the frozen soft-prompt LM of
stage 2, Hugging Face parity of the query features, presets and training on the shapes world."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.models.blip2 import (
    Blip2,
    Blip2Config,
    Blip2Output,
    Blip2Stage1Output,
    Blip2Stage2,
    QFormer,
    QFormerConfig,
    itc_similarity,
    qformer_masks,
)
from minivlm.utils import count_parameters

B, T, IMG = 4, 7, 32


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and robust on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(**kw) -> Blip2:
    """blip2_tiny on 32 px images (fast enough for unit tests)."""
    torch.manual_seed(kw.pop("seed", 0))
    return minivlm.create_model("blip2_tiny", **{"image_size": IMG, **kw})


def batch(b: int = B, seed: int = 1, first: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 60, (b, T), generator=g)
    ids[:, 0] = first  # [CLS] for the Q-Former, [BOS] for the LM
    mask = torch.ones(b, T, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = 0, 0  # padding on the right
    return {
        "pixel_values": torch.randn(b, 3, IMG, IMG, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
    }


def frozen_params(model: Blip2) -> list[torch.nn.Parameter]:
    return [p for m in model.frozen_modules() for p in m.parameters()]


def test_config_parts_are_configs_or_dicts():
    """A part given as a dict is built; anything else is named in a TypeError (nn/config.py)."""
    assert Blip2Config(qformer=dict(dim=64, depth=2, num_heads=2)).qformer.depth == 2
    with pytest.raises(TypeError, match=r"Blip2Config\.lm: expected LMConfig, dict or None, got int"):
        Blip2Config(lm=3)
    with pytest.raises(TypeError, match=r"Blip2Config\.qformer: expected QFormerConfig or dict"):
        Blip2Config(qformer="big")


# --------------------------------------------------------------------------- masks


def test_qformer_masks_exact_values():
    m = qformer_masks(2, 3)
    assert set(m) == {"itc", "itm", "itg"}
    for v in m.values():
        assert v.dtype == torch.bool and v.shape == (5, 5)
    # rows: q0 q1 t0 t1 t2 ; columns in the same order
    itc = [[1, 1, 0, 0, 0],
           [1, 1, 0, 0, 0],
           [0, 0, 1, 1, 1],
           [0, 0, 1, 1, 1],
           [0, 0, 1, 1, 1]]  # fmt: skip
    itg = [[1, 1, 0, 0, 0],
           [1, 1, 0, 0, 0],
           [1, 1, 1, 0, 0],
           [1, 1, 1, 1, 0],
           [1, 1, 1, 1, 1]]  # fmt: skip
    assert m["itc"].int().tolist() == itc
    assert m["itg"].int().tolist() == itg
    assert m["itm"].all()
    # degenerate sizes
    assert qformer_masks(3, 0)["itg"].all() and qformer_masks(0, 3)["itg"].int().tolist() == [
        [1, 0, 0], [1, 1, 0], [1, 1, 1]]  # fmt: skip
    with pytest.raises(ValueError, match="num_query"):
        qformer_masks(-1, 2)


def _qformer(text: bool = True) -> QFormer:
    torch.manual_seed(0)
    cfg = QFormerConfig(dim=32, depth=3, num_heads=4, mlp_hidden=64, num_query_tokens=3,
                        vocab_size=50, max_len=16, text=text)  # fmt: skip
    return QFormer(cfg, kv_dim=24).eval()


def test_masks_control_what_queries_and_text_see():
    qf = _qformer()
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 3, 32, generator=g)
    image = torch.randn(2, 5, 24, generator=g)
    ids = torch.randint(1, 50, (2, 6), generator=g)
    other = ids.clone()
    other[:, 1:] = (ids[:, 1:] + 7) % 49 + 1  # different text (the first token kept)
    later = ids.clone()
    later[:, 4:] = (ids[:, 4:] + 3) % 49 + 1  # only tokens 4, 5 changed

    def run(kind, text_ids, img=image):
        with torch.no_grad():
            return qf(queries, text_ids, None, img, mask=kind)

    # ITC: queries never see the text, and the text never sees the image
    a, b = run("itc", ids), run("itc", other)
    assert torch.equal(a.query_output, b.query_output)
    assert not torch.allclose(a.text_output, b.text_output, atol=1e-3)
    c = run("itc", ids, img=image + 1)
    assert torch.equal(a.text_output, c.text_output)
    assert not torch.allclose(a.query_output, c.query_output, atol=1e-3)
    # ... and equals LAVIS's two separate passes: queries alone, text alone
    with torch.no_grad():
        q_alone = qf(queries, None, None, image).query_output
        t_alone = qf(None, ids, None, None).text_output
    torch.testing.assert_close(a.query_output, q_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text_output, t_alone, atol=1e-5, rtol=1e-5)
    # ITM: the queries read the text
    a, b = run("itm", ids), run("itm", other)
    assert (a.query_output - b.query_output).abs().max() > 1e-3
    # ITG: the queries do not see the text; text token t does not see later tokens
    a, b = run("itg", ids), run("itg", later)
    assert torch.equal(a.query_output, b.query_output)
    torch.testing.assert_close(a.text_output[:, :4], b.text_output[:, :4], atol=1e-6, rtol=0)
    assert (a.text_output[:, 4:] - b.text_output[:, 4:]).abs().max() > 1e-3
    # ... but it does see the image, through the queries
    c = run("itg", ids, img=image + 1)
    assert (a.text_output[:, 0] - c.text_output[:, 0]).abs().max() > 1e-4
    # padding: a padded key changes nothing
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[:, 5] = 0
    junk = ids.clone()
    junk[:, 5] = 9
    with torch.no_grad():
        x = qf(queries, ids, pad, image, mask="itm").last_hidden_state[:, :-1]
        y = qf(queries, junk, pad, image, mask="itm").last_hidden_state[:, :-1]
    torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_only_queries_cross_attend_and_weights_are_returned():
    qf = _qformer()
    g = torch.Generator().manual_seed(1)
    out = qf(torch.randn(2, 3, 32, generator=g), torch.randint(1, 50, (2, 4), generator=g), None,
             torch.randn(2, 5, 24, generator=g), mask="itg", need_weights=True)  # fmt: skip
    assert len(out.attentions) == 3 and out.attentions[0].shape == (2, 4, 7, 7)
    assert len(out.cross_attentions) == 2  # layers 0 and 2 (cross_attention_freq=2)
    assert out.cross_attentions[0].shape == (2, 4, 3, 5)  # (B, H, Q, S): queries only
    # the self-attention weights obey the ITG mask
    blocked = ~qformer_masks(3, 4)["itg"]
    assert (out.attentions[1][:, :, blocked] == 0).all()


# --------------------------------------------------------------------------- stage 1


def test_stage1_losses_and_itc_is_the_best_query():
    model = small(label_smoothing=0.0).eval()
    b = batch()
    out = model(**b)
    assert isinstance(out, Blip2Stage1Output)
    torch.testing.assert_close(model.stage1(**b).loss_itc, out.loss_itc)  # forward is stage 1
    for part in (out.loss, out.loss_itc, out.loss_itm, out.loss_itg):
        assert part.dim() == 0 and torch.isfinite(part)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_itg)
    # ITC by hand: max over queries of cosine(query feature, text [CLS] feature) / τ
    with torch.no_grad():
        img = model.encode_image(b["pixel_values"])
        z = model.qformer(model.query_tokens.expand(B, -1, -1), None, None, img).query_output
        t = model.qformer(None, b["input_ids"], b["attention_mask"]).text_output[:, 0]
    zf = F.normalize(model.vision_proj(z), dim=-1)  # (B, Q, E)
    tf = F.normalize(model.text_proj(t), dim=-1)  # (B, E)
    manual = torch.stack([torch.stack([(zf[i] @ tf[j]).max() for j in range(B)])
                          for i in range(B)]) / 0.07  # fmt: skip
    torch.testing.assert_close(out.sim_i2t, manual, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(itc_similarity(zf, tf), manual * 0.07, atol=1e-5, rtol=1e-5)
    labels = torch.arange(B)
    expected = (F.cross_entropy(manual, labels) + F.cross_entropy(manual.t(), labels)) / 2
    torch.testing.assert_close(out.loss_itc, expected, atol=1e-4, rtol=1e-4)
    # ITG: [DEC] replaces [CLS]; next-token cross-entropy on the real tokens
    dec = b["input_ids"].clone()
    dec[:, 0] = model.config.dec_token_id
    with torch.no_grad():
        h = model.qformer(model.query_tokens.expand(B, -1, -1), dec, b["attention_mask"], img,
                          mask="itg").text_output  # fmt: skip
    logits = model.itg_head(h)
    lab = dec.masked_fill(b["attention_mask"] == 0, -100)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss_itg, ce, atol=1e-4, rtol=1e-4)
    # the ITG head is tied to the Q-Former's word embeddings
    assert model.itg_head.decoder.weight is model.qformer.word_embeddings.weight


def test_itm_rows_are_positives_then_hard_negatives():
    model = small().eval()
    b = batch(b=6)
    b["input_ids"][3] = b["input_ids"][0]  # the same caption twice
    out = model(**b)
    assert out.itm_logits.shape == (18, 2) and out.itm_labels.tolist() == [1] * 6 + [0] * 12
    nt, ni = out.neg_text_idx, out.neg_image_idx
    assert (nt != torch.arange(6)).all() and (ni != torch.arange(6)).all()
    assert nt[0] != 3 and nt[3] != 0  # a duplicate caption is never a negative
    # row layout: (image i, text i); (image i, negative text); (negative image, text i)
    px, ids, am = b["pixel_values"], b["input_ids"], b["attention_mask"]

    def itm(p, i, a):
        with torch.no_grad():
            img = model.encode_image(p)
            z = model.qformer(model.query_tokens.expand(len(i), -1, -1), i, a, img, mask="itm")
            return model.itm_head(z.query_output).mean(1)

    expected = torch.cat([itm(px, ids, am), itm(px, ids[nt], am[nt]), itm(px[ni], ids, am)])
    torch.testing.assert_close(out.itm_logits, expected, atol=1e-5, rtol=1e-4)


def test_temperature_is_clamped():
    model = small()
    with torch.no_grad():
        model.temp.fill_(5.0)
    out = model(**batch())
    assert model.temp.item() == pytest.approx(0.5) and out.temperature.item() == pytest.approx(0.5)
    assert out.sim_i2t.abs().max().item() <= 2.0 + 1e-4  # |cos| / 0.5


# --------------------------------------------------------------------------- frozen parts


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_parts_get_no_gradient_and_do_not_change(stage):
    model = small()
    frozen = frozen_params(model)
    assert frozen and all(not p.requires_grad for p in frozen)
    assert {id(p) for p in frozen} == {
        id(p) for p in [*model.vision_encoder.parameters(), *model.language_model.parameters()]
    }
    model.train()
    assert model.training and not model.vision_encoder.training
    assert not model.language_model.training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # frozen ones too
    step = model if stage == 1 else Blip2Stage2(model)
    out = step(**batch(first=2 if stage == 1 else 5))
    out.loss.backward()
    assert all(p.grad is None for p in frozen)
    opt.step()
    after = dict(model.named_parameters())
    for n, p in after.items():
        if n.startswith(("vision_encoder.", "language_model.")):
            assert torch.equal(p, before[n]), f"frozen parameter {n} changed"
    trained = "qformer.blocks.0.cross_attn.v_proj.weight"
    assert not torch.equal(after[trained], before[trained])
    if stage == 2:
        assert not torch.equal(after["language_projection.weight"], before["language_projection.weight"])
        assert model.query_tokens.grad is not None


# --------------------------------------------------------------------------- stage 2


def test_stage2_soft_prompt_loss_and_generate():
    model = small().eval()
    b = batch(first=5)
    out = model.stage2(**b)
    Q, V = model.config.qformer.num_query_tokens, model.config.lm.vocab_size
    assert isinstance(out, Blip2Output) and out.logits.shape == (B, Q + T, V)
    torch.testing.assert_close(Blip2Stage2(model)(**b).loss, out.loss)
    # the loss is the LM's on [soft prompt; text] with the soft-prompt positions ignored
    lm = model.language_model
    with torch.no_grad():
        soft = model.language_projection(model.query_features(b["pixel_values"]))  # (B, Q, D)
        emb = torch.cat([soft, lm.embed(b["input_ids"])], 1)
        mask = torch.cat([torch.ones(B, Q, dtype=torch.long), b["attention_mask"]], 1)
        labels = torch.cat([torch.full((B, Q), -100), b["input_ids"]], 1)
        labels[:, Q:][b["attention_mask"] == 0] = -100
        ref = lm(inputs_embeds=emb, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    # generation: greedy continuation of [soft prompt; BOS], or of a prompt
    gen = model.generate(b["pixel_values"], max_new_tokens=4, eos_id=-1)
    assert gen.shape == (B, 4) and gen.dtype == torch.long
    bos = torch.full((B, 1), lm.config.bos_id)
    expected = lm.generate(inputs_embeds=torch.cat([soft, lm.embed(bos)], 1), max_new_tokens=4,
                           temperature=0.0, eos_id=-1)  # fmt: skip
    assert torch.equal(gen, expected)
    prompt = b["input_ids"][:, :3]
    assert model.generate(b["pixel_values"], prompt_ids=prompt, max_new_tokens=2).shape[0] == B


def test_instructblip_instruction_enters_the_qformer():
    model = small(instruct=True).eval()
    b = batch(first=5)
    px, ids = b["pixel_values"], b["input_ids"]
    with torch.no_grad():
        z1 = model.query_features(px, ids[:, :3])
        z2 = model.query_features(px, (ids[:, :3] + 5) % 60)
    assert z1.shape == (B, 8, 96)
    assert (z1 - z2).abs().max() > 1e-3  # instruction-aware visual features
    with pytest.raises(ValueError, match="qformer_input_ids"):
        model.query_features(px)
    # stage 2: the instruction defaults to the prompt prefix (leading labels of -100)
    labels = ids.clone()
    labels[:, :3] = -100
    labels[1, 5:] = -100
    out = model.stage2(**b, labels=labels)
    ref = model.stage2(**b, labels=labels, qformer_input_ids=ids[:, :3],
                qformer_attention_mask=torch.ones(B, 3, dtype=torch.long))  # fmt: skip
    torch.testing.assert_close(out.loss, ref.loss)
    gen = model.generate(px, prompt_ids=ids[:, :3], max_new_tokens=2)
    assert gen.shape[0] == B
    with pytest.raises(ValueError, match="instruct=True"):
        small().query_features(px, ids[:, :3])


# --------------------------------------------------------------------------- HF parity


def _random_hf_blip2(seed: int, vision: dict, qformer: dict, text: dict, num_query: int):
    from transformers import Blip2Config as HFBlip2Config
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = HFBlip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                        num_query_tokens=num_query, image_token_id=text["vocab_size"] - 1)  # fmt: skip
    hf = Blip2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF zeroes the queries and biases: randomise everything
        for name, p in hf.named_parameters():
            if not name.startswith("language_model."):
                p.copy_(torch.randn_like(p) * (0.1 if p.dim() > 1 else 0.05)
                        + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0))
    return hf


_HF_CONFIGS = {
    "llama_freq2": (
        0,
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             image_size=32, patch_size=8),
        dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
             cross_attention_frequency=2, encoder_hidden_size=32),
        dict(model_type="llama", vocab_size=100, hidden_size=32, intermediate_size=64,
             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2),
        4,
    ),
    "opt_freq1": (
        1,
        dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
             image_size=28, patch_size=7, qkv_bias=False),
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             cross_attention_frequency=1, encoder_hidden_size=48),
        dict(model_type="opt", vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
             num_attention_heads=4, word_embed_proj_dim=32),
        6,
    ),
    "opt_freq3": (
        2,
        dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
             image_size=24, patch_size=4, hidden_act="gelu"),
        dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
             cross_attention_frequency=3, encoder_hidden_size=24),
        dict(model_type="opt", vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
             num_attention_heads=2, word_embed_proj_dim=16),
        10,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_HF_CONFIGS))
def test_from_hf_query_features_match_transformers(name):
    seed, vision, qformer, text, nq = _HF_CONFIGS[name]
    hf = _random_hf_blip2(seed, vision, qformer, text, nq)
    llama = text["model_type"] == "llama"
    if not llama:  # OPT / T5: a clear error, never a random stand-in LM
        with pytest.raises(ValueError, match="supported: LlamaForCausalLM.*with_language_model"):
            Blip2.from_hf(hf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is silently replaced
        model = Blip2.from_hf(hf, with_language_model=llama).eval()
    assert (model.language_model is None) == (not llama) and not model.config.qformer.text
    px = torch.randn(3, 3, vision["image_size"], vision["image_size"],
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=px).qformer_outputs.last_hidden_state
        ours = model.query_features(px)
        ref_img = hf.vision_model(pixel_values=px).last_hidden_state
    assert ours.shape == (3, nq, qformer["hidden_size"])
    err = (ours - ref).abs().max().item()
    print(f"{name}: query features max |ours - HF| = {err:.2e}")
    assert err < 1e-4
    torch.testing.assert_close(model.encode_image(px), ref_img, atol=1e-5, rtol=0)
    assert ref.std() > 0.5 and (ref[0] - ref[1]).abs().max() > 0.1  # not a trivial output
    # the Q-Former counts like HF's (queries and the LM excluded)
    assert count_parameters(model.qformer) == sum(p.numel() for p in hf.qformer.parameters())
    if text["model_type"] == "llama":  # the whole model: LM logits after the soft prompt
        ids = torch.randint(1, 90, (2, 5), generator=torch.Generator().manual_seed(0))
        full = torch.cat([torch.full((2, nq), text["vocab_size"] - 1), ids], 1)
        with torch.no_grad():
            ref_logits = hf(pixel_values=px[:2], input_ids=full).logits
            logits = model.stage2(px[:2], ids).logits
        err = (logits - ref_logits).abs().max().item()
        print(f"{name}: LM logits max |ours - HF| = {err:.2e}")
        assert err < 1e-4


# --------------------------------------------------------------------------- presets


def test_qformer_base_counts_like_transformers():
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    hf_count = sum(p.numel() for p in Blip2QFormerModel(Blip2QFormerConfig()).parameters())
    assert hf_count == 105_137_664  # analytic: see the sum below
    D, F_, Dv = 768, 3072, 1408
    lin = lambda i, o: i * o + o  # noqa: E731
    layer = 4 * lin(D, D) + 2 * D + lin(D, F_) + lin(F_, D) + 2 * D
    cross = 2 * lin(D, D) + 2 * lin(Dv, D) + 2 * D
    assert hf_count == 2 * D + 12 * layer + 6 * cross
    with torch.device("meta"):
        full = minivlm.create_model("blip2_qformer_base")
        bare = minivlm.create_model("blip2_qformer_base", qformer_text=False)
    assert count_parameters(bare.qformer) == hf_count
    text = sum(p.numel() for p in full.qformer.text_parameters())
    assert text == 30523 * D + 512 * D + 12 * (lin(D, F_) + lin(F_, D) + 2 * D)
    assert count_parameters(full.qformer) - text == hf_count
    # the paper's "188M" Q-Former: with queries and the stage-1 heads
    n = count_parameters(full, trainable_only=True)
    print(f"blip2_qformer_base: Q-Former {count_parameters(full.qformer):,} parameters, "
          f"{n:,} trainable with queries and heads; frozen ViT-g "
          f"{count_parameters(full.vision_encoder):,}")
    assert 185e6 < n < 190e6
    assert full.language_model is None and full.config.qformer.cross_attention_ids == (
        0, 2, 4, 6, 8, 10)  # fmt: skip


def test_tiny_preset_and_overrides():
    model = minivlm.create_model("blip2_tiny", vocab_size=81, num_query_tokens=12)
    cfg = model.config
    assert cfg.qformer.vocab_size == 81 and cfg.lm.vocab_size == 81
    assert model.query_tokens.shape == (1, 12, 96) and cfg.vision.dim == 96
    assert 2 <= cfg.qformer.depth <= 4 and cfg.qformer.cross_attention_ids == (0, 2)
    m2 = minivlm.create_model("blip2_tiny", qformer_depth=3, qformer_cross_attention_freq=1)
    assert [b.cross_attention for b in m2.qformer.blocks] == [True, True, True]
    with pytest.raises(ValueError, match="unknown override"):
        minivlm.create_model("blip2_tiny", colour=3)
    with pytest.raises(ValueError, match="dec_token_id"):
        minivlm.create_model("blip2_tiny", qformer_vocab_size=4)
    with pytest.raises(ValueError, match="no language model"):
        Blip2Stage2(minivlm.create_model("blip2_tiny", lm=None))


def test_bad_inputs_raise_clear_errors():
    model = small()
    b = batch()
    with pytest.raises(ValueError, match=r"expected pixel_values of shape \(4, C, H, W\)"):
        model(b["pixel_values"][:3], b["input_ids"], b["attention_mask"])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        model(b["pixel_values"][:1], b["input_ids"][:1], b["attention_mask"][:1])
    with pytest.raises(ValueError, match=r"expected attention_mask of shape \(4, 7\), got \(4, 6\)"):
        model(b["pixel_values"], b["input_ids"], b["attention_mask"][:, :6])
    with pytest.raises(ValueError, match="vocabulary"):
        model(b["pixel_values"], b["input_ids"] + 300, b["attention_mask"])
    qf = model.qformer
    q = model.query_tokens.expand(2, -1, -1)
    with pytest.raises(ValueError, match=r"expected image features of shape \(2, S, 96\), got"):
        qf(q, None, None, torch.randn(2, 5, 50))
    with pytest.raises(ValueError, match=r"expected queries of shape \(B, Q, 96\), got \(2, 8, 5\)"):
        qf(torch.randn(2, 8, 5), None, None, torch.randn(2, 5, 96))
    with pytest.raises(ValueError, match=r"\(Q\+T, Q\+T\) = \(11, 11\)"):
        qf(q, b["input_ids"][:2, :3], None, torch.randn(2, 5, 96),
           mask=torch.ones(4, 4, dtype=torch.bool))  # fmt: skip
    with pytest.raises(ValueError, match=r"\(4, C, H, W\) \(one image per text\), got \(4, 32, 32\)"):
        model(b["pixel_values"][:, 0], b["input_ids"])
    with pytest.raises(ValueError, match=r"ViT: expected 3 channels"):
        model(b["pixel_values"][:, :1], b["input_ids"])


# --------------------------------------------------------------------------- training


def test_training_on_shapes_world_reduces_the_loss():
    from minivlm.data import CaptionDataset, ShapesWorld, shapes_tokenizer
    from minivlm.train import TrainConfig, train

    tok = shapes_tokenizer()
    data = ShapesWorld().generate(96, seed=0)
    ds = CaptionDataset(data, tok, add_cls=True, add_sep=True, add_bos=False, add_eos=False)
    torch.manual_seed(0)
    model = minivlm.create_model("blip2_tiny", vocab_size=tok.vocab_size)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(steps=10, lr=2e-3, batch_size=12, warmup_steps=2, progress=False,
                      log_every=4, seed=0)  # fmt: skip
    h = train(model, ds, cfg, device="cpu").history
    first, last = sum(h["loss"][:3]) / 3, sum(h["loss"][-3:]) / 3
    print(f"blip2_tiny stage 1 (seed 0, 10 steps): loss {first:.3f} -> {last:.3f}")
    assert last < first - 0.5, (first, last)
    for part in ("loss_itc", "loss_itm", "loss_itg"):
        assert len(h[part]) == 10
    assert sum(h["loss_itg"][-3:]) < sum(h["loss_itg"][:3])
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    # stage 2 on the same model: only the soft prompt (Q-Former + projection) learns
    ds2 = CaptionDataset(data, tok, add_bos=True, add_eos=True)
    h2 = train(Blip2Stage2(model), ds2, cfg, device="cpu").history
    first, last = sum(h2["loss"][:3]) / 3, sum(h2["loss"][-3:]) / 3
    print(f"blip2_tiny stage 2 (seed 0, 10 steps, frozen random LM): loss {first:.3f} -> {last:.3f}")
    assert last < first - 0.15, (first, last)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
