"""Exercise machinery: instant checks for learners, student notebooks and a gradebook.

Learners, in a notebook::

    from minivlm.grading import check
    check("patchify", patchify)        # green/red summary that explains the first difference

Instructors::

    minivlm student exercises/                       # NN_topic.ipynb -> NN_topic_student.ipynb
    minivlm grade submissions/ --out gradebook.csv   # execute, grade, one CSV row per notebook

Lecture authors add checks with :func:`exercise_checks` (or :func:`register_check`) in a
module under ``minivlm/grading/checks/`` (see ``exercises/README.md``).
"""

from minivlm.grading.core import (
    Case,
    Check,
    CheckResult,
    add_check,
    check,
    exercise_checks,
    get_check,
    list_checks,
    list_exercises,
    load_checks,
    register_check,
)

__all__ = [
    "Case",
    "Check",
    "CheckResult",
    "add_check",
    "add_cli",
    "check",
    "exercise_checks",
    "generate_student",
    "get_check",
    "grade",
    "list_checks",
    "list_exercises",
    "load_checks",
    "register_check",
]


def __getattr__(name: str):
    # The notebook-generation and grading code (nbformat, nbclient) loads on first use.
    if name == "generate_student":
        from minivlm.grading.student import generate_student

        return generate_student
    if name == "grade":
        from minivlm.grading.gradebook import grade

        return grade
    if name == "add_cli":
        from minivlm.grading.cli import add_cli

        return add_cli
    raise AttributeError(f"module 'minivlm.grading' has no attribute {name!r}")
