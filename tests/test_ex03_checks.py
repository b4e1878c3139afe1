"""Exercise 03 (ALBEF) checks: right solutions pass; deliberately broken ones fail with a message
that names the mistake; the instructor source passes every check and its generated student
version fails them as "not attempted"."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from exercise_helpers import (
    assert_broken_fails_pointedly,
    assert_source_passes_student_fails,
)

from minivlm import objectives
from minivlm.grading import check, get_check, list_checks
from minivlm.grading.checks.ex03_albef import inputs_after
from minivlm.grading.student import generate_student

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "exercises" / "03_albef_momentum.ipynb"
EXERCISE = "03_albef_momentum"
SEED = 1234
# the training check's reference trains two models per (seed): once per test process
pytestmark = pytest.mark.usefixtures("reuse_references")


# ----------------------------------------------------------------------------- EMA
def make_ema(kind="right"):
    @inputs_after
    def ema_update_(pairs, momentum):
        with torch.no_grad():
            for i, (p, p_m) in enumerate(pairs):
                if kind == "right":
                    p_m.mul_(momentum).add_(p, alpha=1 - momentum)
                elif kind == "lerp":  # p_m + (1 - m)(p - p_m)
                    p_m.lerp_(p, 1 - momentum)
                elif kind == "data":  # the paper's code: same Parameter object, new storage
                    p_m.data = p_m.data * momentum + p.data * (1.0 - momentum)
                elif kind == "swapped":
                    p_m.copy_((1 - momentum) * p_m + momentum * p)
                elif kind == "online":  # updates the online model instead
                    p.copy_(momentum * p + (1 - momentum) * p_m)
                elif kind == "rebind":  # a new tensor bound to a local name
                    p_m = momentum * p_m + (1 - momentum) * p  # noqa: PLW2901
                elif kind == "new_list":  # new tensors put into the list: the model never sees
                    pairs[i] = (p, momentum * p_m + (1 - momentum) * p)
                elif kind == "plus":
                    p_m.mul_(momentum).add_(p, alpha=momentum)
                elif kind == "first_only":
                    if i == 0:
                        p_m.mul_(momentum).add_(p, alpha=1 - momentum)

    return ema_update_


@inputs_after
def ema_without_no_grad(pairs, momentum):  # right values; autograd is not our business here
    for p, p_m in pairs:
        p_m.copy_(momentum * p_m.detach() + (1 - momentum) * p.detach())


# ----------------------------------------------------------------------------- queue
def make_enqueue(kind="right"):
    @inputs_after
    def enqueue_(queue, ptr, feats):
        E, K = queue.shape
        B = feats.shape[0]
        p = int(ptr)
        if kind == "no_wrap":  # slices past the end: shape error, or too few columns
            queue[:, p:p + B] = feats.T
        elif kind == "rows":  # a (K, E) layout
            queue[p:p + B] = feats
        elif kind == "loop":  # a right solution, one column at a time
            for b in range(B):
                queue[:, (p + b) % K] = feats[b]
        else:
            cols = (p + torch.arange(B)) % K
            queue[:, cols] = feats.T.to(queue.dtype)
        if kind == "no_advance":
            pass
        elif kind == "rebind":
            ptr = (ptr + B) % K  # noqa: F841 - the mistake: a new tensor, the buffer stays
        elif kind == "plus_one":
            ptr.fill_((p + 1) % K)
        elif kind == "no_mod":
            ptr += B
        else:
            ptr.fill_((p + B) % K)

    return enqueue_


@inputs_after
def enqueue_by_index_copy(queue, ptr, feats):  # a right solution with index_copy_ and add_
    K = queue.shape[1]
    cols = (ptr + torch.arange(feats.shape[0])) % K
    queue.index_copy_(1, cols, feats.T.to(queue.dtype))
    ptr.add_(feats.shape[0]).remainder_(K)


@inputs_after
def enqueue_with_cat(queue, ptr, feats):  # builds a new queue: the buffer never changes
    K = queue.shape[1]
    cols = (int(ptr) + torch.arange(feats.shape[0])) % K
    new = queue.clone()
    new[:, cols] = feats.T
    queue = new  # noqa: F841
    ptr.fill_((int(ptr) + feats.shape[0]) % K)


# ----------------------------------------------------------------------------- sampler
def make_sampler(*, mask=True, draw="multinomial", dim=1, columns="batch", per_row=False,
                 order="i2t", eps=0.0):
    def sample_hard_negatives(sim_i2t, sim_t2i, generator):
        B = sim_i2t.shape[0]
        out = {}
        for name in (("i2t", "t2i") if order == "i2t" else ("t2i", "i2t")):
            s = {"i2t": sim_i2t, "t2i": sim_t2i}[name].detach()
            s = s if columns == "all" else s[:, :B]
            if mask and not eps:
                s = s.clone()
                s[:, :B] = s[:, :B].masked_fill(torch.eye(B, dtype=torch.bool), float("-inf"))
            w = s.softmax(dim=dim)
            if eps:  # the paper's code: softmax over all B (the positive too), + 1e-4, then
                # the diagonal set to 0
                w = w + eps
                w[:, :B] = w[:, :B].masked_fill(torch.eye(B, dtype=torch.bool), 0.0)
            if draw == "argmax":
                idx = w.argmax(dim=1)
            elif draw == "uniform":
                idx = torch.multinomial(torch.ones(B, B).fill_diagonal_(0), 1,
                                        generator=generator)[:, 0]
            elif per_row:
                idx = torch.cat([torch.multinomial(w[i], 1, generator=generator)
                                 for i in range(B)])
            else:
                idx = torch.multinomial(w, 1, generator=generator).squeeze(1)
            out[name] = idx
        return out["i2t"], out["t2i"]

    return sample_hard_negatives


def sampler_exp_weights(sim_i2t, sim_t2i, generator):  # exp and zeroed diagonal, unnormalised
    B = sim_i2t.shape[0]
    res = []
    for s in (sim_i2t, sim_t2i):
        x = s[:, :B].double()
        w = (x - x.max(dim=1, keepdim=True).values).exp() * (1 - torch.eye(B, dtype=x.dtype))
        res.append(torch.multinomial(w, 1, generator=generator).flatten())
    return tuple(res)


RIGHT = [
    ("ema_update_", inputs_after(objectives.ema_update_)),
    ("ema_update_", make_ema("right")),
    ("ema_update_", make_ema("lerp")),
    ("ema_update_", make_ema("data")),
    ("ema_update_", ema_without_no_grad),
    ("enqueue_", inputs_after(objectives.enqueue_)),
    ("enqueue_", make_enqueue("right")),
    ("enqueue_", make_enqueue("loop")),
    ("enqueue_", enqueue_by_index_copy),
    ("sample_hard_negatives", lambda a, b, g: objectives.sample_hard_negatives(a, b, generator=g)),
    ("sample_hard_negatives", make_sampler()),
    ("sample_hard_negatives", make_sampler(per_row=True)),
    ("sample_hard_negatives", sampler_exp_weights),
]


@pytest.mark.parametrize("name,fn", RIGHT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RIGHT)])
def test_right_solutions_pass(name, fn):
    # the library's own function is right too; graded, it would earn 0 (not self-written)
    r = check(name, fn, seed=SEED, allow_library=True)
    assert r.passed, str(r)
    assert r.points == r.max_points == get_check(name).points
    assert r.status == "passed"


# (check, broken function, words the message must contain)
BROKEN = [
    ("ema_update_", make_ema("swapped"), ["params_m: values differ", "swapped"]),
    ("ema_update_", make_ema("online"), ["params: values differ", "changed the online "
                                         "parameters instead"]),
    ("ema_update_", make_ema("rebind"), ["params_m: values differ", "did not change",
                                         "in place"]),
    ("ema_update_", make_ema("new_list"), ["params_m: values differ", "did not change"]),
    ("ema_update_", make_ema("plus"), ["params_m: values differ", "sum to 1"]),
    ("ema_update_", make_ema("first_only"), ["params_m: values differ"]),
    ("enqueue_", make_enqueue("no_wrap"), ["raised RuntimeError", "wrap around"]),
    ("enqueue_", make_enqueue("no_advance"), ["ptr: 1 of 1 entries differ", "pointer did not move"]),
    ("enqueue_", make_enqueue("rebind"), ["ptr: 1 of 1 entries differ", "pointer did not move",
                                          "rebinds"]),
    ("enqueue_", make_enqueue("plus_one"), ["ptr: 1 of 1 entries differ", "moved by 1"]),
    ("enqueue_", make_enqueue("no_mod"), ["ptr: 1 of 1 entries differ", "wrap it around"]),
    ("enqueue_", make_enqueue("rows"), ["raised", "one feature per column"]),
    ("enqueue_", enqueue_with_cat, ["queue: values differ", "nothing was written"]),
    ("sample_hard_negatives", make_sampler(mask=False),
     ["neg_text_idx: ", "entries differ", "the positive can be drawn"]),
    ("sample_hard_negatives", make_sampler(draw="argmax"),
     ["entries differ", "most similar negative (argmax)"]),
    ("sample_hard_negatives", make_sampler(draw="argmax", mask=False),
     ["entries differ", "the positive itself"]),
    ("sample_hard_negatives", make_sampler(draw="uniform"),
     ["entries differ", "uniform over j ≠ i"]),
    ("sample_hard_negatives", make_sampler(dim=0), ["entries differ", "wrong axis"]),
    ("sample_hard_negatives", make_sampler(columns="all"), ["entries differ", "all B+K columns"]),
    ("sample_hard_negatives", make_sampler(order="t2i"), ["entries differ",
                                                          "text->image first"]),
    ("sample_hard_negatives", make_sampler(eps=1e-4), ["entries differ", "+1e-4"]),
]


@pytest.mark.parametrize("name,fn,words", BROKEN,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BROKEN)])
def test_broken_solutions_fail_with_a_pointed_message(name, fn, words):
    assert_broken_fails_pointedly(name, fn, words, SEED)


def test_sampler_hints_without_a_known_mistake():
    """Mistakes no wrong function reproduces get a hint from what the draws show."""

    def picks_positive_sometimes(sim_i2t, sim_t2i, generator):
        i2t, t2i = make_sampler()(sim_i2t, sim_t2i, generator)
        return torch.arange(len(i2t)), t2i  # every image 'drew' its own text

    r = check("sample_hard_negatives", picks_positive_sometimes, seed=SEED)
    assert not r.passed and "drew its own positive" in r.message and "-inf" in r.message

    def other_rng(sim_i2t, sim_t2i, generator):  # right distribution, its own random numbers
        return make_sampler()(sim_i2t, sim_t2i, torch.Generator().manual_seed(99))

    r = check("sample_hard_negatives", other_rng, seed=SEED)
    assert not r.passed and "same generator" in r.message, str(r)


def test_sampler_distribution_and_batch_of_one_match_the_reference():
    """What the exact-draw check stands on: the reference draws j != i with frequency
    ∝ softmax(sim[i, :B]) over j != i, and a batch of one (no negative) raises ValueError."""
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(4, 4, generator=g) * 2  # one batch of 4 pairs
    R = 500  # R independent copies of it in one block-diagonal batch of B = 4R
    big = torch.full((4 * R, 4 * R), float("-inf"))
    for r in range(R):
        big[4 * r:4 * r + 4, 4 * r:4 * r + 4] = sim
    counts = torch.zeros(4, 4)
    for _ in range(4):  # 4R = 2000 draws for each row of the small batch
        neg_t, _ = objectives.sample_hard_negatives(big, big, generator=g)  # (4R,)
        counts.index_put_((torch.arange(4 * R) % 4, neg_t % 4), torch.ones(4 * R),
                          accumulate=True)
    assert bool(((neg_t // 4) == torch.arange(4 * R) // 4).all())  # stays in its block
    freq = counts / counts.sum(1, keepdim=True)
    weights = sim.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf")).softmax(1)
    assert torch.all(freq.diagonal() == 0)
    assert torch.allclose(freq, weights, atol=0.03), (freq, weights)
    with pytest.raises(ValueError, match="at least 2"):
        objectives.sample_hard_negatives(torch.zeros(1, 5), torch.zeros(1, 5))


def test_inputs_after_sees_only_in_place_changes():
    a, b = torch.zeros(3), torch.ones(2)

    @inputs_after
    def f(x, pairs, k):
        x += 1  # in place: seen
        pairs[0][1].mul_(2)
        pairs[1] = (torch.zeros(1), torch.full((1,), 7.0))  # a new entry: not seen

    x, online, momentum = f(a, [(b, b.clone()), (torch.zeros(1), torch.zeros(1))], 3)
    assert torch.equal(x, torch.ones(3)) and x is a
    assert torch.equal(online, torch.tensor([1.0, 1.0, 0.0]))
    assert torch.equal(momentum, torch.tensor([2.0, 2.0, 0.0]))


def test_check_arguments_survive_pickling_for_the_grader():
    """The grader sends the calls to the notebook's process pickled."""
    gen = torch.Generator().manual_seed(0)
    for chk in list_checks(EXERCISE):
        for case in chk.cases(gen):
            args = pickle.loads(pickle.dumps(case.args))
            assert len(args) == len(case.args)


