"""Objectives shared by several models: token masking, negatives, soft targets, momentum, OT.

Each model file keeps the losses only it uses; what two or more models share lives here, as
plain functions on tensors (shapes in the comments), one module per family. Import them from
the package (``from minivlm.objectives import mask_tokens``); the module says where to read.

``masking``: masked language modelling (BERT §3.1; ViLT §3.2-3.3)         used by
    ``mask_tokens``             BERT's 80/10/10 masking, a whole word at a time  ViLT, ALBEF, VLMo
    ``whole_word_choice``       which tokens: every WordPiece of a word together  mask_tokens
    ``corrupt_chosen``          the 80/10/10 replacement of the chosen tokens     mask_tokens
``negatives``: image-text matching (ViLT §3.2; ALBEF §3.2)
    ``sample_itm_negatives``    one swapped image or caption per pair             ViLT
    ``sample_hard_negatives``   ITM negatives drawn ∝ exp(similarity)    ALBEF, BLIP, BLIP-2, VLMo
    ``same_pair_mask``          pairs that would be false negatives      ALBEF, BLIP, BLIP-2, VLMo
    ``hard_negative_rows``      [positives; hard-negative texts; images]          ALBEF, BLIP-2
    ``masked_cross_entropy``    cross-entropy over labels != -100, 0 when none    ViLT, VLMo
    ``itm_loss_with_negatives`` a model's ITM loss on positives + negatives       ViLT
    ``make_pretraining_batch``  ITM + MLM rows stacked for one forward pass       ViLT
``distillation``: soft targets, momentum distillation (ALBEF §3.3)
    ``soft_cross_entropy``      cross-entropy against soft targets                ALBEF, BLIP
    ``distill_targets``         α·softmax(momentum sims) + (1 − α)·one-hot        ALBEF, BLIP
    ``mlm_distill_loss``        MLM against labels and the momentum model's output  ALBEF
``momentum``: momentum encoders and queues (MoCo §3.1-3.2; ALBEF §3.3)
    ``ema_update_``             momentum (EMA) copy of the weights                ALBEF, BLIP
    ``enqueue_``                ring-buffer queue of momentum features            ALBEF, BLIP
    ``concat_all_gather``       features of every process (distributed training)  ALBEF, BLIP
    ``MomentumQueues``          momentum model + queues + ITC targets (a mixin)   ALBEF
    ``ClampedTemperature``      learnable ITC τ, clamped one way (a mixin)        ALBEF, BLIP-2
``transport``: word-patch alignment by optimal transport (ViLT §3.2; UNITER §3.2)
    ``cost_matrix_cosine``      cosine distance of every word to every patch      ViLT, UNITER
    ``ipot``                    the transport plan (Xie et al. 2019, Alg. 1)      ViLT, UNITER
    ``wasserstein_distance``    OT distance of words to patches                   ViLT, UNITER
    ``wpa_loss``                word-patch alignment: matches close, others far   ViLT, UNITER

CLIP's loss lives in :mod:`minivlm.models.clip`, ViLT's ITM/MLM/VQA losses in
:mod:`minivlm.models.vilt`, the next-token loss in :func:`minivlm.nn.lm.lm_loss`.
"""

from minivlm.objectives.distillation import distill_targets, mlm_distill_loss, soft_cross_entropy
from minivlm.objectives.masking import corrupt_chosen, mask_tokens, whole_word_choice
from minivlm.objectives.momentum import (
    ClampedTemperature,
    MomentumQueues,
    concat_all_gather,
    ema_update_,
    enqueue_,
)
from minivlm.objectives.negatives import (
    hard_negative_rows,
    itm_loss_with_negatives,
    make_pretraining_batch,
    masked_cross_entropy,
    same_pair_mask,
    sample_hard_negatives,
    sample_itm_negatives,
)
from minivlm.objectives.transport import cost_matrix_cosine, ipot, wasserstein_distance, wpa_loss

__all__ = [
    "ClampedTemperature",
    "MomentumQueues",
    "concat_all_gather",
    "corrupt_chosen",
    "cost_matrix_cosine",
    "distill_targets",
    "ema_update_",
    "enqueue_",
    "hard_negative_rows",
    "ipot",
    "itm_loss_with_negatives",
    "make_pretraining_batch",
    "mask_tokens",
    "masked_cross_entropy",
    "mlm_distill_loss",
    "same_pair_mask",
    "sample_hard_negatives",
    "sample_itm_negatives",
    "soft_cross_entropy",
    "wasserstein_distance",
    "whole_word_choice",
    "wpa_loss",
]
