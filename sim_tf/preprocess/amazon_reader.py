"""Reading Amazon Books 2014's raw files (optionally gzipped) in bounded memory, in parallel byte ranges.

* Reviews: JSON lines with ``reviewerID``, ``asin`` and ``unixReviewTime``.
* Metadata: one Python dict literal per line; an item's category is the last element of its first
  category path.

Lines that do not fit are counted and skipped (their first line numbers reported), or with ``strict``
stop the run with the line named.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import io
import os
import re
from array import array

import numpy as np

from sim_tf.errors import UserError
from sim_tf.faults import fork_pool
from sim_tf.progress import Progress

# The 2014 files write every review as {"reviewerID": "...", "asin": "...", ..., "unixReviewTime": N, ...}:
# one anchored match covers them; anything else goes through the field-by-field path and its diagnostics.
_REVIEW_FAST = re.compile(rb'\{"reviewerID": "([^"\\]*)", "asin": "([^"\\]*)", .*"unixReviewTime": (\d+)[,}]')
_REVIEWER = re.compile(rb'"reviewerID"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ASIN = re.compile(rb'"asin"\s*:\s*"((?:[^"\\]|\\.)*)"')
_TIME = re.compile(rb'"unixReviewTime"\s*:\s*(-?[0-9.eE+]+|"[^"]*"|null)')
_META_ASIN = re.compile(r"""['"]asin['"]\s*:\s*(['"])(.*?)\1""")
_META_CATEGORIES = re.compile(r"""['"]categories['"]\s*:\s*\[\s*(\[.*?\])""")


MAX_TIMESTAMP = 2**62  # seconds; anything larger is not a time and would overflow the int64 column


@dataclasses.dataclass
class InputReport:
    """What was read and what was skipped, with the first few line numbers of each problem."""

    lines: int = 0
    used: int = 0
    problems: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def problem(self, kind: str, line: int, strict: bool, path: str):
        if strict:
            raise UserError(f"{path}, line {line}: {kind} (--strict stops at the first bad line)")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        examples = self.problems.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(line)

    def summary(self, path: str) -> str:
        text = f"{path}: {self.lines:,} lines, {self.used:,} used"
        for kind, count in sorted(self.counts.items()):
            text += f"; {count:,} skipped ({kind}, e.g. line(s) {', '.join(map(str, self.problems[kind]))})"
        return text


def _open(path: str):
    """Opens a raw file (optionally .gz) for binary line reading; returns (stream, raw file for position)."""
    if not os.path.exists(path):
        raise UserError(f"input file {path!r} does not exist")
    raw = open(path, "rb")
    if path.endswith(".gz"):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw)), raw
    return raw, raw


def _parse_review_lines(lines, first_line: int, strict: bool, path: str, progress=None):
    """Parses review lines; returns local id arrays, local key tables and an InputReport."""
    users: dict[bytes, int] = {}
    items: dict[bytes, int] = {}
    user_col, item_col, time_col = array("i"), array("i"), array("q")
    report = InputReport()
    number = first_line - 1
    for number, line in enumerate(lines, start=first_line):
        if progress is not None and number % 65536 == 0:
            progress(number)
        stripped = line.strip()
        if not stripped:
            continue
        if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            report.problem("not a JSON object", number, strict, path)
            continue
        fast = _REVIEW_FAST.match(stripped)
        if fast is not None and len(fast.group(3)) < 19:  # longer digit strings may overflow int64: slow path
            user_col.append(users.setdefault(fast.group(1), len(users)))
            item_col.append(items.setdefault(fast.group(2), len(items)))
            time_col.append(int(fast.group(3)))
            report.used += 1
            continue
        reviewer = _REVIEWER.search(stripped)
        asin = _ASIN.search(stripped)
        when = _TIME.search(stripped)
        if reviewer is None or asin is None or when is None:
            missing = [n for n, m in (("reviewerID", reviewer), ("asin", asin), ("unixReviewTime", when)) if m is None]
            report.problem(f"missing field {'/'.join(missing)}", number, strict, path)
            continue
        try:
            timestamp = int(when.group(1))
        except ValueError:
            report.problem("unparsable unixReviewTime", number, strict, path)
            continue
        if not -MAX_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
            report.problem("unixReviewTime out of range", number, strict, path)
            continue
        user_col.append(users.setdefault(reviewer.group(1), len(users)))
        item_col.append(items.setdefault(asin.group(1), len(items)))
        time_col.append(timestamp)
        report.used += 1
    report.lines = number - first_line + 1
    return (np.frombuffer(user_col, dtype=np.int32), np.frombuffer(item_col, dtype=np.int32),
            np.frombuffer(time_col, dtype=np.int64), list(users), list(items), report)


