"""``transformers`` LLaVA -> :class:`~minivlm.models.llava.LLaVA` (CLIP vision tower, Llama LM).

Works with both the transformers >= 4.52 layout (``model.language_model``) and the older one
(``language_model.model``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from minivlm.interop.clip import clip_vision_config_from_hf, clip_vision_state_from_hf
from minivlm.interop.common import hf_activation, hf_from_pretrained
from minivlm.nn.lm import DecoderLM

Tensor = torch.Tensor


def llava_from_hf(cls: type[nn.Module], config_cls: type, model: nn.Module) -> Any:
    """Copy a ``transformers.LlavaForConditionalGeneration`` with a CLIP vision tower and a
    Llama language model into a ``cls`` (:class:`~minivlm.models.llava.LLaVA`, ``config_cls``
    its LlavaConfig)."""
    hc = getattr(model, "config", None)
    if hc is None or getattr(hc, "model_type", None) != "llava":
        raise TypeError(
            "LLaVA.from_hf: expected a transformers "
            f"LlavaForConditionalGeneration, got {type(model).__name__}"
        )
    vc, tc = hc.vision_config, hc.text_config
    if tc.model_type != "llama":
        raise ValueError(
            f"LLaVA.from_hf: only Llama language models are supported, got {tc.model_type!r}"
        )
    if vc.model_type not in ("clip_vision_model", "clip"):
        raise ValueError(
            f"LLaVA.from_hf: only CLIP vision towers are supported, got {vc.model_type!r}"
        )
    proj_act = hf_activation(hc.projector_hidden_act, "LLaVA.from_hf (projector)")
    sd = model.state_dict()
    prefix = _find_prefixes(sd)

    # language model: DecoderLM.from_hf on a LlamaForCausalLM-shaped view of the weights
    lm_sd = {
        "model." + k[len(prefix["lm"]) :]: v
        for k, v in sd.items()
        if k.startswith(prefix["lm"])
    }
    if prefix["head"] in sd:
        lm_sd["lm_head.weight"] = sd[prefix["head"]]
    lm = DecoderLM.from_hf(_HFView(tc, lm_sd))

    layer = hc.vision_feature_layer
    cfg = config_cls(
        vision=clip_vision_config_from_hf(vc, "LLaVA.from_hf (vision tower)"),
        text=lm.config,
        projector_type="mlp2x_gelu",
        projector_act=proj_act,
        projector_bias=bool(getattr(hc, "multimodal_projector_bias", True)),
        vision_feature_layer=list(layer) if isinstance(layer, (list, tuple)) else int(layer),
        vision_feature_select_strategy=hc.vision_feature_select_strategy,
        image_token_id=int(
            getattr(hc, "image_token_id", None)
            if getattr(hc, "image_token_id", None) is not None
            else hc.image_token_index
        ),
    )
    v = {k[len(prefix["vision"]) :]: t for k, t in sd.items() if k.startswith(prefix["vision"])}
    vision_sd = clip_vision_state_from_hf(v, vc.num_hidden_layers)
    proj_sd = {
        f"fc{i}.{p}": sd[f"{prefix['projector']}linear_{i}.{p}"]
        for i in (1, 2)
        for p in ("weight", "bias")
        if f"{prefix['projector']}linear_{i}.{p}" in sd
    }

    with torch.device("meta"):  # no time spent on a random init that is overwritten
        llava = cls(cfg, language_model=lm)
    # assign=True takes the tensors themselves: clone, so that training the copy never
    # changes the HF model (the projector's tensors would otherwise be HF's own)
    llava.vision_tower.load_state_dict({k: t.detach().clone() for k, t in vision_sd.items()},
                                       strict=True, assign=True)  # fmt: skip
    llava.projector.load_state_dict({k: t.detach().clone() for k, t in proj_sd.items()},
                                    strict=True, assign=True)  # fmt: skip
    dtype = next(model.parameters()).dtype
    return llava.to(dtype).train(model.training)


def llava_from_pretrained(cls: Any, name_or_path: str, **kwargs: Any) -> Any:
    """``LlavaForConditionalGeneration.from_pretrained(name_or_path, **kwargs)``, copied."""
    hf = hf_from_pretrained("LlavaForConditionalGeneration", name_or_path, "LLaVA.from_pretrained",
                            "llava-hf/llava-1.5-7b-hf", **kwargs)  # fmt: skip
    return cls.from_hf(hf)


class _HFView:
    """Just enough of a ``LlamaForCausalLM`` (config, state_dict, parameters) for
    :meth:`DecoderLM.from_hf`."""

    def __init__(self, config: Any, state: dict[str, Tensor]) -> None:
        self.config, self._state = config, state

    def state_dict(self) -> dict[str, Tensor]:
        return self._state

    def parameters(self):
        return iter(self._state.values())


def _find_prefixes(sd: dict[str, Tensor]) -> dict[str, str]:
    """Key prefixes of the parts in a LLaVA state dict (transformers 4.x or 5.x layout)."""
    layouts = [
        dict(vision="model.vision_tower.", projector="model.multi_modal_projector.",
             lm="model.language_model.", head="lm_head.weight"),
        dict(vision="vision_tower.", projector="multi_modal_projector.",
             lm="language_model.model.", head="language_model.lm_head.weight"),
    ]  # fmt: skip
    for lay in layouts:
        if f"{lay['lm']}embed_tokens.weight" in sd and f"{lay['projector']}linear_1.weight" in sd:
            for sub in ("", "vision_model."):  # CLIPVisionModel nests vision_model in 4.x
                if f"{lay['vision']}{sub}embeddings.class_embedding" in sd:
                    return {**lay, "vision": lay["vision"] + sub}
            raise ValueError(
                "LLaVA.from_hf: expected a CLIP vision tower (no "
                f"{lay['vision']}embeddings.class_embedding)"
            )
    raise ValueError(
        "LLaVA.from_hf: unrecognised state dict layout (keys start with "
        f"{sorted({k.split('.')[0] for k in sd})})"
    )
