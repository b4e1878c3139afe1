"""Which LLaVA training stage matters, and which projector? (LLaVA §4.2, §5.1; LLaVA-1.5 §3)

The multi-seed experiment that lecture 5 (``notebooks/05_llava_tuning.ipynb``) loads. It runs
the notebook's recipe -- the zoo's frozen ``shapes_clip`` image encoder and a copy of the
pretrained ``shapes_lm``, joined by a new projector; stage 1 (projector only) on caption chats,
stage 2 (projector + LM) on a mixture of short-answer VQA chats and multi-turn dialogues --
for several seeds, and scores greedy answers by exact match per question type on held-out
one-object scenes. Per seed (the seed draws the scenes, the stage-2 mixture, the projector
init and the batch order, exactly as ``SEED`` does in the notebook)::

    arm                              projector    stage 1    stage 2 data
    LM alone (no image)              -            -          -          (baseline)
    majority answer                  -            -          -          (baseline)
    stage 1 only                     mlp2x_gelu   yes        -
    stage 2 only                     mlp2x_gelu   -          mixture
    stage 1 + 2                      mlp2x_gelu   yes        mixture
    linear: stage 1 only             linear       yes        -
    linear: stage 1 + 2              linear       yes        mixture
    stage 1 + 2, VQA-only stage 2    mlp2x_gelu   yes        VQA chats only (the ablation)

"stage 1 only" is the model of "stage 1 + 2" evaluated before its stage 2 (the same run), so
the arms of one seed are paired: they share scenes, projector init and stage-2 batch order.

Regenerate the committed results (5 seeds, about 6 minutes of CPU time in one process and one
thread; 11 minutes of wall time on a busy 2-core machine)::

  python experiments/llava_stages.py --out experiments/results/llava_stages.json

It refuses to overwrite an existing results file unless ``--force`` is given. The file is
rewritten atomically after every seed, with ``"complete": false`` until the last one, and a
table of mean ± std over seeds is printed at the end. ``--random-parts`` swaps the zoo's
pretrained parts for tiny random ones (for a quick smoke test; the numbers mean nothing).
"""

from __future__ import annotations

import copy
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import minivlm
from minivlm.data import QTYPES, ShapesData, ShapesWorld, encode_chat, shapes_tokenizer
from minivlm.models.llava import LLaVA, merge_image_features
from minivlm.train.fast import precision_autocast

SEEDS = (0, 1, 2, 3, 4)
TEST_SEED = 10_000  # held-out scenes: world seed TEST_SEED + seed, as in the notebook
ARMS = (
    "LM alone (no image)",
    "majority answer",
    "stage 1 only",
    "stage 2 only",
    "stage 1 + 2",
    "linear: stage 1 only",
    "linear: stage 1 + 2",
    "stage 1 + 2, VQA-only stage 2",
)


@dataclass
class Recipe:
    """The notebook's training budget (section 4 of lecture 5)."""

    n_train: int = 600  # one-object training scenes
    n_test: int = 60  # held-out scenes (10 questions each)
    s1_steps: int = 80
    s2_steps: int = 150
    lr_projector: float = 1e-2
    lr_lm: float = 3e-4  # stage 2: the LM learns 30x slower than the new projector
    batch_size: int = 32
    warmup: int = 10
    max_new_tokens: int = 3
    precision: str = "fp32"  # "bf16": autocast where the CPU has native bf16 (train.fast)


