"""The zoo's default components, built into the cache as `make test` work (`minivlm zoo build`).

The notebooks and the exercise 04/05 training checks load the cached components. `make test`
runs one pool of two workers for everything; instead of a separate `minivlm zoo build --jobs 2`
step before it (whose second core idled while the last component trained), each component's
build is one unit of the pool's work: tests/conftest.py hands the builds out first, longest
first, and holds back the files that load the zoo (its ``_uses_zoo``) until every build here has
finished, while the other files fill the cores. A component already cached and valid is only
verified (SHA-256 of the weights, recipe, vocabulary); a failed build fails here, loudly.
Each build runs in the worker, before any test there (the builds are the first units handed
out), through the code `minivlm zoo build` runs; a build is single-threaded and seeded, so the
weights are the same bits as the command line's (minivlm.zoo "Cost"; tests/test_zoo.py checks
same seed, same bits), without a process start per component.
"""

from __future__ import annotations

import pytest

from minivlm import zoo


# a build is 40-110 CPU-s on an idle core; the pool's 600 s per-test limit (pyproject.toml) could
# stop one on a loaded machine, where the separate `minivlm zoo build` step had no limit at all
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", zoo.list_components())
def test_component_is_built_and_verified(name: str, record_property) -> None:
    try:
        zoo.verify(name)
        record_property("zoo", f"{name}: up to date ({zoo.paths(name)[0]})")
        return  # cached and valid: nothing to build
    except zoo.ZooCacheError:
        pass
    zoo.build(name)  # what `minivlm zoo build --name N` runs; raises if the build fails
    record = zoo.verify(name)  # raises ZooCacheError saying what is wrong
    assert record["name"] == name and record["version"] == zoo.VERSION
    # the line `minivlm zoo build` prints; tests/conftest.py prints it at the end of the report
    record_property(
        "zoo",
        f"{name}: built in {record['build_seconds']:.1f} s, {record['bytes'] / 1e6:.1f} MB; "
        f"{zoo._summary(record)}",
    )
