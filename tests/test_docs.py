"""The docs a user reads: the params reference matches the schema, the README stays a short
guide, and every relative link in the README and docs/ leads somewhere.
"""

import re
from pathlib import Path

import pytest

from pipeline import docs
from pipeline.config import SECTIONS
from tests.conftest import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
GUIDES = [README, *PAGES]  # what a user reads; bench/README.md keeps the measurement history
LINKED = [*GUIDES, ROOT / "bench" / "README.md"]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# A commit hash: 7 to 40 hex digits with at least one letter and one digit (not 0.9372).
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def test_params_doc_is_current():
    """docs/params.md is what the schema generates now (else: python -m pipeline.docs)."""
    on_disk = (ROOT / docs.PARAMS_DOC).read_text()
    assert on_disk == docs.render_params_doc(), (
        "docs/params.md is stale: run `.venv/bin/python -m pipeline.docs` and commit it"
    )


def test_params_doc_lists_every_key_with_its_default():
    text = docs.render_params_doc()
    for section, model in SECTIONS.items():
        assert f"\n## {section}\n" in text
        for key, field in model.model_fields.items():
            row = next(
                line for line in text.splitlines() if line.startswith(f"| `{section}.{key}` |")
            )
            assert f"`{docs._as_yaml(field.default)}`" in row
    # A range from the schema and a choice list from a Literal reach the page.
    assert "| `data.retries` | int | `3` | >= 0, <= 10 |" in text
    assert "`hyperband`, `random`, `bayesian`, `grid`" in text
    # '<dataset>' would vanish on GitHub as an HTML tag; '|' would split a cell.
    assert "&lt;dataset>-classifier" in text


def test_generator_writes_the_page_atomically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert docs.main([]) == 0
    assert (tmp_path / "docs" / "params.md").read_text() == docs.render_params_doc()
    assert [p.name for p in (tmp_path / "docs").iterdir()] == ["params.md"]  # no temp left
    assert docs.main(["--bogus"]) == 2


def test_readme_is_a_short_guide():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for name in ("make run", "make test", "dataset-fashion-mnist", "bench/suite.py"):
        assert name in text


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_guides_carry_no_history(page):
    """Commit hashes, dates and work-tracker talk belong in bench/README.md, not the guides."""
    text = page.read_text()
    assert COMMIT.findall(text) == []
    assert DATE.findall(text) == []
    assert re.findall(r"\bissues?\b", text, re.I) == []


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, '-' for ' '."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_anchor(match.group(1))
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_github_anchor_matches_github():
    assert github_anchor("`peers.py`: the whole pipeline, at one budget") == (
        "peerspy-the-whole-pipeline-at-one-budget"
    )
    assert github_anchor("Train, evaluate, register, predict, serve") == (
        "train-evaluate-register-predict-serve"
    )


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert broken == []
