"""minivlm.objectives holds the objectives several models share; the models use them, not copies.

The functions themselves are tested where their model is (test_albef: EMA, queues, hard
negatives, distillation; test_vilt: masking, ITM negatives); this file checks the wiring."""

import importlib
import math
import pkgutil

import torch
import torch.nn.functional as F

import minivlm.objectives as O
from minivlm.models import albef, blip2, clip, vilt


def test_models_use_the_shared_objectives_not_copies():
    assert sorted(O.__all__) == O.__all__ and all(hasattr(O, n) for n in O.__all__)
    for name in ("soft_cross_entropy", "sample_hard_negatives", "same_pair_mask",
                 "mlm_distill_loss", "mask_tokens"):
        assert getattr(albef, name) is getattr(O, name), name
    # EMA, queues and distilled ITC targets: the shared mixin, whose methods are not overridden
    assert issubclass(albef.ALBEF, O.MomentumQueues)
    for name in ("momentum_update", "dequeue_and_enqueue", "itc_targets", "momentum_pairs"):
        assert name not in vars(albef.ALBEF), name
    assert vilt.mask_tokens is O.mask_tokens and vilt.sample_itm_negatives is O.sample_itm_negatives
    assert blip2.sample_hard_negatives is O.sample_hard_negatives
    assert blip2.same_pair_mask is O.same_pair_mask


def test_the_package_exports_exactly_what_its_modules_define():
    """One module per family; ``from minivlm.objectives import X`` works for each public X."""
    names = [m.name for m in pkgutil.iter_modules(O.__path__)]
    assert {"masking", "negatives", "distillation", "momentum", "transport"} <= set(names)
    defined: dict[str, str] = {}
    for name in names:
        mod = importlib.import_module(f"minivlm.objectives.{name}")
        assert mod.__doc__ and "§" in mod.__doc__, f"{name}: the docstring cites the papers"
        for public in mod.__all__:
            assert getattr(mod, public).__module__ == mod.__name__, public  # defined there
            assert public not in defined, f"{public} in {name} and {defined[public]}"
            defined[public] = name
            assert getattr(O, public) is getattr(mod, public), public
    assert sorted(defined) == O.__all__


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        O.soft_cross_entropy(logits, torch.eye(4, 7)), F.cross_entropy(logits, torch.arange(4))
    )
    uniform = torch.full((4, 7), 1 / 7)
    assert math.isclose(O.soft_cross_entropy(torch.zeros(4, 7), uniform).item(), math.log(7),
                        rel_tol=1e-6)


def test_clip_loss_is_low_for_matched_pairs_and_chance_for_uninformative_ones():
    e = F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    matched = clip.clip_loss(clip.contrastive_logits(e, e, torch.tensor(math.log(100.0))))
    flat = clip.clip_loss(clip.contrastive_logits(e, e, torch.tensor(-30.0)))  # scale ~ 0
    assert matched < 0.1
    assert abs(float(flat) - math.log(8)) < 1e-4
