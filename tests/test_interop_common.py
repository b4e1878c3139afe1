"""The shared pieces of the converters (minivlm.interop.common): reading a Hugging Face config's
sizes and square image/patch sizes, on stand-in configs (the parity tests run the real ones)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from minivlm.interop.common import sizes_from_hf, square
from minivlm.nn.bert import TextConfig


def _hf(**kw) -> SimpleNamespace:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                hidden_act="gelu_new", layer_norm_eps=1e-5, vocab_size=99,
                max_position_embeddings=40)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_sizes_from_hf_maps_names_and_activation():
    sizes = sizes_from_hf(_hf(), "X.from_hf")
    assert sizes == dict(dim=32, depth=2, num_heads=4, mlp_hidden=48, act="gelu_tanh", eps=1e-5)
    text = sizes_from_hf(_hf(), "X.from_hf", vocab=True, mlp_ratio=True)
    assert text == {**sizes, "vocab_size": 99, "max_len": 40, "mlp_ratio": 1.5}
    cfg = TextConfig(**text)
    assert (cfg.dim, cfg.hidden, cfg.max_len, cfg.act) == (32, 48, 40, "gelu_tanh")


def test_sizes_from_hf_skip_leaves_fields_to_the_converter():
    hc = _hf()
    del hc.num_hidden_layers, hc.layer_norm_eps  # LXMERT: three layer counts, fixed eps
    sizes = sizes_from_hf(hc, "X.from_hf", vocab=True, skip=("depth", "eps"))
    assert set(sizes) == {"dim", "num_heads", "mlp_hidden", "act", "vocab_size", "max_len"}


def test_sizes_from_hf_errors_name_the_converter():
    with pytest.raises(ValueError, match=r"X.from_hf: unsupported hidden_act 'swish2'"):
        sizes_from_hf(_hf(hidden_act="swish2"), "X.from_hf")
    hc = _hf()
    del hc.layer_norm_eps
    with pytest.raises(ValueError, match=r"X.from_hf: expected a config with 'layer_norm_eps'"):
        sizes_from_hf(hc, "X.from_hf")


def test_square():
    assert square(16, "images", "X.from_hf") == square((16, 16), "images", "X.from_hf") == 16
    with pytest.raises(ValueError, match=r"X.from_hf: only square patches .* got \[4, 8\]"):
        square([4, 8], "patches", "X.from_hf")
