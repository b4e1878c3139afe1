"""Checks of the exercises, one module per lecture.

Every module in this package is imported by :func:`minivlm.grading.load_checks`,
so adding a file here that calls :func:`minivlm.grading.register_check` is all a
new lecture needs (see ``exercises/README.md``).
"""
