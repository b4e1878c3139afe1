"""Every training loss of the course, in one place to read side by side.

Each loss lives next to the model whose paper introduced it (one model, one file); this module
only gathers them under one name so a learner can compare them:

========================  =====================================  ==========================
loss                      what it trains                         paper
========================  =====================================  ==========================
``clip_loss``             symmetric InfoNCE over the N x N        CLIP, Radford et al. 2021,
                          image-text similarity matrix            §2.3, Fig. 3
``contrastive_logits``    the scaled similarity matrix itself     CLIP §2.3
``itm_loss_with_negatives``  image-text matching with sampled     ViLT, Kim et al. 2021, §3.2
                          negatives (binary cross-entropy)
``wpa_loss``              word-patch alignment (optimal           ViLT §3.2
                          transport distance)
``soft_cross_entropy``    cross-entropy against soft targets     ALBEF, Li et al. 2021, §3.3
``distill_targets``       momentum-distillation targets:         ALBEF §3.3, Eq. 4
                          (1-a) one-hot + a softmax(momentum)
``mlm_distill_loss``      masked LM with distilled targets       ALBEF §3.3
``lm_loss``               next-token cross-entropy (captioning,  BLIP-2 ITG, LLaVA §4.2
                          ITG, instruction tuning); -100 ignored
========================  =====================================  ==========================
"""

from minivlm.models.albef import distill_targets, mlm_distill_loss, soft_cross_entropy
from minivlm.models.clip import clip_loss, clip_loss_parts, contrastive_logits
from minivlm.models.vilt import itm_loss_with_negatives, sample_itm_negatives, wpa_loss
from minivlm.nn.lm import lm_loss

__all__ = [
    "clip_loss",
    "clip_loss_parts",
    "contrastive_logits",
    "distill_targets",
    "itm_loss_with_negatives",
    "lm_loss",
    "mlm_distill_loss",
    "sample_itm_negatives",
    "soft_cross_entropy",
    "wpa_loss",
]
