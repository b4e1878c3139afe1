"""A small Llama-style decoder-only language model, with a KV cache and sampling.

The architecture is Llama's (Touvron et al. 2023, "LLaMA", §2.2):

* pre-normalisation with RMSNorm (Zhang & Sennrich 2019), computed in float32;
* SwiGLU feed-forward network (Shazeer 2020);
* rotary position embeddings, RoPE (Su et al. 2021), "rotate half" layout;
* grouped-query attention, GQA (Ainslie et al. 2023), as in Llama 2 (Touvron et al. 2023b, §2.2).

    h_0 = E[x]                                     (B, T, D) token embeddings
    h_l = Block_l(h_{l-1}),  l = 1..L              causal self-attention + SwiGLU
    logits = W_out · RMSNorm(h_L)                  (B, T, V)

The model is causal: position t attends to positions <= t. Padding is on the
**right** (``attention_mask`` rows look like 1 1 1 0 0), and padded keys are
masked out. ``inputs_embeds`` replaces the token lookup so that LLaVA / BLIP-2
can splice image features into the sequence. ``DecoderLM.from_hf`` copies the
weights of a ``transformers.LlamaForCausalLM`` and reproduces its logits.

Generation (:meth:`DecoderLM.generate`) runs the prompt once, keeps each
layer's keys and values in a :class:`~minivlm.nn.attention.KVCache`, then feeds
one new token per step. Sampling is split into plain functions a notebook can
show, in :mod:`minivlm.nn.decoding`: ``top_k_filter``, ``top_p_filter`` (nucleus
sampling, Holtzman et al. 2020, §3.1) and ``sample_next``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.attention import KVCache, RotaryEmbedding, sectioned_rope
from minivlm.nn.blocks import RMSNorm, TransformerBlock, init_weights
from minivlm.nn.decoding import sample_next

Tensor = torch.Tensor

IGNORE_INDEX = -100  # label value that the loss skips (as in PyTorch / Hugging Face)


@dataclass
class LMConfig:
    """Hyper-parameters of :class:`DecoderLM` (defaults: the ``lm_tiny`` preset, whose
    pad/bos/eos ids 0/5/6 are those of the shapes-world tokenizer).

    ``mlp_hidden`` is the SwiGLU intermediate size (Llama uses about 8/3·dim).
    ``num_kv_heads`` < ``num_heads`` gives grouped-query attention.
    ``head_dim`` defaults to ``dim // num_heads``.
    """

    vocab_size: int = 256
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mlp_hidden: int = 384
    max_len: int = 256
    rope_base: float = 10000.0
    eps: float = 1e-6
    tie_embeddings: bool = False
    pad_id: int | None = 0  # defaults: the fixed special ids of minivlm.data.tokenizer
    bos_id: int | None = 5  # [BOS]
    eos_id: int | None = 6  # [EOS]
    attention_bias: bool = False
    head_dim: int | None = None
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "num_heads", "num_kv_heads", "mlp_hidden",
                     "max_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"LMConfig.{name}: expected a positive int, got {v!r}")
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"LMConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}; "
                "set head_dim explicitly"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LMConfig: num_heads {self.num_heads} must be a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.resolved_head_dim % 2:
            raise ValueError(
                f"LMConfig: head_dim must be even for RoPE, got {self.resolved_head_dim}"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                raise ValueError(
                    f"LMConfig.{name}={v} is outside the vocabulary [0, {self.vocab_size})"
                )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.num_heads


@dataclass
class MRopeLMConfig(LMConfig):
    """:class:`LMConfig` of a Qwen2-style decoder: multimodal RoPE (Qwen2-VL, Wang et al. 2024,
    §2.1) with ``mrope_section`` frequencies per (time, row, column) axis, and ``out_bias``
    for the attention output apart from q/k/v (Qwen2: q/k/v with bias, output without).
    A subclass, so that the plain LMConfig (and the zoo records built from it) is unchanged.
    """

    mrope_section: tuple[int, ...] | None = None  # None: Qwen2-VL's 1/4, 3/8, 3/8 of head_dim/2
    out_bias: bool | None = None  # None: the same as attention_bias

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mrope_section is None:
            f = self.resolved_head_dim // 2
            self.mrope_section = (f - 2 * (3 * f // 8), 3 * f // 8, 3 * f // 8)
        self.mrope_section = tuple(int(s) for s in self.mrope_section)
        if sum(self.mrope_section) != self.resolved_head_dim // 2:
            raise ValueError(
                f"MRopeLMConfig.mrope_section {list(self.mrope_section)} must sum to "
                f"head_dim/2 = {self.resolved_head_dim // 2}"
            )


@dataclass
class LMOutput:
    """What :meth:`DecoderLM.forward` returns.

    loss: mean next-token cross-entropy over labels != -100 (when labels are given).
    logits: (B, T, V).  hidden_states: (B, T, D) after the final RMSNorm.
    kv_caches: the per-layer caches that were passed in (now extended), or None.
    attentions: per-layer (B, H, T, T_past+T) weights when ``need_weights``.
    """

    loss: Tensor | None
    logits: Tensor
    kv_caches: list[KVCache] | None = None
    hidden_states: Tensor | None = None
    attentions: list[Tensor] | None = None


def lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Next-token cross-entropy: position t predicts ``labels[:, t+1]``.

    logits (B, T, V), labels (B, T); positions whose label is ``ignore_index``
    are skipped. The shift happens here, as in Hugging Face's causal LMs, so
    ``labels`` may simply be ``input_ids`` (with padding set to -100).
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"lm_loss: expected labels of shape {tuple(logits.shape[:2])} (B, T), "
            f"got {tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1].float()  # (B, T-1, V) predictions for positions 1..T-1
    shift_labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                           shift_labels.reshape(-1), ignore_index=ignore_index)


# --------------------------------------------------------------------------- model


class DecoderLM(nn.Module):
    """Llama-style causal language model (Touvron et al. 2023, §2.2).

    Submodules: ``embed_tokens``, ``blocks`` (TransformerBlock with RMSNorm,
    SwiGLU, GQA), ``norm`` (final RMSNorm), ``lm_head`` (no bias; tied to
    ``embed_tokens`` when ``config.tie_embeddings``) and ``rotary``.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim, padding_idx=c.pad_id)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                c.dim, c.num_heads, mlp_hidden=c.mlp_hidden, norm="rmsnorm", eps=c.eps,
                mlp="swiglu", qkv_bias=c.attention_bias,
                out_bias=(c.attention_bias if getattr(c, "out_bias", None) is None
                          else c.out_bias),
                mlp_bias=False, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                dropout=c.dropout,
            )
            for _ in range(c.depth)
        )
        self.norm = RMSNorm(c.dim, eps=c.eps)
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(c.resolved_head_dim, base=c.rope_base)
        self.reset_parameters()
        if c.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def reset_parameters(self) -> None:
        """Llama / HF initialisation: N(0, init_std) weights, zero biases, unit norms."""
        init_weights(self, std=self.config.init_std)

    def _apply(self, fn, recurse: bool = True):
        # ``model.to(torch.bfloat16)`` would also round RoPE's inverse frequencies;
        # recompute them in float32 afterwards (Llama keeps them in float32 too).
        super()._apply(fn, recurse)
        inv = self.rotary.inv_freq
        if inv.dtype != torch.float32:
            exact = RotaryEmbedding(self.config.resolved_head_dim, base=self.config.rope_base)
            self.rotary.inv_freq = exact.inv_freq.to(inv.device)
        return self

    # ---------------------------------------------------------------- helpers

    def rope(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) for (T,), (B, T) or, with ``mrope_section``, (axes, B, T) positions."""
        sections = getattr(self.config, "mrope_section", None)
        if not sections:
            return self.rotary(position_ids)
        if position_ids.dim() < 3:  # text only: every axis carries the same index
            position_ids = position_ids.reshape(1, -1, position_ids.shape[-1]).expand(
                len(sections), -1, -1)
        return sectioned_rope(position_ids, self.rotary.inv_freq, sections)

    def make_kv_caches(self) -> list[KVCache]:
        """One empty :class:`KVCache` per layer, to pass as ``kv_caches``."""
        return [KVCache() for _ in self.blocks]

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token ids (B, T) -> embeddings (B, T, D), checking dtype and vocabulary."""
        if input_ids.dim() != 2:
            raise ValueError(f"DecoderLM: expected input_ids of shape (B, T), got "
                             f"{tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"DecoderLM: expected integer input_ids, got {input_ids.dtype}")
        if input_ids.numel() and input_ids.device.type != "meta":
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    "DecoderLM: token ids must lie in the vocabulary "
                    f"[0, {self.config.vocab_size}), got values in [{lo}, {hi}]"
                )
        return self.embed_tokens(input_ids)  # (B, T, D)

    def build_mask(self, attention_mask: Tensor | None, T: int, past: int,
                   device: torch.device) -> Tensor:
        """Boolean (B|1, 1, T, past+T) mask: causal AND key padding (True = may attend).

        Query i sits at cache index past+i and may see keys 0..past+i that are
        not padding.
        """
        Tk = past + T
        q_idx = torch.arange(past, Tk, device=device)[:, None]  # (T, 1)
        k_idx = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        mask = (k_idx <= q_idx)[None, None]  # (1, 1, T, Tk) causal
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] != Tk:
                raise ValueError(
                    f"DecoderLM: expected attention_mask of shape (B, {Tk}) covering the "
                    f"{past} cached and {T} new positions, got {tuple(attention_mask.shape)}"
                )
            mask = mask & attention_mask.bool()[:, None, None, :]  # (B, 1, T, Tk)
        return mask

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_caches: list[KVCache] | None = None,
        need_weights: bool = False,
    ) -> LMOutput:
        """Run the decoder.

        Args:
            input_ids: (B, T) token ids, or give ``inputs_embeds`` (B, T, D) instead.
            attention_mask: (B, T_past+T) 1 = real token, 0 = padding (right-padded);
                with a cache it covers the cached positions too (as in HF).
            labels: (B, T) targets, -100 = ignore; shifted inside (position t predicts t+1).
            position_ids: (B, T) or (T,) RoPE positions, default T_past + (0..T-1).
            kv_caches: list of one KVCache per layer (see :meth:`make_kv_caches`),
                extended in place with this call's keys and values.
            need_weights: use the explicit attention path and return the weights.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("DecoderLM: pass exactly one of input_ids (B, T) or "
                             "inputs_embeds (B, T, D)")
        if inputs_embeds is None:
            x = self.embed(input_ids)  # (B, T, D)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.dim:
                raise ValueError(
                    f"DecoderLM: expected inputs_embeds of shape (B, T, {self.config.dim}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            x = inputs_embeds
        B, T, _ = x.shape

        past = 0
        if kv_caches is not None:
            if len(kv_caches) != len(self.blocks):
                raise ValueError(f"DecoderLM: expected {len(self.blocks)} kv_caches (one per "
                                 f"layer), got {len(kv_caches)}")
            past = kv_caches[0].length
            if any(c.length != past for c in kv_caches):
                raise ValueError("DecoderLM: kv_caches have different lengths")
            if past and kv_caches[0].k.shape[0] != B:
                raise ValueError(f"DecoderLM: kv_caches hold batch {kv_caches[0].k.shape[0]}, "
                                 f"inputs have batch {B}")

        if position_ids is None:
            if past + T > self.config.max_len:
                raise ValueError(f"DecoderLM: sequence length {past + T} exceeds max_len "
                                 f"{self.config.max_len}")
            position_ids = torch.arange(past, past + T, device=x.device)[None]  # (1, T)
        else:
            dims = (1, 2, 3) if getattr(self.config, "mrope_section", None) else (1, 2)
            if position_ids.shape[-1] != T or position_ids.dim() not in dims:
                raise ValueError(f"DecoderLM: expected position_ids of shape (B, {T}) or "
                                 f"({T},)" + (f" or (axes, B, {T})" if len(dims) == 3 else "")
                                 + f", got {tuple(position_ids.shape)}")
            if x.device.type != "meta" and int(position_ids.max()) >= self.config.max_len:
                raise ValueError(f"DecoderLM: position {int(position_ids.max())} exceeds "
                                 f"max_len {self.config.max_len}")
        rope = self.rope(position_ids.to(x.device))  # (cos, sin), each (B|1, 1, T, hd)

        mask = self.build_mask(attention_mask, T, past, x.device)  # (B|1, 1, T, past+T)

        attentions: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            cache = kv_caches[i] if kv_caches is not None else None
            x = block(x, mask=mask, need_weights=need_weights, rope=rope, kv_cache=cache)
            if need_weights:
                attentions.append(block.last_attn)  # (B, H, T, past+T)
        h = self.norm(x)  # (B, T, D), float32 inside the norm
        logits = self.lm_head(h)  # (B, T, V)

        loss = lm_loss(logits, labels) if labels is not None else None
        return LMOutput(loss=loss, logits=logits, kv_caches=kv_caches, hidden_states=h,
                        attentions=attentions if need_weights else None)

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        max_new_tokens: int = 20,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        do_sample: bool | None = None,
        pad_id: int | None = None,
    ) -> Tensor:
        """Continue a prompt; returns only the new tokens, LongTensor (B, T_new).

        The prompt is ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, D) (e.g.
        image features followed by text embeddings). Prompts of different
        lengths are **right-padded** with ``attention_mask``: each row continues
        from its own last real token at its own position, the padding slots stay
        in the KV cache but are masked out, so a batch gives the same tokens as
        running each row alone.

        Greedy when ``do_sample=False`` or ``temperature == 0`` (``do_sample=None``
        samples iff temperature > 0); otherwise temperature / top-k / top-p
        sampling with ``generator``. A row stops after emitting ``eos_id``
        (default ``config.eos_id``; pass -1 to never stop) and is then filled with
        ``pad_id`` (default ``config.pad_id``, else 0). The loop ends early once
        every row has stopped, so T_new <= max_new_tokens.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("DecoderLM.generate: pass exactly one of input_ids (B, T) or "
                             "inputs_embeds (B, T, D)")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"DecoderLM.generate: max_new_tokens must be a positive int, "
                             f"got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"DecoderLM.generate: temperature must be >= 0, got {temperature}")
        if do_sample is None:
            do_sample = temperature > 0
        if do_sample and temperature == 0:
            raise ValueError("DecoderLM.generate: do_sample=True needs temperature > 0")
        temp = temperature if do_sample else 0.0
        eos_id = self.config.eos_id if eos_id is None else eos_id
        pad_id = pad_id if pad_id is not None else (self.config.pad_id or 0)

        prompt = input_ids if input_ids is not None else inputs_embeds
        B, T = prompt.shape[:2]
        dev = prompt.device
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long, device=dev)
        if attention_mask.shape != (B, T):
            raise ValueError(f"DecoderLM.generate: expected attention_mask of shape ({B}, {T}), "
                             f"got {tuple(attention_mask.shape)}")
        am = attention_mask.long()
        if (am[:, 1:] > am[:, :-1]).any():
            raise ValueError("DecoderLM.generate: expected right padding (each attention_mask "
                             "row is 1...1 0...0); left-padded or holed prompts are not supported")
        lengths = am.sum(dim=1)  # (B,) real prompt lengths
        if (lengths == 0).any():
            raise ValueError("DecoderLM.generate: every prompt needs at least one real token")
        if int(lengths.max()) + max_new_tokens - 1 > self.config.max_len:
            raise ValueError(
                f"DecoderLM.generate: prompt length {int(lengths.max())} + max_new_tokens "
                f"{max_new_tokens} exceeds max_len {self.config.max_len}"
            )

        caches = self.make_kv_caches()
        out = self(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=am,
                   kv_caches=caches)
        rows = torch.arange(B, device=dev)
        logits = out.logits[rows, lengths - 1]  # (B, V) at each row's last real token

        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        new_tokens: list[Tensor] = []
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temp, top_k, top_p, generator)  # (B,)
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
            new_tokens.append(nxt)
            if eos_id is not None:
                finished |= nxt == eos_id
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            am = torch.cat([am, torch.ones(B, 1, dtype=am.dtype, device=dev)], dim=1)
            pos = (lengths + step)[:, None]  # (B, 1) each row's own next position
            out = self(input_ids=nxt[:, None], attention_mask=am, position_ids=pos,
                       kv_caches=caches)
            logits = out.logits[:, -1]  # (B, V)
        return torch.stack(new_tokens, dim=1)  # (B, T_new)

    # ---------------------------------------------------------------- interop

    @classmethod
    def from_hf(cls, hf_model) -> DecoderLM:
        """Copy the weights of a ``transformers.LlamaForCausalLM`` (default RoPE, SiLU)."""
        from minivlm.interop.llama import decoder_lm_from_hf

        return decoder_lm_from_hf(cls, LMConfig, hf_model)
