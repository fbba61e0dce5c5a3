"""The shell commands of README.md and docs/*.md, read from their fenced blocks, so the tests
(tests/unit/test_docs_links.py, tests/cluster/test_docs_commands.py) can run or check each.

The convention, which tests/unit/test_docs_links.py enforces on every page:

- A ```` ```console ```` block is a terminal session: a line starting with ``$ `` is a command,
  the lines after it (up to the next ``$ ``) are what it prints, stdout and stderr together.
  ``$ echo $?`` followed by a number is the exit code of the command before it (a command
  without one must exit 0 or 1). A printed line
  starting with ``^C`` means Ctrl-C was pressed once the lines above it had been printed.
- A ```` ```sh ```` block holds commands only, one a line; ``#`` starts a comment.
- No other block holds commands: ```` ```text ```` (or ``json``, ``yaml``) blocks show output
  or files, and a ``$ `` line in them is an error (it would be a command no test runs).
- ``<!-- docs-test: SCENARIO -->`` on the line before a block names the cluster state its
  ``vm-storage-reconciler`` commands run against (``SCENARIOS``); a block with such commands
  and no marker runs against no cluster (``none``). The blocks of one page and scenario run in
  the order they appear, each on a cluster that holds its scenario and nothing of an earlier
  block.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROG = "vm-storage-reconciler"

SCENARIOS: dict[str, str] = {
    "none": "no cluster: commands that read only files",
    "seed": "the seed (testenv.seed): mig-vm/vm-fedora running, mig-vm/vm-archive stopped",
    "seed-moved": "the seed after `apply plans/seed` moved both VMs to ceph-rbd",
    "seed-blocked": "the seed, vm-fedora's disk shareable and the VM tracked by Argo CD",
    "cancel": "seed-moved, vm-fedora's next migration held at Running (the node side's stall)",
    "kept": "seed-moved, then moved back by `apply back/`, a pod `backup` mounting archive-disk",
}

MARKER = re.compile(r"^<!--\s*docs-test:\s*([\w-]+)\s*-->$")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")


def pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass
class Block:
    """One fenced block: its page, the line of its opening fence, language, lines, scenario."""

    page: Path
    line: int
    lang: str
    lines: list[str]
    scenario: str | None

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


@dataclass
class Command:
    """One command of a block, with what the docs say it prints and returns."""

    block: Block
    line: int  # the command's line in its page
    text: str  # as written, without the prompt and a trailing comment
    output: list[str] = field(default_factory=list)  # the lines shown after it
    exit_code: int | None = None  # from a following `$ echo $?`

    @property
    def where(self) -> str:
        return f"{rel(self.block.page)}:{self.line}"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def is_cli(self) -> bool:
        argv = self.argv
        return bool(argv) and argv[0] == PROG

    @property
    def interrupted(self) -> bool:
        return any(line.startswith("^C") for line in self.output)


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page (nested fences are not used in these docs)."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        ticks, lang = opening.group(1), opening.group(2)
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith(ticks):
            body.append(lines[i])
            i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before.strip())
        found.append(Block(page, start + 1, lang, body, marker.group(1) if marker else None))
        i += 1
    return found


def _split_chain(text: str) -> list[str]:
    """`a && b` as two commands (the docs chain only with `&&`)."""
    return [part.strip() for part in text.split(" && ") if part.strip()]


def commands(block: Block) -> list[Command]:
    """The commands of a ``console`` or ``sh`` block (none for any other language)."""
    found: list[Command] = []
    if block.lang == "sh":
        for offset, raw in enumerate(block.lines):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            for part in _split_chain(_strip_comment(text)):
                found.append(Command(block, block.line + 1 + offset, part))
        return found
    if block.lang != "console":
        return found
    last: Command | None = None
    echo = False
    for offset, raw in enumerate(block.lines):
        if raw.startswith("$ "):
            text = _strip_comment(raw[2:].strip())
            echo = text == "echo $?"
            if echo:
                continue
            last = Command(block, block.line + 1 + offset, text)
            found.append(last)
        elif echo and last is not None and raw.strip().isdigit():
            last.exit_code = int(raw.strip())
            echo = False
        elif last is not None:
            last.output.append(raw)
    return found


def _strip_comment(text: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def all_commands() -> list[Command]:
    return [c for page in pages() for b in blocks(page) for c in commands(b)]


# ---- comparing what the docs show with what the tool prints ------------------------------

_NORMALIZE: list[tuple[re.Pattern[str], str]] = [
    # timestamps: 2026-12-06T11:08:14+00:00, 2026-12-01T11:43:47.227Z
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{40}\b"), "<commit>"),  # a commit
    (re.compile(r"\b[0-9a-f]{12}\b"), "<id>"),  # a move or run id
    (re.compile(r"(kubevirt-workload-update-)[a-z0-9]{5}\b"), r"\1<x>"),  # KubeVirt's VMIM
    (re.compile(r"(virt-launcher-[a-z0-9-]+-)[a-z0-9]{5}\b"), r"\1<x>"),  # a VMI's pod
    (re.compile(r"\bnode-\d+\b"), "node-<n>"),  # the node a VMI runs on
    (re.compile(r"\b\d+(?:\.\d+)?%"), "<pct>"),
    (re.compile(r"\b\d+(?:\.\d+)?(?:ms|s|m|h|d)\b"), "<age>"),  # durations and ages
    (re.compile(r"\s+"), " "),  # column widths follow the values
]


def normalize(line: str) -> str:
    """A printed line without what changes from run to run (ids, times, ages, widths)."""
    for pattern, replacement in _NORMALIZE:
        line = pattern.sub(replacement, line)
    return line.strip()