def test_exercise_03_registers_its_checks():
    names = [c.name for c in list_checks(EXERCISE)]
    assert names == ["ema_update_", "enqueue_", "sample_hard_negatives", "mod_itc_loss",
                     "train_noisy_itc"]
    assert sum(c.points for c in list_checks(EXERCISE)) == 12


# ----------------------------------------------------------------------------- the notebooks
def test_source_passes_all_checks_and_student_fails_them_cleanly():
    stu_code = assert_source_passes_student_fails(SOURCE, EXERCISE, 5, timeout=120, seed=SEED)
    assert "BEGIN SOLUTION" not in stu_code
    for solution in ("p_m.mul_(momentum)", "queue[:, cols]", "masked_fill(positive"):
        assert solution not in stu_code
    assert "def ema_update_(pairs" in stu_code and "def enqueue_(queue" in stu_code
    assert "def sample_hard_negatives(sim_i2t" in stu_code
    assert stu_code.count("@inputs_after") == 2
    assert "def mod_itc_loss(image_feat" in stu_code and "def train_noisy_itc(noise" in stu_code
    assert "log_softmax(1)).sum(1)" not in stu_code and "enqueue_(model.text_queue" not in stu_code


def test_committed_student_notebook_is_up_to_date():
    assert generate_student(SOURCE, check=True).status == "unchanged", (
        "run `python -m minivlm student exercises/03_albef_momentum.ipynb`")


