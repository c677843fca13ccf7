"""bench/run.py: the goal check of issue 3 on hand-made rows, and one tiny run end to end."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("rnnfast_bench_runner", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def make_row(runner, cell, config, mode, rf_seconds, sgemm=None, **peer_seconds):
    c, k = runner.CELLS[cell], runner.CONFIGS[config]
    row = runner.Row(cell=c.label, config=k.name, mode=mode, shape={},
                     flops=runner.mode_flops(c, k, mode), sgemm_gflops=sgemm)
    row.results["rnnfast"] = runner.PeerResult(seconds=rf_seconds)
    for name, seconds in peer_seconds.items():
        row.results[name] = runner.PeerResult(seconds=seconds)
    return row


def goals_of(runner, rows, sgemm=None):
    return {(c.row, c.goal): c.met for c in runner.check_goals(rows, sgemm)}


def test_min_goal_met_by_either_clause(runner):
    flops = runner.mode_flops(runner.CELLS["lstm"], runner.CONFIGS["mid"], "infer")
    rf_s = 0.1
    gflops = flops / rf_s / 1e9
    peer_goal = ("LSTM mid infer", ">= min(1.2x fastest peer, 0.9x sgemm)")
    numpy_goal = ("LSTM mid infer", ">= min(2x NumPy ref, 0.9x sgemm)")

    # 1.25x the faster peer (onnx at 0.125 s), well under 0.9 of the ceiling: met by the ratio.
    row = make_row(runner, "lstm", "mid", "infer", rf_s, sgemm=gflops / 0.5,
                   torch=0.2, onnx=0.125, numpy=0.15)
    got = goals_of(runner, [row])
    assert got[peer_goal] is True
    assert got[numpy_goal] is False  # 1.5x NumPy and 50% of the ceiling

    # 1.1x the faster peer but 95% of the row's ceiling: met by the ceiling clause.
    row = make_row(runner, "lstm", "mid", "infer", rf_s, sgemm=gflops / 0.95,
                   torch=0.2, onnx=0.11, numpy=0.15)
    got = goals_of(runner, [row])
    assert got[peer_goal] is True and got[numpy_goal] is True

    # Neither: 1.1x and 80%.
    row = make_row(runner, "lstm", "mid", "infer", rf_s, sgemm=gflops / 0.8,
                   torch=0.2, onnx=0.11, numpy=0.15)
    assert goals_of(runner, [row])[peer_goal] is False

    # ONNX Runtime missing on an inference row: the peer clause is unknown, not met by torch alone.
    row = make_row(runner, "lstm", "mid", "infer", rf_s, sgemm=gflops / 0.8, torch=0.2,
                   numpy=0.15)
    assert goals_of(runner, [row])[peer_goal] is None

    # The higher of the row's own ceiling and the run's counts.
    row = make_row(runner, "lstm", "mid", "infer", rf_s, torch=0.2, onnx=0.11, numpy=0.15)
    assert goals_of(runner, [row], sgemm=gflops / 0.95)[peer_goal] is True
    assert goals_of(runner, [row], sgemm=gflops / 0.8)[peer_goal] is False
    row.sgemm_gflops = gflops / 0.95
    assert goals_of(runner, [row], sgemm=gflops / 0.8)[peer_goal] is False
    assert goals_of(runner, [row], sgemm=gflops / 0.99)[peer_goal] is True
    row.sgemm_gflops = gflops  # a busy spell's low ceiling (share 100%) does not count
    assert row.share(gflops / 0.85) == pytest.approx(0.85)
    assert goals_of(runner, [row], sgemm=gflops / 0.85)[peer_goal] is False


GRU_GOAL = "time per FLOP <= 1.15x LSTM's"
SMALL_TRAIN = ">= min({}x torch, 0.9x sgemm)"
SMALL_INFER = ">= min(1.5x faster of torch and ONNX Runtime, 0.9x sgemm)"


def test_small_stream_and_gru_goals(runner):
    rows = [
        make_row(runner, "lstm", "small", "train", 1.0, torch=1.9, numpy=6.0),
        make_row(runner, "gru", "small", "train", 1.0, torch=3.1, numpy=4.0),
        make_row(runner, "lstm", "small", "infer", 1.0, torch=2.0, onnx=1.4, numpy=5.0),
    ]
    got = goals_of(runner, rows, sgemm=190.0)  # the run's ceiling, for rows without their own
    assert got[("LSTM small train", SMALL_TRAIN.format(2))] is False
    assert got[("GRU small train", SMALL_TRAIN.format(3))] is True
    assert got[("LSTM small train", ">= 5x NumPy ref")] is True
    assert got[("GRU small train", ">= 5x NumPy ref")] is False
    assert got[("LSTM small infer", SMALL_INFER)] is False
    # Or 0.9x the ceiling (a peer near it leaves no room for the ratio): the LSTM rows at
    # 0.95 of theirs meet the peer goals without the ratios.
    for row in (rows[0], rows[2]):
        row.sgemm_gflops = row.flops / 1.0 / 1e9 / 0.95
    got = goals_of(runner, rows)  # the higher of a row's and the run's ceiling counts
    assert got[("LSTM small train", SMALL_TRAIN.format(2))] is True
    assert got[("LSTM small infer", SMALL_INFER)] is True
    for row in (rows[0], rows[2]):
        row.sgemm_gflops = None
    got = goals_of(runner, rows, sgemm=190.0)
    # GRU does 3/4 of LSTM's FLOPs here: the same time is 4/3 the time per FLOP.
    assert got[("GRU small train", GRU_GOAL)] is False
    rows[1].results["rnnfast"].seconds = 0.8  # 1.07x LSTM's time per FLOP
    assert goals_of(runner, rows, sgemm=190.0)[("GRU small train", GRU_GOAL)] is True
    # Each as a share of its own row's ceiling (the higher of the row's and the run's): a row's
    # own higher ceiling counts against it.
    rows[0].sgemm_gflops = 250.0  # LSTM at 1.0 s against 250 instead of 190
    rows[1].results["rnnfast"].seconds = 1.0  # GRU 4/3 LSTM's time per FLOP on raw rates
    assert goals_of(runner, rows, sgemm=190.0)[("GRU small train", GRU_GOAL)] is True
    rows[1].sgemm_gflops = 250.0
    assert goals_of(runner, rows, sgemm=190.0)[("GRU small train", GRU_GOAL)] is False
    # rnnfast's LSTM timed in the GRU row's own rounds takes precedence over the LSTM row, and
    # decides the goal without one: raw times per FLOP, no ceilings.
    gru = rows[1]
    gru.lstm_flops = rows[0].flops
    gru.lstm_seconds = 1 / (0.75 * 1.10)  # GRU (3/4 the FLOPs in 1.0 s): 1.10x LSTM's per FLOP
    assert gru.per_flop_vs_lstm() == pytest.approx(1.10)
    for subset in (rows, rows[1:]):
        checks = {(c.row, c.goal): c for c in runner.check_goals(subset, 190.0)}
        check = checks[("GRU small train", GRU_GOAL)]
        assert check.met is True and check.measured == "1.10x (LSTM in the same rounds)"
    gru.lstm_seconds = 1 / (0.75 * 1.20)
    assert goals_of(runner, rows[1:], sgemm=190.0)[("GRU small train", GRU_GOAL)] is False
    gru.lstm_seconds = None  # neither the twin nor an LSTM row: no GRU goal
    assert ("GRU small train", GRU_GOAL) not in goals_of(runner, rows[1:], sgemm=190.0)

    stream = make_row(runner, "lstm", "stream-128", "stream", 3e-6, onnx=1e-5, torch=2e-5)
    stream.floor_seconds = 2.5e-6
    got = goals_of(runner, [stream])
    assert got[("LSTM stream-128 stream", "<= 1.25x weight-read floor")] is True
    assert got[("LSTM stream-128 stream", ">= 3x ONNX Runtime")] is True
    assert got[("LSTM stream-128 stream", ">= 10x torch")] is False
    stream.floor_seconds = 2e-6
    assert goals_of(runner, [stream])[("LSTM stream-128 stream",
                                       "<= 1.25x weight-read floor")] is False
    # the floor read in the row's own rounds is shown beside the goal, not used by it
    stream.floor_here_seconds = 2.9e-6
    assert stream.over_floor(here=True) == pytest.approx(3 / 2.9)
    assert stream.over_floor() == pytest.approx(1.5)
    assert goals_of(runner, [stream])[("LSTM stream-128 stream",
                                       "<= 1.25x weight-read floor")] is False


def test_large_lstm_training_share(runner):
    flops = runner.mode_flops(runner.CELLS["lstm"], runner.CONFIGS["large"], "train")
    row = make_row(runner, "lstm", "large", "train", 1.0, sgemm=flops / 1e9 / 0.86, torch=1.1,
                   numpy=1.5)
    assert goals_of(runner, [row])[("LSTM large train", ">= 0.85x sgemm")] is True
    row.sgemm_gflops = flops / 1e9 / 0.84
    assert goals_of(runner, [row])[("LSTM large train", ">= 0.85x sgemm")] is False


def test_tiny_run_prints_the_tables_and_goals(runner, tmp_path, capsys):
    pytest.importorskip("rnnfast")
    out = tmp_path / "bench.json"
    code = runner.main(["--cells", "rnn", "--configs", "small,stream-128", "--peers", "numpy",
                        "--repeats", "1", "--min-sample", "0.001", "--max-time", "1",
                        "--settle", "0", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for heading in ("### Whole sequences", "### Batch-1 streaming", "### Goals of issue 3"):
        assert heading in text
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert [(r["config"], r["mode"]) for r in rows] == [
        ("small", "train"), ("small", "infer"), ("stream-128", "stream")]
    threads = document["machine"]["threads"]
    assert ("| barrier ns |" in text) == (threads > 1)
    for r in rows:
        # a barrier of the run's threads, sampled in the row's rounds (none on one thread)
        assert (r["barrier_ns"] > 0) if threads > 1 else r["barrier_ns"] is None
        assert r["sgemm_gflops"] > 0  # sampled in the row's own rounds
        ceiling = max(r["sgemm_gflops"], document["sgemm_gflops"])
        assert r["share_of_sgemm"] == pytest.approx(r["gflops"] / ceiling)
        assert r["ratios"]["numpy"] > 0
    stream = rows[-1]
    probes = document["read_bandwidth_bytes_per_s"][str(stream["weight_bytes"])]
    assert probes["simd"] > 0 and set(probes) == {"simd", "sum", "max", "dot"}
    assert stream["floor_seconds"] == pytest.approx(stream["weight_bytes"] / max(probes.values()))
    # the SIMD probe's median pass in the row's rounds: no faster than the run's fastest read
    assert stream["floor_here_seconds"] >= stream["weight_bytes"] / probes["simd"] * (1 - 1e-9)
    rf_seconds = stream["results"]["rnnfast"]["seconds"]
    assert stream["rnnfast_over_floor_here"] == pytest.approx(
        rf_seconds / stream["floor_here_seconds"])
    assert "| rf/floor here |" in text
    goals = {(g["row"], g["goal"]) for g in document["goals"]}
    assert ("RNN tanh small train", SMALL_TRAIN.format(3)) in goals
    assert ("RNN tanh stream-128 stream", "<= 1.25x weight-read floor") in goals


def test_tiny_run_times_the_lstm_in_gru_rows(runner, tmp_path, capsys):
    pytest.importorskip("rnnfast")
    out = tmp_path / "bench.json"
    code = runner.main(["--cells", "gru,rnn", "--configs", "small", "--modes", "infer",
                        "--peers", "", "--repeats", "1", "--min-sample", "0.001",
                        "--max-time", "1", "--settle", "0", "--json", str(out)])
    assert code == 0
    capsys.readouterr()
    document = json.loads(out.read_text())
    gru, rnn = document["rows"]
    lstm_flops = runner.mode_flops(runner.CELLS["lstm"], runner.CONFIGS["small"], "infer")
    assert gru["lstm_seconds"] > 0 and gru["lstm_flops"] == lstm_flops
    assert rnn["lstm_seconds"] is None
    goal = next(g for g in document["goals"] if g["goal"] == GRU_GOAL)
    per_flop = (1 / (gru["gflops"] * 1e9)) / (gru["lstm_seconds"] / lstm_flops)
    assert goal["measured"] == f"{per_flop:.2f}x (LSTM in the same rounds)"
    assert goal["met"] is (per_flop <= 1.15)


def scaling_row(runner, config, mode, seconds_by_threads, sgemm_at=None):
    c, k = runner.CELLS["lstm"], runner.CONFIGS[config]
    row = runner.Row(cell=c.label, config=k.name, mode=mode, shape={},
                     flops=runner.mode_flops(c, k, mode), sgemm_at=dict(sgemm_at or {}))
    for threads, seconds in seconds_by_threads.items():
        row.results[f"rnnfast@{threads}"] = runner.PeerResult(seconds=seconds)
    return row


def test_scaling_goals(runner):
    tol = runner.SCALING_TOLERANCE
    row = scaling_row(runner, "small", "infer", {1: 1.0, 2: 0.6, 4: 0.6 * (tol + 0.02)})
    got = {c.goal: c.met for c in runner.check_scaling_goals([row], [1, 2, 4])}
    assert got["2 threads no slower than fewer (x1.03)"] is True
    assert got["4 threads no slower than fewer (x1.03)"] is False  # slower than 2 threads
    row.results["rnnfast@4"].seconds = 0.6 * (tol - 0.02)
    got = {c.goal: c.met for c in runner.check_scaling_goals([row], [1, 2, 4])}
    assert got["4 threads no slower than fewer (x1.03)"] is True
    assert not any("sgemm" in g for g in got)  # the 75% goal starts at 16 threads

    flops = runner.mode_flops(runner.CELLS["lstm"], runner.CONFIGS["mid"], "train")
    rf16 = flops / 0.1 / 1e9  # GFLOP/s at 0.1 s
    row = scaling_row(runner, "mid", "train", {1: 1.2, 16: 0.1}, {16: rf16 / 0.8})
    got = {c.goal: c.met for c in runner.check_scaling_goals([row], [1, 16])}
    assert got[">= 75% of the 16-thread sgemm"] is True
    row.sgemm_at[16] = rf16 / 0.7
    got = {c.goal: c.met for c in runner.check_scaling_goals([row], [1, 16])}
    assert got[">= 75% of the 16-thread sgemm"] is False
    del row.sgemm_at[16]
    got = {c.goal: c.met for c in runner.check_scaling_goals([row], [1, 16])}
    assert got[">= 75% of the 16-thread sgemm"] is None


def test_tiny_scaling_run(runner, tmp_path, capsys):
    pytest.importorskip("threadpoolctl")
    out = tmp_path / "scaling.json"
    code = runner.main(["--scaling", "1,2", "--cells", "gru", "--configs", "small",
                        "--modes", "infer", "--peers", "", "--repeats", "1",
                        "--min-sample", "0.001", "--max-time", "1", "--settle", "0",
                        "--json", str(out)])
    assert code == 0
    assert "### Thread scaling" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["results"]) == {"rnnfast@1", "rnnfast@2"}
    assert all(r["seconds"] > 0 for r in row["results"].values())
    # NumPy's sgemm with its BLAS held to 1 and to 2 threads, in the row's own rounds.
    assert set(row["sgemm_at"]) == {"1", "2"} and min(row["sgemm_at"].values()) > 0


def test_scaling_argument_is_checked(runner):
    for bad in ("2,1", "0,1", "1,1", "a"):
        with pytest.raises(SystemExit):
            runner.parse_args(["--scaling", bad])
    assert runner.parse_args(["--scaling", "1,2,16"]).scaling == [1, 2, 16]


def test_blas_kernel_note_and_coretype_argument(runner, monkeypatch):
    # The note appears only where the CPU has AVX-512 and OpenBLAS's kernels do not use it.
    narrow = {"cpu_avx512": True, "numpy_blas_avx512": False, "numpy_blas_kernels": "Haswell"}
    (line,) = runner._blas_kernel_warning(narrow)
    assert "Haswell" in line and "--openblas-coretype SkylakeX" in line
    assert runner._blas_kernel_warning(narrow | {"numpy_blas_avx512": True}) == []
    assert runner._blas_kernel_warning(narrow | {"cpu_avx512": False}) == []
    assert runner._blas_kernel_warning({}) == []

    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    runner._apply_openblas_coretype(["--cells", "lstm"])
    assert "OPENBLAS_CORETYPE" not in runner.os.environ
    runner._apply_openblas_coretype(["--openblas-coretype", "SkylakeX"])
    assert runner.os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"
    runner._apply_openblas_coretype(["--openblas-coretype=Zen"])
    assert runner.os.environ["OPENBLAS_CORETYPE"] == "Zen"


def _run_bench_script(name, argv, capsys):
    """Runs bench/<name>.py's main(argv) and returns its table rows (LSTM and GRU) as
    lists of stripped cells; main sets both libraries' thread counts, restored here."""
    pytest.importorskip("torch")
    pytest.importorskip("rnnfast")
    path = RUN_PY.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"rnnfast_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import rnnfast as rf
    import torch
    previous = rf.get_num_threads(), torch.get_num_threads()
    try:
        module.main(argv)
    finally:
        rf.set_num_threads(0)
        if rf.get_num_threads() != previous[0]:  # the session had set one explicitly
            rf.set_num_threads(previous[0])
        torch.set_num_threads(previous[1])
    return [[c.strip() for c in line.split("|")[1:-1]]
            for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| LSTM", "| GRU"))]


def test_tiny_small_batch_run(capsys):
    rows = _run_bench_script("small_batch", [
        "--cells", "lstm,gru", "--shapes", "8/16", "--batches", "1,3", "--steps", "3",
        "--repeats", "1", "--threads", "1"], capsys)
    assert [r[:3] for r in rows] == [[c, "8/16", str(b)] for c in ("LSTM", "GRU")
                                     for b in (1, 3)]
    for r in rows:  # times and ratios are positive numbers
        assert all(float(v) > 0 for v in r[3:9])


def test_tiny_padded_run(capsys):
    rows = _run_bench_script("padded", [
        "--cells", "lstm,gru", "--models", "mid,tagger", "--lengths", "full,uniform",
        "--repeats", "1", "--threads", "1", "--scale", "0.1"], capsys)
    assert [r[:3] for r in rows] == [
        [c, m, k] for c in ("LSTM", "GRU") for m in ("mid", "tagger") for k in ("full", "uniform")]
    for r in rows:  # token shares in (0, 1], times and ratios positive
        assert 0 < float(r[3]) <= 1
        assert all(float(v) > 0 for v in r[4:12])


def test_tiny_paced_run(capsys):
    rows = _run_bench_script("paced", [
        "--cells", "lstm,gru", "--hidden", "16", "--pauses", "0,1", "--steps", "2",
        "--threads", "1"], capsys)
    assert [r[:4] for r in rows] == [[c, "16", "0.01", p] for c in ("LSTM", "GRU")
                                     for p in ("0", "1")]
    for r in rows:  # times and ratios are positive numbers
        assert all(float(v) > 0 for v in r[4:8])


def test_tiny_shapes_run(capsys):
    rows = _run_bench_script("shapes", [
        "--cells", "lstm,gru", "--mode", "infer,train", "--batches", "2,5", "--hidden", "16,20",
        "--batch-hidden", "16", "--hidden-batch", "3", "--steps", "3", "--pairs", "1",
        "--threads", "1", "--torch"], capsys)
    assert [r[:4] for r in rows] == [
        [c, m, s, shape] for c in ("LSTM", "GRU") for m in ("infer", "train")
        for s, shapes in (("batch", ("B 2", "B 5")), ("hidden", ("H 16", "H 20")))
        for shape in shapes]
    for r in rows:  # ratios positive; per row or FLOP = ratio over the work's ratio
        ratio, per, tratio, tper = map(float, r[4:8])
        assert min(ratio, per, tratio, tper) > 0
        work = {"B 2": 2 / 4, "B 5": 5 / 4, "H 16": 1.0, "H 20": (20 / 16) ** 2}[r[3]]
        assert per == pytest.approx(ratio / work, abs=0.006)
        assert tper == pytest.approx(tratio / work, abs=0.006)