def _range_lines(path: str, begin: int, end: int) -> list[bytes]:
    """The complete lines of an uncompressed file that start inside [begin, end)."""
    with open(path, "rb") as f:
        if begin:
            f.seek(begin - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line that straddles `begin` belongs to the previous range
        lines = []
        while f.tell() < end:
            line = f.readline()
            if not line:
                break
            lines.append(line)
    return lines


def _ranges(path: str, pieces: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, os.path.getsize(path), pieces + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _read_range(task):
    path, begin, end = task
    return _parse_review_lines(_range_lines(path, begin, end), 1, False, path)


def _merge_reports(reports: list["InputReport"]) -> "InputReport":
    """Combines per-range reports; line numbers become file line numbers."""
    merged = InputReport()
    offset = 0
    for local in reports:
        merged.used += local.used
        for kind, count in local.counts.items():
            merged.counts[kind] = merged.counts.get(kind, 0) + count
            examples = merged.problems.setdefault(kind, [])
            examples.extend(n + offset for n in local.problems[kind][: 5 - len(examples)])
        offset += local.lines
    merged.lines = offset
    return merged


PARALLEL_MIN_BYTES = 64 * 2**20  # smaller files are read by one process


def read_reviews(path: str, strict: bool = False, workers: int = 1, with_user_names: bool = False):
    """One pass over the reviews: (user index, item index, time) arrays + the item id strings (and, with
    ``with_user_names``, the reviewer id strings before them).

    Uncompressed files are split into byte ranges read by ``workers`` processes (ids keep the order of
    first appearance in the file); gzip files, and --strict runs, are read by one process.
    """
    stream, raw = _open(path)
    size = os.path.getsize(path)
    progress = Progress("reading reviews", unit="lines")
    if workers > 1 and not strict and not path.endswith(".gz") and size > PARALLEL_MIN_BYTES:
        raw.close()
        tasks = [(path, a, b) for a, b in _ranges(path, workers * 4)]
        users_table: dict[bytes, int] = {}
        items_table: dict[bytes, int] = {}
        user_ids, item_ids, times, reports = [], [], [], []
        with fork_pool(workers) as pool:
            # Ranges arrive in file order and are merged at once, so ids keep the order of first appearance
            # and only one range's key lists are held at a time.
            for i, (users, items, when, user_keys, item_keys, local) in enumerate(pool.imap(_read_range, tasks)):
                user_map = np.array([users_table.setdefault(k, len(users_table)) for k in user_keys], dtype=np.int32)
                item_map = np.array([items_table.setdefault(k, len(items_table)) for k in item_keys], dtype=np.int32)
                user_ids.append(user_map[users] if users.size else users)
                item_ids.append(item_map[items] if items.size else items)
                times.append(when)
                reports.append(local)
                progress.update(sum(r.lines for r in reports), (i + 1) / len(tasks), force=True)
        report = _merge_reports(reports)
        users, items, when = np.concatenate(user_ids), np.concatenate(item_ids), np.concatenate(times)
        item_names = list(items_table)
        user_names = list(users_table)
    else:
        def lines():
            with raw:
                yield from stream

        users, items, when, user_names, item_names, report = _parse_review_lines(
            lines(), 1, strict, path, progress=lambda n: progress.update(n, raw.tell() / max(size, 1))
        )
    progress.done(report.lines)
    if report.used == 0:
        raise UserError(f"{path}: no usable review lines ({report.summary(path)})")
    if with_user_names:
        return users, items, when, user_names, item_names, report
    return users, items, when, item_names, report


# A metadata line is a few hundred bytes to a few KB; literal_eval's memory grows with the line (a 5.9 MB
# line took 2.4 GB), so longer lines are skipped as malformed instead of parsed.
MAX_META_LINE = 1 << 20
MAX_CATEGORY_PATH = 1 << 16


def _leaf(paths) -> str | None:
    """The last element of the first category path of a ``categories`` value, if it has that shape."""
    if isinstance(paths, (list, tuple)) and paths and isinstance(paths[0], (list, tuple)) and paths[0]:
        leaf = paths[0][-1]
        return leaf if isinstance(leaf, str) else None
    return None


def _first_path_leaf(literal: str) -> str | None:
    if len(literal) > MAX_CATEGORY_PATH:
        return None
    try:
        path = ast.literal_eval(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if isinstance(path, (list, tuple)) and path and isinstance(path[-1], str):
        return path[-1]
    return None


def _parse_meta_lines(lines, first_line: int, wanted: dict[bytes, int], strict: bool, path: str, progress=None):
    names: dict[int, str] = {}
    report = InputReport()
    number = first_line - 1
    for number, line in enumerate(lines, start=first_line):
        if progress is not None and number % 65536 == 0:
            progress(number)
        if len(line) > MAX_META_LINE:
            report.problem(f"longer than {MAX_META_LINE:,} bytes", number, strict, path)
            continue
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        match = _META_ASIN.search(text)
        if match is None:
            report.problem("no asin", number, strict, path)
            continue
        item = wanted.get(match.group(2).encode())
        if item is None:
            continue
        categories = _META_CATEGORIES.search(text)
        leaf = _first_path_leaf(categories.group(1)) if categories else None
        if leaf is None:
            try:
                record = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                report.problem("not a Python dict literal", number, strict, path)
                continue
            if not isinstance(record, dict):
                report.problem("not a Python dict literal", number, strict, path)
                continue
            paths = record.get("categories")
            leaf = _leaf(paths)
            if paths is not None and leaf is None:
                report.problem("categories is not a list of category paths", number, strict, path)
                continue
        if leaf is not None:
            names[item] = leaf
            report.used += 1
    report.lines = number - first_line + 1
    return names, report


_WANTED: dict[bytes, int] = {}


def _read_meta_range(task):
    path, begin, end = task
    return _parse_meta_lines(_range_lines(path, begin, end), 1, _WANTED, False, path)


def read_categories(path: str, wanted: dict[bytes, int], strict: bool = False, workers: int = 1):
    """Category name of each wanted item (by its new id), from the metadata's dict literals.

    Only lines whose asin is wanted are evaluated, and only their first category path.
    """
    global _WANTED
    stream, raw = _open(path)
    size = os.path.getsize(path)
    progress = Progress("reading metadata", unit="lines")
    if workers > 1 and not strict and not path.endswith(".gz") and size > PARALLEL_MIN_BYTES:
        raw.close()
        _WANTED = wanted  # inherited by the forked workers
        try:
            with fork_pool(workers) as pool:
                parts = pool.map(_read_meta_range, [(path, a, b) for a, b in _ranges(path, workers * 4)])
        finally:
            _WANTED = {}
        names = {}
        for part_names, _ in parts:
            names.update(part_names)
        report = _merge_reports([r for _, r in parts])
    else:
        def lines():
            with raw:
                yield from stream

        names, report = _parse_meta_lines(
            lines(), 1, wanted, strict, path, progress=lambda n: progress.update(n, raw.tell() / max(size, 1))
        )
    progress.done(report.lines)
    return names, report
