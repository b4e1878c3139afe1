"""VLMo / BEiT-3 (lecture 8). No public reference implementation exists in transformers, so
these tests prove the routing and the losses directly, on a tiny random model."""

from __future__ import annotations

import pytest
import torch

import minivlm
from minivlm.models.vlmo import LANGUAGE, VISION, VL, VLMo, itc_loss
from minivlm.nn.blocks import MultiwayBlock, TransformerBlock

TINY = dict(vocab_size=40, max_text_len=8, image_size=32, patch_size=16, dim=32, depth=3,
            num_heads=4, mlp_hidden=64, vl_layers=1, embed_dim=16, visual_vocab_size=10,
            mask_token_id=4, special_token_ids=tuple(range(8)), layer_scale=0.1)  # fmt: skip


def _model(seed: int = 0, **kw) -> VLMo:
    torch.manual_seed(seed)
    return VLMo(**{**TINY, **kw}).eval()


def _inputs(B: int = 3, T: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 40, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[0, -2:] = 0  # one padded caption
    return ids, am, torch.randn(B, 3, 32, 32, generator=g)


def _perturb(model: VLMo, expert: int) -> None:
    with torch.no_grad():
        for blk in model.blocks:
            if expert < blk.num_experts:
                for p in list(blk.ffns[expert].parameters()) + list(blk.norms[expert].parameters()):
                    p.add_(torch.randn_like(p))


def test_multiway_block_with_one_expert_is_a_prenorm_block():
    torch.manual_seed(0)
    ref = TransformerBlock(32, 4, mlp_hidden=64, eps=1e-6)
    blk = MultiwayBlock(32, 4, 1, mlp_hidden=64, eps=1e-6)
    state = {k.replace("mlp.", "ffns.0.").replace("norm2.", "norms.0."): v
             for k, v in ref.state_dict().items()}  # fmt: skip
    blk.load_state_dict(state)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(blk(x, 0), ref(x))
    with pytest.raises(ValueError, match="outside 0..0"):
        blk(x, torch.tensor([0, 0, 1, 0, 0]))
    with pytest.raises(ValueError, match="expected route"):
        blk(x, torch.zeros(3, dtype=torch.long))


def test_each_token_uses_only_its_own_expert():
    """Text-only output ignores V-FFN and VL-FFN; image-only ignores L-FFN and VL-FFN; in
    fusion mode the top layer ignores V/L-FFN for every token (only VL-FFN there)."""
    ids, am, px = _inputs()
    model = _model()
    with torch.no_grad():
        text = model.encode_text(ids, am).hidden
        image = model.encode_image(px).hidden
        fused = model.encode_pair(ids, px, am).hidden
    for expert, same_text, same_image in ((VISION, True, False), (LANGUAGE, False, True),
                                          (VL, True, True)):  # fmt: skip
        m = _model()
        _perturb(m, expert)
        with torch.no_grad():
            t, i = m.encode_text(ids, am).hidden, m.encode_image(px).hidden
            f = m.encode_pair(ids, px, am).hidden
        assert torch.equal(t, text) is same_text, expert
        assert torch.equal(i, image) is same_image, expert
        assert not torch.allclose(f, fused)  # the pair uses all three experts
    # top layer: V-FFN and L-FFN of layer L-1 are unused by the fusion path
    m = _model()
    with torch.no_grad():
        for p in list(m.blocks[-1].ffns[VISION].parameters()) + list(
                m.blocks[-1].ffns[LANGUAGE].parameters()):
            p.add_(1.0)
        assert torch.equal(m.encode_pair(ids, px, am).hidden, fused)
    r = model.routes(6, 5, "fusion")
    assert r[0].tolist() == [LANGUAGE] * 6 + [VISION] * 5 and r[-1].tolist() == [VL] * 11


def test_dual_mode_equals_the_two_unimodal_paths():
    ids, am, px = _inputs()
    model = _model()
    with torch.no_grad():
        dual = model.encode_pair(ids, px, am, mode="dual").hidden
        text, image = model.encode_text(ids, am).hidden, model.encode_image(px).hidden
        fused = model.encode_pair(ids, px, am, mode="fusion").hidden
    T = ids.shape[1]
    torch.testing.assert_close(dual[:, :T], text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual[:, T:], image, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused[:, :T], text, atol=1e-3)
    with pytest.raises(ValueError, match="mode must be"):
        model.encode_pair(ids, px, am, mode="both")


def test_stages_freeze_what_the_paper_freezes_and_leave_it_bit_identical():
    ids, am, px = _inputs(B=4)
    model = _model().train()
    frozen = model.set_stage("text")
    assert any(".attn." in n for n in frozen) and any(".ffns.0." in n for n in frozen)
    assert not any(".ffns.1." in n for n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    masked, labels = ids.clone(), torch.full_like(ids, -100)
    masked[:, 1], labels[:, 1] = 4, ids[:, 1]
    for _ in range(3):
        loss = model.mdm(input_ids=masked, attention_mask=am, mlm_labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(model.named_parameters())
    for n in before:
        assert torch.equal(before[n], after[n]) is (n in frozen), n
    img_frozen = model.set_stage("image")
    assert any("text_embeddings" in n for n in img_frozen)
    assert not any(".attn." in n for n in img_frozen) and model.set_stage("pair") == []
    with pytest.raises(ValueError, match="stage must be"):
        model.set_stage("video")


def test_pair_pretraining_losses_and_gradients():
    ids, am, px = _inputs(B=4)
    model = _model().train()
    out = model(ids, px, am, index=torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert out.itm_logits.shape == (12, 2) and out.mlm_logits.shape == (4, 6, 40)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm)
    out.loss.backward()
    assert model.blocks[-1].ffns[VL].fc1.weight.grad.abs().sum() > 0
    assert model.logit_scale.grad is not None
    # ITC: a perfectly aligned batch has a lower loss than a shuffled one
    f = torch.randn(4, 8)
    assert itc_loss(f, f, torch.tensor(3.0)) < itc_loss(f, f[[1, 2, 3, 0]], torch.tensor(3.0))


def test_mdm_scores_only_masked_patches_and_words():
    ids, am, px = _inputs(B=2)
    model = _model()
    pos = torch.zeros(2, 4, dtype=torch.bool)
    pos[:, 1] = True
    labels = torch.randint(0, 10, (2, 4))
    other = labels.clone()
    other[:, 0] = (other[:, 0] + 1) % 10  # change an unmasked label only
    a = model.mdm(pixel_values=px, bool_masked_pos=pos, image_labels=labels)
    b = model.mdm(pixel_values=px, bool_masked_pos=pos, image_labels=other)
    assert a.mim_logits.shape == (2, 4, 10) and torch.equal(a.loss, b.loss)
    mlm = torch.full_like(ids, -100)
    mlm[:, 2] = ids[:, 2]
    pair = model.mdm(ids, px, am, mlm_labels=mlm, bool_masked_pos=pos, image_labels=labels)
    torch.testing.assert_close(pair.loss, pair.loss_mlm + pair.loss_mim)
    with pytest.raises(ValueError, match="together"):
        model.mdm(pixel_values=px, bool_masked_pos=pos)
    with pytest.raises(ValueError, match="pixel_values of shape"):
        model.encode_image(torch.randn(2, 3, 16, 16))


def test_presets_and_the_base_parameter_count():
    tiny = minivlm.create_model("vlmo_tiny")
    assert tiny.config.patch_size == 16 and tiny.config.vl_from == 3
    with torch.device("meta"):
        base = minivlm.create_model("vlmo_base")
    heads = [base.text_proj, base.image_proj, base.pooler, base.itm_head, base.mim_head]
    n_heads = sum(p.numel() for h in heads for p in h.parameters()) + 1  # + logit_scale
    n_heads += sum(p.numel() for k, p in base.mlm_head.named_parameters() if "decoder.w" not in k)
    total = sum(p.numel() for p in base.parameters())
    assert total - n_heads == 175_428_096  # VLMo-Base's 175M backbone (see models/vlmo.py)
    assert total == 184_122_173


# ---------------------------------------------------------------------------
# Relative position bias (VLMo's released code; VLMoConfig.position = "relative")
# ---------------------------------------------------------------------------


def test_relative_position_index_by_brute_force():
    """nn.relpos's index (BEiT's, shared with VLMo; tests/test_beit.py compares it with
    transformers'): two grid pairs share a table row exactly when their offsets (dy, dx) agree,
    the rows cover the table, and the three CLS rows come last. Square, 2-D and 1-D (text)."""
    from minivlm.nn.relpos import num_relative_positions, relative_position_index

    for grid in ((4, 4), (2, 3), (1, 7)):
        idx = relative_position_index(grid)
        h, w = grid
        cells = [(y, x) for y in range(h) for x in range(w)]
        rows: dict[tuple[int, int], int] = {}
        for i, (yi, xi) in enumerate(cells):
            for j, (yj, xj) in enumerate(cells):
                r = int(idx[1 + i, 1 + j])
                assert rows.setdefault((yi - yj, xi - xj), r) == r  # same offset, same row
        assert len(set(rows.values())) == len(rows) == (2 * h - 1) * (2 * w - 1)  # one row each
        n = num_relative_positions(grid)
        assert set(rows.values()) == set(range(n - 3))
        assert (idx[0, 1:] == n - 3).all() and (idx[1:, 0] == n - 2).all() and idx[0, 0] == n - 1


def _brute_force_bias(model: VLMo, layer: int, T: int, g: int) -> torch.Tensor:
    """(H, T+1+g², T+1+g²) bias of [text; image] written out pair by pair from the tables."""
    rp, Tm = model.rel_pos, model.config.max_text_len
    img, txt, cross = rp.image[layer], rp.text[layer], rp.cross[layer]  # (rows, H)
    L = T + 1 + g * g
    out = torch.zeros(L, L, rp.image.shape[-1])
    for i in range(L):
        for j in range(L):
            if i < T and j < T:  # text -> text: CLS rows, else the word offset i - j
                out[i, j] = (txt[-1] if i == j == 0 else txt[-3] if i == 0 else txt[-2] if j == 0
                             else txt[i - j + Tm - 2])  # fmt: skip
            elif i < T or j < T:  # text -> image or image -> text: one score each
                out[i, j] = cross[0] if i < T else cross[1]
            else:  # image -> image: CLS rows, else the patch offset (dy, dx)
                p, q = i - T - 1, j - T - 1
                if p < 0 or q < 0:
                    out[i, j] = img[-1] if p == q == -1 else img[-3] if p < 0 else img[-2]
                else:
                    dy, dx = p // g - q // g, p % g - q % g
                    out[i, j] = img[(dy + g - 1) * (2 * g - 1) + dx + g - 1]
    return out.permute(2, 0, 1)


def test_relative_bias_enters_the_first_layers_scores_as_written_out():
    """Fused pass with random tables: layer 0's attention = softmax(q·k/√d + bias, padding
    masked) with the bias built pair by pair from the three tables (text, image, cross)."""
    model = _model(position="relative")
    assert model.pos_embed is None and model.text_embeddings.position_embeddings is None
    with torch.no_grad():
        for p in model.rel_pos.parameters():
            p.normal_()
    ids, am, px = _inputs(T=5)
    out = model.encode_pair(ids, px, am, need_weights=True)
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = model.blocks[0].norm1(torch.cat([model.embed_text(ids), model.embed_image(px)], 1))
        B, L, _ = x.shape
        q = attn.q_proj(x).view(B, L, 4, 8).transpose(1, 2)  # (B, H, L, 8)
        k = attn.k_proj(x).view(B, L, 4, 8).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / 8**0.5 + _brute_force_bias(model, 0, 5, 2)
        keys = torch.cat([am.bool(), torch.ones(B, 5, dtype=torch.bool)], 1)  # (B, L)
        ref = scores.masked_fill(~keys[:, None, None], float("-inf")).softmax(-1)
    torch.testing.assert_close(out.attentions[0], ref, atol=1e-5, rtol=1e-5)


def test_relative_positions_keep_dual_mode_exact_and_train_by_stage():
    model = _model(position="relative")
    with torch.no_grad():
        for p in model.rel_pos.parameters():
            p.normal_()
    ids, am, px = _inputs()
    with torch.no_grad():
        pair = model.encode_pair(ids, px, am, mode="dual").hidden
        torch.testing.assert_close(pair[:, :6], model.encode_text(ids, am).hidden,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
        torch.testing.assert_close(pair[:, 6:], model.encode_image(px).hidden, atol=1e-5, rtol=1e-5)
        flipped = model.encode_image(px.flip(-1)).hidden[:, 0]  # the bias sees where patches are
        assert not torch.allclose(flipped, model.encode_image(px).hidden[:, 0], atol=1e-3)
    plans = {s: model.stage_parameters(s) for s in ("image", "text", "pair")}
    assert [plans["image"][f"rel_pos.{t}"] for t in ("image", "text", "cross")] == [1, 0, 0]
    assert [plans["text"][f"rel_pos.{t}"] for t in ("image", "text", "cross")] == [0, 1, 0]
    assert all(plans["pair"][f"rel_pos.{t}"] for t in ("image", "text", "cross"))
    with pytest.raises(ValueError, match="exceeds max_len 8"):
        model.encode_text(torch.full((1, 9), 9))
    with pytest.raises(ValueError, match="position must be"):
        _model(position="rotary")
    with torch.device("meta"):
        base = minivlm.create_model("vlmo_base", position="relative")
    heads = ("text_proj", "image_proj", "logit_scale", "pooler", "itm_head", "mlm_head", "mim_head")
    assert sum(p.numel() for n, p in base.named_parameters()
               if not n.startswith(heads)) == 175_363_296  # VLMoConfig's docstring  # fmt: skip