# ----------------------------------------------------------------------------- part 4: MoD loss
from minivlm.grading.checks.ex03_albef import _mod_loss_variant  # noqa: E402
from minivlm.recipes import albef_noise as small  # noqa: E402


def mod_loss_soft_ce(image_feat, text_feat, image_feat_m, text_feat_m, image_queue, text_queue,
                     temp, alpha):
    """Right, written differently: F.cross_entropy with probability targets, one direction at
    a time, the one-hot part added to the scaled softmax."""
    out = []
    for q, q_m, k_m, queue in ((image_feat, image_feat_m, text_feat_m, text_queue),
                               (text_feat, text_feat_m, image_feat_m, image_queue)):
        keys = torch.cat([k_m, queue.t()])  # (B+K, E)
        with torch.no_grad():
            target = alpha * (q_m @ keys.t() / temp).softmax(-1)
            target[torch.arange(len(q)), torch.arange(len(q))] += 1 - alpha
        out.append(torch.nn.functional.cross_entropy(q @ keys.t() / temp, target))
    return (out[0] + out[1]) / 2


def test_mod_itc_loss_right_ways_pass():
    assert check("mod_itc_loss", small.reference_mod_itc_loss, seed=SEED, allow_library=True).passed
    r = check("mod_itc_loss", mod_loss_soft_ce, seed=SEED)
    assert r.passed, str(r)


