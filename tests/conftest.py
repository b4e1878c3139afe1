"""Test-session set-up shared by every test file."""

from __future__ import annotations

import sys

# nbformat -> jsonschema imports rfc3987_syntax when it is installed (jupyterlab brings it); it
# builds a grammar at import, ~2.6 s of CPU in every test process, for IRI formats no test uses
# (minivlm's grading processes skip it the same way). Effective where nbformat is not imported
# yet: `make test` runs the unit tests with `-p no:nbval`, whose plugin would import it first.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]