class Setup:
    """One seed's data: tokenised chats, held-out questions and cached vision features.

    The frozen tower runs once per image (``LLaVA.vision_features``: penultimate layer, CLS
    dropped); training and evaluation then only run projector and LM.
    """

    def __init__(self, vit: torch.nn.Module, lm: torch.nn.Module, seed: int,
                 recipe: Recipe) -> None:  # fmt: skip
        # strict: a question with a word outside the vocabulary is refused (ValueError listing
        # the words) instead of being read as [UNK]s the model would answer confidently
        self.tok = shapes_tokenizer(strict=True)
        self.vit, self.lm_pretrained, self.seed, self.recipe = vit, lm, seed, recipe
        world = ShapesWorld(max_objects=1)
        self.train_data = world.generate(recipe.n_train, seed=seed)
        self.test_data = world.generate(recipe.n_test, seed=TEST_SEED + seed)
        probe = self.build("mlp2x_gelu")
        self.N = probe.num_image_tokens
        with torch.no_grad():
            self.feats_train = probe.vision_features(self.train_data.pixel_values())
            self.feats_test = probe.vision_features(self.test_data.pixel_values())
        self.stage1 = stage1_chats(self, self.train_data)
        self.vqa, self.dialogues = stage2_chats(self, self.train_data, seed)
        self.questions = [(i, q, a, t) for i in range(len(self.test_data))
                          for q, a, t in self.test_data.vqa(i)]  # fmt: skip

    def build(self, projector_type: str) -> LLaVA:
        """The zoo's ViT (shared, frozen) and a fresh copy of the LM; a seeded new projector."""
        minivlm.seed_everything(self.seed)
        return LLaVA(vision_encoder=self.vit, language_model=copy.deepcopy(self.lm_pretrained),
                     projector_type=projector_type)  # fmt: skip

    def chat(self, question: str, answer: str | None = None, image: bool = True) -> dict:
        """A one-turn chat; without an answer, a prompt ending with "assistant:". A word
        outside the shapes vocabulary raises ValueError naming every such word."""
        turns = [{"from": "human", "value": ("<image>\n" if image else "") + question}]
        if answer is not None:
            turns.append({"from": "gpt", "value": answer})
        return encode_chat(self.tok, turns, self.N, add_generation_prompt=answer is None)


def stage1_chats(setup: Setup, data: ShapesData) -> list[tuple[int, dict]]:
    """Feature alignment data: each caption as ``describe the image.`` -> caption."""
    return [(i, setup.chat("describe the image.", data.caption(i))) for i in range(len(data))]


def stage2_chats(setup: Setup, data: ShapesData, seed: int) -> tuple[list, list]:
    """Instruction data: (VQA chats, dialogues), each a list of (image index, encoded chat).

    VQA: one short-answer question of each type per image (a balanced mix). Dialogues: one
    multi-turn dialogue per image (``ShapesData.dialogue(i, "multi")``): describe or count
    first, then one or two of count, locate and yes/no, answered in sentences ("compare"
    needs two objects; these scenes have one). Their first question is never a VQA question,
    so the same question does not ask for a short answer in one example and a sentence in
    another (LLaVA-1.5 §3 separates the two with a response-format prompt, for which the
    shapes vocabulary has no words); later turns differ from VQA by their context.
    """
    rng = random.Random(seed)
    vqa = []
    for i in range(len(data)):
        by_type = defaultdict(list)
        for q, a, t in data.vqa(i):
            by_type[t].append((q, a))
        vqa += [(i, setup.chat(*rng.choice(by_type[t]))) for t in QTYPES if by_type[t]]
    dialogues = [(i, encode_chat(setup.tok, data.dialogue(i, "multi"), setup.N))
                 for i in range(len(data))]  # fmt: skip
    return vqa, dialogues


def forward_cached(model: LLaVA, input_ids, attention_mask, feats, labels=None):
    """``LLaVA.forward`` with precomputed vision features: project, splice, run the LM."""
    embeds = merge_image_features(model.lm.embed(input_ids), input_ids, model.projector(feats))
    return model.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)


def collate(tok: Any, encs: list[dict]) -> dict[str, torch.Tensor]:
    batch = tok.pad([e["input_ids"] for e in encs])
    batch["labels"] = tok.pad([e["labels"] for e in encs], pad_value=-100)["input_ids"]
    return batch


