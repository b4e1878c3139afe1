"""Text encoders: BERT and CLIP-style parity with tiny random Hugging Face models, masks, presets."""

from __future__ import annotations

import pytest
import torch

import minivlm
from minivlm.nn.bert import BertEncoder, BertMLMHead, TextConfig, TextOutput
from minivlm.nn.causal_text import CausalTextEncoder, pool_eos

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertModel,
    CLIPTextConfig,
    CLIPTextModel,
)

HF_BERT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
ATOL = 1e-4


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every parameter random (biases and LayerNorms included) so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _padded_batch(seed: int = 0, vocab: int = 99):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 9), generator=g)
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, 6:] = 0
    am[2, 3:] = 0
    ids[am == 0] = 0
    return ids, am


def _image_tokens(dim: int = 32):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(3, 5, dim, generator=g)
    im = torch.ones(3, 5, dtype=torch.long)
    im[0, 3:] = 0
    return img, im


# ---------------------------------------------------------------------------
# BERT
# ---------------------------------------------------------------------------


def test_bert_matches_hf_with_padding_and_token_types():
    hf = _perturb(BertModel(BertConfig(**HF_BERT)))
    enc = BertEncoder.from_hf(hf)
    assert not enc.training and enc.config.causal is False and enc.config.pooler
    ids, am = _padded_batch()
    tt = torch.zeros_like(ids)
    tt[:, 5:] = 1
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, token_type_ids=tt)
        out = enc(ids, am, token_type_ids=tt, output_hidden_states=True)
        slow = enc(ids, am, token_type_ids=tt, need_weights=True)
    assert isinstance(out, TextOutput)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(slow.last_hidden_state, out.last_hidden_state, atol=ATOL, rtol=ATOL)
    assert len(out.hidden_states) == 3 and out.attentions is None
    # padded keys get zero attention weight
    assert len(slow.attentions) == 2 and slow.attentions[0].shape == (3, 4, 9, 9)
    assert slow.attentions[0][2, :, :, 3:].abs().max() == 0
    assert slow.cross_attentions == []


def test_padding_tokens_do_not_change_real_positions():
    torch.manual_seed(0)
    enc = minivlm.create_model("bert_tiny").eval()
    ids, am = _padded_batch(vocab=1000)
    other = ids.clone()
    other[am == 0] = 7  # different (ignored) tokens under the padding
    with torch.no_grad():
        a = enc(ids, am).last_hidden_state
        b = enc(other, am).last_hidden_state
        c = enc(other).last_hidden_state  # without the mask the pads are seen
    real = am.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[2, :3], c[2, :3], atol=1e-3)


def test_bert_decoder_with_cross_attention_matches_hf():
    """HF adds cross-attention only to decoders (is_decoder=True: causal self-attention)."""
    hf = _perturb(BertModel(BertConfig(**HF_BERT, is_decoder=True, add_cross_attention=True)))
    enc = BertEncoder.from_hf(hf)
    assert enc.config.causal and enc.config.cross_attention_ids == (0, 1)
    ids, am = _padded_batch()
    img, im = _image_tokens()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, encoder_hidden_states=img,
                 encoder_attention_mask=im, use_cache=False).last_hidden_state  # fmt: skip
        out = enc(ids, am, img, im, need_weights=True)
    torch.testing.assert_close(out.last_hidden_state, ref, atol=ATOL, rtol=ATOL)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 4, 9, 5)
    assert out.cross_attentions[0][0, :, :, 3:].abs().max() == 0  # padded image tokens
    # causal: no weight above the diagonal
    assert torch.triu(out.attentions[0], diagonal=1).abs().max() == 0


