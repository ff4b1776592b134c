"""`loopcli diagnose` end to end: HF directories and loopcoder GGUFs, JSON, the PNG, the table,
--loops, and bad input."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from loopcli.cli import main
from loopcli.convert.export import convert
from loopcli.diagnose import PANELS, PLOT_DPI, PLOT_SIZE
from loopcli.runtime.diagnostics import LOOP_METRICS
from loopcli.runtime.synthetic import CORPUS, write_synthetic

INAPPLICABLE_AT_LOOP_0 = {"update_coherence", "clp_offset_cost", "gate_mean", "gate_head_std",
                          "gate_layer_std", "attention_kl"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    r2 = write_synthetic(root / "r2", dtype="f32", plt_window_size=[8, 0])
    r1 = write_synthetic(root / "r1", dtype="f32", plt_num_loops=1)
    llama = write_synthetic(root / "llama", arch="llama", dtype="f32")
    (root / "a.py").write_text(CORPUS)
    (root / "b.txt").write_text("def add(a, b):\n    return a + b\n" * 6)
    return {
        "root": root, "r2": r2, "r1": r1, "llama": llama,
        "r2_gguf": convert(r2, root / "r2.gguf", "f32", show_progress=False),
        "llama_gguf": convert(llama, root / "llama.gguf", "q8_0", show_progress=False),
        "a": root / "a.py", "b": root / "b.txt",
    }


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["loopcli", "diagnose", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_every_metric_for_every_loop_from_dir_and_gguf(env, monkeypatch, capsys):
    results = []
    for model in (env["r2"], env["r2_gguf"]):
        code, out, err = run(monkeypatch, capsys, model, "--file", env["a"], "--file", env["b"],
                             "--ctx", "48", "--json")
        assert code == 0, err
        results.append(json.loads(out))
    res = results[0]
    assert res["loops"] == 2 and res["ctx"] == 48 and res["files"] == [str(env["a"]), str(env["b"])]
    assert res["chunks"] >= 3 and res["scored_tokens"] == res["tokens"] - res["chunks"]
    assert [e["loop"] for e in res["per_loop"]] == [0, 1]
    for e in res["per_loop"]:
        assert set(LOOP_METRICS) <= set(e)
    assert {m for m in LOOP_METRICS if res["per_loop"][0][m] is None} == INAPPLICABLE_AT_LOOP_0
    assert all(isinstance(res["per_loop"][1][m], float) for m in LOOP_METRICS)
    assert sum(e["peak_share"] for e in res["per_loop"]) == pytest.approx(1.0)
    # the f32 GGUF is the same model: the same numbers
    for a, b in zip(res["per_loop"], results[1]["per_loop"]):
        for m in LOOP_METRICS:
            assert (a[m] is None and b[m] is None) or a[m] == pytest.approx(b[m], rel=1e-3, abs=1e-5), m


def test_plot_has_a_panel_per_metric(env, monkeypatch, capsys, tmp_path):
    out = tmp_path / "loops.png"
    code, _, err = run(monkeypatch, capsys, env["r2_gguf"], "--file", env["a"], "--ctx", "64", "--plot", out)
    assert code == 0, err
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (PLOT_SIZE[0] * PLOT_DPI, PLOT_SIZE[1] * PLOT_DPI)
    panels = [line.split(",") for line in img.text["Panels"].splitlines()]
    assert len(panels) == len(PANELS) == 10
    assert {k for keys in panels for k in keys} == set(LOOP_METRICS)  # every metric has its panel
    # each cell of the 2 x 5 grid holds a drawn panel (frame, ticks, data), not blank paper
    gray = np.asarray(img.convert("L"))
    h, w = gray.shape
    for row in range(2):
        for col in range(5):
            dark = int((gray[row * h // 2:(row + 1) * h // 2, col * w // 5:(col + 1) * w // 5] < 128).sum())
            assert dark > 500, (row, col, dark)
    assert [p for p in tmp_path.iterdir()] == [out]  # no temporary left behind


def test_one_loop_model_reports_what_applies(env, monkeypatch, capsys, tmp_path):
    out = tmp_path / "r1.png"
    code, stdout, err = run(monkeypatch, capsys, env["r1"], "--file", env["b"], "--json", "--plot", out)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["loops"] == 1 and len(res["per_loop"]) == 1
    entry = res["per_loop"][0]
    assert {m for m in LOOP_METRICS if entry[m] is None} == INAPPLICABLE_AT_LOOP_0
    assert entry["peak_share"] == 1.0 and entry["step_size"] > 0
    assert Image.open(out).size == (PLOT_SIZE[0] * PLOT_DPI, PLOT_SIZE[1] * PLOT_DPI)


def test_other_loop_counts_report_nll_and_kl(env, monkeypatch, capsys):
    found = {}
    for loops in (1, 2, 3):
        code, out, err = run(monkeypatch, capsys, env["r2"], "--file", env["b"], "--loops", loops, "--json")
        assert code == 0, err
        found[loops] = json.loads(out)["other_loops"]
    same = found[2]
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["nll"] == pytest.approx(same["nll_native"])
    assert same["same_top1"] == 1.0
    for loops in (1, 3):
        cmp = found[loops]
        assert (cmp["loops"], cmp["native_loops"]) == (loops, 2)
        assert cmp["kl"] > 1e-5 and cmp["nll"] != cmp["nll_native"]
        assert cmp["nll_native"] == pytest.approx(same["nll_native"])


def test_table_on_the_terminal(env, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, env["r2"], "--file", env["b"], "--loops", "1")
    assert code == 0, err
    assert "loop 0" in out and "loop 1" in out and "step size" in out and "attention KL" in out
    assert "at 1 loop(s) instead of 2: next-token NLL" in out


@pytest.mark.parametrize("case", ["missing file", "directory as file", "empty file", "not utf-8", "loops 0",
                                  "ctx 1", "missing model", "llama gguf", "llama dir", "loops on R=1",
                                  "plot folder missing", "plot is a folder"])
def test_bad_input_is_one_error_line(env, monkeypatch, capsys, case):
    root = env["root"]
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    model, args = env["r2"], ["--file", env["b"]]
    if case == "missing file":
        args = ["--file", root / "nope.txt"]
    elif case == "directory as file":
        args = ["--file", root]
    elif case == "empty file":
        args = ["--file", env["b"], "--file", root / "empty.txt"]
    elif case == "not utf-8":
        args = ["--file", root / "latin1.txt"]
    elif case == "loops 0":
        args += ["--loops", "0"]
    elif case == "ctx 1":
        args += ["--ctx", "1"]
    elif case == "missing model":
        model = root / "nothing.gguf"
    elif case == "llama gguf":
        model = env["llama_gguf"]
    elif case == "llama dir":
        model = env["llama"]
    elif case == "loops on R=1":
        model, args = env["r1"], args + ["--loops", "2"]
    elif case == "plot folder missing":
        args += ["--plot", root / "no" / "such" / "dir.png"]
    elif case == "plot is a folder":
        args += ["--plot", root]
    code, out, err = run(monkeypatch, capsys, model, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    assert not (root / "no").exists()
