"""Repo map: ranking, personalisation, budget fitting, the on-disk tag cache, file selection."""

import os
import subprocess

import networkx as nx
import numpy as np
import pytest

from loopcli.tools.languages import language_for
from loopcli.tools.repomap import RepoMap
from loopcli.tools.tags import extract_tags
from loopcli.tools.workspace import Workspace

FILES = {
    "core/engine.py": '''\
class Engine:
    def start_engine(self, speed):
        return speed

def compute_total(items):
    return sum(items)
''',
    "app/one.py": "from core.engine import Engine, compute_total\n\ndef one():\n    Engine().start_engine(1)\n    return compute_total([1])\n",
    "app/two.py": "def two():\n    return compute_total([2])\n",
    "app/three.py": "def three():\n    return Engine()\n",
    "app/four.py": "def four():\n    return compute_total([4]) + compute_total([5])\n",
    "lonely.py": "def lonely_helper(x):\n    return x\n",
    "widgets/gadget.py": "def render_gadget(spec):\n    return spec\n",
    "focus_me.py": "def focused():\n    return only_from_focus(3)\n",
    "target.py": "def only_from_focus(n):\n    return n\n",
    "README.md": "not code\n",
}


def write_tree(root, files):
    for path, text in files.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    write_tree(root, FILES)
    return root


def make_map(root, tmp_path, **kwargs):
    return RepoMap(Workspace(root), cache_dir=tmp_path / "cache", **kwargs)


def test_maps_only_source_files(repo, tmp_path):
    ranks = make_map(repo, tmp_path).file_ranks()
    assert set(ranks) == {p for p in FILES if p.endswith(".py")}
    assert sum(ranks.values()) == pytest.approx(1.0)


def test_referenced_file_ranks_above_unreferenced(repo, tmp_path):
    repomap = make_map(repo, tmp_path)
    ranks = repomap.file_ranks()
    assert ranks["core/engine.py"] > ranks["lonely.py"]
    assert ranks["core/engine.py"] == max(ranks.values())
    order = [ident for _, ident, _ in repomap.ranked_definitions()]
    assert order[0] == "compute_total"  # referenced most, from most files
    assert order.index("Engine") < order.index("lonely_helper")


def test_mentioned_identifier_pulls_its_file_up(repo, tmp_path):
    repomap = make_map(repo, tmp_path)
    plain = repomap.file_ranks()
    asked = repomap.file_ranks(mentioned_idents={"render_gadget"})
    assert asked["widgets/gadget.py"] > plain["widgets/gadget.py"]
    assert asked["widgets/gadget.py"] > asked["core/engine.py"]
    assert repomap.ranked_definitions(mentioned_idents={"render_gadget"})[0][:2] == (
        "widgets/gadget.py", "render_gadget")


def test_file_named_like_a_mentioned_word_is_favoured(repo, tmp_path):
    repomap = make_map(repo, tmp_path)
    assert repomap.file_ranks(mentioned_idents={"lonely"})["lonely.py"] > repomap.file_ranks()["lonely.py"]


def test_focus_files_personalise_and_leave_the_map(repo, tmp_path):
    repomap = make_map(repo, tmp_path)
    plain = repomap.file_ranks()
    focused = repomap.file_ranks(focus_files=["focus_me.py"])
    assert focused["target.py"] > plain["target.py"]
    assert focused["target.py"] > focused["core/engine.py"]
    text = repomap.render(focus_files=[repo / "focus_me.py"], token_budget=2000)
    assert "focus_me.py" not in text
    assert text.startswith("target.py:\n")
    assert all(path != "focus_me.py" for path, _, _ in repomap.ranked_definitions(["focus_me.py"]))


def test_render_shows_signatures_with_their_class(repo, tmp_path):
    repomap = make_map(repo, tmp_path)
    # room for the best definition only: the class comes along as context, ⋮ marks the rest
    assert repomap.render(mentioned_idents={"start_engine"}, token_budget=20) == (
        "core/engine.py:\n│class Engine:\n│    def start_engine(self, speed):\n⋮\n"
    )
    text = repomap.render(token_budget=2000)
    assert "core/engine.py:\n│class Engine:\n│    def start_engine(self, speed):\n│def compute_total(items):\n" in text
    assert "return" not in text  # signatures only, never bodies
    for path in FILES:
        if path.endswith(".py"):
            assert path in text  # a generous budget shows every file


def big_repo(root, n_files=40):
    files = {}
    for k in range(n_files):
        calls = "\n".join(f"    helper_function_{j}(x)" for j in range(k % 7))
        files[f"pkg/module_{k}.py"] = (
            f"class Thing{k}:\n    def method_{k}(self, x):\n        return x\n\n"
            f"def helper_function_{k}(x):\n{calls or '    pass'}\n"
        )
    write_tree(root, files)
    return files


def test_budget_is_respected_and_the_map_grows_with_it(tmp_path):
    root = tmp_path / "big"
    big_repo(root)
    repomap = make_map(root, tmp_path)
    sizes = []
    for budget in (20, 100, 400, 1600):
        text = repomap.render(token_budget=budget)
        assert (len(text) + 3) // 4 <= budget
        sizes.append(len(text))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes[-1] > 3 * sizes[1]


def test_custom_token_counter_is_used(tmp_path):
    root = tmp_path / "big"
    big_repo(root)
    repomap = make_map(root, tmp_path)
    words = lambda text: len(text.split())  # noqa: E731
    text = repomap.render(token_budget=60, count_tokens=words)
    assert 45 < words(text) <= 60  # filled close to the budget, never over it
    assert words(repomap.render(token_budget=60)) < words(text)


