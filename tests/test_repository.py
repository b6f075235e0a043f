"""The repository tells the truth about itself: every ``docs/`` page it cites exists, no
citation points outside it, and the package metadata names only files and methods that
exist."""

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".ipynb", ".cfg"}


def _text_files():
    for folder in ("src", "tests", "experiments", "notebooks", "docs"):
        yield from (p for p in (ROOT / folder).rglob("*") if p.suffix in TEXT_SUFFIXES)
    yield from (p for p in ROOT.glob("*") if p.suffix in TEXT_SUFFIXES)


def test_every_cited_docs_page_exists():
    cited = {}
    for path in _text_files():
        for page in re.findall(r"\bdocs/[\w./-]+\.md\b", path.read_text(errors="replace")):
            cited.setdefault(page, []).append(path.relative_to(ROOT))
    missing = {page: files for page, files in cited.items() if not (ROOT / page).is_file()}
    assert not missing, f"cited but not in the repository: {missing}"
    assert "docs/methods.md" in cited and "docs/protocol.md" in cited


def test_no_citation_points_outside_the_repository():
    outside = [str(p.relative_to(ROOT)) for p in _text_files()
               if p != Path(__file__) and re.search(r"reference/(methods|anchors|style)\.md",
                                                    p.read_text(errors="replace"))]
    assert not outside, f"these cite notes users cannot open: {outside}"


def test_package_metadata_is_true():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert (ROOT / cfg["metadata"]["license_files"].strip()).is_file()
    for pattern in cfg["options.package_data"]["tbps"].split(","):
        assert list((ROOT / "src" / "tbps").glob(pattern.strip())), pattern
    # Every method the description advertises has an experiment a user can run.
    description = cfg["metadata"]["description"]
    for method in ("IRRA", "CRUE", "ACSA", "UCFA"):
        if method in description:
            assert list((ROOT / "experiments").glob(f"{method.lower()}_*.yaml")), method
