"""The tree of tests/ mirrors the packages: each package has its test folder, and each test folder
names a package (tests of several parts together sit at the top)."""

from __future__ import annotations

from pathlib import Path

from tests.test_layers import PACKAGES, ROOT

TESTS = ROOT / "tests"


def _packages(base: Path, tops: tuple[str, ...]) -> set[Path]:
    """The folders holding an __init__.py under each of `tops`, relative to `base`."""
    return {
        init.parent.relative_to(base) for top in tops for init in (base / top).rglob("__init__.py")
    }


def test_each_package_has_its_test_folder() -> None:
    assert sorted(_packages(ROOT, PACKAGES) - _packages(TESTS, PACKAGES)) == []


def test_each_test_folder_names_a_package() -> None:
    assert sorted(_packages(TESTS, PACKAGES) - _packages(ROOT, PACKAGES)) == []
