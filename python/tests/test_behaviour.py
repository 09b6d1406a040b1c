"""The API behaves as Python code expects: exceptions by kind carrying the command's
messages, Ctrl-C as a clean stop that a second call resumes, the GIL released while a run
works, progress and logging through Python, and the stage commands."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import miwv
from conftest import MODELS, alpaca_records, cli, write_jsonl


# --- errors ------------------------------------------------------------------------------


def test_bad_options_raise_the_command_lines_message(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    shell = cli("select", data, "-o", tmp_path / "cli", "--ratio", "2", check=False)
    assert shell.returncode == 2
    with pytest.raises(miwv.OptionsError) as raised:
        miwv.select(data, tmp_path / "run", ratio=2, **MODELS)
    assert str(raised.value) == "--ratio must be in (0, 1], got 2"
    assert "error: --ratio must be in (0, 1], got 2" in shell.stderr
    assert isinstance(raised.value, ValueError)
    with pytest.raises(miwv.OptionsError, match="ctx-size"):
        miwv.select(data, tmp_path / "run", ctx_size="big", **MODELS)
    with pytest.raises(miwv.OptionsError, match="unknown option 'ratios' for select"):
        miwv.select(data, tmp_path / "run", ratios=[0.1], **MODELS)
    assert not (tmp_path / "run" / "scores.jsonl").exists()


def test_bad_data_raises_data_error_naming_file_line_and_field(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n"
    )
    with pytest.raises(miwv.DataError) as raised:
        miwv.select(data, tmp_path / "run", **MODELS)
    shell = cli("select", data, "-o", tmp_path / "cli", check=False)
    message = str(raised.value)
    assert "bad.jsonl" in message and "line 2" in message and "output" in message, message
    assert f"miwv: error: {message}" in shell.stderr
    with pytest.raises(miwv.DataError, match="no records"):
        miwv.select([], tmp_path / "empty", **MODELS)
    with pytest.raises(TypeError, match="list of dicts"):
        miwv.select(42, tmp_path / "run", **MODELS)


def test_the_subcommands_that_print_are_refused_before_running(tmp_path):
    # They print what they find rather than return it: the `miwv` command runs them.
    for args in (["doctor", "d.json"], ["devices"], ["completions", "bash"], ["bench", "d.json"]):
        with pytest.raises(miwv.OptionsError, match="runs from the miwv command only"):
            miwv._native.run(args, lambda *event: None, logging.INFO)


def test_a_bad_model_raises_model_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    with pytest.raises(miwv.ModelError, match="model.gguf"):
        miwv.select(data, tmp_path / "run", model=fake, embed_model=MODELS["embed_model"])
    with pytest.raises(miwv.ModelError, match="missing.gguf"):
        miwv.select(data, tmp_path / "run", model=tmp_path / "missing.gguf")


def test_a_run_locked_by_another_raises_miwv_error(tmp_path):
    # Another process holds the run's lock without any timing: its data is a named pipe that
    # nothing writes, so it blocks reading the data while it holds the lock.
    blocked = tmp_path / "blocked.jsonl"
    os.mkfifo(blocked)
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    out = tmp_path / "run"
    script = _script(f"""
        import miwv
        miwv.select({str(blocked)!r}, {str(out)!r}, progress=False, model={str(MODELS['model'])!r},
                    embed_model={str(MODELS['embed_model'])!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        lock = out / "checkpoint" / "locks" / "run.lock"
        holder = f'"pid":{child.pid}'
        _wait_for(lambda: child.poll() is not None or (lock.exists() and holder in lock.read_text()))
        assert child.poll() is None, child.stderr.read()
        with pytest.raises(miwv.MiwvError) as raised:
            miwv.select(data, out, **MODELS)
        assert type(raised.value) is miwv.MiwvError
        assert "miwv select" in str(raised.value) and str(child.pid) in str(raised.value), raised.value
    finally:
        child.kill()
        child.wait(timeout=60)


# --- Ctrl-C ------------------------------------------------------------------------------


def _script(body: str) -> str:
    return textwrap.dedent(body)


def _wait_for(condition, seconds: float = 240) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.02)


INTERRUPTIBLE = dict(ctx_size=512, batch_size=512, ubatch_size=256, checkpoint_tokens=1, ratio=0.25)


def test_ctrl_c_stops_with_the_checkpoint_kept_and_a_second_call_resumes(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(12))
    out = tmp_path / "run"
    # One worker saves segments in order, so the first checkpoint leaves most of the plan to do.
    options = {**INTERRUPTIBLE, "workers": 1, **{k: str(v) for k, v in MODELS.items()}}
    script = _script(f"""
        import logging, sys, miwv
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        try:
            miwv.select({str(data)!r}, {str(out)!r}, progress=False, **{options!r})
        except miwv.Interrupted as e:
            assert isinstance(e, KeyboardInterrupt)
            print("INTERRUPTED", e)
            sys.exit(3)
        print("FINISHED")
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    losses = out / "checkpoint" / "losses.jsonl"
    _wait_for(lambda: child.poll() is not None or (losses.exists() and len(losses.read_text().splitlines()) >= 2))
    assert child.poll() is None, "finished before it could be interrupted"
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 3, stdout + stderr
    assert "run the same command again to resume" in stdout, stdout
    assert not (out / "scores.jsonl").exists()
    saved = len(losses.read_text().splitlines())
    assert saved >= 2

    # The second call resumes, and ends where an uninterrupted run of the command ends.
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0 and "FINISHED" in done.stdout, done.stdout + done.stderr
    assert "resuming" in done.stdout, done.stdout
    reference = tmp_path / "cli"
    flags = []
    for key, value in INTERRUPTIBLE.items():
        flags += ["--" + key.replace("_", "-"), value]
    cli("select", data, "-o", reference, "-m", MODELS["model"], "--embed-model", MODELS["embed_model"], *flags)
    assert (out / "scores.jsonl").read_bytes() == (reference / "scores.jsonl").read_bytes()


# --- the GIL, progress and logging -------------------------------------------------------


def test_the_gil_is_released_progress_and_logs_reach_python(tmp_path, caplog):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(8))
    ticks = []
    running = threading.Event()
    running.set()

    def tick() -> None:
        while running.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    seen = []
    started = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="miwv"):
            miwv.select(data, tmp_path / "run", progress=lambda *event: seen.append(event), **MODELS)
    finally:
        running.clear()
        ticker.join()
    took = time.monotonic() - started
    # A thread holding the GIL for the run would leave the ticker a handful of ticks.
    # (A tenth of the ticks a free thread makes, for a busy machine.)
    assert len(ticks) > 0.1 * took / 0.01, (len(ticks), took)

    phases = [e[0] for e in seen]
    assert {"embedding", "neighbours", "scoring"} <= set(phases), phases
    last_scoring = [e for e in seen if e[0] == "scoring"][-1]
    assert last_scoring[1] == last_scoring[2] and last_scoring[3] == "tokens", last_scoring
    embedding = [e for e in seen if e[0] == "embedding"]
    assert embedding[-1][1:] == (8, 8, "samples"), embedding

    names = {r.name for r in caplog.records}
    assert "miwv.pipeline" in names, names
    assert any("read dataset" in r.getMessage() and "samples=8" in r.getMessage() for r in caplog.records)
    assert all("\x1b[" not in r.getMessage() for r in caplog.records), "no escape codes"


def test_without_a_terminal_nothing_is_drawn(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    script = _script(f"""
        import miwv
        miwv.select({str(data)!r}, {str(tmp_path / 'run')!r}, model={str(MODELS['model'])!r},
                    embed_model={str(MODELS['embed_model'])!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # No bars in a pipe, and Python's logging shows only warnings by default.
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr, done.stderr
    assert "scoring" not in done.stderr, done.stderr


# --- stages, compare, report -------------------------------------------------------------


def test_the_stages_give_selects_scores_and_compare_and_report_read_them(tmp_path):
    records = alpaca_records(8)
    whole = miwv.select(records, tmp_path / "whole", ratio=0.25, **MODELS)
    staged = tmp_path / "staged"
    for k in range(2):
        assert "embedded" in miwv.embed(records, staged, shard=f"{k}/2", ratio=0.25, **MODELS)
    assert "neighbour" in miwv.neighbours(staged)
    estimate = miwv.plan(staged, calibrate_tokens=0)
    assert estimate["samples"] == 8, estimate
    for k in range(2):
        miwv.score(staged, shard=f"{k}/2", progress=False)
    merged = miwv.merge(staged)
    assert (merged.out / "scores.jsonl").read_bytes() == (whole.out / "scores.jsonl").read_bytes()

    comparison = miwv.compare(whole, merged.out, ratios=[0.25, 0.5])
    assert comparison["spearman"] == pytest.approx(1.0), comparison
    files = miwv.report(whole, top=3)
    assert Path(files["html"]).exists()


def test_the_keywords_are_the_command_lines_flags():
    from miwv import options

    for subcommand, typed in [
        ("select", options.SelectOptions),
        ("embed", options.EmbedOptions),
        ("score", options.ScoreOptions),
        ("merge", options.MergeOptions),
    ]:
        assert set(typed.__annotations__) == set(options.keywords(subcommand)), subcommand
    assert options.command_line("select", ["d.jsonl"], {"kv_reuse": False, "ctx_size": 4096}) == [
        "select", "d.jsonl", "--no-kv-reuse", "--ctx-size", "4096"
    ]
    assert options.command_line("compare", ["-a", "b"], {"ratios": [0.1, 0.2]}) == [
        "compare", "./-a", "b", "--ratios", "0.1,0.2"
    ]


def test_openmp_waits_as_the_binary_makes_it_wait():
    from miwv import _native, _native_env

    assert _native_env.OPENMP_WAIT == tuple(_native.OPENMP_WAIT)
    assert list(_native_env.OPENMP_WAIT_VARIABLES) == list(_native.OPENMP_WAIT_VARIABLES)
    script = "import os, miwv; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in _native_env.OPENMP_WAIT_VARIABLES}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == _native_env.OPENMP_WAIT[1]


def test_the_installed_command_is_the_command_line(tmp_path):
    assert cli("--version").stdout.startswith("miwv ")
    assert "Usage: miwv select" in cli("select", "--help").stdout
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    bad = cli("select", data, "--ratio", "0", check=False)
    assert bad.returncode == 2 and "--ratio must be in (0, 1], got 0" in bad.stderr


def test_the_scores_table_has_one_schema(tmp_path):
    # Every sample unscorable and date-like ids: the columns keep their types.
    row = {"id": "2024-01-01", "index": 0, "miwv": None, "loss_zero_shot": None,
           "loss_one_shot": None, "reason": "too_long", "neighbour_id": None,
           "neighbour_index": None, "similarity": None, "selected": False, "rank": None}
    (tmp_path / "scores.jsonl").write_text(json.dumps(row) + "\n")
    scores = miwv.Run(tmp_path).scores
    assert scores.column_names == list(row)
    types = {field.name: str(field.type) for field in scores.schema}
    assert types["id"] == "string" and types["neighbour_id"] == "string", types
    assert types["miwv"] == "double" and types["rank"] == "int64", types
    assert miwv.Run(tmp_path).selected_indices == []


def test_the_api_is_typed_for_editors_and_checkers(tmp_path):
    # The installed package type-checks, and a checker catches a misspelt option and a
    # value of the wrong type, as an editor would.
    snippet = tmp_path / "use.py"
    snippet.write_text(
        "import miwv\n"
        "run = miwv.select('d.jsonl', 'out', ctx_sise=4096)\n"
        "run = miwv.select('d.jsonl', 'out', ratio='high')\n"
        "ok = miwv.select([{'instruction': 'a', 'output': 'b'}], 'out', ratio=0.1, kv_reuse=False)\n"
    )
    mypy = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental"]
    # `-p`: the installed package, found as an editor finds it (it ships py.typed).
    clean = subprocess.run([*mypy, "-p", "miwv"], capture_output=True, text=True, cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout
    caught = subprocess.run([*mypy, str(snippet)], capture_output=True, text=True, cwd=tmp_path)
    assert 'Unexpected keyword argument "ctx_sise"' in caught.stdout, caught.stdout
    assert 'Argument "ratio" to "select" has incompatible type "str"' in caught.stdout, caught.stdout
    assert "use.py:4" not in caught.stdout, caught.stdout
