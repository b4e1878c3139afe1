"""Checks of the exercises, one module per lecture.

Every module in this package is imported by :func:`minivlm.grading.load_checks`,
so adding a file here that registers checks with :func:`minivlm.grading.exercise_checks`
(or :func:`minivlm.grading.register_check`) is all a new lecture needs (see
``exercises/README.md``). ``_common`` holds what training checks share.
"""