def test_bidirectional_fusion_layers_match_hf():
    """ALBEF-style split: layer 0 text-only, layer 1 with cross-attention, bidirectional.

    HF has no such BERT, so we build a decoder BERT and switch it to bidirectional
    (eager attention, no causal flag) and remove layer 0's cross-attention.
    """
    cfg = BertConfig(**HF_BERT, is_decoder=True, add_cross_attention=True,
                     attn_implementation="eager")  # fmt: skip
    hf = _perturb(BertModel(cfg))
    hf.config.is_decoder = False
    for layer in hf.encoder.layer:
        layer.attention.self.is_causal = False
    layer0 = hf.encoder.layer[0]
    layer0.is_decoder = False
    del layer0.crossattention
    enc = BertEncoder.from_hf(hf)
    assert not enc.config.causal and enc.config.cross_attention_ids == (1,)
    ids, am = _padded_batch()
    img, im = _image_tokens()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, encoder_hidden_states=img,
                 encoder_attention_mask=im).last_hidden_state  # fmt: skip
        out = enc(ids, am, img, im).last_hidden_state
        # the same, in two halves: text layers, then fusion layers
        text = enc.forward_layers(enc.embed(ids), am, end=1).last_hidden_state
        fused = enc.forward_layers(text, am, img, im, start=1).last_hidden_state
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer 1 has cross-attention"):
        enc(ids, am)


def test_mlm_head_matches_hf_and_is_tied():
    hf = _perturb(BertForMaskedLM(BertConfig(**HF_BERT)))
    enc = BertEncoder.from_hf(hf)
    head = BertMLMHead.from_hf(hf, enc)
    assert head.decoder.weight is enc.word_embeddings.weight
    ids, am = _padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am).logits
        out = head(enc(ids, am).last_hidden_state)
    assert out.shape == (3, 9, 99)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)


def test_custom_mask_combines_with_padding_and_causal():
    torch.manual_seed(0)
    bi = BertEncoder(TextConfig(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4)).eval()
    causal = BertEncoder(bi.config, causal=True).eval()
    causal.load_state_dict(bi.state_dict())
    ids, am = _padded_batch(vocab=50)
    tri = torch.ones(9, 9, dtype=torch.bool).tril()
    additive = torch.zeros(9, 9).masked_fill(~tri, float("-inf"))
    with torch.no_grad():
        ref = causal(ids, am).last_hidden_state
        torch.testing.assert_close(bi(ids, am, mask=tri).last_hidden_state, ref)
        torch.testing.assert_close(bi(ids, am, mask=additive).last_hidden_state, ref)
        per_row = tri.expand(3, 9, 9)  # (B, T, T)
        torch.testing.assert_close(bi(ids, am, mask=per_row).last_hidden_state, ref)
        # an all-True mask leaves the padding mask in force
        full = torch.ones(9, 9, dtype=torch.bool)
        torch.testing.assert_close(
            bi(ids, am, mask=full).last_hidden_state, bi(ids, am).last_hidden_state
        )


def test_inputs_embeds_and_kv_dim():
    torch.manual_seed(0)
    cfg = TextConfig(vocab_size=50, max_len=16, dim=32, depth=4, num_heads=4,
                     cross_attention_from=0, cross_attention_freq=2, kv_dim=24)  # fmt: skip
    enc = BertEncoder(cfg).eval()
    assert cfg.cross_attention_ids == (0, 2)
    assert [b.cross_attention for b in enc.blocks] == [True, False, True, False]
    ids, am = _padded_batch(vocab=50)
    img = torch.randn(3, 7, 24)
    with torch.no_grad():
        a = enc(ids, am, img).last_hidden_state
        b = enc(None, am, img, inputs_embeds=enc.word_embeddings(ids)).last_hidden_state
    assert a.shape == (3, 9, 32)
    torch.testing.assert_close(a, b)


def test_cross_attention_layer_selection():
    assert TextConfig(depth=12, cross_attention_from=6).cross_attention_ids == tuple(range(6, 12))
    assert TextConfig(
        depth=12, cross_attention_from=0, cross_attention_freq=2
    ).cross_attention_ids == (0, 2, 4, 6, 8, 10)
    assert TextConfig(depth=4, cross_attention_layers=[3, 1]).cross_attention_ids == (1, 3)
    assert TextConfig(depth=4).cross_attention_ids == ()
    with pytest.raises(ValueError, match="outside"):
        TextConfig(depth=4, cross_attention_layers=[4])