def fit(setup: Setup, model: LLaVA, data: list | tuple[list, ...], steps: int, stage: int,
        seed: int) -> list[float]:  # fmt: skip
    """AdamW with linear warm-up; stage 1: projector only, stage 2: projector + LM.

    ``data``: a list of (image index, chat), or a tuple of such lists (e.g. short VQA chats and
    long dialogues): then each batch comes from one of them, drawn in proportion to their
    sizes, so short chats are not padded to a dialogue's length (LLaVA-1.5's
    ``group_by_modality_length`` groups batches in the same spirit).
    """
    r = setup.recipe
    buckets = data if isinstance(data, tuple) else (data,)
    sizes = torch.tensor([float(len(b)) for b in buckets])
    model.freeze_for_stage(stage)
    groups = [{"params": list(model.projector.parameters()), "lr": r.lr_projector}]
    if stage == 2:
        groups.append({"params": list(model.lm.parameters()), "lr": r.lr_lm})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        if len(buckets) > 1:
            data = buckets[int(torch.multinomial(sizes, 1, generator=gen))]
        else:
            data = buckets[0]
        idx = torch.randint(len(data), (r.batch_size,), generator=gen).tolist()
        batch = collate(setup.tok, [data[k][1] for k in idx])
        for group, lr in zip(opt.param_groups, base, strict=True):
            group["lr"] = lr * min(1.0, (step + 1) / r.warmup)
        with precision_autocast(r.precision):
            loss = forward_cached(model, batch["input_ids"], batch["attention_mask"],
                                  setup.feats_train[[data[k][0] for k in idx]],
                                  batch["labels"]).loss  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def answer(setup: Setup, model: torch.nn.Module, items: list, image: bool = True,
           temperature: float = 0.0,
           generator: torch.Generator | None = None) -> list[str]:  # fmt: skip
    """Greedy (temperature 0) or sampled answers to (image index, question, ...) items,
    decoded up to [EOS]; ``image=False`` asks a bare language model without the image."""
    tok = setup.tok
    batch = tok.pad([setup.chat(q, image=image)["input_ids"] for _, q, *_ in items])
    if image:
        feats = setup.feats_test[[i for i, *_ in items]]
        lm = model.lm
        embeds = merge_image_features(lm.embed(batch["input_ids"]), batch["input_ids"],
                                      model.projector(feats))  # fmt: skip
    else:
        lm = model
        embeds = lm.embed(batch["input_ids"])
    new = lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                      max_new_tokens=setup.recipe.max_new_tokens, temperature=temperature,
                      generator=generator)  # fmt: skip
    return [tok.decode([x for x in row.tolist() if x not in (tok.pad_id, tok.eos_id)]).strip()
            for row in new]  # fmt: skip



@torch.no_grad()
def converse(setup: Setup, model: LLaVA, i: int, user_turns: list[str],
             max_new_tokens: int = 30) -> list[dict[str, str]]:  # fmt: skip
    """A multi-turn chat about held-out image ``i``: greedy replies, each appended to the context.

    A reply that runs past the end of its turn without [EOS] is cut at the line break and
    marked "...". Unknown words in a user turn raise ValueError (the strict tokenizer).
    """
    tok, turns = setup.tok, []
    feats = model.projector(setup.feats_test[[i]])  # (1, N, D)
    for k, q in enumerate(user_turns):
        turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + q})
        enc = encode_chat(tok, turns, setup.N, add_generation_prompt=True)
        ids = torch.tensor([enc["input_ids"]])  # (1, T)
        embeds = merge_image_features(model.lm.embed(ids), ids, feats)
        new = model.lm.generate(inputs_embeds=embeds, max_new_tokens=max_new_tokens)[0]
        reply = tok.decode([x for x in new.tolist() if x not in (tok.pad_id, tok.eos_id)])
        if "\n" in reply:  # no [EOS]: the model went on with the next turn
            reply = reply.split("\n")[0].strip() + " ..."
        turns.append({"from": "gpt", "value": reply.strip()})
    return turns


