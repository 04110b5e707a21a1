"""The public namespace stays honest: sorted __all__, every name importable and documented."""

from __future__ import annotations

import re

import medeq


def test_all_is_sorted_and_unique() -> None:
    assert list(medeq.__all__) == sorted(set(medeq.__all__))


def test_every_public_name_exists_and_has_a_docstring() -> None:
    for name in medeq.__all__:
        obj = getattr(medeq, name)
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", obj)
            continue
        assert obj.__doc__, f"medeq.{name} has no docstring"


def test_no_private_or_module_names_leak() -> None:
    public = {n for n in dir(medeq) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(medeq, n)).__name__ == "module"}
    assert public - modules <= set(medeq.__all__)


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, medeq; heavy = {'numba', 'scipy', 'matplotlib', 'skimage', 'cv2'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_errors_subclass_builtins() -> None:
    assert issubclass(medeq.ParameterError, ValueError)
    assert issubclass(medeq.NotDicomError, ValueError)
    assert issubclass(medeq.OutputError, OSError)
    for name in medeq.__all__:
        obj = getattr(medeq, name)
        if name.endswith("Error"):
            assert issubclass(obj, medeq.MedeqError)
