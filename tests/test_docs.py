"""The reference docs are generated from docstrings: every public name must have what the
published API page shows (a summary; for functions and methods, Google-style Args and
Returns), in Markdown (mkdocstrings shows Sphinx roles literally), and the guides may only
name API that exists."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dispatch
import dispatch.aio

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Returns|Yields|Raises|Examples?|Note|"
                         r"Notes|Warning|Attributes|See Also):\s*$", re.MULTILINE)
_SPHINX_ROLE_RE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|exc|data|obj):`")


def _public_objects() -> dict[str, object]:
    return {name: getattr(dispatch.aio, name) for name in dispatch.aio.__all__}


def _public_callables() -> Iterator[tuple[str, Any]]:
    """Public functions, and public methods of public classes defined in `dispatch`."""
    for name, obj in _public_objects().items():
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj) and obj.__module__.startswith("dispatch"):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = value.__func__ if isinstance(value, staticmethod | classmethod) else value
                if inspect.isfunction(func):
                    yield f"{name}.{attr}", func


def _section(doc: str, title: str) -> str | None:
    """The body of a Google-style section (`Args:`), or None when there is none."""
    match = re.search(rf"^{title}:\s*$", doc, re.MULTILINE)
    if match is None:
        return None
    rest = doc[match.end():]
    end = _SECTION_RE.search(rest)
    return rest[: end.start()] if end else rest


def _documented_args(args: str) -> set[str]:
    return set(re.findall(r"^ {4}\*{0,2}(\w+)(?: \(.*?\))?:", args, re.MULTILINE))


def _doc_gaps(name: str, func: Any, params: list[str]) -> list[str]:
    doc = inspect.getdoc(func) or ""
    gaps: list[str] = []
    if not doc:
        return [f"{name}: no docstring"]
    args = _section(doc, "Args")
    if params and args is None:
        gaps.append(f"{name}: no Args section")
    if args is not None:
        documented = _documented_args(args)
        undocumented = [p for p in params if p not in documented]
        if undocumented:
            gaps.append(f"{name}: Args misses {undocumented}")
        stale = sorted(documented - set(params))
        if stale:
            gaps.append(f"{name}: Args documents parameters it does not have: {stale}")
    returns = inspect.signature(func).return_annotation
    if _section(doc, "Returns") is None and returns not in ("None", None, inspect.Signature.empty):
        gaps.append(f"{name}: no Returns section")
    return gaps


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
        if inspect.isfunction(obj):
            params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
            gaps += _doc_gaps(name, obj, params)
    assert not gaps, "docstrings incomplete for the reference page:\n" + "\n".join(gaps)


def test_public_methods_document_parameters_and_returns() -> None:
    """Methods of public classes (`RemoteInventory.get_host`, `Pool.connect`, ...) too."""
    gaps: list[str] = []
    for name, func in _public_callables():
        if "." not in name:
            continue
        params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
        gaps += _doc_gaps(name, func, params)
    assert not gaps, "method docstrings incomplete for the reference page:\n" + "\n".join(gaps)


def test_hand_written_constructors_document_their_parameters() -> None:
    """`merge_init_into_class` puts `__init__`'s parameters in the class docstring's Args."""
    gaps: list[str] = []
    for name, obj in _public_objects().items():
        if not inspect.isclass(obj) or dataclasses.is_dataclass(obj):
            continue
        init = vars(obj).get("__init__")
        if not inspect.isfunction(init) or issubclass(obj, BaseException):
            continue
        params = [p for p in inspect.signature(init).parameters if p != "self"]
        args = _section(inspect.getdoc(obj) or "", "Args")
        documented = _documented_args(args or "")
        missing = [p for p in params if p not in documented]
        if missing:
            gaps.append(f"{name}: class docstring's Args misses {missing}")
    assert not gaps, "\n".join(gaps)


def test_docstrings_use_markdown_not_sphinx_roles() -> None:
    """mkdocstrings renders `:func:`x`` literally; the docstrings must use plain backticks."""
    found: list[str] = []
    for module in (dispatch, dispatch.aio):
        if _SPHINX_ROLE_RE.search(inspect.getdoc(module) or ""):
            found.append(f"module {module.__name__}")
    for name, obj in _public_objects().items():
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and _SPHINX_ROLE_RE.search(
                inspect.getdoc(obj) or ""):
            found.append(name)
    for name, func in _public_callables():
        if "." in name and _SPHINX_ROLE_RE.search(inspect.getdoc(func) or ""):
            found.append(name)
    assert not found, f"docstrings with Sphinx roles: {found}"


def test_blocking_twins_keep_signature_and_docstring() -> None:
    for name, obj in _public_objects().items():
        if inspect.iscoroutinefunction(obj):
            twin = getattr(dispatch, name)
            assert not inspect.iscoroutinefunction(twin)
            assert inspect.signature(twin) == inspect.signature(obj), name
            assert inspect.getdoc(twin) == inspect.getdoc(obj), name


def test_blocking_api_has_every_aio_name_except_the_pool() -> None:
    """The pool belongs to the caller's event loop; everything else exists in both."""
    aio_only = {"Pool", "PoolStats", "current_pool"}
    assert set(dispatch.aio.__all__) - set(dispatch.__all__) == aio_only
    assert set(dispatch.__all__) - set(dispatch.aio.__all__) == {"aio"}
    for name in dispatch.__all__:
        assert hasattr(dispatch, name), name


def test_reference_pages_render_both_modules() -> None:
    for page, module in (("dispatch.md", "dispatch"), ("aio.md", "dispatch.aio")):
        text = (DOCS / "reference" / page).read_text()
        assert f"::: {module}\n" in text
        # A `members:` list would hide every public name it does not repeat.
        assert "members:" not in text, f"{page} restricts the rendered members"


def test_guides_name_only_real_api() -> None:
    """`dispatch.x` / `dx.x` in the guides must exist (renames leave stale guides behind)."""
    stale: list[str] = []
    ref = re.compile(r"\b(dispatch\.aio|dispatch|dx)\.([A-Za-z_]\w*)\b(?!\.(?:md|ya?ml)\b)")
    for page in sorted(DOCS.rglob("*.md")):
        for module, attr in ref.findall(page.read_text()):
            if module == "dispatch" and attr in ("yaml", "md", "aio"):
                continue
            target = dispatch if module == "dispatch" else dispatch.aio
            if not hasattr(target, attr):
                stale.append(f"{page.relative_to(DOCS)}: {module}.{attr}")
    assert not stale, "guides name API that does not exist:\n" + "\n".join(stale)


def test_every_guide_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml nav: {missing}"