@pytest.mark.parametrize("kind, words", [
    ("swapped", ["α weighs the wrong term"]),
    ("softmax_dim0", ["dim=1"]),
    ("online_targets", ["momentum model's"]),
    ("targets_no_temp", ["divided by τ"]),
    ("no_queue", ["queue is missing"]),
    ("i2t_only", ["only image->text"]),
    ("sum", ["are added"]),
])
def test_mod_itc_loss_broken_fails_pointedly(kind, words):
    assert_broken_fails_pointedly("mod_itc_loss", _mod_loss_variant(kind), words, SEED)


# ----------------------------------------------------------------------------- part 4: training
def make_train(kind="right"):
    """The exercise's training loop with one deliberate mistake."""
    from minivlm.objectives import ema_update_, enqueue_

    def train_noisy_itc(noise, alpha, seed):
        run = small.SmallRun()
        data = small.small_data(noise, seed, run)
        model = small.small_model(seed, data, run)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=run.lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(run.steps):
            idx = torch.randint(run.n_train, (run.batch_size,), generator=gen)
            image, text = data["image"][idx], data["text"][idx]
            img, txt = model.features(image, text)
            with torch.no_grad():
                if kind != "no_ema":
                    ema_update_(model.momentum_pairs(), run.momentum)
                img_m, txt_m = model.features(image, text, momentum=True)
            loss = small.reference_mod_itc_loss(img, txt, img_m, txt_m, model.image_queue,
                                                model.text_queue, run.temp, alpha)
            if kind == "ascent":
                loss = -loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if kind != "no_enqueue":
                ptr = model.queue_ptr.clone()
                enqueue_(model.image_queue, ptr, img_m)
                enqueue_(model.text_queue, model.queue_ptr, txt_m)
        return torch.tensor([small.small_r1(model, data)])

    return train_noisy_itc


def test_train_check_passes_right_and_fails_broken_loops():
    torch.set_num_threads(1)
    r = check("train_noisy_itc", make_train(), seed=SEED, timeout=120, allow_library=True)
    assert r.passed, str(r)
    for kind in ("ascent", "no_ema", "no_enqueue"):
        r = check("train_noisy_itc", make_train(kind), seed=SEED, timeout=120,
                  allow_library=True)
        assert not r.passed and r.points == 0, (kind, str(r))
        assert r.status == "failed" and "values differ" in r.summary, (kind, str(r))
        if kind == "ascent":
            assert "stayed at chance" in r.message, str(r)
