"""README and docs/ link only to files of this repository: a clone must be self-contained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# Inline links and images `[text](target)` / `![alt](target)`, and reference definitions.
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def links(document: Path) -> list[str]:
    text = FENCE.sub("", document.read_text(encoding="utf-8"))  # code blocks are not links
    text = re.sub(r"`[^`\n]*`", "", text)
    return INLINE.findall(text) + REFERENCE.findall(text)


def broken(document: Path, target: str) -> str | None:
    """Why `target` is not a link to a file of the repository, or None if it is."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
        return None if target.lower().startswith(("http://", "https://", "mailto:")) else "scheme"
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None  # an anchor in the same document
    if path.startswith("/"):
        return "absolute path"
    resolved = (document.parent / path).resolve()
    if not resolved.is_relative_to(ROOT):
        return "outside the repository"
    if not resolved.exists():
        return "missing file"
    return None


def test_documents_exist() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert {"README.md", "docs/api.md", "docs/operations.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_stay_inside_the_repository(document: Path) -> None:
    problems = [
        f"{target}: {reason}"
        for target in links(document)
        if (reason := broken(document, target)) is not None
    ]
    assert not problems, f"{document.relative_to(ROOT)}: {problems}"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("../shared/SPEC.md", "outside the repository"),
        ("/work/shared/SPEC.md", "absolute path"),
        ("docs/nope.md", "missing file"),
        ("file:///etc/passwd", "scheme"),
        ("docs/api.md#orders", None),
        ("#architecture", None),
        ("https://example.com/x", None),
    ],
)
def test_the_checker_tells_outside_and_missing_links(target: str, reason: str | None) -> None:
    assert broken(ROOT / "README.md", target) == reason
