"""One file per surveyed model; build them with ``minivlm.create_model`` (presets in
``minivlm.presets``) or import the model file directly."""
