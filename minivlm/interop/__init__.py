"""Converters from ``transformers`` / ``timm`` / ``open_clip`` checkpoints, one module per model.

Each model class keeps a short ``from_hf`` (or ``from_timm``) that calls its converter here.
"""