class ChatPanel:
    """Lecture 5's chat panel: a held-out image, a question box, a temperature, *Ask*, and one
    reply line (the model's answer next to the image's true caption).

    Pressing Enter in the question box asks as the button does. A question with words outside
    the shapes vocabulary is refused with the list of those words, never answered from [UNK]s.
    ``ask()`` is the handler both call; it returns the reply it shows.
    """

    def __init__(self, setup: Setup, model: LLaVA, seed: int = 0,
                 question: str = "what color is the object?") -> None:  # fmt: skip
        import ipywidgets as widgets

        self.setup, self.model, self.seed = setup, model, seed
        n = len(setup.test_data)
        self.picker = widgets.IntSlider(value=0, min=0, max=n - 1, description="image")
        # continuous_update=False: the value (and so ask) updates when Enter is pressed
        self.question = widgets.Text(value=question, description="question",
                                     continuous_update=False)  # fmt: skip
        self.temperature = widgets.FloatSlider(value=0.0, min=0.0, max=2.0, step=0.1,
                                               description="T")  # fmt: skip
        self.button = widgets.Button(description="Ask")
        self.picture = widgets.Image(format="png", width=128, height=128)
        self.reply = widgets.Label()
        self.button.on_click(self.ask)
        self.question.observe(self.ask, "value")
        self.picker.observe(self.ask, "value")
        self.widget = widgets.VBox([
            widgets.HBox([self.picture, widgets.VBox([self.picker, self.question,
                                                      self.temperature, self.button])]),
            self.reply,
        ])  # fmt: skip
        self.ask()

    def _png(self, i: int) -> bytes:
        import io

        import matplotlib.pyplot as plt

        from minivlm.data import to_image

        buf = io.BytesIO()
        plt.imsave(buf, to_image(self.setup.test_data.pixel_values()[i]), format="png")
        return buf.getvalue()

    def ask(self, _: Any = None) -> str:
        """Answer the question box about the picked image; show and return the reply."""
        i, q = self.picker.value, self.question.value.strip()
        self.picture.value = self._png(i)
        try:
            gen = torch.Generator().manual_seed(self.seed)
            out = answer(self.setup, self.model, [(i, q, None, None)],
                         temperature=self.temperature.value, generator=gen)[0]  # fmt: skip
            text = f"assistant: {out}   (the image: {self.setup.test_data.caption(i)})"
        except ValueError as e:  # the strict tokenizer names every unknown word
            text = f"cannot ask that: {e}; use the words of the shapes world"
        self.reply.value = text
        return text

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

def accuracy(questions: list, preds: list[str]) -> dict[str, float]:
    """Exact-match accuracy per question type and over all questions ("all")."""
    per = defaultdict(list)
    for (_, _, a, t), p in zip(questions, preds, strict=True):
        per[t].append(p == a)
    acc = {t: sum(v) / len(v) for t, v in per.items()}
    acc["all"] = sum(p == a for (_, _, a, _), p in zip(questions, preds, strict=True)) / len(
        questions
    )
    return acc


