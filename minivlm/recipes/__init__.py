"""Lecture code shared by the notebooks and ``experiments/`` (installed with the package).

A notebook trains one seed live by calling a recipe; the matching script in ``experiments/`` is a
thin command line that runs the same recipe over seeds and writes its results JSON. One module
per lecture experiment; import them by name, e.g. ``from minivlm.recipes import llava_stages``.
"""
