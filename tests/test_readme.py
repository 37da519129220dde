"""README.md and docs/*.md: length, links, config paths, commands, wording. No model loading."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CONFIG_PATH = re.compile(r"configs/[\w./-]*?\.yaml")
FENCE = re.compile(r"```.*?```", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 320, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_readme_has_results_heading():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert "## Results on the embedded model" in lines


def test_docs_exist():
    assert (ROOT / "docs" / "README.md").is_file()
    assert len(DOCS) > 1


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, ... and anchors within the page
        path, _, anchor = target.partition("#")
        dest = page.parent / path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{_rel(page)}: links to missing files or headings: {broken}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_internal_references(page):
    text = page.read_text(encoding="utf-8")
    for word in ("SPEC §", "DATA.md", "../shared"):
        assert word not in text, f"{_rel(page)} mentions {word!r}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_config_paths_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = sorted({p for p in CONFIG_PATH.findall(text) if not (ROOT / p).is_file()})
    assert not missing, f"{_rel(page)} names config files that do not exist: {missing}"


def _readme_commands() -> set[str]:
    """The subcommand of every `repbend <cmd>` line inside README.md's code blocks."""
    commands = set()
    for block in FENCE.findall(README.read_text(encoding="utf-8")):
        for line in block.splitlines():
            m = re.match(r"\s*repbend\s+([a-z][a-z_-]*)", line)
            if m:
                commands.add(m.group(1))
    return commands


def test_readme_commands_exist():
    commands = _readme_commands()
    assert {"run", "train"} <= commands
    exe = Path(sys.executable).with_name("repbend")
    cmd = [str(exe)] if exe.is_file() else ([shutil.which("repbend")] if shutil.which("repbend")
                                             else [sys.executable, "-m", "repbend"])
    for name in sorted(commands):
        proc = subprocess.run([*cmd, name, "--help"], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert proc.returncode == 0, f"`repbend {name} --help` failed:\n{proc.stderr}"
