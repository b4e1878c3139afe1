"""The explicit-math path and the SDPA path give the same outputs and gradients."""

import math

import pytest
import torch

from minivlm.nn.attention import (
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    apply_rotary,
    attend,
    causal_mask,
    combine_masks,
    padding_mask,
)
from minivlm.nn.blocks import TransformerBlock

B, H, TQ, TK, D = 3, 4, 5, 7, 8


def _masks(gen: torch.Generator) -> dict[str, torch.Tensor | None]:
    am = torch.ones(B, TK, dtype=torch.long)
    am[0, 5:] = 0
    am[2, 3:] = 0
    rand2 = torch.rand(TQ, TK, generator=gen) > 0.3
    rand2[:, 0] = True  # keep every row attending somewhere
    rand3 = torch.rand(B, TQ, TK, generator=gen) > 0.3
    rand3[..., 0] = True
    rand4 = torch.rand(B, H, TQ, TK, generator=gen) > 0.3
    rand4[..., 0] = True
    additive = torch.randn(B, 1, TQ, TK, generator=gen)
    additive[1, :, :, 2:4] = float("-inf")
    return {
        "none": None,
        "padding": padding_mask(am),
        "causal": torch.ones(TQ, TK, dtype=torch.bool).tril(diagonal=TK - TQ),
        "bool2d": rand2,
        "bool3d": rand3,
        "bool4d": rand4,
        "padding&causal": combine_masks(padding_mask(torch.ones(B, TK, dtype=torch.long)),
                                        causal_mask(TK)[-TQ:]),
        "additive4d": additive,
    }


@pytest.mark.parametrize("kind", list(_masks(torch.Generator().manual_seed(0))))
@pytest.mark.parametrize("hkv", [H, 2])
def test_explicit_equals_sdpa(kind: str, hkv: int) -> None:
    gen = torch.Generator().manual_seed(1)
    mask = _masks(torch.Generator().manual_seed(0))[kind]
    q = torch.randn(B, H, TQ, D, generator=gen, requires_grad=True)
    k = torch.randn(B, hkv, TK, D, generator=gen, requires_grad=True)
    v = torch.randn(B, hkv, TK, D, generator=gen, requires_grad=True)
    g = torch.randn(B, H, TQ, D, generator=gen)

    out_e, w = attend(q, k, v, mask, need_weights=True)
    grads_e = torch.autograd.grad((out_e * g).sum(), (q, k, v))
    out_f, none = attend(q, k, v, mask, need_weights=False)
    grads_f = torch.autograd.grad((out_f * g).sum(), (q, k, v))

    assert none is None and w.shape == (B, H, TQ, TK)
    torch.testing.assert_close(out_e, out_f, atol=1e-5, rtol=1e-5)
    for ge, gf in zip(grads_e, grads_f):
        torch.testing.assert_close(ge, gf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, TQ), atol=1e-5, rtol=0)
    if mask is not None and mask.dtype == torch.bool:  # blocked positions get zero weight
        m4 = mask[:, None] if mask.dim() == 3 else mask
        assert (w.masked_select(~m4.expand_as(w)) == 0).all()


def test_explicit_path_is_the_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 4, 6, generator=gen) for _ in range(3))
    scores = q[0, 0] @ k[0, 0].T / math.sqrt(6)
    scores[0, 1:] = float("-inf")  # causal row 0
    expected = scores.softmax(-1) @ v[0, 0]
    m = torch.ones(4, 4, dtype=torch.bool)
    m[0, 1:] = False
    out, w = attend(q, k, v, m, need_weights=True)
    torch.testing.assert_close(out[0, 0], expected)
    assert w[0, 0, 0, 0] == 1.0


def test_mha_module_paths_agree_and_cross_attention() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, kv_dim=24)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    am = torch.tensor([[1] * 9, [1] * 4 + [0] * 5])
    a, w = mha(x, ctx, mask=padding_mask(am), need_weights=True)
    b, _ = mha(x, ctx, mask=padding_mask(am))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert w.shape == (2, 4, 5, 9) and (w[1, :, :, 4:] == 0).all()


@pytest.mark.parametrize(
    "mask_shape",
    [(TQ, TK + 1), (B + 1, TQ, TK), (B, H + 1, TQ, TK), (B, H, TQ, TK, 1), (TK,)],
)
def test_wrong_mask_shape_names_expected_and_received(mask_shape) -> None:
    q, k, v = torch.randn(B, H, TQ, D), torch.randn(B, H, TK, D), torch.randn(B, H, TK, D)
    with pytest.raises(ValueError) as e:
        attend(q, k, v, torch.ones(mask_shape, dtype=torch.bool))
    msg = str(e.value)
    assert str(tuple(mask_shape)) in msg and f"Tk={TK}" in msg


def test_wrong_input_shapes_raise_value_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, 16\).*\(2, 3, 15\)"):
        MultiHeadAttention(16, 2)(torch.randn(2, 3, 15))
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(16, 2, kv_dim=8)(torch.randn(2, 3, 16), torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match="multiple"):
        attend(torch.randn(1, 3, 2, 4), torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4))
    with pytest.raises(TypeError, match="bool"):
        attend(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4),
               torch.ones(2, 2, dtype=torch.long))


def test_fully_masked_row_gives_zero_on_both_paths() -> None:
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    m = torch.tensor([[True, True, False], [False, False, False]])
    a, _ = attend(q, k, v, m, need_weights=True)
    b, _ = attend(q, k, v, m)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[0, 0, 0], b[0, 0, 0])
    assert (a[0, 0, 1] == 0).all()


def test_kv_cache_decoding_matches_full_pass() -> None:
    torch.manual_seed(0)
    blk = TransformerBlock(32, 4, norm="rmsnorm", mlp="swiglu", num_kv_heads=2, qkv_bias=False)
    rot = RotaryEmbedding(8)
    x = torch.randn(2, 6, 32)
    full = blk(x, mask=causal_mask(6), rope=rot(torch.arange(6)))
    cache, outs = KVCache(), []
    for t in range(6):
        outs.append(blk(x[:, t:t + 1], rope=rot(torch.arange(t, t + 1)), kv_cache=cache))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_rotary_preserves_norm_and_is_relative() -> None:
    rot = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i: int, j: int) -> torch.Tensor:
        ci, si = rot(torch.tensor([i]))
        cj, sj = rot(torch.tensor([j]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum()

    c, s = rot(torch.tensor([5]))
    torch.testing.assert_close(apply_rotary(q, c, s).norm(), q.norm())
    torch.testing.assert_close(score(3, 1), score(10, 8), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))


@pytest.mark.parametrize("prenorm", [True, False])
def test_block_paths_agree_with_cross_attention(prenorm: bool) -> None:
    torch.manual_seed(0)
    blk = TransformerBlock(32, 4, cross_attention=True, kv_dim=16, prenorm=prenorm).eval()
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 3, 16)
    a = blk(x, context=ctx, need_weights=True)
    assert blk.last_attn.shape == (2, 4, 5, 5) and blk.last_cross_attn.shape == (2, 4, 5, 3)
    b = blk(x, context=ctx)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="context"):
        blk(x)
