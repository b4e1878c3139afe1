"""Checks of exercise 04 (BLIP-2): the Q-Former's three attention masks, the ITC score and loss.

References (Li et al. 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen
Image Encoders and Large Language Models"): the self-attention masks of §3.2 / Figure 2 (right),
``minivlm.models.blip2.qformer_masks``, one check per mask; and the image-text similarity of
§3.2 (ITC: "the highest [similarity] as the image-text similarity" over the query outputs),
``minivlm.models.blip2.itc_similarity`` applied to L2-normalised inputs (the library normalises
before it calls ``itc_similarity``; the learner's function gets raw embeddings and normalises
itself; neither divides by the temperature); and the ITC loss, the mean of the image->text and
text->image cross-entropies of the scores over the temperature
(``minivlm.models.blip2.Blip2.stage1``'s, without label smoothing). The training check
(``ex04_qformer_train``) cannot tell a one-directional or wrong-axis ITC loss from the right one,
so the loss is a function of its own, checked on score matrices that are not symmetric (and one
"hub" caption) where either half alone is far from their mean; the training step calls it.

Masks are boolean, True where the row position may attend to the column position, layout
``[queries (Q); text (T)]``. A float 0/1 mask fails on its dtype: ``attend`` and
``F.scaled_dot_product_attention`` read a float mask as an *additive* bias, so 0/1 would add
1 to some scores and block nothing. The "mistakes" are wrong versions whose output, when it
equals the learner's, names the mistake.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "04_qformer_masks"
register_check = exercise_checks(EXERCISE)


# ----------------------------------------------------------------------------- masks
def _ref_mask(kind: str):
    def reference(num_query: int, num_text: int) -> Tensor:
        from minivlm.models.blip2 import qformer_masks

        return qformer_masks(num_query, num_text)[kind]  # (Q+T, Q+T) bool

    reference.__name__ = f"{kind}_mask"
    return reference


def _mask(Q: int, T: int, *, text_first: bool = False, qq: str = "all", qt: str = "none",
          tq: str = "all", tt: str = "causal", diag: int = 0) -> Tensor:
    """A (Q+T, Q+T) bool mask from its four blocks (row block x column block).

    Each block is "all", "none", "causal" (column index <= row index + diag within the
    block's own numbering) or "anticausal" (column >= row). ``text_first`` puts the text
    positions before the queries.
    """
    n = Q + T
    pos = torch.arange(n)
    is_q = pos >= T if text_first else pos < Q  # (n,)
    idx = torch.where(is_q, pos - (T if text_first else 0), pos - (0 if text_first else Q))
    r, c = idx[:, None], idx[None, :]  # index within its own modality

    def block(kind: str) -> Tensor:
        return {"all": torch.ones(n, n, dtype=torch.bool),
                "none": torch.zeros(n, n, dtype=torch.bool),
                "causal": c <= r + diag, "anticausal": c >= r}[kind]

    qr, qc = is_q[:, None], is_q[None, :]
    return torch.where(qr, torch.where(qc, block(qq), block(qt)),
                       torch.where(qc, block(tq), block(tt)))


INVERTED = ("inverted: True must mean 'may attend' (minivlm's attend and "
            "F.scaled_dot_product_attention); your mask is True where attention is blocked, "
            "the convention of nn.MultiheadAttention's attn_mask")
TEXT_FIRST = ("the layout is [queries; text]: positions 0..Q-1 are the Q learned queries and "
              "positions Q..Q+T-1 the text tokens (the Q-Former concatenates the queries "
              "first); yours puts the text first")
SQUARE = ("the mask is square, (Q+T, Q+T): every position, query or text, is both a row and "
          "a column")


def _explain_mask(case: Case, got: list, expected: list) -> str | None:
    """Name the block (queries/text x queries/text) where a mask first differs."""
    g, e = got[0], expected[0]
    Q = case.args[0]
    bad = (g != e).nonzero()
    if not len(bad):
        return None
    i, j = (int(x) for x in bad[0])
    who = ("query" if i < Q else "text") + " rows x " + ("query" if j < Q else "text") + " columns"
    n_bad = int(len(bad))
    return (f"{n_bad} entries differ, the first in the {who} block (row {i} attends to column "
            f"{j}: expected {bool(e[i, j])}). Positions 0..{Q - 1} are the queries, "
            f"{Q}.. the text; mask[i, j] says whether position i may read position j")


def _mask_cases(kind: str):
    def cases(gen: torch.Generator):
        yield Case("4 queries, 6 text tokens", 4, 6,
                   hint="layout [queries; text]: rows and columns 0..3 are the queries, 4..9 the "
                        "text")
        yield Case("more queries than text: Q = 8, T = 3", 8, 3)
        yield Case("a single query (Q = 1)", 1, 5)
        yield Case("a single text token (T = 1)", 3, 1)
        yield Case("Q = T = 1", 1, 1)
        yield Case("no text (T = 0): the queries alone, as when BLIP-2 feeds the LLM", 5, 0,
                   hint="with T = 0 the mask is (Q, Q): every query sees every query")
        q = int(torch.randint(2, 12, (), generator=gen))
        t = int(torch.randint(2, 12, (), generator=gen))
        yield Case("random sizes", q, t)
        yield Case("the paper's sizes: 32 queries, 12 text tokens", 32, 12)

    cases.__name__ = cases.__qualname__ = f"{kind}_mask_cases"
    return cases


def _mask_check(kind: str, *, points: float, mistakes: list) -> None:
    """Register the check of ``{kind}_mask(num_query, num_text)``. The three masks share the
    reference (their entry of ``qformer_masks``), the cases, the block-by-block explanation
    and the output's shape; each has its own points and the mistakes typical of it."""
    register_check(
        f"{kind}_mask(num_query, num_text)", _ref_mask(kind), points=points,
        returns="(Q+T, Q+T) bool", mistakes=mistakes, explain=_explain_mask,
    )(_mask_cases(kind))


_mask_check("itc", points=1, mistakes=[
    ("the text can see the queries: in ITC each modality is encoded on its own (uni-modal "
     "mask), so text rows must be False in the query columns; otherwise the text feature "
     "would already contain the image and the contrast is trivial",
     lambda Q, T: _mask(Q, T, tq="all", tt="all")),
    ("the queries can see the text: in ITC the query outputs must come from the image "
     "alone, so query rows must be False in the text columns (no information leak)",
     lambda Q, T: _mask(Q, T, qt="all", tq="none", tt="all")),
    ("that is the ITM mask (everyone sees everyone); ITC's is uni-modal: queries see only "
     "queries and text sees only text", lambda Q, T: _mask(Q, T, qt="all", tt="all")),
    ("only the query block is True: the text rows must see the text (text sees text), "
     "or their softmax has nothing to attend to",
     lambda Q, T: _mask(Q, T, tq="none", tt="none")),
    ("the text part is causal: in ITC the text side is bi-directional, like BERT (its "
     "[CLS] output summarises the whole caption); only ITG is causal",
     lambda Q, T: _mask(Q, T, tq="none")),
    (INVERTED, lambda Q, T: ~_mask(Q, T, tq="none", tt="all")),
    (TEXT_FIRST, lambda Q, T: _mask(Q, T, text_first=True, tq="none", tt="all")),
    ("the mask is square, (Q+T, Q+T): every position, query or text, is both a row (who "
     "attends) and a column (who is attended to)",
     lambda Q, T: torch.ones(Q, T, dtype=torch.bool)),
])

_mask_check("itm", points=1, mistakes=[
    ("inverted: ITM is bi-directional, every position may attend to every other, so the "
     "mask is all True (True = may attend)",
     lambda Q, T: torch.zeros(Q + T, Q + T, dtype=torch.bool)),
    ("that is the ITC mask; ITM lets queries and text see each other (all True), so that "
     "the queries fuse the image with the caption",
     lambda Q, T: _mask(Q, T, tq="none", tt="all")),
    ("that is the ITG mask; ITM is bi-directional: all True",
     lambda Q, T: _mask(Q, T)),
    (SQUARE, lambda Q, T: torch.ones(Q, T, dtype=torch.bool)),
    (SQUARE, lambda Q, T: torch.ones(T, Q, dtype=torch.bool)),
    ("the mask covers both queries and text: (Q+T, Q+T), not (Q, Q)",
     lambda Q, T: torch.ones(Q, Q, dtype=torch.bool)),
    ("the mask covers both queries and text: (Q+T, Q+T), not (T, T)",
     lambda Q, T: torch.ones(T, T, dtype=torch.bool)),
])

_mask_check("itg", points=2, mistakes=[
    ("off by one: text token t must also attend to itself, so the diagonal of the text "
     "block is True (causal = columns j <= i; tril keeps the diagonal by default)",
     lambda Q, T: _mask(Q, T, diag=-1)),
    ("off by one: text token t may see token t+1, one step into the future it must "
     "predict", lambda Q, T: _mask(Q, T, diag=1)),
    ("the queries can see the text: in ITG the query rows must be False in the text "
     "columns; otherwise the queries read the caption and pass it back to the text, which "
     "then 'generates' what it has already seen (an information leak)",
     lambda Q, T: _mask(Q, T, qt="all")),
    ("the queries can see (part of) the text: query rows must be False in every text "
     "column", lambda Q, T: _mask(Q, T, qt="causal")),
    ("a plain causal mask over all Q+T positions: the text part is right, but query i sees "
     "only queries 0..i; in BLIP-2 the queries see all queries (bi-directional among "
     "themselves) and none of the text",
     lambda Q, T: torch.ones(Q + T, Q + T, dtype=torch.bool).tril()),
    ("the text cannot see the queries: in ITG every text token sees all Q queries, that is "
     "how the image reaches the text it generates (image-grounded)",
     lambda Q, T: _mask(Q, T, tq="none")),
    ("the text is bi-directional: ITG generates the caption left to right, so text token t "
     "sees only the text tokens 0..t (causal) besides the queries",
     lambda Q, T: _mask(Q, T, tt="all")),
    ("that is the ITM mask (all see all); in ITG the queries see only the queries and the "
     "text is causal", lambda Q, T: torch.ones(Q + T, Q + T, dtype=torch.bool)),
    ("transposed: mask[i, j] says whether row i may attend to column j; yours lets column "
     "j attend to row i (the text block is upper triangular and the queries see the text)",
     lambda Q, T: _mask(Q, T).T),
    ("the text block is upper triangular: text token t sees the tokens after it; use the "
     "lower triangle (columns j <= i, tril)", lambda Q, T: _mask(Q, T, tt="anticausal")),
    (INVERTED, lambda Q, T: ~_mask(Q, T)),
    (TEXT_FIRST, lambda Q, T: _mask(Q, T, text_first=True)),
    (SQUARE, lambda Q, T: torch.ones(Q, T, dtype=torch.bool)),
])


# ----------------------------------------------------------------------------- ITC score
def _ref_itc_score(query_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    from minivlm.models.blip2 import itc_similarity

    # (B_i, Q, D) and (B_t, D), each row L2-normalised -> (B_i, B_t) max over Q of cosines
    return itc_similarity(F.normalize(query_embeds, dim=-1), F.normalize(text_embeds, dim=-1))


def _score_variant(*, norm_q: int | None = -1, norm_t: int | None = -1, reduce: str = "max",
                   pool_first: bool = False, out: str = "ij", scale: float = 1.0):
    """A wrong ITC score: the formula with one step changed."""

    def itc_score(query_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        q = query_embeds if norm_q is None else F.normalize(query_embeds, dim=norm_q)
        t = text_embeds if norm_t is None else F.normalize(text_embeds, dim=norm_t)
        if pool_first:  # one vector per image: mean of the queries, then a cosine
            return F.normalize(q.mean(dim=1), dim=-1) @ t.T  # (B_i, B_t)
        if reduce == "max_d":  # max over the embedding axis instead of the dot product's sum
            return (q[:, None] * t[None, :, None]).amax(dim=-1).amax(dim=-1)
        sim = torch.einsum("iqd,jd->ijq", q, t)  # (B_i, B_t, Q)
        if reduce == "mean":
            s = sim.mean(dim=-1)
        elif reduce == "sum":
            s = sim.sum(dim=-1)
        elif reduce == "max_texts":  # q @ t.T is (B_i, Q, B_t); max over the last axis
            return sim.permute(0, 2, 1).amax(dim=-1)  # (B_i, Q)
        elif reduce == "max_images":
            return sim.amax(dim=0)  # (B_t, Q)
        elif reduce == "none":
            return sim  # (B_i, B_t, Q)
        elif reduce == "none_iqj":
            return sim.permute(0, 2, 1)  # (B_i, Q, B_t)
        else:
            s = sim.amax(dim=-1)
        s = s * scale
        return s.T if out == "ji" else s

    return itc_score


KEPT_QUERIES = ("you kept one score per query: reduce the query axis with a max to get one "
                "score per (image, text) pair")  # an output (B_img, B_txt, Q) or (B_img, Q, B_txt)


def _explain_score(case: Case, got: list, expected: list) -> str | None:
    g, e = got[0], expected[0]
    if not g.is_floating_point():
        return None
    top = g.abs().max().item()
    if top > 1 + 1e-4:
        return (f"cosine similarities lie in [-1, 1], but yours reach {top:.3g}: normalise each "
                "query embedding and each text embedding to unit length (dim=-1) before the dot "
                "product")
    if bool((g <= e + 1e-6).all()):
        return ("none of your scores exceeds the reference's: the score of a pair is the "
                "*largest* of its Q query-text cosines (max over the query axis)")
    return None


@register_check(
    "itc_score(query_embeds, text_embeds)", _ref_itc_score, points=3, grad=True,
    returns="(B_img, B_txt)",
    mistakes=[
        ("you averaged over the queries: BLIP-2 takes the best query, the *max* of the Q "
         "cosines, so that each query may specialise in something a caption can mention",
         _score_variant(reduce="mean")),
        ("you summed over the queries: take the max of the Q cosines",
         _score_variant(reduce="sum")),
        ("you pooled the queries into one vector (their mean) before the cosine: compare the "
         "text with every query separately, then take the max over the queries",
         _score_variant(pool_first=True)),
        ("the embeddings are not normalised: divide each query embedding and each text "
         "embedding by its L2 norm (dim=-1) so that the dot products are cosines",
         _score_variant(norm_q=None, norm_t=None)),
        ("only the query embeddings are normalised; normalise the text embeddings too",
         _score_variant(norm_t=None)),
        ("only the text embeddings are normalised; normalise each query embedding too",
         _score_variant(norm_q=None)),
        ("you normalised the queries over the query axis (dim=1); normalise each query "
         "embedding over its D features (dim=-1)", _score_variant(norm_q=1)),
        ("you normalised the text embeddings over the batch (dim=0); normalise each one over "
         "its D features (dim=-1)", _score_variant(norm_t=0)),
        ("you normalised both over the wrong axis: each embedding over its D features (dim=-1)",
         _score_variant(norm_q=1, norm_t=0)),
        ("you divided by a temperature: itc_score returns the plain cosine (in [-1, 1]); the "
         "model divides by τ afterwards, when it turns scores into logits",
         _score_variant(scale=1 / 0.07)),
        ("you took a max over the embedding axis D: the cosine is the *sum* over D of the "
         "products of the unit vectors (a dot product); the max is over the queries",
         _score_variant(reduce="max_d")),
        ("you return (B_txt, B_img); return one row per image: entry [i, j] scores image i "
         "against text j", _score_variant(out="ji")),
        ("you took the max over the texts (the last axis of query_embeds @ text_embeds.T, "
         "which is (B_img, Q, B_txt)): take it over the queries, the middle axis",
         _score_variant(reduce="max_texts")),
        ("you took the max over the images (the batch axis): take it over the queries",
         _score_variant(reduce="max_images")),
        (KEPT_QUERIES, _score_variant(reduce="none")),
        (KEPT_QUERIES, _score_variant(reduce="none_iqj")),
    ],
    explain=_explain_score,
)
def itc_score_cases(gen: torch.Generator):
    def embeds(bi: int, bt: int, q: int, d: int, dtype: torch.dtype = torch.float32
               ) -> tuple[Tensor, Tensor]:
        qs = torch.randn(bi, q, d, generator=gen, dtype=dtype)
        qs = qs * torch.exp(torch.randn(bi, q, 1, generator=gen, dtype=dtype))  # norms 0.1..10
        ts = torch.randn(bt, d, generator=gen, dtype=dtype) * 3.0
        return qs, ts

    yield Case("5 images with Q = 4 queries, 3 texts, D = 8", *embeds(5, 3, 4, 8),
               hint="B_img != B_txt here: the output is (B_img, B_txt), one row per image")
    yield Case("a square batch: 6 images, 6 texts, Q = 4, D = 16", *embeds(6, 6, 4, 16))
    yield Case("a single query (Q = 1)", *embeds(4, 3, 1, 8),
               hint="with Q = 1 the score is that query's cosine; .squeeze() would drop more "
                    "axes than the query axis")
    yield Case("a single image (B_img = 1)", *embeds(1, 4, 3, 8),
               hint="with B_img = 1, .squeeze() removes the image axis you need")
    yield Case("a single text (B_txt = 1)", *embeds(4, 1, 3, 8),
               hint="with B_txt = 1, .squeeze() removes the text axis you need")
    yield Case("one image, one text, one query", *embeds(1, 1, 1, 8),
               hint="the output is (1, 1) here; keep both batch axes")
    q, t = embeds(3, 5, 8, 32)
    base = torch.randn(5, 32, generator=gen)
    q[:, 2] = base[:3] * 4 + 0.1 * torch.randn(3, 32, generator=gen)  # query 2 of image i ~ text i
    t = base * 0.5
    yield Case("one query of each image matches a text closely, the others do not", q, t,
               hint="the best query wins: a close match of one query must not be averaged away")
    qs = torch.randn(4, 16, 6, generator=gen).transpose(1, 2)  # (4, 6, 16), not contiguous
    ts = torch.randn(16, 3, generator=gen).T  # (3, 16), not contiguous
    yield Case("non-contiguous inputs (transposed views)", qs, ts,
               hint="the inputs are views: use .reshape or .mT, not .view")
    yield Case("the paper's sizes: 8 images, 32 queries, 8 texts, D = 256", *embeds(8, 8, 32, 256))
    yield Case("float64 embeddings", *embeds(3, 4, 5, 8, torch.float64))


# ----------------------------------------------------------------------------- ITC loss
def _ref_itc_loss(scores: Tensor, temp: Tensor) -> Tensor:
    # BLIP-2's stage-1 ITC (minivlm.models.blip2.Blip2.stage1, label smoothing 0): the logits are
    # the scores over τ; pair i is the positive of row i (image -> texts) and of column i
    # (text -> images); the loss is the mean of the two cross-entropies
    logits = scores / temp  # (B, B)
    targets = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _loss_variant(*, direction: str = "both", combine: str = "mean", softmax: str = "rows",
                  temp: str = "divide", targets: str = "diagonal", reduction: str = "mean",
                  sign: float = 1.0):
    """A wrong ITC loss: the formula with one step changed."""

    def itc_loss(scores: Tensor, temp_: Tensor) -> Tensor:
        logits = {"divide": scores / temp_, "none": scores, "multiply": scores * temp_}[temp]
        n = logits.shape[0]
        if softmax == "matrix":  # one softmax over all B*B entries
            return sign * -logits.reshape(-1).log_softmax(0).reshape(n, n).diagonal().mean()
        t = torch.arange(n) if targets == "diagonal" else torch.zeros(n, dtype=torch.long)
        i2t = F.cross_entropy(logits, t, reduction=reduction)  # softmax over each row
        t2i = F.cross_entropy(logits.T, t, reduction=reduction)  # over each column
        loss = {"both": (i2t + t2i) / 2 if combine == "mean" else i2t + t2i,
                "i2t": i2t, "t2i": t2i}[direction]
        return sign * loss

    return itc_loss


@register_check(
    "itc_loss(scores, temp)", _ref_itc_loss, points=2, grad=True, returns="() a scalar",
    mistakes=[
        ("your loss is the image->text half alone: a softmax over each row (image i over the "
         "B texts) and none over the columns. Either the text->image half is missing, or its "
         "softmax runs over the rows again (F.cross_entropy(logits, targets) twice, or "
         "logits.T.log_softmax(dim=0), which is logits' rows). BLIP-2's ITC is symmetric: "
         "average F.cross_entropy(logits, targets) and F.cross_entropy(logits.T, targets)",
         _loss_variant(direction="i2t")),
        ("your loss is the text->image half alone: a softmax over each column (text j over the "
         "B images) and none over the rows. Either the image->text half is missing, or its "
         "softmax runs over the columns again (F.cross_entropy(logits.T, targets) twice, or "
         "logits.log_softmax(dim=0) for both halves). Average the row (image->text) and the "
         "column "
         "(text->image) cross-entropies", _loss_variant(direction="t2i")),
        ("you summed the two halves; BLIP-2 averages them: (loss_i2t + loss_t2i) / 2",
         _loss_variant(combine="sum")),
        ("your softmax runs over all B*B entries of the matrix at once; it must run over each "
         "row (image->text) and, separately, over each column (text->image)",
         _loss_variant(softmax="matrix")),
        ("you did not divide by the temperature: the logits are scores / temp (cosines in "
         "[-1, 1] alone are too soft to separate a batch, and temp gets no gradient, so it is "
         "never learned)", _loss_variant(temp="none")),
        ("you multiplied by the temperature; divide: logits = scores / temp (τ = 0.07 makes "
         "the cosines about 14 times sharper)", _loss_variant(temp="multiply")),
        ("the sign is flipped: the loss is the cross-entropy -log p(positive), which is >= 0; "
         "minimising your value would push the matching pairs apart", _loss_variant(sign=-1.0)),
        ("wrong targets: the positive of row i (and of column i) is pair i, so the targets are "
         "torch.arange(B), not zeros", _loss_variant(targets="zeros")),
        ("you summed the cross-entropy over the batch; take the mean over the B pairs "
         "(F.cross_entropy's default reduction='mean')", _loss_variant(reduction="sum")),
    ],
)
def itc_loss_cases(gen: torch.Generator):
    def scores(b: int, dtype: torch.dtype = torch.float32) -> Tensor:
        s = torch.rand(b, b, generator=gen, dtype=dtype) * 1.2 - 0.7  # (B, B) in [-0.7, 0.5]
        return s + 0.4 * torch.rand(b, 1, generator=gen, dtype=dtype)  # each row shifted: s != s.T

    def tau(value: float, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor(value, dtype=dtype)

    yield Case("6 pairs, τ = 0.07", scores(6), tau(0.07),
               hint="the scores are not symmetric here, so the image->text half (rows) and "
                    "the text->image half (columns) differ")
    hub = torch.full((5, 5), -0.2)  # text 0 is close to every image; each image finds its text
    hub.fill_diagonal_(0.6)
    hub[1:, 0] = 0.55
    yield Case("a 'hub' caption: text 0 scores high with every image", hub, tau(0.07),
               hint="every image finds its own text (the rows are easy) but text 0 cannot find "
                    "its image among five near-equal ones: only the column softmax sees it")
    yield Case("τ = 1, 4 pairs", scores(4), tau(1.0))
    yield Case("a batch of one pair", scores(1), tau(0.07),
               hint="with B = 1 the only text is the right one, so the loss is 0; keep the "
                    "(1, 1) matrix (no .squeeze())")
    yield Case("τ = 0.001 (the clamp's minimum), 8 pairs", scores(8), tau(0.001),
               hint="the logits reach about 1,000 and exp overflows: use F.cross_entropy or "
                    "log_softmax, which subtract the maximum first")
    yield Case("float64 scores and temperature", scores(5, torch.float64),
               tau(0.05, torch.float64))
