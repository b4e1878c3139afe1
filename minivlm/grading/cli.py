"""``minivlm student`` and ``minivlm grade`` (added to ``minivlm.cli`` by :func:`add_cli`)."""

from __future__ import annotations

import argparse
import sys


def _cmd_student(args: argparse.Namespace) -> int:
    from minivlm.grading.student import (
        OverwriteRefused,
        SolutionMarkerError,
        find_sources,
        generate_student,
    )

    try:
        sources = find_sources(args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not sources:
        print(f"minivlm student: no instructor notebooks in {', '.join(args.paths)}",
              file=sys.stderr)
        return 1
    code = 0
    for src in sources:
        try:
            res = generate_student(src, force=args.force, check=args.check)
        except (OverwriteRefused, SolutionMarkerError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = 1
            continue
        what = (f"{res.stats.regions} solution region(s) replaced, "
                f"{res.stats.dropped} solution cell(s) dropped")
        if res.status == "stale":
            print(f"out of date: {res.target} (run `minivlm student {src}`)")
            code = 1
        elif res.status == "unchanged":
            print(f"up to date: {res.target}")
        else:
            print(f"{res.status}: {res.target} ({what})")
        if res.stats.regions == 0 and res.stats.dropped == 0:
            print(f"warning: {src} has no '### BEGIN SOLUTION' regions and no cells tagged "
                  "'solution'", file=sys.stderr)
    return code


def _cmd_grade(args: argparse.Namespace) -> int:
    from minivlm.grading.gradebook import grade

    try:
        grade(args.submissions, args.out, exercise=args.exercise, timeout=args.timeout,
              cell_timeout=args.cell_timeout, check_timeout=args.check_timeout, jobs=args.jobs,
              force=args.force, kernel=args.kernel, resume=args.resume, sandbox=args.sandbox,
              allow_library=args.allow_library)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``student`` and ``grade`` sub-commands."""
    s = subparsers.add_parser(
        "student", help="generate student exercise notebooks from instructor sources",
        description="For each instructor notebook NN_topic.ipynb write NN_topic_student.ipynb "
        "next to it: solution regions (### BEGIN SOLUTION ... ### END SOLUTION) become "
        "`raise NotImplementedError`, cells tagged 'solution' are dropped, outputs cleared. "
        "Running it twice gives identical files. A student notebook that was changed since "
        "it was generated (it may be a learner's work) is never overwritten without --force.")
    s.add_argument("paths", nargs="*", default=["exercises"],
                   help="instructor notebooks or folders of them (default: exercises); "
                   "*_student.ipynb files are skipped")
    s.add_argument("--force", action="store_true",
                   help="overwrite student notebooks even if they were edited")
    s.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a student notebook is missing or out of date")
    s.set_defaults(func=_cmd_student)

    g = subparsers.add_parser(
        "grade", help="execute and grade a folder of submitted notebooks into a CSV",
        description="Execute each submitted notebook in its own process and kernel (time "
        "limit --timeout), then grade it by running the exercise's checks in a separate "
        "worker on the functions the notebook defines; both run in a bubblewrap sandbox when "
        "one is available. Submissions are only read (work happens on copies in a temporary "
        "folder). Writes one CSV row per notebook as each finishes: points per check, total, "
        "max_total, notes with a reason for every missed point, isolated, sha256.")
    g.add_argument("submissions", nargs="+", help="folders (searched recursively) or notebooks")
    g.add_argument("--out", required=True,
                   help="gradebook CSV to write (atomically); an existing file is only "
                   "overwritten with --force, since it may hold marks entered by hand")
    g.add_argument("--exercise", default=None,
                   help="exercise id, e.g. 00_patchify_attention (default: from the "
                   "notebooks' metadata or names)")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to execute one notebook (default 60)")
    g.add_argument("--cell-timeout", type=float, default=None,
                   help="seconds for one code cell while grading (default: --timeout)")
    g.add_argument("--check-timeout", type=float, default=10.0,
                   help="seconds for one check's calls of the learner's function (default 10)")
    g.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (default 1)")
    g.add_argument("--kernel", default=None,
                   help="Jupyter kernel name (default: this Python interpreter's ipykernel)")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    g.add_argument("--resume", action="store_true",
                   help="keep the rows of an existing --out whose notebook is unchanged (a "
                   "stopped run) and grade only the rest")
    g.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto",
                   help="run each submission in a bubblewrap sandbox: auto (default: when "
                   "bwrap works here; otherwise the CSV and the console say the submissions "
                   "were not isolated), bwrap (required), none")
    g.add_argument("--allow-library", action="store_true",
                   help="let a graded function call the library's own implementation of the "
                   "same thing (default: such a function gets 0 with a note)")
    g.set_defaults(func=_cmd_grade)
