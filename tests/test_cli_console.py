"""`pcteleport` with no subcommand and `pcteleport replay`: clear one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcteleport.cli import main
from pcteleport.record_store import RecordStore
from tests.record_factory import constructed_run


@pytest.fixture
def no_sites(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("PCTELEPORT_SITES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PCTELEPORT_LAB_DIR", str(tmp_path / "lab"))
    return tmp_path


def test_no_arguments_without_sites_says_what_to_do(no_sites: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "no sites configured" in err and "pcteleport lab up" in err
    assert str(no_sites / "config" / "pcteleport" / "sites.toml") in err
    assert "pcteleport replay FILE" in err


def test_replay_of_a_missing_file_is_one_clear_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read record" in err and "nope.json" in err


def test_replay_refuses_a_bad_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = RecordStore(tmp_path).save(constructed_run())
    assert main(["replay", str(path), "--speed", "0"]) == 2
    assert "--speed must be above 0" in capsys.readouterr().err


def test_replay_of_a_file_that_is_not_a_record(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"vm": "web"}')
    assert main(["replay", str(bad)]) == 2
    assert "missing field 'run_id'" in capsys.readouterr().err


def test_replay_paths_expand_folders(tmp_path: Path) -> None:
    from pcteleport.ui.launch import replay_paths

    store = RecordStore(tmp_path / "runs")
    a = store.save(constructed_run(run_id="a", started_at=1_700_000_000.0))
    b = store.save(constructed_run(run_id="b", started_at=1_800_000_000.0))
    single = tmp_path / "x.json"
    assert replay_paths([str(tmp_path / "runs"), str(single)]) == [a, b, single]


def test_replay_of_an_empty_folder_says_so(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path)]) == 2
    assert "nothing to replay" in capsys.readouterr().err
