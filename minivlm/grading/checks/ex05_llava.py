"""Checks of exercise 05 (LLaVA): the projector, splicing image features into the text, and
the assistant-only labels of a tokenised dialogue.

References (Liu et al. 2023, "Visual Instruction Tuning", §4.1-4.2; Liu et al. 2024,
"Improved Baselines with Visual Instruction Tuning", §3.2): the projector of
``minivlm.models.llava.build_projector`` ("linear": LLaVA's ``W``; "mlp2x_gelu":
LLaVA-1.5's Linear-GELU-Linear with the exact, erf-based GELU of HF's
``projector_hidden_act="gelu"``), run on the learner's weights with
``torch.func.functional_call``; ``minivlm.models.llava.merge_image_features`` (features fill
the ``<image>`` slots in reading order, a wrong count raises ``ValueError``); and the labels
that ``minivlm.models.llava.LlavaCollator`` builds with the ``SHAPES_CHAT`` template (token ids
of the assistant's answers and their end token, -100 everywhere else, padding included).

The check ``merge_raises_value_error`` calls the learner's ``merge_image_features`` on
prompts whose ``<image>`` counts are wrong, with ``Case(..., raises=ValueError)``: the function
must raise ``ValueError`` (the library's does), and on the two good prompts it must return the
library's result.

The labels come from dialogues: the cases are built from turns with the library's collator,
and the reference looks up the labels the collator made for the very ``input_ids`` it is
given (``_LABELS``, filled by the case generator; an unknown input is a check error, never a
silent guess).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from minivlm.grading.core import Case, exercise_checks

Tensor = torch.Tensor
EXERCISE = "05_llava_projector"
register_check = exercise_checks(EXERCISE)
IGNORE = -100


# ----------------------------------------------------------------------------- projector
def _ref_project(features: Tensor, w1: Tensor, b1: Tensor, w2: Tensor | None = None,
                 b2: Tensor | None = None) -> Tensor:
    from minivlm.models.llava import build_projector

    kind = "linear" if w2 is None else "mlp2x_gelu"
    with torch.device("meta"):  # shapes only: every parameter is replaced below
        proj = build_projector(kind, w1.shape[1], w1.shape[0])
    params = ({"weight": w1, "bias": b1} if w2 is None
              else {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2})
    return torch.func.functional_call(proj, params, (features,))  # (..., D)


_ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "none": lambda x: x,
}


def _project_variant(*, act: str = "gelu", act2: str = "none", bias1: bool = True,
                     bias2: bool = True, transpose2: bool = True, linear_act: str = "none"):
    """A wrong projector: the recipe with one step changed."""

    def project(features, w1, b1, w2=None, b2=None):
        h = features @ w1.T + (b1 if bias1 else 0)
        if w2 is None:
            return _ACTS[linear_act](h)
        h = _ACTS[act](h)
        h = h @ (w2.T if transpose2 else w2) + (b2 if bias2 else 0)
        return _ACTS[act2](h)

    return project


@register_check(
    "project(features, w1, b1, w2, b2)", _ref_project, points=3, grad=True,
    returns="(..., D)",
    mistakes=[
        ("you used ReLU; LLaVA-1.5's projector is Linear-GELU-Linear (F.gelu)",
         _project_variant(act="relu")),
        ("you used the tanh approximation of GELU (approximate='tanh'); the reference uses the "
         "exact GELU x·Φ(x), F.gelu's default (HF's projector_hidden_act='gelu')",
         _project_variant(act="tanh")),
        ("you used CLIP's quick GELU x·σ(1.702x); the projector uses the exact GELU, F.gelu",
         _project_variant(act="quick")),
        ("you used SiLU; the projector uses GELU, F.gelu", _project_variant(act="silu")),
        ("there is no activation between the two layers: without it two Linears collapse into "
         "one linear map; apply F.gelu to the hidden layer", _project_variant(act="none")),
        ("the activation is applied after the second layer too; the output of fc2 goes to the "
         "language model as it is: fc2(gelu(fc1(x)))", _project_variant(act2="gelu")),
        ("the activation sits after the second layer instead of between the two: "
         "fc2(gelu(fc1(x))), not gelu(fc2(fc1(x)))", _project_variant(act="none", act2="gelu")),
        ("the first bias b1 is missing: each layer is x @ W.T + b", _project_variant(bias1=False)),
        ("the second bias b2 is missing: each layer is x @ W.T + b",
         _project_variant(bias2=False)),
        ("both biases are missing: each layer is x @ W.T + b",
         _project_variant(bias1=False, bias2=False)),
        ("w2 is used untransposed: a Linear's weight is (out, in), so the layer is h @ w2.T + b2",
         _project_variant(transpose2=False)),
        ("the linear projector (w2 is None) has no activation: LLaVA's W is one Linear, "
         "features @ w1.T + b1", _project_variant(linear_act="gelu")),
        ("the linear projector (w2 is None) needs its bias: features @ w1.T + b1",
         _project_variant(bias1=False)),
    ],
)
def project_cases(gen: torch.Generator):
    def weights(d_in: int, d: int, *, mlp: bool = True, dtype=torch.float32) -> list:
        w1 = torch.randn(d, d_in, generator=gen, dtype=dtype) * 1.5 / d_in**0.5
        b1 = torch.randn(d, generator=gen, dtype=dtype) * 0.5
        if not mlp:
            return [w1, b1, None, None]
        w2 = torch.randn(d, d, generator=gen, dtype=dtype) * 2.0 / d**0.5
        b2 = torch.randn(d, generator=gen, dtype=dtype) * 0.5
        return [w1, b1, w2, b2]

    def feats(*shape: int, dtype=torch.float32) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype) * 2.0  # pre-activations ~ ±3

    yield Case("mlp2x_gelu: 2 images x 5 features, d_v=6 -> D=16", feats(2, 5, 6),
               *weights(6, 16))
    yield Case("linear projector (w2 = b2 = None)", feats(2, 3, 6), *weights(6, 8, mlp=False),
               hint="with w2=None the projector is LLaVA's single Linear: features @ w1.T + b1")
    yield Case("a single image with a single feature (B = 1, N = 1)", feats(1, 1, 4),
               *weights(4, 12), hint="with B = 1 or N = 1, .squeeze() drops axes you need")
    yield Case("in_dim == out_dim (square weights)", feats(3, 4, 10), *weights(10, 10),
               hint="a Linear's weight is (out, in): the layer is x @ W.T + b")
    yield Case("features without a batch axis: (N, d_v)", feats(7, 5), *weights(5, 9),
               hint="features are (..., d_v): work on the last axis (x @ w1.T), whatever "
                    "comes before it")
    yield Case("float64, mlp2x_gelu", feats(2, 6, 8, dtype=torch.float64),
               *weights(8, 16, dtype=torch.float64))
    yield Case("float64, linear projector", feats(2, 4, 8, dtype=torch.float64),
               *weights(8, 6, mlp=False, dtype=torch.float64))


# ----------------------------------------------------------------------------- splicing
def _ref_merge(inputs_embeds: Tensor, input_ids: Tensor, image_features: Tensor,
               image_token_id: int) -> Tensor:
    from minivlm.models.llava import merge_image_features

    return merge_image_features(inputs_embeds, input_ids, image_features, image_token_id)


def _slots(input_ids: Tensor, image_token_id: int) -> Tensor:
    return (input_ids == image_token_id).nonzero()  # (B*N, 2) rows (b, t), row-major


def _merge_variant(how: str):
    """A wrong splice."""

    def merge_image_features(inputs_embeds, input_ids, image_features, image_token_id):
        out = inputs_embeds.clone()
        D = image_features.shape[-1]
        flat = image_features.reshape(-1, D)  # (B*N, D) image 0's features first
        slots = input_ids == image_token_id  # (B, T)
        pos = _slots(input_ids, image_token_id)
        if how == "column_major":  # visits (t, b): position by position across the batch
            out.transpose(0, 1)[slots.T] = flat
        elif how in ("next", "previous"):
            shift = 1 if how == "next" else -1
            out[pos[:, 0], pos[:, 1] + shift] = flat
        elif how == "add":
            out[slots] = out[slots] + flat
        elif how == "first_image":
            for b in range(out.shape[0]):
                out[b][slots[b]] = image_features[0]
        elif how == "row0_positions":
            out[:, slots[0]] = image_features
        elif how == "reversed":
            out[slots] = image_features.flip(1).reshape(-1, D)
        elif how == "image_order":  # the batch of images in reverse: row b gets image B-1-b
            out[slots] = image_features.flip(0).reshape(-1, D)
        elif how == "insert":  # the features next to the placeholders: (B, T + N, D)
            return torch.cat([image_features, inputs_embeds], dim=1)
        return out

    return merge_image_features


def _image_ids(gen: torch.Generator, B: int, T: int, N: int, image_token_id: int, *,
               starts: Sequence[int], lengths: Sequence[int], vocab: int = 40) -> Tensor:
    """(B, T) ids: ordinary tokens (never ``image_token_id``), N placeholders from
    ``starts[b]``, right padding (id 0) after ``lengths[b]`` tokens."""
    ids = torch.randint(8, vocab, (B, T), generator=gen)
    ids[ids == image_token_id] = 8
    for b in range(B):
        ids[b, starts[b]:starts[b] + N] = image_token_id
        ids[b, lengths[b]:] = 0
    return ids


def _merge_case(gen: torch.Generator, label: str, B: int, T: int, N: int, D: int, *,
                starts: Sequence[int], lengths: Sequence[int] | None = None,
                image_token_id: int = 7, n_images: int | None = None, dtype=torch.float32,
                ids: Tensor | None = None, hint: str | None = None) -> Case:
    if ids is None:
        ids = _image_ids(gen, B, T, N, image_token_id, starts=starts,
                         lengths=lengths or [T] * B)
    embeds = torch.randn(B, T, D, generator=gen, dtype=dtype)
    feats = torch.randn(n_images or B, N, D, generator=gen, dtype=dtype) * 3 + 5  # unlike text
    return Case(label, embeds, ids, feats, image_token_id, hint=hint)


@register_check(
    "merge_image_features(inputs_embeds, input_ids, image_features, image_token_id)",
    _ref_merge, points=3, grad=True,
    returns="(B, T, D)",
    mistakes=[
        ("the features are filled column by column (position by position across the batch): "
         "reading order is row 0's <image> slots left to right, then row 1's, ...; image b "
         "goes into row b (boolean indexing out[slots] visits the slots in that order)",
         _merge_variant("column_major")),
        ("off by one: each feature landed on the token after its <image> slot; replace the "
         "placeholder itself and leave the next token alone", _merge_variant("next")),
        ("off by one: each feature landed on the token before its <image> slot",
         _merge_variant("previous")),
        ("you added the features to the placeholder embeddings; replace them: the <image> "
         "token's own embedding must not leak into the image features",
         _merge_variant("add")),
        ("every row got the features of image 0; row b takes image_features[b]",
         _merge_variant("first_image")),
        ("every row used the <image> positions of row 0; find the slots of each row "
         "(input_ids[b] == image_token_id)", _merge_variant("row0_positions")),
        ("the features of each image are in reverse order; feature j of an image goes into "
         "its j-th slot, left to right", _merge_variant("reversed")),
        ("the images are in the wrong order: row b takes image_features[b] (the first image "
         "into the first row), not the images in reverse", _merge_variant("image_order")),
        ("the output must keep the shape of inputs_embeds (B, T, D): input_ids already hold "
         "one <image> token per feature, so replace those tokens, don't insert the features",
         _merge_variant("insert")),
    ],
)
def merge_cases(gen: torch.Generator):
    yield _merge_case(gen, "2 rows, N=4 image tokens at different offsets, right padding",
                      2, 12, 4, 8, starts=[1, 3], lengths=[10, 12])
    yield _merge_case(gen, "3 rows, the image tokens at the same positions in every row",
                      3, 9, 3, 6, starts=[2, 2, 2])
    yield _merge_case(gen, "a batch of size 1", 1, 8, 5, 4, starts=[2],
                      hint="with B = 1, .squeeze() drops the batch axis you need")
    yield _merge_case(gen, "one feature per image (N = 1)", 4, 6, 1, 8, starts=[0, 2, 4, 1],
                      lengths=[6, 5, 6, 3])
    ids = _image_ids(gen, 2, 11, 0, 7, starts=[0, 0], lengths=[11, 11])
    ids[0, [1, 2, 6, 7]] = 7
    ids[1, [4, 5, 9, 10]] = 7  # two runs per row, the last one at the very end
    yield _merge_case(gen, "the 4 image tokens of a row in two runs, one at the end of the row",
                      2, 11, 4, 8, starts=[], ids=ids,
                      hint="the slots of a row are filled in reading order wherever they are; "
                           "the last position of a row may be a slot")
    ids = _image_ids(gen, 2, 10, 3, 3, starts=[4, 1], lengths=[10, 9])
    ids[:, 0] = 7  # here 7 is an ordinary token: the placeholder is id 3
    yield _merge_case(gen, "another placeholder id (image_token_id=3; 7 is an ordinary token "
                      "here)", 2, 10, 3, 8, starts=[], ids=ids, image_token_id=3,
                      hint="use the image_token_id argument, not a fixed 7")
    yield _merge_case(gen, "float64", 2, 9, 3, 6, starts=[1, 5], dtype=torch.float64)


# ----------------------------------------------------------------------------- wrong counts
@register_check(
    "merge_image_features(inputs_embeds, input_ids, image_features, image_token_id)",
    _ref_merge, points=1, name="merge_raises_value_error",
    returns="(B, T, D)",
)
def merge_raises_cases(gen: torch.Generator):
    count_hint = ("the counts do not match: check them before splicing and raise ValueError "
                  "(torch's own errors, or a silently wrong result, are not what a user needs)")
    ids = _image_ids(gen, 2, 10, 4, 7, starts=[1, 2], lengths=[10, 10])
    ids[0, 5], ids[1, 2] = 7, 11  # row 0: 5 image tokens, row 1: 3 (the total is still 8)
    yield _raises(_merge_case(gen, "row 0 holds 5 image tokens and row 1 holds 3, N = 4 (the "
                              "total, 8, is right)", 2, 10, 4, 8, starts=[], ids=ids,
                              hint=count_hint))
    ids = _image_ids(gen, 2, 9, 3, 7, starts=[1, 4], lengths=[9, 9])
    ids[1, 8] = 7
    yield _raises(_merge_case(gen, "row 1 holds 4 image tokens, N = 3", 2, 9, 3, 8, starts=[],
                              ids=ids, hint=count_hint))
    ids = _image_ids(gen, 1, 6, 0, 7, starts=[0], lengths=[6])
    yield _raises(_merge_case(gen, "a batch of size 1 without any image token, N = 2", 1, 6,
                              2, 4, starts=[], ids=ids, hint=count_hint))
    yield _raises(_merge_case(gen, "3 images for 2 rows of 4 image tokens each", 2, 8, 4, 4,
                              starts=[0, 3], n_images=3,
                              hint="image_features holds one image per row: B_img must "
                                   "equal B"))
    yield _merge_case(gen, "the counts are right (N = 3 in every row): no error", 2, 8, 3, 4,
                      starts=[1, 4], hint="raise ValueError only when a count is wrong")
    ids = _image_ids(gen, 2, 8, 2, 3, starts=[1, 5], lengths=[8, 8])
    ids[0, 4] = 7  # an ordinary token with id 7: the placeholder is id 3
    yield _merge_case(gen, "image_token_id=3, the counts are right (7 is an ordinary token "
                      "here): no error", 2, 8, 2, 4, starts=[], ids=ids, image_token_id=3,
                      hint="count the image_token_id argument, not a fixed 7")


def _raises(case: Case) -> Case:
    """The case, now asking for ValueError."""
    return Case(case.label, *case.args, kwargs=case.kwargs, hint=case.hint, raises=ValueError)


# ----------------------------------------------------------------------------- labels
#: labels the library's collator built for the current cases, keyed by the inputs
_LABELS: dict[tuple, Tensor] = {}


def _key(input_ids: Tensor, attention_mask: Tensor, header: Sequence[int], eos_id: int) -> tuple:
    return (tuple(input_ids.shape), tuple(input_ids.reshape(-1).tolist()),
            tuple(attention_mask.reshape(-1).tolist()), tuple(int(h) for h in header),
            int(eos_id))


def _ref_labels(input_ids: Tensor, attention_mask: Tensor, assistant_header: Sequence[int],
                eos_id: int) -> Tensor:
    key = _key(input_ids, attention_mask, assistant_header, eos_id)
    if key not in _LABELS:
        raise KeyError("no collated dialogue matches these inputs (the reference only knows "
                       "the dialogues the case generator built)")
    return _LABELS[key].clone()


def collate_dialogues(dialogues: Sequence[Sequence[dict[str, str]]], tokenizer: Any = None, *,
                      num_image_tokens: int = 4, max_lengths: Sequence[int | None] | None = None
                      ) -> dict[str, Any]:
    """Tokenise and right-pad dialogues with minivlm's LLaVA collator (``SHAPES_CHAT``
    template): ``input_ids``, ``attention_mask``, ``labels`` (B, T) and the
    ``assistant_header`` ids and ``eos_id`` of that tokenizer. ``max_lengths[b]`` truncates
    dialogue b (as ``LlavaCollator(max_length=...)`` does). The result is registered as a
    reference answer of the ``assistant_labels`` check."""
    from minivlm.data.tokenizer import shapes_tokenizer
    from minivlm.models.llava import SHAPES_CHAT, LlavaCollator

    tok = tokenizer if tokenizer is not None else shapes_tokenizer()
    encs = []
    for b, turns in enumerate(dialogues):
        cut = max_lengths[b] if max_lengths is not None else None
        encs.append(LlavaCollator(tok, num_image_tokens, SHAPES_CHAT, max_length=cut)
                    .encode(turns))
    batch = tok.pad([e["input_ids"] for e in encs])
    labels = tok.pad([e["labels"] for e in encs], pad_value=IGNORE)["input_ids"]
    header = tok.encode(f"{SHAPES_CHAT.assistant}:")
    _LABELS[_key(batch["input_ids"], batch["attention_mask"], header, tok.eos_id)] = labels
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": labels, "assistant_header": header, "eos_id": tok.eos_id}


def _answer_mask(input_ids: Tensor, attention_mask: Tensor, header: Sequence[int], eos_id: int,
                 *, keep_header: bool = False, keep_eos: bool = True, stop_at_eos: bool = True,
                 stop_at_padding: bool = True, rounds: str = "all") -> Tensor:
    """(B, T) bool: the answer tokens, with one rule changed (for the mistakes)."""
    B, T = input_ids.shape
    h = len(header)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        ids = input_ids[b].tolist()
        starts = [t for t in range(T - h + 1) if ids[t:t + h] == list(header)]
        if rounds == "first":
            starts = starts[:1]
        elif rounds == "last":
            starts = starts[-1:]
        for s in starts:
            if keep_header:
                mask[b, s:s + h] = True
            t = s + h
            while t < T:
                if stop_at_padding and not attention_mask[b, t]:
                    break
                if ids[t] == eos_id and stop_at_eos:
                    mask[b, t] = keep_eos
                    break
                mask[b, t] = True
                t += 1
    return mask


def _labels_variant(*, fill: int = IGNORE, shift: int = 0, everything: bool = False,
                    pad_value: int | None = None, header_tokens: int | None = None,
                    fixed_ids: bool = False, **rules: Any):
    """A wrong labeller."""

    def assistant_labels(input_ids, attention_mask, assistant_header, eos_id):
        if fixed_ids:  # the shapes tokenizer's "assistant", ":" and [EOS]
            assistant_header, eos_id = [13, 79], 6
        if header_tokens is not None:
            assistant_header = list(assistant_header)[:header_tokens]
        if everything:
            mask = attention_mask.bool()
        else:
            mask = _answer_mask(input_ids, attention_mask, assistant_header, eos_id, **rules)
        labels = torch.where(mask, input_ids, torch.full_like(input_ids, fill))
        if pad_value is not None:
            labels = labels.masked_fill(attention_mask == 0, pad_value)
        if shift == -1:  # targets pre-shifted: position t holds token t+1
            labels = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), fill)], 1)
        elif shift == 1:
            labels = torch.cat([labels.new_full((labels.shape[0], 1), fill), labels[:, :-1]], 1)
        return labels

    return assistant_labels


def _explain_labels(case: Case, got: list, expected: list) -> str | None:
    g, e = got[0], expected[0]
    ids, am = case.args[0], case.args[1]
    bad = (g != e).nonzero()
    if not len(bad):
        return None
    b, t = (int(i) for i in bad[0])
    where = f"(first at row {b}, position {t})"
    if not am[b, t]:
        return (f"a padding position has a label {where}: positions where attention_mask is 0 "
                "must be -100, even right after an answer that was cut off")
    if e[b, t] == IGNORE and g[b, t] == 0:
        return (f"ignored positions must hold -100 (ignore_index of F.cross_entropy), not 0 "
                f"{where}")
    if e[b, t] != IGNORE and g[b, t] == IGNORE and int(ids[b, t]) == int(case.args[3]):
        return f"the end token of an answer is masked {where}: keep it, so the model learns to stop"
    if e[b, t] != IGNORE and g[b, t] not in (IGNORE, e[b, t]):
        return (f"a label differs from the token at its position {where}: labels hold the "
                "input ids themselves (no shift: the loss shifts them)")
    if e[b, t] == IGNORE and g[b, t] != IGNORE:
        return (f"a token outside the assistant's answers is labelled {where}: the prompt, the "
                "user turns, the image tokens and the 'ASSISTANT:' header are all -100")
    return f"an answer token is masked {where}: every token of every answer keeps its id"


@register_check(
    "assistant_labels(input_ids, attention_mask, assistant_header, eos_id)", _ref_labels, points=3,
    returns="(B, T)",
    mistakes=[
        ("you labelled the whole dialogue (the user turns and image tokens too); only the "
         "assistant's answers are targets: -100 everywhere else", _labels_variant(everything=True)),
        ("your labels are shifted one position to the left (position t holds token t+1); keep "
         "them aligned with input_ids: the model shifts inside its loss",
         _labels_variant(shift=-1)),
        ("your labels are shifted one position to the right; keep them aligned with input_ids "
         "(labels[t] = input_ids[t] inside an answer)", _labels_variant(shift=1)),
        ("the end token of each answer is masked; keep it (labels = its id), or the model never "
         "learns to stop", _labels_variant(keep_eos=False)),
        ("you matched only the first token of the header: the answer starts after the whole "
         "assistant_header (here 2 tokens, 'assistant' ':'), and a lone 'assistant' in a "
         "question is no header", _labels_variant(header_tokens=1)),
        ("the header and end token are fixed numbers in your code; use the assistant_header "
         "and eos_id arguments (another tokenizer has other ids)", _labels_variant(fixed_ids=True)),
        ("the 'ASSISTANT:' header is labelled; it is part of the prompt: -100. The answer "
         "starts after the header", _labels_variant(keep_header=True)),
        ("after an answer's end token the user speaks again: stop labelling at the end token "
         "(your labels keep the next user turn)", _labels_variant(stop_at_eos=False)),
        ("padding is labelled: positions where attention_mask is 0 must be -100, even when "
         "the answer before them was cut off (no end token)",
         _labels_variant(stop_at_padding=False)),
        ("ignored positions hold 0; use -100, the ignore_index of F.cross_entropy (0 is a real "
         "token id: [PAD])", _labels_variant(fill=0)),
        ("padding positions hold the pad id 0; they must be -100", _labels_variant(pad_value=0)),
        ("only the first answer of a dialogue is labelled; LLaVA trains on every assistant "
         "turn of a multi-round dialogue", _labels_variant(rounds="first")),
        ("only the last answer of a dialogue is labelled; LLaVA trains on every assistant "
         "turn of a multi-round dialogue", _labels_variant(rounds="last")),
    ],
    explain=_explain_labels,
)
def assistant_labels_cases(gen: torch.Generator):
    from minivlm.data.tokenizer import Tokenizer, shapes_tokenizer

    _LABELS.clear()  # keep only the current cases' answers

    def pick(options: Sequence[Any]) -> Any:
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    questions = ["what color is the circle?", "how many shapes are there?",
                 "is there a red square?", "what is on the left?", "describe the image."]
    answers = ["red.", "three.", "yes, there is a red square.", "a small blue triangle.",
               "two shapes: a green circle and a purple cross."]

    def dialogue(rounds: int, image: bool = True) -> list[dict[str, str]]:
        turns = []
        for r in range(rounds):
            q = pick(questions)
            turns.append({"from": "human", "value": f"<image>\n{q}" if image and r == 0 else q})
            turns.append({"from": "gpt", "value": pick(answers)})
        return turns

    def case(label: str, dialogues: list, tokenizer: Any = None, *, hint: str | None = None,
             **kw: Any) -> Case:
        c = collate_dialogues(dialogues, tokenizer, **kw)
        return Case(label, c["input_ids"], c["attention_mask"], c["assistant_header"],
                    c["eos_id"], hint=hint)

    yield case("2 dialogues (1 and 2 rounds), 4 image tokens, right padding",
               [dialogue(1), dialogue(2)])
    yield case("a batch of size 1: 3 rounds, no padding", [dialogue(3)], num_image_tokens=2,
               hint="every assistant turn is a target, not only the first or the last")
    yield _truncated_case(dialogue, case)
    system = [{"from": "system", "value": "describe the image."}, *dialogue(2, image=False)]
    system[1]["value"] = "assistant, how many shapes are there?"
    yield case("a system prompt, a text-only dialogue whose question says 'assistant,'",
               [system, dialogue(1)],
               hint="the header is the whole sequence assistant_header (e.g. 'assistant', ':'), "
                    "not its first token alone")

    class _SepEnd(Tokenizer):
        eos_id = 3  # answers end with [SEP] in this vocabulary

    reverse = _SepEnd(list(reversed(shapes_tokenizer().tokens)), strict=True)
    yield case("another vocabulary (words in reverse order, answers end with [SEP], id 3)",
               [dialogue(2), dialogue(1)], reverse,
               hint="use the assistant_header and eos_id arguments, not fixed ids")


def _truncated_case(dialogue: Callable[..., list], case: Callable[..., Case]) -> Case:
    """Row 0: a dialogue cut inside its second answer (no end token), shorter than row 1."""
    from minivlm.data.tokenizer import shapes_tokenizer
    from minivlm.models.llava import SHAPES_CHAT

    tok = shapes_tokenizer()
    first = dialogue(2)
    first[3]["value"] = "two shapes: a green circle and a purple cross."
    cut = len(SHAPES_CHAT.encode(tok, first, 3)["input_ids"]) - 4  # inside the last answer
    second = dialogue(3)
    second[1]["value"] = "yes, there is a red square."
    return case("an answer cut off by truncation (no end token), then padding",
                [first, second], num_image_tokens=3, max_lengths=[cut, None],
                hint="padding is never a label: where attention_mask is 0 the label is -100, "
                     "even right after an answer that was cut off")
