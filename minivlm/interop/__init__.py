"""Converters from ``transformers`` / ``timm`` / ``open_clip`` checkpoints, one module per model.

A model class keeps a short ``from_hf`` that calls its converter here, so the model file stays
about the model.
"""
