"""Data: the procedural shapes world, a word-level tokenizer and loaders for real formats."""
