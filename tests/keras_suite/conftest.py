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
EXPECTED_FAILURES: dict[str, str] = {
    "saving_api_test.py::LoadWeightsTests::test_load_weights_invalid_kwargs": (
        "lwk.load_weights declares its keywords, so an unknown one (bad_kwarg=None) raises Python's TypeError, "
        "not Keras's ValueError('Invalid keyword arguments'); the test's four other checks pass"
    ),
    "saving_api_test.py::LoadWeightsTests::test_load_weights_rejects_h5_soft_link": (
        "lazyweights follows soft links inside a file (they cannot leave it), so a file whose model_weights is a "
        "SoftLink is read as generic HDF5 and refused with ValueError for having no layer_names, without the word "
        "'SoftLink'"
    ),
    "saving_lib_test.py::SafeZipReadTest::test_load_model_rejects_bomb_config": (
        "the test lowers Keras's private limits (_ZIP_MEMBER_BOMB_FLOOR_BYTES=64, _ZIP_MEMBER_MAX_EXPANSION=10) "
        "to make a 200 kB config a bomb; lazyweights has its own limit (64 MiB declared, checked before "
        "inflating) and refuses this archive with a ValueError for having no model.weights.h5 instead"
    ),
    "saving_lib_test.py::SafeZipReadTest::test_load_model_rejects_bomb_weights": (
        "lazyweights never inflates model.weights.h5 (it reads the stored member in place), so a deflated one is "
        "refused as UnsupportedError (NotImplementedError), not as Keras's ValueError from its lowered private limit"
    ),
    "saving_lib_test.py::SafeZipReadTest::test_load_model_rejects_extraction_bomb": (
        "the test lowers Keras's private _ZIP_EXTRACT_BOMB_FLOOR_BYTES; lazyweights extracts only assets/ members, "
        "with its own bomb rule (over 256 MiB declared and over 100x the stored size), so this member is not refused"
    ),
}

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
