"""Loaded first by `make test` (``-p tests.pytest_early``), before pytest's installed plugins, in
the controller and in every xdist worker.

nbval imports nbformat, whose jsonschema imports rfc3987_syntax when it is installed (jupyterlab
brings it): that builds a grammar at import, about 2.6 s of CPU per process, for IRI string
formats that no notebook schema uses. tests/conftest.py skips it the same way, but conftest is
imported after the plugins, too late where nbval is loaded, as in `make test`'s one pool.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]
