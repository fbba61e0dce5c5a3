"""README.md and docs/*.md without a cluster: every relative link resolves (file and anchor),
every command block follows the convention (tests/support/docs_blocks.py), and every command
is one this repository has: `vm-storage-reconciler` commands parse with the CLI's own parser
and show only exit codes their command documents; `make` targets exist (`make -n`); `python
-m testenv` and the benchmark scripts accept the options shown; paths named exist. Commands
that cannot be checked are in ALLOWED, with the reason. The commands that need a cluster run
in tests/cluster/test_docs_commands.py."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from reconciler.cli.common import COMMAND_EXIT_CODES
from reconciler.cli.main import build_parser
from tests.support.docs_blocks import (
    PROG,
    ROOT,
    SCENARIOS,
    Command,
    all_commands,
    blocks,
    commands,
    pages,
    rel,
)

# Commands no test can run here, each with why; keyed by the command as written.
ALLOWED: dict[str, str] = {
    "buildah $(deploy/image/build.sh --print-storage) push localhost/vm-storage-reconciler:0.1.0 "
    "docker://registry.example.com/vm-storage-reconciler:0.1.0": "pushes to a registry; the "
    "build itself is tests/deploy/test_image.py's",
    "$EDITOR deploy/overlays/mine/{kustomization.yaml,git-sync.env,allowed-namespaces.env}": (
        "a person edits; test_the_files_an_overlay_is_edited_in_exist checks the files"
    ),
}

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lowercase, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").replace("*", "")
    text = "".join(c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = HEADING.match(line)
        if fenced or not match:
            continue
        base = anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    found = []
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            found += [(number, m.group(1)) for m in LINK.finditer(re.sub(r"`[^`]*`", "", line))]
    return found


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_relative_link_resolves_to_a_file_and_anchor(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{rel(page)}:{number}: {target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{rel(page)}:{number}: {target}: no heading #{fragment}")
    assert not broken, "\n".join(broken)


def test_the_docs_are_found() -> None:
    names = {rel(p) for p in pages()}
    for wanted in ("README.md", "docs/plans.md", "docs/apply.md", "docs/exit-codes.md"):
        assert wanted in names


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_command_blocks_follow_the_convention(page: Path) -> None:
    problems = []
    for block in blocks(page):
        if block.lang in ("bash", "shell", "zsh"):
            problems.append(f"{block.where}: a command block is ```console or ```sh")
        if block.lang not in ("console", "sh") and any(
            line.startswith("$ ") for line in block.lines
        ):
            problems.append(f"{block.where}: a `$ ` line outside a ```console block")
        if block.lang == "console" and block.lines and not block.lines[0].startswith("$ "):
            problems.append(f"{block.where}: a ```console block starts with a `$ ` command")
        if block.scenario is not None and block.scenario not in SCENARIOS:
            problems.append(f"{block.where}: unknown scenario {block.scenario!r}")
        cli = [c for c in commands(block) if c.is_cli]
        if block.scenario is not None and not cli:
            problems.append(f"{block.where}: a scenario marker on a block without {PROG}")
    assert not problems, "\n".join(problems)


def _cli(command: Command) -> str:
    """Why `command` does not parse with the CLI's parser, or ''."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(command.argv[1:])
        except SystemExit as stop:
            if stop.code:
                return err.getvalue().strip() or f"exit {stop.code}"
            return ""
    if command.exit_code is not None:
        codes = {int(code) for code, _ in COMMAND_EXIT_CODES[args.command]}
        if command.exit_code not in codes:
            return f"exit {command.exit_code} is not one `{args.command}` documents"
    return ""


def _make(argv: list[str]) -> str:
    done = subprocess.run(
        ["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return "" if done.returncode == 0 else done.stderr.strip()


def _options_in_help(argv: list[str], help_argv: list[str]) -> str:
    """Every `--option` of the command appears in the help of what it runs."""
    done = subprocess.run(
        [sys.executable, *help_argv, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return done.stderr.strip()
    missing = [
        a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in done.stdout
    ]
    return f"not in --help: {missing}" if missing else ""


def _paths(argv: list[str]) -> str:
    missing = [
        a
        for a in argv
        if "/" in a
        and not a.startswith(("-", "$", "docker:", "http"))
        and "{" not in a
        and "mine" not in a.split("/")
        and not (ROOT / a).exists()
    ]
    return f"no such path: {missing}" if missing else ""


def problem(command: Command) -> str:
    """Why a documented command is stale, or ''."""
    argv = command.argv
    if command.text in ALLOWED:
        return ""
    if command.is_cli:
        return _cli(command)
    head = argv[0]
    if head == "make":
        return _make(argv)
    if argv[:3] in (["python", "-m", "testenv"], [".venv/bin/python", "-m", "testenv"]):
        sub = [a for a in argv[3:4] if not a.startswith("-")]
        return _options_in_help(argv, ["-m", "testenv", *sub])
    if head in (".venv/bin/python", "python3", "python") and argv[1:2] and argv[1].endswith(".py"):
        if argv[1] == "deploy/generate.py":  # run on a copy: tests/cluster/test_docs_commands.py
            return _paths(argv)
        return _paths(argv) or _options_in_help(argv, [argv[1]])
    if head.startswith(".venv/bin/"):  # a tool `make` installs: a dependency of the project
        tool = head.removeprefix(".venv/bin/")
        listed = re.search(rf'"{re.escape(tool)}\b', (ROOT / "pyproject.toml").read_text())
        return _paths(argv[1:]) or ("" if listed else f"{tool} is no dependency in pyproject.toml")
    if head in ("cp", "kubectl"):  # deploy/ commands: run in tests/cluster/test_docs_commands.py
        return _paths(argv)
    return "no check for this command: run it in a test, or add it to ALLOWED with a reason"


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: f"{c.where} {c.text[:40]}")
def test_every_documented_command_is_current(command: Command) -> None:
    why = problem(command)
    assert not why, f"{command.where}: $ {command.text}\n{why}"


def test_the_allow_list_holds_only_commands_the_docs_show() -> None:
    shown = {c.text for c in all_commands()}
    assert not set(ALLOWED) - shown, "stale ALLOWED entries"


def test_a_stale_command_fails() -> None:
    """The checks above can fail: a misspelled option, an exit code `plan` never returns, a
    make target that does not exist."""
    block_lines = [
        "$ vm-storage-reconciler plan plans/seed --kubeconfg x",
        "$ vm-storage-reconciler validate plans/seed",
        "$ echo $?",
        "4",
        "$ make demoo",
        "$ python -m testenv demo --copy-speed 0",
        "$ frobnicate",
    ]
    from tests.support.docs_blocks import Block

    block = Block(ROOT / "README.md", 1, "console", block_lines, None)
    found = commands(block)
    assert [bool(problem(c)) for c in found] == [True, True, True, True, True]


def test_the_files_an_overlay_is_edited_in_exist() -> None:
    """The `$EDITOR` line of the install steps names files of the overlay it copies."""
    (editor,) = [c for c in all_commands() if c.text.startswith("$EDITOR ")]
    (copy,) = [c for c in all_commands() if c.argv[:2] == ["cp", "-r"]]
    names = re.search(r"\{(.*)\}", editor.text)
    assert names, editor.where
    for name in names.group(1).split(","):
        assert (ROOT / copy.argv[2] / name).is_file(), f"{editor.where}: {copy.argv[2]}/{name}"
