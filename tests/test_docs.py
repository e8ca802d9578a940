"""The documentation can be trusted mechanically: README.md and docs/*.md link only to files of this repository
that exist, every ``#anchor`` names a heading of its target page, and every ``unsolo ...`` command line quoted in a
fenced code block parses with the real command-line parser (parsed, never run).

Rules checked here:

- Links: every Markdown link or image (``[text](target)``, ``![alt](target)``) outside code is relative and
  resolves, from the page's folder, to an existing file inside the repository. No link leaves the repository:
  no ``http(s)://``, ``mailto:`` or absolute path, no relative path that climbs out of the checkout (the parity
  case in ``../shared`` is named in code spans, not linked). A paper or an upstream project is cited by name.
- Anchors: ``page.md#anchor`` and ``#anchor`` must equal the slug of a heading of the target page, made as
  GitHub makes it: lowercase, every character that is not a letter, digit, ``_``, ``-`` or space removed, spaces
  turned into ``-``; a repeated heading gets ``-1``, ``-2``, ... in order.
- Paths: a repository path quoted in a code span of the prose (`` `unsolo/...` ``, `` `bench/...` ``,
  `` `tests/...` ``, `` `docs/...` ``, without wildcards or placeholders) names an existing file or folder, so a
  moved module shows up here.
- Commands: in every fenced code block except Python ones, each logical line (``\\`` continuations joined, ``#``
  comments dropped, split at ``&&``, ``||``, ``;``, ``|``) whose command is ``unsolo`` (after ``VAR=value``
  prefixes), or ``torchrun ... -m unsolo`` / ``python -m unsolo``, is handed to ``unsolo.cli.build_parser()``'s
  ``parse_args``. Placeholders (``IMAGES``, ``W``) are fine as long as the line parses.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_page(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str, list[tuple[int, str]]]]]:
    """The page's prose lines (line number, text) and its fenced blocks (start line, language, lines)."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[int, str, list[tuple[int, str]]]] = []
    fence = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                blocks.append((n, m.group(2).lower(), []))
            else:
                prose.append((n, line))
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            fence = None
        else:
            blocks[-1][2].append((n, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text (Markdown emphasis, code and link syntax stripped first)."""
    text = LINK.sub(lambda m: m.group(1), heading)
    text = INLINE_CODE.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in split_page(path)[0]:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for n, line in split_page(path)[0]:
        # Code spans are not links, but a link's text may be one: blank the span's content, keep its place.
        text = INLINE_CODE.sub(lambda m: "x" * len(m.group(0)), line)
        out += [(n, m.group(2)) for m in LINK.finditer(text)]
        m = REF_DEF.match(text)
        if m:
            out.append((n, m.group(1)))
    return out


def test_pages_found():
    assert (ROOT / "README.md").is_file()
    assert (ROOT / "docs" / "index.md").is_file(), "docs/index.md, the map of the docs, is missing"
    assert len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_and_anchors_resolve(page):
    problems = []
    for n, target in links(page):
        where = f"{_rel(page)}:{n}: {target}"
        if not target:
            problems.append(f"{where}: empty link")
            continue
        if SCHEME.match(target) or target.startswith(("/", "//")):
            problems.append(f"{where}: links outside the repository (cite by name, or link a file of it)")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{where}: leaves the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading of {_rel(dest)} has the anchor #{anchor}")
    assert not problems, "\n".join(problems)


REPO_PATH = re.compile(r"`((?:unsolo|bench|tests|docs)/[A-Za-z0-9_./-]*)`")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_quoted_repository_paths_exist(page):
    missing = [f"{_rel(page)}:{n}: {p}" for n, line in split_page(page)[0] for p in REPO_PATH.findall(line)
               if not (ROOT / p).exists()]
    assert not missing, "paths named in the docs that the repository does not have:\n" + "\n".join(missing)


def test_slug_rules():
    assert slug("How fast SOLO learns on a CPU") == "how-fast-solo-learns-on-a-cpu"
    assert slug("`unsolo demo` — the whole method") == "unsolo-demo--the-whole-method"
    assert slug("Frozen backbone stages (`model.freeze_at`)") == "frozen-backbone-stages-modelfreeze_at"
    assert slug("GPU (NVIDIA H200)") == "gpu-nvidia-h200"


# --- commands ---------------------------------------------------------------------------------------------------


def _strip_comment(line: str) -> str:
    """Drop a shell comment: a ``#`` that starts a word outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    start, buf = None, ""
    for n, line in lines:
        line = _strip_comment(line).rstrip()
        if start is None:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf.strip()))
        start, buf = None, ""
    if buf.strip():
        out.append((start, buf.strip()))
    return out


def _unsolo_args(words: list[str]) -> list[str] | None:
    """The arguments after ``unsolo`` (or ``-m unsolo``) of one simple command, else None."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if words and words[0] == "$":
        words = words[1:]
    if not words:
        return None
    if words[0] == "unsolo":
        return words[1:]
    if Path(words[0]).name in ("torchrun", "python", "python3"):
        for i in range(len(words) - 1):
            if words[i] == "-m" and words[i + 1] == "unsolo":
                return words[i + 2:]
    return None


def quoted_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for _, lang, lines in split_page(page)[1]:
            if lang in ("python", "py", "pycon", "yaml", "json", "text"):
                continue
            for n, line in _logical_lines(lines):
                lex = shlex.shlex(line, posix=True, punctuation_chars=True)
                lex.whitespace_split = True
                lex.commenters = ""
                words: list[str] = []
                for tok in [*lex, ";"]:
                    if tok and set(tok) <= set("();<>|&"):
                        args = _unsolo_args(words)
                        if args is not None:
                            found.append((f"{_rel(page)}:{n}", args))
                        words = []
                    else:
                        words.append(tok)
    return found


COMMANDS = quoted_commands()


def test_commands_found():
    assert len(COMMANDS) > 30, "the docs quote dozens of unsolo commands; the scanner found few"
    assert any(a[:1] == ["demo"] for _, a in COMMANDS)
    assert any(a[:1] == ["run"] for _, a in COMMANDS)


def test_quoted_commands_parse():
    from unsolo.cli import build_parser

    parser = build_parser()
    problems = []
    for where, args in COMMANDS:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                ns = parser.parse_args(args)
        except SystemExit as e:
            if e.code not in (0, None):  # --help and --version exit 0
                msg = err.getvalue().strip().splitlines()
                problems.append(f"{where}: unsolo {shlex.join(args)}\n    {msg[-1] if msg else e}")
            continue
        if not getattr(ns, "command", None):
            problems.append(f"{where}: unsolo {shlex.join(args)}\n    no command")
    assert not problems, "quoted commands the CLI does not accept:\n" + "\n".join(problems)
