"""The documentation cannot go stale: the generated config reference, and every relative link."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); not inside inline code
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _config_doc():
    spec = importlib.util.spec_from_file_location("config_doc", ROOT / "scripts" / "config_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_what_the_script_generates():
    page = ROOT / "docs" / "configuration.md"
    assert page.exists(), "docs/configuration.md is missing: run python scripts/config_doc.py"
    assert page.read_text() == _config_doc().generate(), (
        "docs/configuration.md differs from the config's field help: rerun python scripts/config_doc.py")


def test_the_methods_page_departures_are_the_doctor_notes():
    """docs/methods.md's paper/reference-scripts table is generated from srft.doctor.PRESET_NOTES."""
    module = _config_doc()
    page = (ROOT / "docs" / "methods.md").read_text()
    assert page == module.methods_page(page), (
        "docs/methods.md's table differs from srft.doctor.PRESET_NOTES: rerun python scripts/config_doc.py")
    from srft.doctor import PRESET_NOTES

    rows = [row.strip("|").split(" | ") for row in module.departures_table().splitlines()[2:]]
    for method, notes in PRESET_NOTES.items():
        for key, *_ in notes:  # every note has its row, which names its preset
            assert any(method in cells[0].strip().split(", ") and key.strip("[]") in cells[1] for cells in rows), \
                (method, key)


def _without_code(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_point_to_files_that_exist(page):
    missing = []
    for target in LINK.findall(_without_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https:, mailto:, an anchor in the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files: {missing}"


def test_the_readme_keeps_the_test_command():
    assert "python -m pytest -q" in (ROOT / "README.md").read_text()


def test_the_example_data_files_are_what_their_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_word_problems", ROOT / "examples" / "make_word_problems.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for written in module.write(tmp_path):
        shipped = ROOT / "examples" / "data" / written.name
        assert shipped.exists(), f"{shipped} is missing: run python examples/make_word_problems.py"
        assert shipped.read_text() == written.read_text(), f"{shipped} is stale: run python examples/make_word_problems.py"
    from srft.data.loading import load_rows

    rows = load_rows(str(ROOT / "examples" / "data" / "word-problems-train.jsonl"))
    assert len(rows) == 256 and all(r["demonstration"].endswith(f"\\boxed{{{r['answer']}}}.") for r in rows)
