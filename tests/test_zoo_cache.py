"""The zoo's default components, built into the cache as `make test` work (`minivlm zoo build`).

The notebooks and the exercise 04/05 training checks load the cached components. `make test`
runs one pool of two workers for everything; instead of a separate `minivlm zoo build --jobs 2`
step before it (whose second core idled while the last component trained), each component's
build is one unit of the pool's work: tests/conftest.py hands the builds out first, longest
first, and holds back the files that load the zoo (``_USES_ZOO``) until every build here has
finished, while the other files fill the cores. A component already cached and valid is only
verified (SHA-256 of the weights, recipe, vocabulary); a failed build fails here, loudly.
Each build runs the command line in its own process, exactly as the separate step did, so the
weights are the same bits (single-threaded, seeded; see minivlm.zoo "Cost").
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from minivlm import zoo


@pytest.mark.parametrize("name", zoo.list_components())
def test_component_is_built_and_verified(name: str, record_property) -> None:
    try:
        zoo.verify(name)
        record_property("zoo", f"{name}: up to date ({zoo.paths(name)[0]})")
        return  # cached and valid: nothing to build
    except zoo.ZooCacheError:
        pass
    cmd = [sys.executable, "-m", "minivlm", "zoo", "build", "--name", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (
        f"`{' '.join(cmd[1:])}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    record = zoo.verify(name)  # raises ZooCacheError saying what is wrong
    assert record["name"] == name and record["version"] == zoo.VERSION
    # the build's own summary line ("shapes_lm: built in 39.0 s, 3.2 MB; held-out ..."), which
    # tests/conftest.py prints at the end of the test report
    built = [line for line in proc.stdout.splitlines() if line.startswith(f"{name}: built")]
    record_property("zoo", built[-1] if built else f"{name}: built")
