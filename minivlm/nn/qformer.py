"""The Q-Former (BLIP-2, Li et al. 2023, §3.1): learned queries that read a frozen image encoder.

A BERT whose input starts with ``num_query_tokens`` learned *query* vectors. Queries and text
share the self-attention layers; only the queries cross-attend to the image features (every
``cross_attention_freq`` layers), and queries and text have their own feed-forward networks --
"two transformer submodules that share the same self-attention layers". What each position may
see is one boolean mask per objective (:func:`qformer_masks`, Figure 2 right)::

    ITC  queries see queries, text sees text     -> image and text encoded separately
    ITM  everyone sees everyone                  -> queries fuse image and text
    ITG  queries see queries; text sees all queries and the text before it (causal)

A building block shared by BLIP-2 / InstructBLIP (:mod:`minivlm.models.blip2`) and the
Q-Former adapters of later models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minivlm.nn.attention import combine_masks, padding_mask
from minivlm.nn.bert import init_weights
from minivlm.nn.blocks import MLP, TransformerBlock, get_activation
from minivlm.nn.config import TransformerSizes, divisible
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["QFormer", "QFormerConfig", "QFormerOutput", "itc_similarity", "qformer_masks"]


@dataclass
class QFormerConfig(TransformerSizes):
    """Sizes of the Q-Former (defaults: the paper's, initialised from BERT-base: the
    :class:`~minivlm.nn.config.TransformerSizes` defaults).

    cross_attention_freq: layer i cross-attends to the image when ``i % freq == 0`` (2).
    num_query_tokens: Q learned queries (32).
    text: build the text side -- word/position embeddings and one text feed-forward network
        per layer -- needed by stage 1 and InstructBLIP. ``False`` gives exactly the modules of
        Hugging Face's ``Blip2QFormerModel`` (the queries alone, as used in stage 2).
    vocab_size, max_len, pad_id: the text side's vocabulary (BERT's 30522 + LAVIS's [DEC] token),
        longest text, and the padding id.
    """

    cross_attention_freq: int = 2
    num_query_tokens: int = 32
    text: bool = True
    vocab_size: int = 30523
    max_len: int = 512
    pad_id: int | None = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        raise_first("QFormerConfig: ", [divisible(self, "dim", "num_heads")])
        for name in ("depth", "cross_attention_freq", "num_query_tokens", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"QFormerConfig.{name} must be >= 1, got {getattr(self, name)}")
        get_activation(self.act)

    @property
    def cross_attention_ids(self) -> tuple[int, ...]:
        """Indices of the layers whose queries cross-attend to the image."""
        return tuple(i for i in range(self.depth) if i % self.cross_attention_freq == 0)


@dataclass
class QFormerOutput:
    """What :meth:`QFormer.forward` returns.

    last_hidden_state: (B, Q+T, D), the queries first. ``query_output`` (B, Q, D) and
    ``text_output`` (B, T, D) are its two parts. With ``need_weights``: ``attentions``, one
    (B, H, Q+T, Q+T) self-attention map per layer, and ``cross_attentions``, one (B, H, Q, S)
    map per cross-attention layer.
    """

    last_hidden_state: Tensor
    num_query: int
    attentions: list[Tensor] | None = None
    cross_attentions: list[Tensor] | None = None

    @property
    def query_output(self) -> Tensor:
        return self.last_hidden_state[:, : self.num_query]

    @property
    def text_output(self) -> Tensor:
        return self.last_hidden_state[:, self.num_query :]


def qformer_masks(
    num_query: int, num_text: int, device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """The Q-Former's three self-attention masks (Figure 2, right), each bool (Q+T, Q+T).

    Entry [i, j] is True where position i may attend to position j; positions 0..Q-1 are
    the queries, Q..Q+T-1 the text. Padding is combined separately (AND with a key mask).

    * ``"itc"`` uni-modal: queries see only queries, text sees only text;
    * ``"itm"`` bi-directional: all see all;
    * ``"itg"`` multimodal causal: queries see only queries; text token t sees every query
      and the text tokens up to and including t.
    """
    if num_query < 0 or num_text < 0:
        raise ValueError(
            f"qformer_masks: expected num_query, num_text >= 0, got {num_query}, {num_text}"
        )
    n = num_query + num_text
    is_query = torch.arange(n, device=device) < num_query  # (n,)
    q_row, q_col = is_query[:, None], is_query[None, :]  # (n, 1), (1, n)
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()  # j <= i
    return {
        "itc": q_row == q_col,  # same modality
        "itm": torch.ones(n, n, dtype=torch.bool, device=device),
        # query rows: queries only; text rows: j <= i covers all queries and the text so far
        "itg": torch.where(q_row, q_col.expand(n, n), causal),
    }


class QFormer(nn.Module):
    """BLIP-2's Querying Transformer (§3.1): BERT-style post-norm layers over [queries; text].

    Per layer i, with ``blocks[i]`` a post-norm :class:`~minivlm.nn.blocks.TransformerBlock`
    (its self-attention is shared by queries and text, its MLP is the queries')::

        x = LN(x + SelfAttn(x, mask))                        # [queries; text], (B, Q+T, D)
        q, t = x[:, :Q], x[:, Q:]
        q = LN(q + CrossAttn(q, image))                     # if i % cross_attention_freq == 0
        q = LN(q + MLP_query(q));  t = LN(t + MLP_text(t))  # separate feed-forward networks

    The input is ``embed_norm([queries; word[ids] + position[0..T-1]])``: the queries carry
    no position embedding (LAVIS / Hugging Face).
    """

    def __init__(self, config: QFormerConfig, kv_dim: int) -> None:
        super().__init__()
        self.config = cfg = config
        D = cfg.dim
        self.kv_dim = kv_dim
        if cfg.text:
            self.word_embeddings = nn.Embedding(cfg.vocab_size, D, padding_idx=cfg.pad_id)
            self.position_embeddings = nn.Embedding(cfg.max_len, D)
        self.embed_norm = nn.LayerNorm(D, eps=cfg.eps)
        self.embed_drop = nn.Dropout(cfg.dropout)
        cross = set(cfg.cross_attention_ids)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                D, cfg.num_heads, mlp_hidden=cfg.mlp_hidden, cross_attention=i in cross,
                kv_dim=kv_dim, eps=cfg.eps, mlp=cfg.act, qkv_bias=True, out_bias=True,
                mlp_bias=True, prenorm=False, dropout=cfg.dropout,
            )
            for i in range(cfg.depth)
        )  # fmt: skip
        if cfg.text:  # the text tokens' own feed-forward networks (post-norm, as BERT's)
            self.text_mlps = nn.ModuleList(
                MLP(D, cfg.mlp_hidden, act=cfg.act) for _ in range(cfg.depth)
            )
            self.text_norms = nn.ModuleList(
                nn.LayerNorm(D, eps=cfg.eps) for _ in range(cfg.depth)
            )
        self.drop = nn.Dropout(cfg.dropout)
        init_weights(self)

    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters of the text side (embeddings and text MLPs); empty without ``text``."""
        if not self.config.text:
            return []
        mods = [self.word_embeddings, self.position_embeddings, self.text_mlps, self.text_norms]
        return [p for m in mods for p in m.parameters()]

    def embed(self, queries: Tensor | None, input_ids: Tensor | None) -> Tensor:
        """[queries (B, Q, D); word + position of input_ids (B, T)] -> LN -> (B, Q+T, D)."""
        self._check_embed(queries, input_ids)
        parts = [] if queries is None else [queries]
        if input_ids is not None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(pos)[None])
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, Q+T, D)
        return self.embed_drop(self.embed_norm(x))

    def forward(
        self,
        queries: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_embeds: Tensor | None = None,
        image_mask: Tensor | None = None,
        mask: str | Tensor = "itm",
        need_weights: bool = False,
    ) -> QFormerOutput:
        """Run the Q-Former.

        queries: (B, Q, D) learned queries (or None: text only); input_ids (B, T) with
        attention_mask (B, T) 1/0 (or None: queries only). image_embeds (B, S, kv_dim) and
        image_mask (B, S): what the queries cross-attend to (needed when Q > 0).
        mask: ``"itc"``, ``"itm"``, ``"itg"`` (:func:`qformer_masks`) or a boolean
        (Q+T, Q+T) / (B, Q+T, Q+T) mask; the text padding is ANDed in.
        """
        x = self.embed(queries, input_ids)  # (B, Q+T, D)
        B, n, _ = x.shape
        Q = queries.shape[1] if queries is not None else 0
        T = n - Q
        self._check_forward(mask, attention_mask, image_embeds, image_mask, B, Q, T)
        if isinstance(mask, str):
            mask = qformer_masks(Q, T, device=x.device)[mask]  # (n, n)
        mask = mask[:, None] if mask.dim() == 3 else mask  # (B, 1, n, n) or (n, n)
        key_pad = None
        if attention_mask is not None:
            keep = torch.cat([attention_mask.new_ones(B, Q), attention_mask], dim=1)  # (B, n)
            key_pad = padding_mask(keep)  # (B, 1, 1, n)
        self_mask = combine_masks(mask, key_pad)
        img_mask = None if image_mask is None else padding_mask(image_mask)  # (B, 1, 1, S)

        attns: list[Tensor] | None = [] if need_weights else None
        cross: list[Tensor] | None = [] if need_weights else None
        for i, blk in enumerate(self.blocks):
            x = blk.self_attention_step(x, self_mask, need_weights)  # shared by queries and text
            q, t = x[:, :Q], x[:, Q:]  # (B, Q, D), (B, T, D)
            if Q:
                if blk.cross_attention:  # only the queries read the image
                    q = blk.cross_attention_step(q, image_embeds, img_mask, need_weights)
                q = blk.mlp_step(q)  # the queries' feed-forward network
            if T:
                t = self.text_norms[i](t + self.drop(self.text_mlps[i](t)))  # the text's own
            x = torch.cat([q, t], dim=1) if Q and T else (q if Q else t)
            if need_weights:
                attns.append(blk.last_attn)
                if blk.cross_attention and Q:
                    cross.append(blk.last_cross_attn)
        return QFormerOutput(x, Q, attns, cross)

    # -- input checks ----------------------------------------------------------------------

    def _check_embed(self, queries: Tensor | None, input_ids: Tensor | None) -> None:
        cfg = self.config
        if queries is None and input_ids is None:
            raise ValueError("QFormer: pass queries (B, Q, D) and/or input_ids (B, T)")
        if queries is not None and (queries.dim() != 3 or queries.shape[-1] != cfg.dim):
            raise ValueError(
                f"QFormer: expected queries of shape (B, Q, {cfg.dim}), got {tuple(queries.shape)}"
            )
        if input_ids is None:
            return
        if not cfg.text:
            raise ValueError(
                "QFormer: this Q-Former has no text side (QFormerConfig.text=False); "
                "pass no input_ids"
            )
        if input_ids.dim() != 2:
            raise ValueError(
                f"QFormer: expected input_ids of shape (B, T), got {tuple(input_ids.shape)}"
            )
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"QFormer: expected integer token ids, got {input_ids.dtype}")
        if input_ids.shape[1] > cfg.max_len:
            raise ValueError(
                f"QFormer: text length {input_ids.shape[1]} exceeds max_len {cfg.max_len}"
            )
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
            raise ValueError(
                f"QFormer: token ids must lie in the vocabulary 0..{cfg.vocab_size - 1}, got "
                f"ids in {int(input_ids.min())}..{int(input_ids.max())}"
            )
        if queries is not None and queries.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"QFormer: expected as many query rows as texts, got {queries.shape[0]} "
                f"and {input_ids.shape[0]}"
            )

    def _check_forward(
        self, mask: str | Tensor, attention_mask: Tensor | None, image_embeds: Tensor | None,
        image_mask: Tensor | None, B: int, Q: int, T: int,
    ) -> None:  # fmt: skip
        n = Q + T
        if isinstance(mask, str) and mask not in ("itc", "itm", "itg"):
            raise ValueError(f"QFormer: mask must be 'itc', 'itm', 'itg' or a tensor, got {mask!r}")
        if not isinstance(mask, str) and (
            mask.dtype != torch.bool or mask.dim() not in (2, 3) or tuple(mask.shape[-2:]) != (n, n)
        ):
            raise ValueError(
                f"QFormer: expected a boolean mask of shape (Q+T, Q+T) = ({n}, {n}) or "
                f"({B}, {n}, {n}), got {mask.dtype} {tuple(mask.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != (B, T):
            raise ValueError(
                f"QFormer: expected attention_mask of shape ({B}, {T}), "
                f"got {tuple(attention_mask.shape)}"
            )
        if Q and image_embeds is None and self.config.cross_attention_ids:
            raise ValueError("QFormer: the queries cross-attend; pass image_embeds (B, S, kv_dim)")
        if image_embeds is not None and (
            image_embeds.dim() != 3 or tuple(image_embeds.shape[::2]) != (B, self.kv_dim)
        ):
            raise ValueError(
                f"QFormer: expected image features of shape ({B}, S, {self.kv_dim}), got "
                f"{tuple(image_embeds.shape)}"
            )
        if image_mask is not None and image_mask.shape != image_embeds.shape[:2]:
            raise ValueError(
                f"QFormer: expected image_mask of shape {tuple(image_embeds.shape[:2])}, "
                f"got {tuple(image_mask.shape)}"
            )


def itc_similarity(image_feats: Tensor, text_feat: Tensor) -> Tensor:
    """BLIP-2's image-text similarity (§3.2): the best query for each pair (the score the
    Q-Former's ITC trains, :meth:`minivlm.models.blip2.Blip2.stage1`).

    image_feats (B_i, Q, E) and text_feat (B_t, E), both L2-normalised ->
    (B_i, B_t) with entry [i, j] = max_q cos(image_feats[i, q], text_feat[j]).
    """
    if image_feats.dim() != 3 or text_feat.dim() != 2 or image_feats.shape[2] != text_feat.shape[1]:
        raise ValueError(
            "itc_similarity: expected image_feats (B_i, Q, E) and text_feat (B_t, E), got "
            f"{tuple(image_feats.shape)} and {tuple(text_feat.shape)}"
        )
    sim = torch.einsum("iqe,je->ijq", image_feats, text_feat)  # (B_i, B_t, Q)
    return sim.max(dim=-1).values