def test_text_bad_inputs_raise_clear_errors():
    torch.manual_seed(0)
    enc = minivlm.create_model("bert_tiny")
    with pytest.raises(ValueError, match="vocabulary 0..999"):
        enc(torch.tensor([[1, 2, 1000]]))
    with pytest.raises(ValueError, match="max_len 64"):
        enc(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(1, 3\)"):
        enc(torch.tensor([[1, 2, 3]]), torch.ones(1, 4))
    with pytest.raises(TypeError, match="integer token ids"):
        enc(torch.ones(1, 3))
    with pytest.raises(ValueError, match="exactly one"):
        enc()
    with pytest.raises(ValueError, match=r"expected mask of shape \(3, 3\)"):
        enc(torch.tensor([[1, 2, 3]]), mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal=False"):
        CausalTextEncoder(TextConfig.clip(causal=False))
    with pytest.raises(ValueError, match="not divisible"):
        TextConfig(dim=30, num_heads=4)


# ---------------------------------------------------------------------------
# CLIP-style causal encoder
# ---------------------------------------------------------------------------


def _clip_batch(eos: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 97, (3, 9), generator=g)
    ids[0, 8] = eos
    ids[1, 5] = eos
    ids[1, 6:] = 1  # pad
    ids[2, 3] = eos
    ids[2, 4:] = eos  # pad token == eos token: the first one must be pooled
    am = (torch.arange(9)[None] <= torch.tensor([[8], [5], [3]])).long()
    return ids, am


@pytest.mark.parametrize("eos", [98, 2])
def test_causal_encoder_matches_hf_clip_text(eos):
    hc = CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos,
                        bos_token_id=0, pad_token_id=1)  # fmt: skip
    hf = _perturb(CLIPTextModel(hc))
    enc = CausalTextEncoder.from_hf(hf)
    assert enc.config.eos_token_id == (None if eos == 2 else eos)
    assert enc.config.act == "quick_gelu" and enc.config.prenorm and enc.config.causal
    ids, am = _clip_batch(98)  # with the legacy rule (eos 2) [EOS] is the largest id, 98
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am)
        out = enc(ids, am)
        slow = enc(ids, am, need_weights=True)
        pooled = enc.pool(out.last_hidden_state, ids)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(slow.last_hidden_state, out.last_hidden_state, atol=ATOL, rtol=ATOL)
    assert torch.triu(slow.attentions[1], diagonal=1).abs().max() == 0


def test_causal_encoder_is_causal():
    torch.manual_seed(0)
    enc = minivlm.create_model("causal_text_tiny").eval()
    ids = torch.randint(3, 1000, (2, 10))
    later = ids.clone()
    later[:, 6:] = 5
    with torch.no_grad():
        a = enc(ids).last_hidden_state
        b = enc(later).last_hidden_state
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)
    # submodule names other code relies on
    for name in ("token_embedding", "position_embedding", "blocks", "final_norm"):
        assert hasattr(enc, name)


def test_pool_eos_first_occurrence_and_legacy_rule():
    hidden = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)  # value = row*5 + position
    ids = torch.tensor([[4, 9, 7, 7, 7], [4, 5, 6, 7, 9]])
    assert pool_eos(hidden, ids, 7).flatten().tolist() == [2.0, 8.0]  # first 7 of each row
    assert pool_eos(hidden, ids, None).flatten().tolist() == [1.0, 9.0]  # largest id (legacy)
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        pool_eos(hidden, torch.tensor([[1, 1, 1, 1, 1], [3, 3, 3, 3, 3]]), 3)
    with pytest.raises(ValueError, match="expected hidden"):
        pool_eos(hidden, ids[:, :3], 7)


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------


def test_preset_parameter_counts_match_hf():
    with torch.device("meta"):
        bert = minivlm.create_model("bert_base")
        ref_bert = BertModel(BertConfig())  # with its pooler
        clip_text = minivlm.create_model("causal_text_b")
        ref_clip = CLIPTextModel(CLIPTextConfig())
    assert minivlm.count_parameters(bert) == sum(p.numel() for p in ref_bert.parameters())
    assert minivlm.count_parameters(bert) == 109_482_240
    assert minivlm.count_parameters(clip_text) == sum(p.numel() for p in ref_clip.parameters())
    assert minivlm.count_parameters(clip_text) == 63_165_952


def test_tiny_presets_train_step():
    torch.manual_seed(0)
    for name in ("bert_tiny", "causal_text_tiny"):
        enc = minivlm.create_model(name)
        ids = torch.randint(3, 1000, (2, 8))
        enc(ids).last_hidden_state.pow(2).mean().backward()
        grads = [p.grad for p in enc.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert {"bert_tiny", "bert_base", "causal_text_tiny", "causal_text_b"} <= set(
        minivlm.list_models()
    )
