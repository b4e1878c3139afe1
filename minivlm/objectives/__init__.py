"""Objectives shared by several models (being split into one module per family)."""

from minivlm.objectives.negatives import *  # noqa: F403
from minivlm.objectives.negatives import __all__  # noqa: F401
