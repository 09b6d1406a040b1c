"""Every kind of data the API takes scores exactly as the `miwv` command scores the same
records from a file: byte-identical `scores.jsonl`, and the selection given back in the
caller's type."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

import miwv
from conftest import MODELS, alpaca_records, chat_records, cli, read_jsonl, write_jsonl

RATIO = 0.25


def cli_run(tmp: Path, records: List[Dict[str, Any]]) -> Path:
    data = write_jsonl(tmp / "data.jsonl", records)
    out = tmp / "cli"
    cli("select", data, "-o", out, "--ratio", RATIO, "-m", MODELS["model"],
        "--embed-model", MODELS["embed_model"])
    return out


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("alpaca")
    records = alpaca_records(12)
    return records, cli_run(tmp, records), tmp


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("chat")
    records = chat_records(12)
    return records, cli_run(tmp, records), tmp


def same_scores(run: miwv.Run, cli_out: Path) -> None:
    assert (run.out / "scores.jsonl").read_bytes() == (cli_out / "scores.jsonl").read_bytes()


def selected_ids(cli_out: Path) -> List[str]:
    return [r["id"] for r in read_jsonl(cli_out / "selected.jsonl")]


def test_a_path(alpaca, tmp_path):
    records, cli_out, tmp = alpaca
    run = miwv.select(tmp / "data.jsonl", tmp_path / "run", ratio=RATIO, **MODELS)
    same_scores(run, cli_out)
    assert run.selected == tmp_path / "run" / "selected.jsonl"
    assert [r["id"] for r in read_jsonl(run.selected)] == selected_ids(cli_out)


def test_a_list_of_dicts(alpaca, tmp_path):
    records, cli_out, _ = alpaca
    run = miwv.select(records, tmp_path / "run", ratio=RATIO, **MODELS)
    same_scores(run, cli_out)
    assert run.selected == read_jsonl(cli_out / "selected.jsonl")
    assert all(any(s is r for r in records) for s in run.selected), "the caller's own dicts"


def test_a_pandas_dataframe(alpaca, tmp_path):
    pd = pytest.importorskip("pandas")
    records, cli_out, _ = alpaca
    frame = pd.DataFrame(records, index=[f"row{i}" for i in range(len(records))])
    run = miwv.select(frame, tmp_path / "run", ratio=RATIO, **MODELS)
    same_scores(run, cli_out)
    assert isinstance(run.selected, pd.DataFrame)
    assert list(run.selected["id"]) == selected_ids(cli_out)
    assert list(run.selected.index) == [f"row{i}" for i in run.selected_indices]
    scores = run.to_pandas()
    assert list(scores["id"]) == [r["id"] for r in records]
    assert scores["miwv"].notna().all()


def test_a_pyarrow_table(alpaca, tmp_path):
    import pyarrow as pa

    records, cli_out, _ = alpaca
    table = pa.Table.from_pylist(records)
    run = miwv.select(table, tmp_path / "run", ratio=RATIO, **MODELS)
    same_scores(run, cli_out)
    assert isinstance(run.selected, pa.Table)
    assert run.selected.column("id").to_pylist() == selected_ids(cli_out)
    assert run.scores.num_rows == len(records)
    assert run.scores.schema.field("miwv").type == pa.float64()
    assert run.scores.schema.field("reason").type == pa.string()


def test_a_hugging_face_dataset(chat, tmp_path):
    datasets = pytest.importorskip("datasets")
    records, cli_out, _ = chat
    dataset = datasets.Dataset.from_list(records)
    run = miwv.select(dataset, tmp_path / "run", ratio=RATIO, **MODELS)
    same_scores(run, cli_out)
    assert isinstance(run.selected, datasets.Dataset)
    assert run.selected["id"] == selected_ids(cli_out)
    assert run.selected[0]["conversations"] == records[run.selected_indices[0]]["conversations"]


def test_a_shuffled_dataset_scores_in_its_own_order(chat, tmp_path):
    datasets = pytest.importorskip("datasets")
    records, _, tmp = chat
    order = list(reversed(range(len(records))))
    dataset = datasets.Dataset.from_list(records).select(order)
    run = miwv.select(dataset, tmp_path / "run", ratio=RATIO, **MODELS)
    reversed_cli = cli_run(tmp_path, [records[i] for i in order])
    same_scores(run, reversed_cli)


def test_conversations_from_pandas_and_arrow(chat, tmp_path):
    pd = pytest.importorskip("pandas")
    import pyarrow as pa

    records, cli_out, _ = chat
    for name, data in [("pandas", pd.DataFrame(records)), ("arrow", pa.Table.from_pylist(records))]:
        run = miwv.select(data, tmp_path / name, ratio=RATIO, **MODELS)
        same_scores(run, cli_out)


def test_the_same_data_again_resumes_and_the_run_opens_from_its_directory(alpaca, tmp_path, caplog):
    import pyarrow as pa

    records, cli_out, _ = alpaca
    table = pa.Table.from_pylist(records)
    miwv.select(table, tmp_path / "run", ratio=RATIO, **MODELS)
    with caplog.at_level("INFO", logger="miwv"):
        again = miwv.select(table, tmp_path / "run", ratio=RATIO, **MODELS)
    assert any("resum" in r.getMessage() or "reus" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert len(list((tmp_path / "run").glob("data-*.parquet"))) == 1
    opened = miwv.Run(tmp_path / "run")
    assert opened.scores.equals(again.scores)
    assert opened.info["samples"] == len(records)
    assert opened.selected == tmp_path / "run" / "selected.parquet"
