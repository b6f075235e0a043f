"""requirements.lock, which `make install` installs by default, agrees with setup.cfg:
every requirement of the package and of its test extra is pinned, at a version the
requirement allows, with hashes."""

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent


def pinned() -> dict[str, tuple[Version, int]]:
    """{name: (version, number of hashes)} of the lock."""
    text = (REPO / "requirements.lock").read_text()
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (Version(m.group(2)),
                                                  block.count("--hash=sha256:"))
    return out


def required() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["test"].splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines
            if line.split("#")[0].strip()]


def test_every_requirement_is_pinned_at_an_allowed_version_with_hashes():
    lock = pinned()
    assert len(lock) > 50  # the whole tree, not only the direct requirements
    for req in required():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is in setup.cfg but not in requirements.lock: run make lock"
        version, hashes = lock[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, which setup.cfg's {req} excludes")
        assert hashes >= 1, f"{name} has no hash in requirements.lock"
    assert all(h >= 1 for _, h in lock.values())


def test_make_install_uses_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile and "LOCK ?= requirements.lock" in makefile
