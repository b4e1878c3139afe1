"""Converters from ``transformers`` / ``timm`` checkpoints to minivlm models, one per model.

The model classes call them from their short ``from_hf`` / ``from_timm`` classmethods; shared
name maps and the activation table are in :mod:`minivlm.interop.common`.
"""
