"""BLIP: Hugging Face parity (ITC features, ITM logits), the three MED passes and what they share,
the pre-training losses, decoding, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.models.blip import Blip, decoder_inputs, med_mask
from minivlm.nn.decoding import generate
from minivlm.utils import count_parameters

transformers = pytest.importorskip("transformers")

B, T, IMG = 4, 7, 32


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(**kw) -> Blip:
    torch.manual_seed(kw.pop("seed", 0))
    base = dict(image_size=IMG, vocab_size=81, vision=dict(dim=32, depth=1, num_heads=2,
                mlp_hidden=48), text=dict(dim=32, depth=2, num_heads=2, mlp_hidden=48),
                queue_size=8)  # fmt: skip
    return minivlm.create_model("blip_tiny", **{**base, **kw})


def batch(b: int = B, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 81, (b, T), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] .. [SEP]
    mask = torch.ones(b, T, dtype=torch.long)
    ids[1, 4], ids[1, 5:], mask[1, 5:] = 3, 0, 0  # right padding
    return {"pixel_values": torch.randn(b, 3, IMG, IMG, generator=g), "input_ids": ids,
            "attention_mask": mask}  # fmt: skip


# --------------------------------------------------------------------------- parity


def hf_blip(vision: dict, text: dict, proj: int):
    torch.manual_seed(0)
    cfg = transformers.BlipConfig(vision_config=vision, text_config=text,
                                  image_text_hidden_size=proj)  # fmt: skip
    return transformers.BlipForImageTextRetrieval(cfg).eval()


@pytest.mark.parametrize("odd", [0, 1])
def test_from_hf_itc_and_itm_match(odd):
    vision = [dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=80, image_size=40, patch_size=8),
              dict(hidden_size=36, num_hidden_layers=1, num_attention_heads=3,
                   intermediate_size=50, image_size=24, patch_size=12, hidden_act="gelu_new",
                   layer_norm_eps=1e-6)][odd]  # fmt: skip
    text = [dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=52, max_position_embeddings=24, bos_token_id=90,
                 sep_token_id=3, encoder_hidden_size=48),
            dict(vocab_size=77, hidden_size=40, num_hidden_layers=3, num_attention_heads=5,
                 intermediate_size=44, max_position_embeddings=16, bos_token_id=70,
                 sep_token_id=3, encoder_hidden_size=36, layer_norm_eps=1e-6)][odd]  # fmt: skip
    hf = hf_blip(vision, text, proj=[24, 20][odd])
    model = Blip.from_hf(hf).eval()
    g = torch.Generator().manual_seed(odd)
    S, V = vision["image_size"], text["vocab_size"]
    px = torch.randn(3, 3, S, S, generator=g)
    ids = torch.randint(5, V, (3, 9), generator=g)
    ids[:, 0] = 2
    am = torch.ones_like(ids)
    am[1, 6:], am[2, 4:] = 0, 0
    ids = ids * am
    with torch.no_grad():
        ref_itc = hf(input_ids=ids, pixel_values=px, attention_mask=am, use_itm_head=False)
        ref_itm = hf(input_ids=ids, pixel_values=px, attention_mask=am, use_itm_head=True)
        cos = F.normalize(model.encode_image(px), dim=-1) @ F.normalize(
            model.encode_text(ids, am), dim=-1).T
        itm = model.itm_logits(ids, px, am)
    torch.testing.assert_close(cos, ref_itc.itm_score, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(itm, ref_itm.itm_score, atol=1e-4, rtol=1e-4)
    assert count_parameters(model) == sum(p.numel() for p in hf.parameters())


def test_blip_base_counts_like_hf():
    with torch.device("meta"):
        ours = count_parameters(minivlm.create_model("blip_base"))
    # = sum(p.numel() for p in BlipForImageTextRetrieval(BlipConfig()).parameters()); the
    # parity tests above check the count on tiny configs against HF directly
    assert ours == 223_744_258


# --------------------------------------------------------------------------- the three passes


def test_masks_and_decoder_inputs():
    am = torch.tensor([[1, 1, 1, 0]])
    enc, dec = med_mask("encoder", am)[0, 0], med_mask("decoder", am)[0, 0]
    assert enc[:, :3].all() and not enc[:, 3].any()
    assert torch.equal(dec, torch.ones(4, 4, dtype=torch.bool).tril() & enc)
    ids, mask, labels = decoder_inputs(torch.tensor([[2, 9, 3, 0]]), am, dec_token_id=5)
    assert ids.tolist() == [[5, 9, 3, 0]] and labels.tolist() == [[-100, 9, 3, -100]]
    assert torch.equal(mask[0], dec)
    with pytest.raises(ValueError, match="mode"):
        med_mask("fusion", am)


def test_decoder_shares_all_but_self_attention_and_is_causal():
    model = small().eval()
    b = batch()
    img = model.image_encoder(b["pixel_values"])
    ids, am = b["input_ids"], b["attention_mask"]
    shared = {id(p) for p in model.text_encoder.parameters()}
    own = [n for n, p in model.named_parameters() if id(p) not in shared
           and n.startswith(("decoder_attn", "lm_head"))]  # fmt: skip
    assert own and all(n.startswith(("decoder_attn", "lm_head")) for n in own)
    with torch.no_grad():
        dec = model.lm_logits(ids, attention_mask=am, image_embeds=img)
        enc = model.med(ids, am, img, "encoder")
        txt = model.med(ids, am, None, "text")
        ids2 = ids.clone()
        ids2[:, 4:] = 9  # change later tokens: earlier decoder positions do not move
        dec2 = model.lm_logits(ids2, attention_mask=am, image_embeds=img)
        model.decoder_attn[0].attn.q_proj.weight.add_(1.0)  # decoder-only weight
        assert torch.equal(model.med(ids, am, img, "encoder"), enc)
        assert not torch.allclose(model.lm_logits(ids, attention_mask=am, image_embeds=img), dec)
        model.text_encoder.blocks[0].mlp.fc1.weight.add_(1.0)  # shared weight moves all passes
        assert not torch.allclose(model.med(ids, am, img, "encoder"), enc)
        # the unimodal pass ignores the image
        assert torch.allclose(model.med(ids, am, img.flip(0), "text")[:0], txt[:0])
    torch.testing.assert_close(dec2[:, :4], dec[:, :4])


def test_training_forward_losses_queue_and_gradients():
    model = small().train()
    b = batch()
    queue = model.text_queue.clone()
    out = model(**b)
    assert out.itm_logits.shape == (3 * B, 2) and out.itm_labels.tolist() == [1] * B + [0] * 2 * B
    assert out.sim_i2t.shape == (B, B + 8)
    assert out.lm_logits.shape == (B, T, 81) and (out.lm_labels[1, 5:] == -100).all()
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_lm)
    out.loss.backward()
    assert model.decoder_attn[0].attn.q_proj.weight.grad.abs().sum() > 0
    assert model.itm_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.momentum.parameters())
    assert not torch.equal(model.text_queue, queue)
    plain = small(use_momentum=False, decoder=False)
    out = plain(**b)
    assert out.sim_i2t.shape == (B, B) and float(out.loss_lm.detach()) == 0.0
    assert not hasattr(plain, "momentum")


def test_generation_methods_and_errors():
    model = small().eval()
    px = batch()["pixel_values"]
    greedy = model.generate(px, "greedy", max_new_tokens=5)
    assert greedy.shape[0] == B and (greedy[:, 0] == 5).all()
    torch.testing.assert_close(model.generate(px, "beam", max_new_tokens=5, num_beams=1), greedy)
    g = torch.Generator().manual_seed(0)
    tiny_p = model.generate(px, "nucleus", max_new_tokens=5, top_p=1e-6, generator=g)
    torch.testing.assert_close(tiny_p, greedy)  # a nucleus of one token is greedy
    with pytest.raises(ValueError, match="decoder=False"):
        small(decoder=False).generate(px, "greedy", max_new_tokens=2)
    with pytest.raises(ValueError, match="matching"):
        model(px, batch()["input_ids"][:2])


def test_beam_search_finds_the_better_sequence():
    # step 1: token 1 (p .6) or 2 (p .4); after 1 the next is uncertain, after 2 it is sure
    def next_logits(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        p = torch.full((len(ids), 5), 1e-6)
        for r, seq in enumerate(ids.tolist()):
            if len(seq) == 1:
                p[r, 1], p[r, 2] = 0.6, 0.4
            elif seq[-1] == 1:
                p[r, 3], p[r, 4] = 0.5, 0.5
            else:
                p[r, 4] = 1.0
        return p.log()

    start = torch.zeros(1, 1, dtype=torch.long)
    greedy = generate(next_logits, start, 2, eos_id=4, method="greedy")
    beam = generate(next_logits, start, 2, eos_id=4, method="beam", num_beams=2)
    assert greedy.tolist() == [[0, 1, 3]] and beam.tolist() == [[0, 2, 4]]  # 0.3 vs 0.4


def test_presets():
    model = minivlm.create_model("blip_tiny", vocab_size=81)
    cfg = model.config
    assert cfg.text.cross_attention_ids == (0, 1, 2) and cfg.text.vocab_size == 81
    assert (cfg.cls_token_id, cfg.enc_token_id, cfg.dec_token_id, cfg.sep_token_id) == (2, 7, 5, 3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        minivlm.create_model("blip_tiny", vocab_size=6)
