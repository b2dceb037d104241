"""Where the prediction's goodput comes from: earlier runs over the same link only."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcteleport.record_store import RecordStore
from pcteleport.records import WanLink
from pcteleport.sites.libvirt.prediction import measured_goodput, same_link
from tests.record_factory import constructed_run

DEFAULT = WanLink("osaka", "default", 12.5e6, 50.4)


def _run(store: RecordStore, run_id: str, profile: str, rtt_ms: float, rate: float,
         at: float) -> None:
    r = constructed_run(run_id=run_id, started_at=at, seconds=8)
    r.wan = WanLink("osaka", profile, None, rtt_ms)
    for s in r.samples:
        s.wan_rate_bytes_per_s = rate
    store.save(r)


def test_runs_on_another_profile_or_rtt_do_not_count(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    _run(store, "slow1", "default", 50.6, 11.9e6, 1.0)
    # newer runs on the fast link, and one labelled "default" whose RTT says it was fast
    _run(store, "fast1", "fast", 10.3, 98e6, 2.0)
    _run(store, "fast2", "default", 10.4, 120e6, 3.0)
    assert measured_goodput(store, "tokyo", "osaka", DEFAULT) == pytest.approx(11.9e6)
    fast = WanLink("osaka", "fast", 125e6, 10.4)
    assert measured_goodput(store, "tokyo", "osaka", fast) == pytest.approx(98e6)


def test_the_goodput_never_exceeds_the_profiles_rate(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    _run(store, "a", "default", 50.4, 13.5e6, 1.0)  # counters' bursts above the shaped rate
    assert measured_goodput(store, "tokyo", "osaka", DEFAULT) == pytest.approx(12.5e6)


def test_no_link_no_runs_to_go_by(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    _run(store, "a", "default", 50.4, 11.9e6, 1.0)
    assert measured_goodput(store, "tokyo", "osaka", None) is None
    assert not same_link(None, DEFAULT)
    assert same_link(WanLink("osaka", "default", None, None), DEFAULT)
