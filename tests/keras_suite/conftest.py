"""Run Keras's own saving tests (extracted by ``make test`` into ``upstream/``) through ``lazyweights.keras``.

``make keras-suite`` downloads the source distribution of the pinned Keras
and extracts the three test modules of :data:`UPSTREAM` here; they are not
part of the repository.  Every test collected from ``upstream/`` runs with
the loads of :mod:`.redirect` patched in; ``LW_KERAS_SUITE=keras`` runs them
against Keras itself instead (the baseline the expected failures below are
judged against).  Tests that fail with Keras itself (:data:`FAILS_WITH_KERAS`)
or through lazyweights (:data:`EXPECTED_FAILURES`, strict, so a fix shows up
as a failure to update the list) are marked ``xfail`` with their reason.
The three modules take about two minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .redirect import patches

UPSTREAM_DIR = Path(__file__).parent / "upstream"
UPSTREAM = ("saving_lib_test.py", "saving_api_test.py", "legacy_h5_format_test.py")
REDIRECT = os.environ.get("LW_KERAS_SUITE", "lazyweights") != "keras"

_GFILE = "Keras copies through TensorFlow's gfile here, and TensorFlow is not installed"

# test id (file::Class::test) -> why it fails with Keras itself on this machine (LW_KERAS_SUITE=keras)
FAILS_WITH_KERAS: dict[str, str] = {
    "saving_lib_test.py::SavingBattleTest::test_legacy_load_skips_missing_nested_containers": (
        "its fixture test_data/pre_pr22362_nested_container.keras is not in the sdist"
    ),
    "saving_lib_test.py::SavingBattleTest::test_remove_weights_only_saving_and_loading": _GFILE,
    "saving_lib_test.py::SavingDiskIOStoreTest::test_disk_io_store_remote_working_dir_is_preserved": _GFILE,
}

# test id -> why it fails through lazyweights though Keras passes it (strict: a fix must update this list)
EXPECTED_FAILURES: dict[str, str] = {}

def pytest_configure(config: pytest.Config) -> None:
    """The markers Keras's own conftest declares (the torch backend trains, so they select nothing out)."""
    for marker in ("requires_trainable_backend", "large"):
        config.addinivalue_line("markers", f"{marker}: Keras's test marker")


def _upstream(item: pytest.Item) -> bool:
    return UPSTREAM_DIR in Path(str(item.path)).parents


def _key(item: pytest.Item) -> str:
    return item.nodeid.split("upstream/", 1)[-1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not _upstream(item):
            continue
        key = _key(item)
        if key in FAILS_WITH_KERAS:
            item.add_marker(pytest.mark.xfail(reason=f"fails with Keras itself: {FAILS_WITH_KERAS[key]}"))
        elif REDIRECT and key in EXPECTED_FAILURES:
            item.add_marker(pytest.mark.xfail(reason=EXPECTED_FAILURES[key], strict=True))


@pytest.fixture(autouse=True)
def _through_lazyweights(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch Keras's load functions for the duration of an upstream test."""
    if REDIRECT and _upstream(request.node):
        for owner, name, replacement in patches():
            monkeypatch.setattr(owner, name, replacement)
