"""Building blocks shared by every model (attention, blocks, ViT, text encoders, LM)."""
