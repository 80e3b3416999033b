"""The documentation holds in any clone: no absolute path of one machine in the README, the
docs, the library, the configs or the scripts; every relative link and every path it names
points at something a clone has; the mini-benchmark tables have one home that
`make reference-tables` writes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SCANNED = [
    *DOCS,
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "conf").rglob("*.yaml")),
    *sorted((ROOT / "scripts").glob("*.py")),
    *sorted((ROOT / "scripts").glob("*.sh")),
]

# An absolute path that names one machine's folders: a checkout (/work/...), a home (/home/<user>,
# /root, /Users/<user>), a scratch or temporary folder (/tmp/<x>, /scratch, /mnt, /media,
# /data, /private/var, /var/folders), or /usr, /opt and /srv outside the allow-list below. It
# starts a word (line start, space, quote, backtick, bracket, =, :, comma), so relative paths
# (src/piggyback_lab/data/...) and URLs (https://host/home/...) are not taken for one.
MACHINE_PATH = re.compile(
    r"(?:^|(?<=[\s\"'`(\[{=:,]))"
    r"(/(?:work|home|root|Users|tmp|scratch|mnt|media|data|private|opt|srv|usr|var)"
    r"(?:/[\w.@+~-]*)*)"
)
# System paths that a package installs at the same place on every machine.
ALLOWED = (
    "/usr/share/datasets/",  # Debian's dataset-* packages (dataset-fashion-mnist)
    "/usr/bin/env",  # shebangs
)


def machine_paths(path: Path) -> list[str]:
    """``file:line: path`` for each machine path in ``path``."""
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    hits = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for match in MACHINE_PATH.finditer(line):
            found = match.group(1)
            if found in ("/usr", "/tmp", "/var", "/data") or found.startswith(ALLOWED):
                continue  # a bare system folder named in prose, or an allowed path
            hits.append(f"{label}:{number}: {found}")
    return hits


def test_the_machine_path_check_finds_each_kind(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text(
        "run from /work/main/data\nout=/tmp/sweep_outputs\n`/home/alice/x`\n(/root/.cache)\n"
        "/Users/bob/data\nok: src/piggyback_lab/data/mini.py, https://example.org/home/x,\n"
        "ok: /usr/share/datasets/fashion-mnist, #!/usr/bin/env bash, ~/Downloads, /path/to/x\n"
    )
    found = [hit.split(": ", 1)[1] for hit in machine_paths(sample)]
    assert found == [
        "/work/main/data",
        "/tmp/sweep_outputs",
        "/home/alice/x",
        "/root/.cache",
        "/Users/bob/data",
    ]


def test_no_absolute_path_of_a_machine() -> None:
    hits = [hit for path in SCANNED for hit in machine_paths(path)]
    assert not hits, "absolute paths of one machine (write them relative to the clone):\n" + (
        "\n".join(hits)
    )


def clone_files() -> set[str]:
    """What a clone of this tree holds: tracked files and files git would add (not ignored),
    with every folder above them."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        files = {line for line in out.splitlines() if (ROOT / line).exists()}
    except (OSError, subprocess.CalledProcessError):  # no git: the tree as it is
        files = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()}
    folders = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parts) - 1)}
    return files | folders


CLONE = clone_files()
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def in_clone(doc: Path, target: str) -> bool:
    resolved = (doc.parent / target).resolve()
    try:
        relative = resolved.relative_to(ROOT)
    except ValueError:  # outside the clone
        return False
    return str(relative) == "." or str(relative) in CLONE


def test_every_relative_link_points_into_the_clone() -> None:
    broken = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL, or an anchor on the same page
                path = target.split("#")[0].split("?")[0]
                if not in_clone(doc, path):
                    broken.append(f"{doc.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "links to what a clone does not have:\n" + "\n".join(broken)


# A path the docs name in the text, relative to the clone's root (`src/piggyback_lab/...`,
# `conf/...`) or to the page (`../...`); placeholders (<name>, *, ...) are left out. (The
# official code's files that reproduction.md cites, src/main.py and the like, are another
# repository's.)
NAMED_PATH = re.compile(
    r"(?:^|(?<=[\s\"'`(\[,]))"
    r"((?:\.\./)+[\w.-][\w./-]*|(?:src/piggyback_lab|conf|scripts|tests|docs)/[\w./-]*)"
)


def test_every_path_the_docs_name_exists() -> None:
    missing = []
    for doc in DOCS:
        text = re.sub(r"\]\([^)]*\)", "]", doc.read_text())  # links: the test above
        for number, line in enumerate(text.splitlines(), 1):
            for match in NAMED_PATH.finditer(line):
                name = match.group(1).rstrip(".,:;")
                after = line[match.end() : match.end() + 1]
                if after in ("<", "*") or name.endswith(("/.", "..")):
                    continue  # a placeholder follows: conf/backbone/<name>.yaml, src/*.py
                relative_to_page = name.startswith("../")
                if not (in_clone(doc, name) if relative_to_page else name.rstrip("/") in CLONE):
                    missing.append(f"{doc.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "paths named in the docs that a clone does not have:\n" + (
        "\n".join(missing)
    )


MARKERS = ("<!-- mini-table:start -->", "<!-- mini-table:end -->")


def test_the_mini_tables_have_one_home_that_make_reference_tables_writes() -> None:
    homes = [doc for doc in DOCS if all(m in doc.read_text() for m in MARKERS)]
    assert [str(h.relative_to(ROOT)) for h in homes] == ["docs/results.md"]
    recipe = (ROOT / "Makefile").read_text().split("\nreference-tables:", 1)[1].split("\n\n")[0]
    written = re.search(r"--readme\s+(\S+)", recipe)
    assert written and written.group(1) == "docs/results.md", (
        "the Makefile's reference-tables target must pass --readme docs/results.md, the page "
        "that holds the mini-table markers; it passes " + (written.group(1) if written else "none")
    )
