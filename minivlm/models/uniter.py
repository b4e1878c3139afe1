"""UNITER: one transformer over words and detected regions (Chen et al. 2020, "UNITER:
UNiversal Image-TExt Representation Learning"; VL-BERT, Su et al. 2020, is the same
single-stream design).

Where LXMERT keeps two streams until a cross-modality encoder, UNITER (§3.1) concatenates
``[words; regions]`` and runs *one* BERT over them. A region token is

    LN( LN(W_f f + b_f) + LN(W_p p + b_p) + type[1] )      f: RoI feature, p: 7-d box

with p = (x1, y1, x2, y2, w, h, w*h) normalised (:func:`~minivlm.nn.convnet.
box_position_features`); words are BERT's embeddings with type 0. Pre-training tasks (§3.2),
each a plain function below:

* MLM: predict masked words from the words around them *and all regions*;
* MRM, masked region modelling, on regions whose features are zeroed: feature regression
  (MRFR, :func:`mrfr_loss`), classification against the detector's label (MRC,
  :func:`mrc_loss`), and KL to the detector's whole class distribution (MRC-kl,
  :func:`mrc_kl_loss`);
* ITM on the [CLS] token; WRA, word-region alignment by optimal transport (IPOT, shared with
  ViLT's word-patch alignment in :mod:`minivlm.objectives`).

UNITER masks one modality at a time ("conditional masking"): a batch carries ``mlm_labels``
or ``region_masked``, not both on the same pair. Presets: ``uniter_tiny``, ``uniter_base``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minivlm.nn.bert import BertEncoder, BertMLMHead, BertSizes, init_weights
from minivlm.nn.blocks import get_activation
from minivlm.nn.config import divisible
from minivlm.objectives import cost_matrix_cosine, ipot, wasserstein_distance, wpa_loss
from minivlm.utils import raise_first

Tensor = torch.Tensor

__all__ = ["Uniter", "UniterConfig", "UniterOutput", "mrc_kl_loss", "mrc_loss", "mrfr_loss",
           "word_region_plan"]  # fmt: skip


@dataclass
class UniterConfig(BertSizes):
    """Sizes of UNITER (defaults: UNITER-base, §4: BERT-base cased, :class:`BertSizes`, over
    2048-d Faster R-CNN features with 7-d boxes, 1601 Visual Genome detector classes).
    ``wra_weight`` scales the WRA loss (UNITER pre-trains with it on ITM batches);
    ``wra_beta``/``wra_iters`` configure IPOT."""

    vocab_size: int = 28996  # BERT-base cased
    region_feat_dim: int = 2048
    region_pos_dim: int = 7
    num_region_classes: int = 1601
    wra_weight: float = 0.0
    wra_beta: float = 0.5
    wra_iters: int = 50

    def __post_init__(self) -> None:
        raise_first("UniterConfig: ", [
            divisible(self, "dim", "num_heads"),
            (self.region_feat_dim > 0 and self.region_pos_dim > 0,
             "region_feat_dim and region_pos_dim must be positive"),
            (self.num_region_classes >= 0, "num_region_classes must be >= 0"),
        ])  # fmt: skip


@dataclass
class UniterOutput:
    """``loss`` = sum of the losses whose targets were given (WRA scaled by ``wra_weight``);
    ``last_hidden_state`` (B, T+N, D), words first (``text_len`` = T); head outputs
    ``mlm_logits`` (B, T, V), ``feat_pred`` (B, N, F), ``region_logits`` (B, N, K),
    ``itm_logits`` (B, 2); ``wra_distance`` (B,) when WRA ran."""

    loss: Tensor | None
    last_hidden_state: Tensor
    text_len: int
    mlm_logits: Tensor
    feat_pred: Tensor
    region_logits: Tensor | None
    itm_logits: Tensor
    loss_mlm: Tensor | None = None
    loss_mrfr: Tensor | None = None
    loss_mrc: Tensor | None = None
    loss_mrc_kl: Tensor | None = None
    loss_itm: Tensor | None = None
    loss_wra: Tensor | None = None
    wra_distance: Tensor | None = None


# ---------------------------------------------------------------------------
# Masked region modelling (§3.2): three losses on the masked regions only
# ---------------------------------------------------------------------------


def _masked_mean(per_region: Tensor, masked: Tensor) -> Tensor:
    m = masked.to(per_region.dtype)
    return (per_region * m).sum() / m.sum().clamp_min(1)


def mrfr_loss(feat_pred: Tensor, feats: Tensor, masked: Tensor) -> Tensor:
    """Masked region feature regression: squared L2 distance between the predicted and the
    true RoI feature, averaged over the masked regions. (B, N, F), (B, N, F), (B, N) bool."""
    return _masked_mean(((feat_pred - feats) ** 2).sum(-1), masked)


def mrc_loss(region_logits: Tensor, labels: Tensor, masked: Tensor) -> Tensor:
    """Masked region classification: cross-entropy against the detector's most likely class
    (a hard label), over the masked regions. (B, N, K), (B, N) long, (B, N) bool."""
    ce = F.cross_entropy(region_logits.flatten(0, 1), labels.flatten(), reduction="none")
    return _masked_mean(ce.view(labels.shape), masked)


def mrc_kl_loss(region_logits: Tensor, detector_probs: Tensor, masked: Tensor) -> Tensor:
    """MRC-kl: KL(detector || model) = sum_k q_k (log q_k - log p_k) per masked region, where
    q is the detector's class distribution and p = softmax(region_logits); mean over the
    masked regions. (B, N, K), (B, N, K) rows summing to 1, (B, N) bool."""
    logp = region_logits.log_softmax(-1)  # (B, N, K)
    q = detector_probs
    kl = (q * (q.clamp_min(1e-12).log() - logp)).sum(-1)  # (B, N); 0 log 0 = 0
    return _masked_mean(kl, masked)


@torch.no_grad()
def word_region_plan(text_h: Tensor, region_h: Tensor, text_mask: Tensor, region_mask: Tensor,
                     beta: float = 0.5, iters: int = 50) -> Tensor:  # fmt: skip
    """The IPOT transport plan between word and region states (WRA's), (B, T, N)."""
    cost = cost_matrix_cosine(text_h.float(), region_h.float())  # (B, T, N)
    return ipot(cost, text_mask.bool(), region_mask.bool(), beta, iters)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class Uniter(nn.Module):
    """Single-stream transformer over [words; regions] with UNITER's pre-training heads."""

    def __init__(self, config: UniterConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(config or UniterConfig(), **overrides)
        self.config = cfg
        D = cfg.dim
        self.bert = BertEncoder(cfg.text_config())  # word embeddings (+ type 0) and all layers
        self.feat_fc = nn.Linear(cfg.region_feat_dim, D)
        self.feat_norm = nn.LayerNorm(D, eps=cfg.eps)
        self.pos_fc = nn.Linear(cfg.region_pos_dim, D)
        self.pos_norm = nn.LayerNorm(D, eps=cfg.eps)
        self.region_norm = nn.LayerNorm(D, eps=cfg.eps)
        self.pooler = nn.Linear(D, D)
        self.itm_head = nn.Linear(D, 2)
        self.mlm_head = BertMLMHead(D, cfg.vocab_size, act=cfg.act, eps=cfg.eps,
                                    tie_to=self.bert.word_embeddings)  # fmt: skip
        self.region_dense, self.region_act = nn.Linear(D, D), get_activation(cfg.act)
        self.region_tnorm = nn.LayerNorm(D, eps=cfg.eps)  # the MRM heads' shared transform
        self.feat_head = nn.Linear(D, cfg.region_feat_dim)
        self.region_cls = (nn.Linear(D, cfg.num_region_classes) if cfg.num_region_classes
                           else None)  # fmt: skip
        init_weights(self)
        self.mlm_head.tie_weights(self.bert.word_embeddings)

    def embed_regions(self, feats: Tensor, pos: Tensor, masked: Tensor | None = None) -> Tensor:
        """(B, N, F), (B, N, P) -> (B, N, D); regions in ``masked`` (B, N) get zero features
        (MRM's masking: the box stays, what is in it is hidden)."""
        cfg = self.config
        if feats.dim() != 3 or feats.shape[-1] != cfg.region_feat_dim:
            raise ValueError(f"Uniter: expected region_feats (B, N, {cfg.region_feat_dim}), "
                             f"got {tuple(feats.shape)}")  # fmt: skip
        if pos.shape != (*feats.shape[:2], cfg.region_pos_dim):
            raise ValueError(f"Uniter: expected region_pos {(*feats.shape[:2], cfg.region_pos_dim)}"
                             f", got {tuple(pos.shape)}")  # fmt: skip
        if masked is not None:
            feats = feats.masked_fill(masked[..., None].bool(), 0.0)
        typ = self.bert.token_type_embeddings.weight[1]  # (D,) the image segment
        x = self.feat_norm(self.feat_fc(feats)) + self.pos_norm(self.pos_fc(pos)) + typ
        return self.bert.embed_drop(self.region_norm(x))  # (B, N, D)

    def forward(
        self,
        input_ids: Tensor,
        region_feats: Tensor,
        region_pos: Tensor,
        attention_mask: Tensor | None = None,
        region_mask: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        region_masked: Tensor | None = None,
        region_labels: Tensor | None = None,
        region_probs: Tensor | None = None,
        itm_labels: Tensor | None = None,
        need_weights: bool = False,
    ) -> UniterOutput:
        """input_ids (B, T); region_feats (B, N, F); region_pos (B, N, P); masks (B, T)/(B, N)
        1 = real. Targets: ``mlm_labels`` (B, T) (-100 = not predicted), ``region_masked``
        (B, N) bool with ``region_labels`` (B, N) and/or ``region_probs`` (B, N, K) (MRFR
        always runs on masked regions), ``itm_labels`` (B,) 1 = matching pair."""
        cfg = self.config
        B, T = input_ids.shape
        N = region_feats.shape[1]
        am = torch.ones(B, T, dtype=torch.long) if attention_mask is None else attention_mask
        rm = torch.ones(B, N, dtype=torch.long) if region_mask is None else region_mask
        words = self.bert.embed(input_ids)  # (B, T, D)
        regions = self.embed_regions(region_feats, region_pos, region_masked)  # (B, N, D)
        joint = torch.cat([am, rm.to(am.dtype)], dim=1)  # (B, T+N)
        h = self.bert.forward_layers(torch.cat([words, regions], 1), joint,
                                     need_weights=need_weights).last_hidden_state  # fmt: skip
        ht, hr = h[:, :T], h[:, T:]  # (B, T, D), (B, N, D)
        itm_logits = self.itm_head(torch.tanh(self.pooler(h[:, 0])))  # (B, 2)
        rt = self.region_tnorm(self.region_act(self.region_dense(hr)))  # (B, N, D)
        out = UniterOutput(None, h, T, self.mlm_head(ht), self.feat_head(rt),
                           self.region_cls(rt) if self.region_cls is not None else None,
                           itm_logits)  # fmt: skip
        losses = []
        if mlm_labels is not None:
            out.loss_mlm = F.cross_entropy(out.mlm_logits.flatten(0, 1), mlm_labels.flatten())
            losses.append(out.loss_mlm)
        if region_masked is not None:
            out.loss_mrfr = mrfr_loss(out.feat_pred, region_feats, region_masked)
            losses.append(out.loss_mrfr)
            if region_labels is not None and out.region_logits is not None:
                out.loss_mrc = mrc_loss(out.region_logits, region_labels, region_masked)
                losses.append(out.loss_mrc)
            if region_probs is not None and out.region_logits is not None:
                out.loss_mrc_kl = mrc_kl_loss(out.region_logits, region_probs, region_masked)
                losses.append(out.loss_mrc_kl)
        if itm_labels is not None:
            out.loss_itm = F.cross_entropy(itm_logits, itm_labels)
            losses.append(out.loss_itm)
            if cfg.wra_weight > 0:  # WRA (§3.2): words <-> regions by OT, on ITM pairs
                tm = am.bool().clone()
                tm[:, 0] = False  # not [CLS] (UNITER also leaves out [SEP])
                out.wra_distance = wasserstein_distance(ht, hr, tm, rm.bool(), cfg.wra_beta,
                                                        cfg.wra_iters)  # fmt: skip
                out.loss_wra = wpa_loss(out.wra_distance, itm_labels)
                losses.append(cfg.wra_weight * out.loss_wra)
        out.loss = sum(losses) if losses else None
        return out
