"""Issue 14: run folders cannot break the app or the CLI. A malformed one is listed as
"unreadable: <why>" and the rest still work; links are never followed; long texts are
cut; user-derived text is shown as text, never as markdown."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from geoviz import cli

from geoviz.figures import plots
from geoviz.record.runs import RunWriter, list_runs, read_run, zip_run

ROOT = Path(__file__).resolve().parents[1]


def _good(root: Path, name: str) -> Path:
    writer = RunWriter(root, "sparsify", {"sparsify": {"sparsity": 0.5}}, name=name)
    for step in range(1, 4):
        writer.append({"step": step, "test_accuracy": 0.9, "sparsity": step / 10, "path_length": step * 0.1})
        writer.snapshot(step, torch.full((5,), float(step)))
    writer.write_summary({"accuracy": 0.9, "sparsity": 0.3, "end_reason": "reached", "baselines": {}})
    writer.close("finished", "done")
    return writer.dir


def _crafted(root: Path, name: str, files: dict[str, str]) -> None:
    folder = root / name
    folder.mkdir()
    files = {"config.json": '{"application": "sparsify"}', **files}
    for file, text in files.items():
        (folder / file).write_text(text)


# (folder name, its files, readable?) -- each as the issue found it
HOSTILE = [
    ("s-status-list", {"status.json": "[]"}, False),
    ("s-status-text-pid", {"status.json": '{"status": "running", "pid": "abc", "updated": "x"}'}, False),
    ("s-status-number", {"status.json": '{"status": 7}'}, False),
    ("s-config-deep", {"config.json": "[" * 200_000 + "]" * 200_000}, False),
    ("s-config-list", {"config.json": "[1, 2]"}, False),
    ("s-summary-list", {"summary.json": "[1]"}, False),
    ("s-steps-text", {"steps.jsonl": '{"step": 1}\n{"step": "abc"}\n'}, False),
    ("s-steps-bare", {"steps.jsonl": "1\n2\n3\n"}, False),
    ("s-steps-huge", {"steps.jsonl": '{"step": 1e308}\n'}, False),
    ("s-status-5mb", {"status.json": json.dumps({"status": "finished", "message": "x" * 5_000_000})}, False),
    ("s-parquet-junk", {"steps.parquet": "not parquet"}, False),
    ("s-summary-types", {"summary.json": '{"accuracy": "high", "sparsity": [1], "geodesic": [2], "end_reason": 5}',
                         "steps.jsonl": '{"step": 1, "test_accuracy": "x", "sparsity": {"a": 1}}\n',
                         "status.json": '{"status": "finished", "message": "[click](http://evil.example)"}'}, True),
    ("s-long-message", {"status.json": json.dumps({"status": "finished", "message": "y" * 100_000})}, True),
]


@pytest.fixture
def hostile(tmp_path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    _good(root, "a-good")
    for name, files, _ in HOSTILE:
        _crafted(root, name, files)
    linked = _good(tmp_path, "outside")  # a run folder elsewhere, linked in
    (root / "z-link-folder").symlink_to(linked)
    (root / "a-good" / "passwd").symlink_to("/etc/passwd")
    (root / "a-good" / "snapshots" / "up").symlink_to(tmp_path)
    _crafted(root, "s-config-link", {})
    (root / "s-config-link" / "config.json").unlink()
    (root / "s-config-link" / "config.json").symlink_to(linked / "config.json")
    return root


def test_every_hostile_folder_is_listed_and_the_good_one_still_works(hostile):
    runs = {r.name: r for r in list_runs(hostile)}
    assert "z-link-folder" not in runs  # a link is never listed
    assert runs["a-good"].state == "finished" and list(runs["a-good"].table["step"]) == [1, 2, 3]
    for name, _, readable in HOSTILE:
        run = runs[name]
        if readable:
            assert run.state != "unreadable", (name, run.message)
        else:
            assert run.state == "unreadable" and run.message.startswith("unreadable: "), (name, run.message)
            assert len(run.message) < 300
    assert runs["s-config-link"].state == "unreadable" and "link" in runs["s-config-link"].message
    assert len(runs["s-long-message"].message) <= 2000
    table = plots.runs_table(list(runs.values()))
    assert len(table) == len(runs)
    weird = table.set_index("run").loc["s-summary-types"]
    assert weird["test accuracy"] is None or weird["test accuracy"] != weird["test accuracy"]  # left out
    assert all(len(m) <= 200 for m in table["message"])


def test_zip_never_follows_a_link(hostile, tmp_path):
    dest = tmp_path / "zips"
    dest.mkdir()
    names = zipfile.ZipFile(zip_run(hostile / "a-good", dest)).namelist()
    assert "a-good/config.json" in names and "a-good/steps.jsonl" in names
    assert not any("passwd" in n or "/up" in n for n in names), names
    with pytest.raises(ValueError, match="link"):
        zip_run(hostile / "z-link-folder", dest)
    with pytest.raises(ValueError, match="link"):
        read_run(hostile / "z-link-folder")


def test_cli_runs_lists_every_folder_and_says_why(hostile, capsys):
    assert cli.main(["runs", "--out", str(hostile)]) == 0
    out = capsys.readouterr().out
    assert "a-good  finished" in out
    assert out.count("unreadable: ") == sum(1 for *_, readable in HOSTILE if not readable) + 1
    assert "z-link-folder" not in out


def test_runs_page_survives_every_hostile_folder(hostile, monkeypatch):
    monkeypatch.setenv("GEOVIZ_RUNS", str(hostile))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py")
    at.run()
    assert not at.exception, at.exception
    names = at.selectbox(key="runs:open").options
    assert "a-good" in names and "z-link-folder" not in names
    for name in ("s-summary-types", "s-status-5mb", "s-config-deep", "a-good"):
        at.selectbox(key="runs:open").set_value(name).run()
        assert not at.exception, (name, at.exception)
        shown = " ".join(m.value for m in at.markdown)
        assert "](http" not in shown  # the message's link is escaped text
        assert len(shown) < 20_000
