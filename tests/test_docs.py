"""The reference docs are generated from docstrings: every public name must have what the
published API page shows (a summary; for functions, Google-style Args and Returns)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import dispatch
import dispatch.aio

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _public_objects() -> dict[str, object]:
    return {name: getattr(dispatch.aio, name) for name in dispatch.aio.__all__}


def test_every_public_name_has_a_docstring() -> None:
    missing = [
        name
        for name, obj in _public_objects().items()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not inspect.getdoc(obj)
    ]
    assert not missing, f"public names without a docstring: {missing}"


def test_public_functions_document_parameters_and_returns() -> None:
    """The reference page's parameter and return tables come from these sections."""
    gaps: list[str] = []
    for name, obj in _public_objects().items():
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        if params and "Args:" not in doc:
            gaps.append(f"{name}: no Args section")
        documented = set(re.findall(r"^\s{4}(\w+)(?: \(.*?\))?:", doc, re.MULTILINE))
        undocumented = [p for p in params if "Args:" in doc and p not in documented]
        if undocumented:
            gaps.append(f"{name}: Args misses {undocumented}")
        if "Returns:" not in doc and inspect.signature(obj).return_annotation not in (
            "None", None, inspect.Signature.empty
        ):
            gaps.append(f"{name}: no Returns section")
    assert not gaps, "docstrings incomplete for the reference page:\n" + "\n".join(gaps)


def test_blocking_twins_keep_signature_and_docstring() -> None:
    for name, obj in _public_objects().items():
        if inspect.iscoroutinefunction(obj):
            twin = getattr(dispatch, name)
            assert not inspect.iscoroutinefunction(twin)
            assert inspect.signature(twin) == inspect.signature(obj), name
            assert inspect.getdoc(twin) == inspect.getdoc(obj), name


def test_reference_pages_render_both_modules() -> None:
    assert "::: dispatch\n" in (DOCS / "reference" / "dispatch.md").read_text()
    assert "::: dispatch.aio\n" in (DOCS / "reference" / "aio.md").read_text()


def test_every_guide_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"