def test_cache_survives_instances_and_reparses_only_changed_files(repo, tmp_path):
    first = make_map(repo, tmp_path)
    first.build()
    assert first.files_parsed == 9
    again = make_map(repo, tmp_path)
    again.build()
    assert again.files_parsed == 0
    assert again.file_ranks() == first.file_ranks()
    changed = repo / "lonely.py"
    changed.write_text("def lonely_helper(x):\n    return x\n\ndef brand_new_function():\n    pass\n")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = make_map(repo, tmp_path)
    third.build()
    assert third.files_parsed == 1
    assert "def brand_new_function():" in third.render(token_budget=4000)
    third.build()
    assert third.files_parsed == 0


def test_damaged_cache_is_rebuilt(repo, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tags.sqlite").write_bytes(b"not a database" * 100)
    repomap = make_map(repo, tmp_path)
    repomap.build()
    assert repomap.files_parsed == 9
    assert "compute_total" in repomap.render(token_budget=1000)


def test_deleted_file_drops_out(repo, tmp_path):
    repomap = make_map(repo, tmp_path)
    repomap.build()
    (repo / "lonely.py").unlink()
    assert "lonely.py" not in repomap.file_ranks()
    assert "lonely_helper" not in repomap.render(token_budget=4000)


def test_gitignored_files_are_left_out(tmp_path):
    root = tmp_path / "gitrepo"
    write_tree(root, {
        "main.py": "def main():\n    return generated_thing()\n",
        "build/generated.py": "def generated_thing():\n    pass\n",
        "kept.py": "def kept():\n    return main()\n",
        ".gitignore": "build/\n",
    })
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    repomap = RepoMap(Workspace(root))  # default cache inside the repo
    assert set(repomap.file_ranks()) == {"main.py", "kept.py"}
    assert "generated" not in repomap.render(token_budget=1000)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    assert ".loopcli-cache" not in status.stdout  # the cache ignores itself


def test_worker_processes_give_the_same_tags(tmp_path):
    root = tmp_path / "many"
    big_repo(root, n_files=70)  # enough to use the process pool
    pooled = RepoMap(Workspace(root), cache_dir=tmp_path / "c1", workers=2)
    serial = RepoMap(Workspace(root), cache_dir=tmp_path / "c2", workers=1)
    assert pooled.render(token_budget=3000) == serial.render(token_budget=3000)
    assert pooled.files_parsed == serial.files_parsed == 70


def aider_style_ranks(root, files, mentioned, focus):
    """PageRank on the explicit multigraph aider builds: one edge per (referencer, ident, definer).

    Unlike aider, no self-edges for unreferenced definitions (they would make sinks).
    """
    defines, references = {}, {}
    for path in files:
        for tag in extract_tags(language_for(path), (root / path).read_bytes()):
            table = defines if tag.kind == "def" else references
            table.setdefault(tag.name, []).append(path)
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(files)
    for ident, definers in defines.items():
        definers = set(definers)
        mul = 10.0 if ident in mentioned else 1.0
        if len(ident) >= 8 and ("_" in ident.strip("_") or ident.lower() != ident != ident.upper()):
            mul *= 10
        if ident.startswith("_"):
            mul *= 0.1
        if len(definers) > 5:
            mul *= 0.1
        for referencer in set(references.get(ident, ())):
            count = references[ident].count(referencer)
            weight = mul * count ** 0.5 * (50 if referencer in focus else 1)
            for definer in definers:
                graph.add_edge(referencer, definer, weight=weight)
    personal = {p: 1.0 for p in files if p in focus or any(d in mentioned for d in defines if p in defines[d])}
    google = nx.google_matrix(graph, alpha=0.85, personalization=personal or None,
                              nodelist=files, dangling=personal or None)
    ranks = np.full(len(files), 1.0 / len(files))
    for _ in range(500):
        ranks = ranks @ google
    return dict(zip(files, ranks))


@pytest.mark.parametrize("mentioned, focus", [
    (set(), set()),
    ({"render_gadget"}, set()),
    (set(), {"focus_me.py", "app/two.py"}),
])
def test_ranks_match_pagerank_on_the_explicit_graph(repo, tmp_path, mentioned, focus):
    repomap = make_map(repo, tmp_path)
    ours = repomap.file_ranks(focus_files=focus, mentioned_idents=mentioned)
    reference = aider_style_ranks(repo, sorted(ours), mentioned, focus)
    for path in ours:
        assert ours[path] == pytest.approx(reference[path], abs=1e-5), path


def test_rendered_map_is_cached_until_the_repo_or_request_changes(repo, tmp_path, monkeypatch):
    first = make_map(repo, tmp_path).render(mentioned_idents={"Engine"}, token_budget=500)
    fits = []
    real_fit = RepoMap._fit
    monkeypatch.setattr(RepoMap, "_fit", lambda self, *a: fits.append(a) or real_fit(self, *a))
    again = make_map(repo, tmp_path)
    assert again.render(mentioned_idents={"Engine"}, token_budget=500) == first and fits == []
    again.render(mentioned_idents={"lonely_helper"}, token_budget=500)
    assert len(fits) == 1  # another request is ranked afresh
    (repo / "lonely.py").write_text("def lonely_helper(x):\n    return x\n\ndef extra_one():\n    pass\n")
    os.utime(repo / "lonely.py", ns=(1, 1))
    assert "extra_one" in make_map(repo, tmp_path).render(mentioned_idents={"extra_one"}, token_budget=4000)
    assert len(fits) == 2
    make_map(repo, tmp_path).render(mentioned_idents={"Engine"}, token_budget=500, count_tokens=len)
    assert len(fits) == 3  # a caller's own counter is not cached
