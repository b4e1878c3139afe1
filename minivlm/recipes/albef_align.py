"""Align before fuse: does ITC make ALBEF's fusion encoder better? (ALBEF §1, §3.2; Table 1 of §6.1)

ALBEF's title claim: aligning the unimodal [CLS] embeddings with ITC *before* the fusion encoder
fuses them makes the fusion encoder learn image-text interactions more easily. The paper's
evidence is Table 1 (§6.1): adding ITC to MLM + ITM improves every downstream task. Here the
same ALBEF (lecture 3's model, two text and two fusion layers) is trained on clean shapes-world
captions with ITC + ITM + MLM, and with ITM + MLM only (``itc_weight=0``), and the *fusion*
encoder is tested on held-out scenes:

* ITM, true caption vs the same caption with one colour changed (a hard negative a bag of words
  cannot reject) and vs another scene's caption: the fraction of images whose true caption gets
  the higher matching score;
* MLM: every colour word of the caption masked at once, predicted from the image;
* ITC retrieval R@1 (about chance without ITC: nothing trains the [CLS] projections).

Without ITC the hard negatives of ITM are drawn from untrained similarities, i.e. almost at
random: the ablation removes both the alignment and the hard-negative mining that it enables,
as in the paper's Table 1 (ITM_hard needs ITC).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from minivlm.data import ShapesWorld, shapes_tokenizer
from minivlm.data.shapes import COLORS
from minivlm.models.albef import ALBEF
from minivlm.recipes.albef_noise import TEXT_KW, RunConfig, eval_pairs, run

SEEDS = (0, 1, 2)
ARMS = {"ITC + ITM + MLM": 1.0, "ITM + MLM (no ITC)": 0.0}  # name -> itc_weight
FUSION_MODEL = dict(text_depth=4, itm_weight=1.0, mlm_weight=1.0)  # 2 text + 2 fusion layers
STEPS = 250
N_TEST = 200
TEST_SEED = 7


def test_set(n: int = N_TEST, seed: int = TEST_SEED) -> dict[str, Any]:
    """Held-out scenes with their caption, a one-colour-changed caption and another scene's."""
    data = ShapesWorld().generate(n, seed=seed)
    return {"px": data.pixel_values(), "true": [data.caption(i) for i in range(n)],
            "wrong_colour": [data.hard_negatives(i)["wrong_color"][1] for i in range(n)],
            "other": [data.caption((i + 1) % n) for i in range(n)]}  # fmt: skip


@torch.no_grad()
def itm_preference(model: ALBEF, px: torch.Tensor, true: list[str], neg: list[str]) -> float:
    """Fraction of images whose true caption gets a higher ITM match score than ``neg``."""
    tok = shapes_tokenizer()
    a, b = tok(true, **TEXT_KW), tok(neg, **TEXT_KW)
    s_true = model.itm_score(px, a["input_ids"], a["attention_mask"])  # (n,)
    s_neg = model.itm_score(px, b["input_ids"], b["attention_mask"])
    return float((s_true > s_neg).float().mean())


@torch.no_grad()
def mlm_colour_accuracy(model: ALBEF, px: torch.Tensor, captions: list[str]) -> float:
    """Mask every colour word of each caption; accuracy of the fusion encoder's MLM head."""
    tok = shapes_tokenizer()
    t = tok(captions, **TEXT_KW)
    ids = t["input_ids"].clone()  # (n, T)
    colour_ids = torch.tensor([tok.token_to_id[c] for c in COLORS])
    is_colour = torch.isin(ids, colour_ids)  # (n, T)
    labels = ids[is_colour]
    ids[is_colour] = tok.mask_id
    hidden = model.fusion(px, ids, t["attention_mask"]).last_hidden_state  # (n, T, D)
    logits = model.mlm_head(hidden)  # (n, T, V)
    return float((logits.argmax(-1)[is_colour] == labels).float().mean())


def evaluate_fusion(model: ALBEF, test: dict[str, Any]) -> dict[str, float]:
    """The fusion encoder's held-out ITM preferences and MLM colour accuracy."""
    model.eval()
    px, true = test["px"], test["true"]
    return {
        "itm_vs_wrong_colour": itm_preference(model, px, true, test["wrong_colour"]),
        "itm_vs_other_scene": itm_preference(model, px, true, test["other"]),
        "mlm_colour": mlm_colour_accuracy(model, px, true),
    }


def train_arm(itc_weight: float, seed: int, steps: int = STEPS, data: Any = None,
              evalset: Any = None) -> tuple[dict[str, Any], ALBEF]:  # fmt: skip
    """Train one arm (clean captions, MoD on, lecture 3's recipe): ``albef_noise.run``'s record
    and the model. The zoo's ``shapes_albef`` is ``train_arm(1.0, seed=0)``."""
    cfg = RunConfig(noise=0.0, distill=True, seed=seed, steps=steps, eval_every=steps,
                    model={**FUSION_MODEL, "itc_weight": itc_weight})  # fmt: skip
    return run(cfg, data, evalset if evalset is not None else eval_pairs())


def run_arm(itc_weight: float, seed: int, steps: int = STEPS, data: Any = None,
            evalset: Any = None, test: dict | None = None
            ) -> tuple[dict[str, Any], ALBEF]:  # fmt: skip
    """Train one arm (clean captions, MoD on, lecture 3's recipe) and test its fusion encoder."""
    c0 = time.process_time()
    rec, model = train_arm(itc_weight, seed, steps, data, evalset)
    out = {"itc_weight": itc_weight, "seed": seed, "steps": steps, "r1": rec["r1"][-1],
           **evaluate_fusion(model, test or test_set()),
           "cpu_s": round(time.process_time() - c0, 1)}  # fmt: skip
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in out.items()}, model


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm and metric: mean, std and values over seeds; per metric the paired
    (with ITC − without) differences and how many seeds are ahead."""
    metrics = ("r1", "itm_vs_wrong_colour", "itm_vs_other_scene", "mlm_colour")
    out: dict[str, Any] = {}
    for name, w in ARMS.items():
        rs = [r for r in runs if r["itc_weight"] == w]
        out[name] = {m: {"mean": round(float(np.mean([r[m] for r in rs])), 5),
                         "values": [r[m] for r in rs]} for m in metrics} if rs else {}  # fmt: skip
    by = {(r["itc_weight"], r["seed"]): r for r in runs}
    seeds = sorted({s for (w, s) in by if (1.0, s) in by and (0.0, s) in by})
    out["paired"] = {m: [round(by[1.0, s][m] - by[0.0, s][m], 5) for s in seeds] for m in metrics}
    out["paired_seeds"] = seeds
    return out
