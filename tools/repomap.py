"""Repo map: the signatures of a repository's most relevant definitions, fitted to a token budget.

After aider's repomap: tags per file -> a file graph (referencing file -> defining
file, per identifier) -> personalised PageRank -> each file's rank spread over the
definitions its references point to -> as many top definitions as fit the budget.

Differences worth knowing:

- PageRank is our own power iteration on numpy (networkx.pagerank needs scipy, which
  we do not depend on). It runs through identifiers (file -> identifier -> definers)
  instead of materialising one edge per (referencer, identifier, definer): the ranks
  are those of aider's multigraph, at a cost linear in the number of references.
- Besides the rank flowing in from its referencers, each definition gets a tenth of
  its own file's rank, split among the file's definitions by weight. This replaces
  aider's self-edges for unreferenced definitions (which turn files with no other
  references into rank sinks), and lets a mentioned identifier surface even when
  nothing that ranks references it. Definitions of mentioned identifiers count 10x
  once more at the end: what a request names comes before what it leads to.
- Personalisation: focus files, files whose path names a mentioned identifier, and
  the definers of a mentioned identifier (if at most 5 files define it).
- Tags are cached in one SQLite file keyed by (path, mtime_ns, size); only new or
  changed files are parsed, in worker processes when there are many.
- Focus files (the ones the model sees in full) are left out of the map.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import multiprocessing
import os
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .languages import language_for
from .tags import scan
from .workspace import Workspace

CACHE_DIRNAME = ".loopcli-cache"
_CACHE_FILE = "tags.sqlite"
_CACHE_FORMAT = "2"  # bump when the stored payload changes shape
_MAX_FILE_BYTES = 1_000_000  # bigger files are listed but not parsed (generated code, data)
_POOL_MIN_FILES = 64  # below this, starting worker processes costs more than it saves
_ELISION = "⋮"
_LINE_PREFIX = "│"
_MAX_LINE_CHARS = 100

# Edge weights, as in aider: a mentioned identifier counts 10x, a long
# snake/camel-case one 10x, a private one 0.1x, one defined in many files 0.1x;
# references from focus files count 50x. A definition's share of its own file's rank.
_MENTIONED = 10.0
_DISTINCTIVE = 10.0
_PRIVATE = 0.1
_COMMON = 0.1
_COMMON_DEFINERS = 5
_FOCUS_REFERRER = 50.0
_OWN_FILE_SHARE = 0.1

_ALPHA = 0.85
_TOL = 1.0e-6
_MAX_ITER = 100


class _FileTags:
    """One file's tags. The definitions' details are decoded from the cache only when
    rendered: the ranking needs just the names, and decoding all would slow warm starts."""

    __slots__ = ("mtime_ns", "size", "names", "refs", "_defs", "_defs_json")

    def __init__(self, mtime_ns: int, size: int, names: list[str], refs: dict[str, int],
                 defs: list | None = None, defs_json: str | None = None):
        self.mtime_ns, self.size = mtime_ns, size
        self.names = names  # defined names, in file order
        self.refs = refs  # referenced name -> count
        self._defs, self._defs_json = defs, defs_json

    @property
    def defs(self) -> list:
        """tags.RawDef rows, in file order."""
        if self._defs is None:
            self._defs = json.loads(self._defs_json)
        return self._defs


class RepoMap:
    """Ranked signatures of a workspace's source files.

    `files`: root-relative paths to map instead of ``Workspace.files()``.
    `workers`: processes for parsing many files at once (default: the CPUs available);
    like any multiprocessing user, a script calling this needs the
    ``if __name__ == "__main__":`` guard, as the workers import the main module.
    `files_parsed` counts the files parsed by the last ``build()``; ``render()``,
    ``file_ranks()`` and ``ranked_definitions()`` build first.
    """

    def __init__(
        self,
        workspace: Workspace,
        cache_dir: str | os.PathLike | None = None,
        *,
        files: Iterable[str] | None = None,
        workers: int | None = None,
    ):
        self.workspace = workspace
        self.cache_path = Path(cache_dir or workspace.root / CACHE_DIRNAME) / _CACHE_FILE
        self._explicit_files = None if files is None else sorted(set(files))
        self._workers = workers or _available_cpus()
        self._tags: dict[str, _FileTags] = {}
        self._files: list[str] = []
        self._stored: dict[str, tuple] | None = None  # cache rows by path
        self._index: _Index | None = None
        self.files_parsed = 0

    # -- building -----------------------------------------------------------------

    def build(self) -> None:
        """Bring the tags up to date with the files on disk, parsing only what changed."""
        files, stats = self._stat_files()
        if self._stored is None:
            self._stored = self._load_cache()
        fresh: dict[str, _FileTags] = {}
        stale: list[str] = []
        for path in files:
            mtime_ns, size = stats[path]
            known = self._tags.get(path)
            if known is None:
                known = self._from_store(path)
            if known is not None and (known.mtime_ns, known.size) == (mtime_ns, size):
                fresh[path] = known
            else:
                stale.append(path)
        parsed = self._parse(stale)
        fresh.update(parsed)
        files = [path for path in files if path in fresh]  # unreadable ones drop out
        self.files_parsed = len(parsed)
        if parsed or fresh.keys() != self._tags.keys():
            self._index = None
        gone = set(self._stored) - set(fresh)
        if parsed or gone:
            self._save_cache(parsed, gone)
        self._tags, self._files = fresh, files

    def _stat_files(self) -> tuple[list[str], dict[str, tuple[int, int]]]:
        listed = self._explicit_files if self._explicit_files is not None else self.workspace.files()
        root = str(self.workspace.root)
        files, stats = [], {}
        for path in listed:
            if language_for(path) is None:
                continue
            try:
                st = os.stat(os.path.join(root, path))
            except OSError:  # listed by git but deleted, or a dangling link
                continue
            files.append(path)
            stats[path] = (st.st_mtime_ns, st.st_size)
        return files, stats

    def _from_store(self, path: str) -> _FileTags | None:
        row = self._stored.get(path)
        if row is None:
            return None
        mtime_ns, size, names, refs, defs_json = row
        try:
            refs = json.loads(refs)
        except ValueError:  # a damaged row: parse the file again
            return None
        return _FileTags(mtime_ns, size, names.split("\n") if names else [], refs, defs_json=defs_json)

    def _parse(self, paths: list[str]) -> dict[str, _FileTags]:
        root = str(self.workspace.root)
        jobs = [(root, path) for path in paths]
        if self._workers > 1 and len(jobs) >= _POOL_MIN_FILES:
            methods = multiprocessing.get_all_start_methods()
            # not fork: the caller may run threads, which fork would copy mid-flight
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            try:
                with ProcessPoolExecutor(self._workers, mp_context=context) as pool:
                    results = list(pool.map(_parse_file, jobs, chunksize=16))
            except BrokenProcessPool:  # e.g. a __main__ the workers cannot import (stdin)
                results = [_parse_file(job) for job in jobs]
        else:
            results = [_parse_file(job) for job in jobs]
        return {path: tags for path, tags in zip(paths, results) if tags is not None}

    # -- cache --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The cache database, emptied first if it was written for other queries."""
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.cache_path.parent / ".gitignore"
        if not ignore.exists():  # keep the cache out of `git status` and of the file list
            ignore.write_text("*\n")
        db = sqlite3.connect(self.cache_path, timeout=30)
        version = _cache_version()
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None or row[0] != version:
                db.execute("DROP TABLE IF EXISTS tags")
                db.execute("DROP TABLE IF EXISTS maps")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (version,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS tags (path TEXT PRIMARY KEY, mtime_ns INTEGER,"
                " size INTEGER, names TEXT, refs TEXT, defs TEXT)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS maps (key TEXT PRIMARY KEY, text TEXT)")
        return db

    def _map_key(self, focus: set[str], mentioned: set[str], budget: int) -> str:
        """What a rendered map depends on: every file's stat, the request and the budget."""
        files = [(p, self._tags[p].mtime_ns, self._tags[p].size) for p in self._files]
        request = [files, sorted(focus), sorted(mentioned), budget]
        return hashlib.sha256(json.dumps(request).encode()).hexdigest()

    def _cached_map(self, key: str) -> str | None:
        try:
            db = self._connect()
            try:
                row = db.execute("SELECT text FROM maps WHERE key = ?", (key,)).fetchone()
            finally:
                db.close()
        except (OSError, sqlite3.DatabaseError):
            return None
        return row[0] if row else None

    def _store_map(self, key: str, text: str) -> None:
        try:
            db = self._connect()
            try:
                with db:  # maps of older file states are useless: keep the newest few
                    db.execute("INSERT OR REPLACE INTO maps VALUES (?, ?)", (key, text))
                    db.execute("DELETE FROM maps WHERE rowid NOT IN "
                               "(SELECT rowid FROM maps ORDER BY rowid DESC LIMIT 16)")
            finally:
                db.close()
        except (OSError, sqlite3.DatabaseError):
            pass

    def _load_cache(self) -> dict[str, tuple]:
        try:
            db = self._connect()
            try:
                rows = db.execute("SELECT * FROM tags").fetchall()
            finally:
                db.close()
        except (OSError, sqlite3.DatabaseError):  # unwritable or corrupt: work from memory
            return {}
        return {row[0]: row[1:] for row in rows}

    def _save_cache(self, parsed: dict[str, _FileTags], gone: set[str]) -> None:
        rows = [
            (path, t.mtime_ns, t.size, "\n".join(t.names), _json(t.refs), _json(t.defs))
            for path, t in parsed.items()
        ]
        try:
            db = self._connect()
            try:
                with db:  # one transaction: all rows or none
                    db.executemany("DELETE FROM tags WHERE path = ?", [(p,) for p in gone])
                    db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?, ?, ?)", rows)
            finally:
                db.close()
        except (OSError, sqlite3.DatabaseError):
            return  # the map still works from memory; the next run re-parses
        for path in gone:
            self._stored.pop(path, None)
        self._stored.update((row[0], row[1:]) for row in rows)

    # -- ranking ------------------------------------------------------------------

    def file_ranks(
        self, focus_files: Iterable[str] = (), mentioned_idents: Iterable[str] = ()
    ) -> dict[str, float]:
        """PageRank of every mapped file for this request (sums to 1)."""
        self.build()
        ranks, _ = self._rank(self._rel_paths(focus_files), set(mentioned_idents))
        return dict(zip(self._files, ranks.tolist()))

    def ranked_definitions(
        self,
        focus_files: Iterable[str] = (),
        mentioned_idents: Iterable[str] = (),
        limit: int | None = None,
    ) -> list[tuple[str, str, float]]:
        """(path, identifier, rank) of definitions outside the focus files, best first."""
        self.build()
        focus = self._rel_paths(focus_files)
        _, def_ranks = self._rank(focus, set(mentioned_idents))
        return self._ranked_definitions(focus, def_ranks, limit)

    def _ranked_definitions(
        self, focus: set[str], def_ranks: np.ndarray, limit: int | None
    ) -> list[tuple[str, str, float]]:
        index = self._get_index()
        keep = ~np.isin(index.def_file, index.file_ids(focus))
        files, idents, rank = index.def_file[keep], index.def_ident[keep], def_ranks[keep]
        # best first; ties in file then identifier order, so the map is deterministic
        order = np.lexsort((idents, files, -rank))[:limit]
        return [
            (index.files[f], index.idents[i], r)
            for f, i, r in zip(files[order].tolist(), idents[order].tolist(), rank[order].tolist())
        ]

    def _rank(self, focus: set[str], mentioned: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """File ranks, and the ranks of the (file, identifier) definition pairs."""
        index = self._get_index()
        n, n_idents = len(index.files), len(index.idents)
        ident_weight = index.ident_weight.copy()
        ident_weight[index.ident_ids(mentioned)] *= _MENTIONED
        ref_file, ref_ident = index.ref_file, index.ref_ident
        weight = index.ref_base * ident_weight[ref_ident]
        weight[np.isin(ref_file, index.file_ids(focus))] *= _FOCUS_REFERRER
        # every definer of an identifier gets the full weight, as with one edge per definer
        out = np.bincount(ref_file, weight * index.definer_count[ref_ident], minlength=n)
        share = _ratio(weight, out[ref_file])
        personal = self._personalization(index, focus, mentioned)
        dangling = out == 0
        ranks = np.full(n, 1.0 / max(n, 1))
        for _ in range(_MAX_ITER):
            flow = np.bincount(ref_ident, ranks[ref_file] * share, minlength=n_idents)
            spread = np.bincount(index.def_file, flow[index.def_ident], minlength=n)
            new = _ALPHA * (spread + ranks[dangling].sum() * personal) + (1 - _ALPHA) * personal
            converged = np.abs(new - ranks).sum() < n * _TOL
            ranks = new
            if converged:
                break
        flow = np.bincount(ref_ident, ranks[ref_file] * share, minlength=n_idents)
        own_weight = ident_weight[index.def_ident]
        own_total = np.bincount(index.def_file, own_weight, minlength=n)[index.def_file]
        own = _OWN_FILE_SHARE * ranks[index.def_file] * _ratio(own_weight, own_total)
        def_ranks = flow[index.def_ident] + own
        def_ranks[np.isin(index.def_ident, index.ident_ids(mentioned))] *= _MENTIONED
        return ranks, def_ranks

    def _personalization(self, index: _Index, focus: set[str], mentioned: set[str]) -> np.ndarray:
        """Focus files, files named like a mentioned identifier, and the few definers of one."""
        n = len(index.files)
        personal = np.zeros(n)
        personal[index.file_ids(focus)] = 1.0
        if mentioned:
            for k, path in enumerate(index.files):
                parts = path.split("/")
                if mentioned.intersection(parts) or os.path.splitext(parts[-1])[0] in mentioned:
                    personal[k] = 1.0
            for ident in mentioned:
                definers = index.definers(ident)
                if len(definers) <= _COMMON_DEFINERS:
                    personal[definers] = 1.0
        total = personal.sum()
        return personal / total if total else np.full(n, 1.0 / max(n, 1))

    def _get_index(self) -> _Index:
        if self._index is None:
            self._index = _Index(self._files, self._tags)
        return self._index

    def _rel_paths(self, paths: Iterable[str | os.PathLike]) -> set[str]:
        root = self.workspace.root
        rel = set()
        for path in paths:
            full = Path(os.path.normpath(root / path))
            if full.is_relative_to(root):
                rel.add(full.relative_to(root).as_posix())
        return rel

    # -- rendering ----------------------------------------------------------------

    def render(
        self,
        focus_files: Iterable[str] = (),
        mentioned_idents: Iterable[str] = (),
        token_budget: int = 1024,
        count_tokens: Callable[[str], int] | None = None,
    ) -> str:
        """The map: per file, the signatures of its top-ranked definitions, within the budget.

        Files are ordered by their best definition; signatures keep their line order and
        their enclosing class (or impl, module...) lines; ``⋮`` marks skipped definitions.
        Focus files are left out. Files with no ranked definition may follow as bare paths.
        The largest prefix of the ranking whose rendering fits `token_budget` (counted by
        `count_tokens`, default about 4 characters a token) is chosen by binary search.
        Maps counted with the default estimate are cached with the tags, keyed by every
        file's stat and the request.
        """
        self.build()
        focus = self._rel_paths(focus_files)
        mentioned = set(mentioned_idents)
        # a map counted with the default estimate is cached: unchanged repo + request = no work
        key = self._map_key(focus, mentioned, token_budget) if count_tokens is None else None
        if key and (cached := self._cached_map(key)) is not None:
            return cached
        text = self._fit(focus, mentioned, token_budget, count_tokens or _estimate_tokens)
        if key:
            self._store_map(key, text)
        return text

    def _fit(self, focus: set[str], mentioned: set[str], token_budget: int,
             count: Callable[[str], int]) -> str:
        ranks, def_ranks = self._rank(focus, mentioned)
        # each item adds at least one line, and a line is at least a token
        ranked = self._ranked_definitions(focus, def_ranks, token_budget)
        items = [(path, ident) for path, ident, _ in ranked]
        items += [(path, None) for path in self._files_by_rank(focus, ranks, items)]
        items = items[:token_budget]
        low, high = 0, len(items)
        best = ""
        rendered: dict = {}  # (path, identifiers) -> its block, shared by the probes
        while low <= high:
            middle = (low + high) // 2
            text = self._render_items(items[:middle], rendered)
            if count(text) <= token_budget:
                best, low = text, middle + 1
            else:
                high = middle - 1
        return best

    def _files_by_rank(self, focus: set[str], ranks: np.ndarray, items: list) -> list[str]:
        """Files with no definition in the ranking, best ranked first."""
        shown = {path for path, _ in items}
        order = sorted(range(len(self._files)), key=lambda k: -ranks[k])
        return [self._files[k] for k in order if self._files[k] not in shown and self._files[k] not in focus]

    def _render_items(self, items: list[tuple[str, str | None]], rendered: dict) -> str:
        chosen: dict[str, set[str]] = {}
        for path, ident in items:
            idents = chosen.setdefault(path, set())
            if ident is not None:
                idents.add(ident)
        blocks = []
        for path, idents in chosen.items():
            key = (path, frozenset(idents))
            if key not in rendered:
                rendered[key] = (
                    path + ":\n" + _render_defs(self._tags[path].defs, idents) if idents else path + "\n"
                )
            blocks.append(rendered[key])
        return "".join(blocks)


class _Index:
    """The repository as arrays: who references and who defines each identifier."""

    def __init__(self, files: list[str], tags: dict[str, _FileTags]):
        self.files = files
        self._file_id = {path: k for k, path in enumerate(files)}
        self._ident_id: dict[str, int] = {}
        def_file, def_ident = [], []  # one (file, identifier) pair per file defining it
        for k, path in enumerate(files):
            for name in dict.fromkeys(tags[path].names):
                def_file.append(k)
                def_ident.append(self._ident_id.setdefault(name, len(self._ident_id)))
        self.idents = list(self._ident_id)
        self.def_file = np.array(def_file, dtype=np.int64)
        self.def_ident = np.array(def_ident, dtype=np.int64)
        self.definer_count = np.bincount(self.def_ident, minlength=len(self.idents)).astype(np.float64)
        # the request-independent part of each identifier's weight
        self.ident_weight = np.array([_ident_weight(i) for i in self.idents], dtype=np.float64)
        self.ident_weight[self.definer_count > _COMMON_DEFINERS] *= _COMMON

        ref_file, ref_ident, ref_count = [], [], []
        for k, path in enumerate(files):
            refs = tags[path].refs
            ref_file += [k] * len(refs)
            ref_ident += [self._ident_id.get(name, -1) for name in refs]
            ref_count += refs.values()
        ref_ident_arr = np.array(ref_ident, dtype=np.int64)
        known = ref_ident_arr >= 0  # names defined nowhere in the repository lead nowhere
        self.ref_file = np.array(ref_file, dtype=np.int64)[known]
        self.ref_ident = ref_ident_arr[known]
        self.ref_base = np.sqrt(np.array(ref_count, dtype=np.float64)[known])

    def file_ids(self, paths: Iterable[str]) -> list[int]:
        return [self._file_id[p] for p in paths if p in self._file_id]

    def ident_ids(self, idents: Iterable[str]) -> list[int]:
        return [self._ident_id[i] for i in idents if i in self._ident_id]

    def definers(self, ident: str) -> np.ndarray:
        """The files defining `ident`."""
        i = self._ident_id.get(ident)
        return self.def_file[self.def_ident == i] if i is not None else self.def_file[:0]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


@functools.lru_cache(maxsize=1 << 18)  # identifiers repeat across rebuilds of the index
def _ident_weight(ident: str) -> float:
    """Long snake/camel-case names say more than short ones; private ones say less."""
    weight = 1.0
    snake = "_" in ident.strip("_")
    camel = ident != ident.lower() and ident != ident.upper()
    if len(ident) >= 8 and (snake or camel):
        weight *= _DISTINCTIVE
    if ident.startswith("_"):
        weight *= _PRIVATE
    return weight


def _render_defs(defs: list, idents: set[str]) -> str:
    """Signature lines of the chosen definitions and of the definitions enclosing them,
    with ``⋮`` wherever definitions were left out."""
    show = [False] * len(defs)
    stack: list[int] = []  # enclosing definitions of the current one
    for k, d in enumerate(defs):
        while stack and defs[stack[-1]][5] <= d[4]:
            stack.pop()
        if d[0] in idents:
            show[k] = True
            for parent in stack:
                show[parent] = True
        stack.append(k)
    lines = []
    skipped = False
    for k, d in enumerate(defs):
        if not show[k]:
            skipped = True
            continue
        if skipped:
            lines.append(_ELISION)
            skipped = False
        first, *rest = d[6].split("\n")
        lines.append(_LINE_PREFIX + (d[7] + first)[:_MAX_LINE_CHARS])
        lines.extend(_LINE_PREFIX + line[:_MAX_LINE_CHARS] for line in rest)
    if skipped:
        lines.append(_ELISION)
    return "\n".join(lines) + "\n"


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _parse_file(job: tuple[str, str]) -> _FileTags | None:
    """Tags of one file (runs in worker processes); None when it cannot be read."""
    root, path = job
    try:
        with open(os.path.join(root, path), "rb") as f:
            st = os.fstat(f.fileno())
            source = f.read() if st.st_size <= _MAX_FILE_BYTES else b""
    except OSError:
        return None
    defs, refs = scan(language_for(path), source) if source else ([], [])
    counts = collections.Counter(r[0] for r in refs)
    return _FileTags(st.st_mtime_ns, st.st_size, [d[0] for d in defs], dict(counts), defs=defs)


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use, not the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


@functools.cache
def _cache_version() -> str:
    """Changes with the queries and the tags code, so cached tags never outlive either."""
    package = resources.files(__package__)
    digest = hashlib.sha256(_CACHE_FORMAT.encode())
    digest.update(package.joinpath("tags.py").read_bytes())
    for scm in sorted(package.joinpath("queries").iterdir(), key=lambda p: p.name):
        digest.update(scm.read_bytes())
    return digest.hexdigest()