def run_seed(vit: torch.nn.Module, lm: torch.nn.Module, seed: int,
             recipe: Recipe) -> dict[str, Any]:  # fmt: skip
    """Every arm of :data:`ARMS` for one seed: ``{"seed", "acc": {arm: {qtype: acc}}, ...}``."""
    t0, c0 = time.perf_counter(), time.process_time()
    s = Setup(vit, lm, seed, recipe)
    r, q = recipe, s.questions
    mix = (s.vqa, s.dialogues)  # two buckets: each batch from one of them (see fit)
    acc: dict[str, dict[str, float]] = {}
    acc["LM alone (no image)"] = accuracy(q, answer(s, s.lm_pretrained, q, image=False))
    majority = {
        t: Counter(a for i in range(len(s.train_data)) for _, a, tt in s.train_data.vqa(i)
                   if tt == t).most_common(1)[0][0]
        for t in QTYPES
    }  # fmt: skip
    acc["majority answer"] = accuracy(q, [majority[t] for *_, t in q])
    losses = {}
    for kind, prefix in (("mlp2x_gelu", ""), ("linear", "linear: ")):
        model = s.build(kind)
        losses[prefix + "stage 1"] = fit(s, model, s.stage1, r.s1_steps, 1, seed)
        acc[prefix + "stage 1 only"] = accuracy(q, answer(s, model, q))
        if kind == "mlp2x_gelu":  # the VQA-only ablation continues from the same stage 1
            ablation = copy.deepcopy(model)
        losses[prefix + "stage 2"] = fit(s, model, mix, r.s2_steps, 2, seed + 1)
        acc[prefix + "stage 1 + 2"] = accuracy(q, answer(s, model, q))
    fit(s, ablation, s.vqa, r.s2_steps, 2, seed + 1)
    acc["stage 1 + 2, VQA-only stage 2"] = accuracy(q, answer(s, ablation, q))
    model = s.build("mlp2x_gelu")
    fit(s, model, mix, r.s2_steps, 2, seed + 1)
    acc["stage 2 only"] = accuracy(q, answer(s, model, q))
    n_turns = Counter(e["labels"].count(s.tok.eos_id) for _, e in s.dialogues)  # answers
    return {
        "seed": seed,
        "acc": {arm: {k: round(v, 5) for k, v in acc[arm].items()} for arm in ARMS},
        "stage2_mixture": {"vqa_chats": len(s.vqa), "dialogues": len(s.dialogues),
                           "dialogues_by_answer_turns": dict(sorted(n_turns.items()))},
        "majority": majority,
        "final_loss": {k: round(float(np.mean(v[-10:])), 4) for k, v in losses.items()},
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std (ddof 1) over seeds per arm and question type, and the paired
    differences per seed of the comparisons the lecture makes."""
    out: dict[str, Any] = {}
    cols = (*QTYPES, "all")
    for arm in ARMS:
        out[arm] = {}
        for c in cols:
            v = [r["acc"][arm][c] for r in runs]
            out[arm][c] = {"mean": round(float(np.mean(v)), 5),
                           "std": round(float(np.std(v, ddof=1)), 5) if len(v) > 1 else 0.0,
                           "values": v}  # fmt: skip
    pairs = {
        "stage 1 + 2 minus stage 2 only": ("stage 1 + 2", "stage 2 only"),
        "stage 1 + 2 minus stage 1 only": ("stage 1 + 2", "stage 1 only"),
        "MLP minus linear (stage 1 + 2)": ("stage 1 + 2", "linear: stage 1 + 2"),
        "mixture minus VQA-only stage 2": ("stage 1 + 2", "stage 1 + 2, VQA-only stage 2"),
    }
    out["paired"] = {}
    for name, (a, b) in pairs.items():
        out["paired"][name] = {}
        for c in cols:
            d = [r["acc"][a][c] - r["acc"][b][c] for r in runs]
            out["paired"][name][c] = {
                "mean": round(float(np.mean(d)), 5),
                "std": round(float(np.std(d, ddof=1)), 5) if len(d) > 1 else 0.0,
                "wins": sum(x > 0 for x in d), "ties": sum(x == 0 for x in d),
                "losses": sum(x < 0 for x in d), "values": [round(x, 5) for x in d],
            }  # fmt: skip
    return out


def print_table(results: dict[str, Any], file: Any = None) -> None:
    """Mean ± std over seeds per arm and question type, then the paired differences."""
    file = sys.stdout if file is None else file
    summ, cols = results["summary"], (*QTYPES, "all")
    n = len(results["runs"])
    print(f"exact-match accuracy on held-out questions, mean ± std over {n} seed(s)", file=file)
    print(f"{'':30s}" + "".join(f"{c:>12s}" for c in cols), file=file)
    for arm in ARMS:
        cells = "".join(f"{summ[arm][c]['mean']:6.2f} ±{summ[arm][c]['std']:4.2f}" for c in cols)
        print(f"{arm:30s}{cells}", file=file)
    print("paired differences (mean ± std; seeds ahead/level/behind)", file=file)
    for name, d in summ["paired"].items():
        cells = "".join(f"{d[c]['mean']:+6.2f} ±{d[c]['std']:4.2f}" for c in cols)
        wins = d["all"]
        print(f"{name:30s}{cells}   all: {wins['wins']}/{wins['ties']}/{wins['losses']}",
              file=file)  # fmt: skip


def random_parts(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Tiny random stand-ins for the zoo's ViT and LM (same image size and tokenizer)."""
    from minivlm.models.clip import clip_vision_config
    from minivlm.nn.lm import DecoderLM, LMConfig
    from minivlm.nn.vit import ViT

    minivlm.seed_everything(seed)
    vit = ViT(clip_vision_config(image_size=64, patch_size=16, dim=32, depth=2, num_heads=2,
                                 mlp_hidden=64)).requires_grad_(False).eval()  # fmt: skip
    lm = DecoderLM(LMConfig(vocab_size=len(shapes_tokenizer()), dim=32, depth=1, num_heads=2,
                            num_kv_heads=1, mlp_hidden=64))  # fmt: skip
    lm.requires_grad_(False).eval()
    return vit, lm
