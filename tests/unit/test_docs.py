"""The shipped text (README, docs, benchmarks, code, tests, packaging) stands on its own: it states
targets and reasons in full and never points at a numbered issue that a reader does not have."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ISSUE_NUMBER = re.compile(r"\bissues? #?[0-9]", re.IGNORECASE)
SHIPPED = ("README.md", "docs", "bench", "s3filesfs", "tests", "packaging", "scripts", "pyproject.toml")


def shipped_files():
    for name in SHIPPED:
        path = ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
                        and "results" not in p.relative_to(ROOT).parts)


def test_no_text_names_an_issue_number():
    checked, found = 0, []
    for path in shipped_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        checked += 1
        found += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if ISSUE_NUMBER.search(line)]
    assert checked > 50  # the walk really reached the tree
    assert found == []


def test_the_pattern_catches_what_it_is_for():
    for number in ("2's target", "#12", "3 and 4"):  # (joined here, so this file passes its own test)
        for word in ("issue ", "Issue ", "issues "):
            assert ISSUE_NUMBER.search("checks " + word + number), word + number
    for line in ("make s3fs issue a HEAD per file", "no issue here", "tissue 5"):
        assert not ISSUE_NUMBER.search(line), line
