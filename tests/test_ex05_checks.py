"""Exercise 05 (LLaVA) checks: right solutions pass; deliberately broken ones fail with a message
that names the mistake; the instructor source passes every check and its generated student
version fails them as "not attempted"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_helpers import (
    assert_broken_fails_pointedly,
    assert_source_passes_student_fails,
    assert_trained_broken_fail,
    assert_untouched_is_not_attempted,
)

from minivlm.grading import check, get_check, list_checks
from minivlm.grading.checks.ex05_llava import _merge_variant, collate_dialogues
from minivlm.grading.student import generate_student
from minivlm.models.llava import LlavaCollator, build_projector
from minivlm.models.llava import merge_image_features as lib_merge

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "05_llava_projector.ipynb"
EXERCISE = "05_llava_projector"
SEED = 1234


# ----------------------------------------------------------------------------- projector
def make_project(*, act="gelu", act2=None, bias1=True, bias2=True, transpose2=True,
                 linear_act=None, squeeze=False, float32=False, detach_w1=False, bmm=False):
    acts = {"gelu": F.gelu, "relu": F.relu, "tanh": lambda x: F.gelu(x, approximate="tanh"),
            "none": lambda x: x}

    def project(features, w1, b1, w2=None, b2=None):
        if float32:
            features, w1, b1 = features.float(), w1.float(), b1.float()
            w2, b2 = (None, None) if w2 is None else (w2.float(), b2.float())
        if squeeze:
            features = features.squeeze()
        W1 = w1.detach() if detach_w1 else w1
        if bmm:  # only for (B, N, d_v)
            h = torch.einsum("bnd,ed->bne", features, W1)
        else:
            h = features @ W1.T
        if bias1:
            h = h + b1
        if w2 is None:
            return acts[linear_act](h) if linear_act else h
        h = acts[act](h)
        h = h @ (w2.T if transpose2 else w2)
        if bias2:
            h = h + b2
        return acts[act2](h) if act2 else h

    return project


def project_with_modules(features, w1, b1, w2=None, b2=None):  # nn.Linear + nn.GELU: right
    lin1 = torch.nn.Linear(w1.shape[1], w1.shape[0]).to(features.dtype)
    params = {"weight": w1, "bias": b1}
    h = torch.func.functional_call(lin1, params, (features,))
    if w2 is None:
        return h
    lin2 = torch.nn.Linear(w2.shape[1], w2.shape[0]).to(features.dtype)
    return torch.func.functional_call(lin2, {"weight": w2, "bias": b2},
                                      (torch.nn.GELU()(h),))


# ----------------------------------------------------------------------------- splicing
def make_merge(*, order="row_major", shift=0, check_counts=True, detach=False, add=False,
               in_place=False, fixed_id=None, where=False, loop=False):
    def merge_image_features(inputs_embeds, input_ids, image_features, image_token_id):
        tok = image_token_id if fixed_id is None else fixed_id
        slots = input_ids == tok  # (B, T)
        B, N, D = image_features.shape
        if check_counts:
            if B != input_ids.shape[0]:
                raise ValueError(f"expected {input_ids.shape[0]} images, got {B}")
            for b, n in enumerate(slots.sum(1).tolist()):
                if n != N:
                    raise ValueError(f"row {b}: expected {N} image tokens, got {n}")
        feats = image_features.detach() if detach else image_features
        out = inputs_embeds if in_place else inputs_embeds.clone()
        if where:  # scatter with cumsum indices, then torch.where: a right alternative
            idx = (slots.long().cumsum(1) - 1).clamp(min=0)  # (B, T) feature index per slot
            picked = torch.gather(feats, 1, idx[..., None].expand(-1, -1, D))  # (B, T, D)
            return torch.where(slots[..., None], picked, inputs_embeds)
        if loop:
            rows = []
            for b in range(B):
                row, j = [], 0
                for t in range(input_ids.shape[1]):
                    if slots[b, t]:
                        row.append(feats[b, j])
                        j += 1
                    else:
                        row.append(inputs_embeds[b, t])
                rows.append(torch.stack(row))
            return torch.stack(rows)
        flat = feats.reshape(-1, D)
        if order == "column_major":
            out.transpose(0, 1)[slots.T] = flat
        elif shift:
            pos = slots.nonzero()
            out[pos[:, 0], pos[:, 1] + shift] = flat
        elif add:
            out[slots] = out[slots] + flat
        else:
            out[slots] = flat
        return out

    return merge_image_features


def merge_raising_runtime_error(inputs_embeds, input_ids, image_features, image_token_id):
    slots = input_ids == image_token_id
    if (slots.sum(1) != image_features.shape[1]).any():  # the right test, the wrong exception
        raise RuntimeError("wrong number of image tokens")
    out = inputs_embeds.clone()
    out[slots] = image_features.reshape(-1, image_features.shape[-1])
    return out


def merge_always_raises(inputs_embeds, input_ids, image_features, image_token_id):
    raise ValueError("no")


def merge_counting_the_whole_batch(inputs_embeds, input_ids, image_features, image_token_id):
    slots = input_ids == image_token_id
    for b, n in enumerate(slots.sum(1).tolist()):
        if n != image_features.shape[0] * image_features.shape[1]:  # B*N per row: wrong
            raise ValueError(f"row {b}")
    out = inputs_embeds.clone()
    out[slots] = image_features.reshape(-1, image_features.shape[-1])
    return out


# ----------------------------------------------------------------------------- labels
def make_labels(*, keep_user=False, keep_eos=True, keep_header=False, stop_at_eos=True,
                stop_at_padding=True, shift=0, fill=-100, first_header_token_only=False,
                fixed_ids=False, pad_zero=False, dtype=torch.long):
    def assistant_labels(input_ids, attention_mask, assistant_header, eos_id):
        header = [13, 79] if fixed_ids else list(assistant_header)
        if first_header_token_only:
            header = header[:1]
        eos = 6 if fixed_ids else eos_id
        B, T = input_ids.shape
        labels = torch.full((B, T), fill, dtype=dtype)
        h = len(header)
        for b in range(B):
            ids = input_ids[b].tolist()
            inside, t = False, 0
            while t < T:
                if stop_at_padding and not attention_mask[b, t]:
                    break
                if not inside and ids[t:t + h] == header:
                    if keep_header:
                        labels[b, t:t + h] = input_ids[b, t:t + h]
                    inside, t = True, t + h
                    continue
                if inside or keep_user:
                    if ids[t] != eos or keep_eos:
                        labels[b, t] = ids[t]
                    if ids[t] == eos and stop_at_eos:
                        inside = False
                t += 1
        if pad_zero:
            labels[attention_mask == 0] = 0
        if shift == -1:
            labels = torch.cat([labels[:, 1:], labels.new_full((B, 1), fill)], dim=1)
        return labels

    return assistant_labels


def labels_vectorised(input_ids, attention_mask, assistant_header, eos_id):
    """A right solution without a Python loop over tokens: answer segments via cumsum."""
    B, T = input_ids.shape
    h = len(assistant_header)
    windows = input_ids.unfold(1, h, 1)  # (B, T-h+1, h)
    starts = (windows == torch.tensor(assistant_header)).all(-1)  # (B, T-h+1) header starts
    opens = torch.zeros(B, T, dtype=torch.long)
    opens[:, h:] = starts[:, : T - h].long()  # +1 at the first answer token
    closes = torch.zeros(B, T, dtype=torch.long)
    closes[:, 1:] = (input_ids[:, :-1] == eos_id).long()  # -1 after each end token
    inside = (opens - closes).cumsum(1) > 0
    keep = inside & attention_mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, -100))


RIGHT = [
    ("project", make_project()),
    ("project", project_with_modules),
    ("merge_image_features", make_merge()),
    ("merge_image_features", make_merge(where=True)),
    ("merge_image_features", make_merge(loop=True)),
    ("merge_raises_value_error", make_merge()),
    ("merge_raises_value_error", make_merge(loop=True)),
    ("assistant_labels", make_labels()),
    ("assistant_labels", labels_vectorised),
]


@pytest.mark.parametrize("name,fn", RIGHT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RIGHT)])
def test_right_solutions_pass(name, fn):
    r = check(name, fn, seed=SEED)
    assert r.passed, str(r)
    assert r.points == r.max_points == get_check(name).points
    assert r.status == "passed"


def test_project_reference_is_the_library_projector():
    """The check's reference runs build_projector's modules on the given weights."""
    ref = get_check("project").resolve_reference()
    torch.manual_seed(0)
    mlp = build_projector("mlp2x_gelu", 6, 10)
    x = torch.randn(2, 3, 6)
    got = ref(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
    assert torch.allclose(got, mlp(x), atol=1e-6)
    lin = build_projector("linear", 6, 10)
    assert torch.allclose(ref(x, lin.weight, lin.bias, None, None), lin(x), atol=1e-6)
    # exact GELU: the tanh approximation is a different function
    assert not torch.allclose(F.gelu(torch.tensor(2.7)),
                              F.gelu(torch.tensor(2.7), approximate="tanh"), atol=1e-5)


def test_labels_reference_is_the_library_collator():
    """The reference answers with the labels LlavaCollator builds; unknown inputs are an error."""
    from minivlm.data import ShapesWorld, shapes_tokenizer

    tok = shapes_tokenizer()
    world = ShapesWorld().generate(3, seed=0)
    dialogues = [world.dialogue(i) for i in range(3)]
    c = collate_dialogues(dialogues, tok, num_image_tokens=4)
    batch = LlavaCollator(tok, 4)([{"conversations": d, "image": torch.zeros(3, 8, 8)}
                                   for d in dialogues])
    assert torch.equal(c["input_ids"], batch["input_ids"])
    assert torch.equal(c["labels"], batch["labels"])
    assert (c["labels"] != -100).any() and (c["labels"] == -100).any()
    ref = get_check("assistant_labels").resolve_reference()
    args = (c["input_ids"], c["attention_mask"], c["assistant_header"], c["eos_id"])
    assert torch.equal(ref(*args), c["labels"])
    assert torch.equal(make_labels()(*args), c["labels"])  # the loop solution agrees
    assert torch.equal(labels_vectorised(*args), c["labels"])
    with pytest.raises(KeyError):
        ref(c["input_ids"][:1], c["attention_mask"][:1], c["assistant_header"], c["eos_id"])


# (check, broken function, words the message must contain)
BROKEN = [
    ("project", make_project(act="relu"), ["values differ", "ReLU", "GELU"]),
    ("project", make_project(act="tanh"), ["values differ", "tanh approximation", "exact"]),
    ("project", make_project(act="none"), ["values differ", "no activation"]),
    ("project", make_project(act2="gelu"), ["values differ", "after the second layer too"]),
    ("project", make_project(act="none", act2="gelu"), ["values differ", "instead of between"]),
    ("project", make_project(bias1=False), ["values differ", "b1 is missing"]),
    ("project", make_project(bias2=False), ["values differ", "b2 is missing"]),
    ("project", make_project(bias1=False, bias2=False), ["values differ", "both biases"]),
    ("project", make_project(transpose2=False), ["values differ", "w2 is used untransposed"]),
    ("project", make_project(linear_act="gelu"), ["linear projector", "no activation"]),
    ("project", make_project(squeeze=True), ["B = 1", "squeeze"]),
    ("project", make_project(float32=True), ["dtype float32 but expected float64"]),
    ("project", make_project(detach_w1=True), ["values match", "does not depend on w1"]),
    ("project", make_project(bmm=True), ["raised", "(..., d_v)"]),
    ("merge_image_features", make_merge(order="column_major"),
     ["values differ", "column by column", "reading order"]),
    ("merge_image_features", make_merge(shift=1), ["values differ", "off by one",
                                                   "token after its <image> slot"]),
    ("merge_image_features", make_merge(add=True), ["values differ", "added the features"]),
    ("merge_image_features", _merge_variant("image_order"),
     ["values differ", "images are in the wrong order", "image_features[b]"]),
    ("merge_image_features", make_merge(detach=True),
     ["values match", "does not depend on image_features", ".detach()"]),
    ("merge_image_features", make_merge(in_place=True),
     ["changed its input inputs_embeds in place", "x.clone()"]),
    ("merge_image_features", make_merge(fixed_id=7), ["raised ValueError",
                                                      "image_token_id argument"]),
    ("merge_raises_value_error", make_merge(check_counts=False),
     ["but should raise ValueError", "the counts do not match"]),
    ("merge_raises_value_error", merge_raising_runtime_error,
     ["raised RuntimeError (wrong number of image tokens)", "but should raise ValueError"]),
    ("merge_raises_value_error", merge_always_raises,
     ["raised ValueError", "no error", "raise ValueError only when a count is wrong"]),
    ("merge_raises_value_error", merge_counting_the_whole_batch,
     ["raised ValueError", "no error", "raise ValueError only when a count is wrong"]),
    ("assistant_labels", make_labels(keep_user=True), ["entries differ", "outside the "
                                                       "assistant's answers", "user turns"]),
    ("assistant_labels", lambda ids, am, h, e: ids.masked_fill(am == 0, -100),
     ["entries differ", "labelled the whole dialogue"]),
    ("assistant_labels", make_labels(keep_eos=False), ["entries differ",
                                                       "end token of each answer is masked"]),
    ("assistant_labels", make_labels(shift=-1), ["entries differ", "shifted one position "
                                                 "to the left"]),
    ("assistant_labels", make_labels(stop_at_padding=False, stop_at_eos=True),
     ["entries differ", "padding", "attention_mask is 0"]),
    ("assistant_labels", make_labels(pad_zero=True), ["entries differ", "padding", "-100"]),
    ("assistant_labels", make_labels(keep_header=True), ["entries differ", "'ASSISTANT:' header"]),
    ("assistant_labels", make_labels(stop_at_eos=False), ["entries differ", "stop labelling at "
                                                          "the end token"]),
    ("assistant_labels", make_labels(fill=0), ["entries differ", "-100"]),
    ("assistant_labels", make_labels(first_header_token_only=True),
     ["entries differ", "only the first token of the header"]),
    ("assistant_labels", make_labels(fixed_ids=True), ["entries differ", "fixed numbers",
                                                         "eos_id arguments"]),
    ("assistant_labels", make_labels(dtype=torch.int32), ["dtype int32 but expected int64"]),
]


@pytest.mark.parametrize("name,fn,words", BROKEN,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BROKEN)])
def test_broken_solutions_fail_with_a_pointed_message(name, fn, words):
    assert_broken_fails_pointedly(name, fn, words, SEED, kind=_kind)


def _kind(summary: str) -> str:
    """'values differ', '# of # entries differ', ...: the summary without numbers."""
    return re.sub(r"\d+", "#", summary.split(":")[0]).split(",")[0]


def test_exercise_05_registers_its_checks():
    names = [c.name for c in list_checks(EXERCISE)]
    assert names == ["project", "merge_image_features", "merge_raises_value_error",
                     "assistant_labels", "train_projector"]
    assert sum(c.points for c in list_checks(EXERCISE)) == 13
    assert get_check("project").grad and get_check("merge_image_features").grad


# ----------------------------------------------------------------------------- the notebooks
def test_source_passes_all_checks_and_student_fails_them_cleanly():
    stu_code = assert_source_passes_student_fails(SOURCE, EXERCISE, 5, timeout=60, seed=SEED)
    assert "def train_projector(task" in stu_code and "opt.step()" not in stu_code
    assert "BEGIN SOLUTION" not in stu_code and "F.gelu(" not in stu_code
    assert "def project(features" in stu_code and "def assistant_labels(input_ids" in stu_code
    assert "merge_raises_value_error(" not in stu_code.replace(
        'check("merge_raises_value_error", merge_image_features)', "")  # no graded helper
    assert "project_with_modules" not in stu_code  # the solution-tagged cell is dropped


def test_committed_student_notebook_is_up_to_date():
    assert generate_student(SOURCE, check=True).status == "unchanged", (
        "run `python -m minivlm student exercises/05_llava_projector.ipynb`")


def test_the_library_merge_earns_nothing():
    r = check("merge_image_features", lib_merge, seed=SEED)
    assert r.status == "library" and r.points == 0, str(r)
    assert "calls the library's merge_image_features (minivlm/models/llava.py)" in r.summary
    assert check("merge_raises_value_error", lib_merge, seed=SEED).status == "library"
    assert check("merge_image_features", lib_merge, seed=SEED, allow_library=True).passed


# ----------------------------------------------------------------------------- part 5: training
# (needs the zoo's shapes_clip and shapes_lm: `minivlm zoo build`, which `make test` runs first)
def make_train(kind):
    """The exercise's training loop with one deliberate mistake (the library's splicing)."""
    from minivlm.recipes import llava_align as small

    def train_projector(task, seed):
        run = small.AlignRun()
        data = small.chats(task, seed, run)
        model = small.new_llava(seed)
        ids_all, am_all = data["input_ids"], data["attention_mask"]
        labels = ids_all.masked_fill(am_all == 0, -100)  # every real token: not masked
        if kind == "labels_shifted":  # the answers' labels moved one to the left: the LM
            right = small.reference_assistant_labels(  # shifts them again (t predicts t+2)
                ids_all, am_all, data["assistant_header"], data["eos_id"])
            labels = torch.cat([right[:, 1:], torch.full_like(right[:, :1], -100)], dim=1)
        opt = torch.optim.AdamW(model.projector.parameters(), lr=run.lr)
        for step, idx in enumerate(small.batches(seed, len(ids_all), run)):
            if kind == "untrained":
                break
            for group in opt.param_groups:
                group["lr"] = run.lr * min(1.0, (step + 1) / run.warmup)
            ids = ids_all[idx]
            embeds = lib_merge(model.lm.embed(ids), ids, model.projector(data["features"][idx]),
                               data["image_token_id"])
            loss = model.lm(inputs_embeds=embeds, attention_mask=am_all[idx],
                            labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.tensor([small.colour_accuracy(model, data)])

    return train_projector


def test_train_check_fails_unmasked_labels_and_no_training():
    # the right loop passes in test_source_passes_all_checks_and_student_fails_them_cleanly
    # (the notebook's solution, through the grader's call monitor); here the monitor is off
    torch.set_num_threads(1)
    broken = {kind: make_train(kind) for kind in ("labels_not_masked", "untrained")}
    assert_trained_broken_fail("train_projector", broken, "did not learn to answer", SEED)
    assert_trained_broken_fail("train_projector", {"shifted": make_train("labels_shifted")},
                               "labels[t] = input_ids[t]", SEED)


def test_train_check_untouched_is_not_attempted():
    assert_untouched_is_not_attempted("train_projector", "task, seed", SEED)
