"""The relay event schema (teleport/events.py): what the relay writes, the service reads back."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from pcteleport.teleport import events
from pcteleport.teleport.counters import CodecCounters

counters = st.builds(CodecCounters, *[st.integers(0, 2**53) for _ in
                                      dataclasses.fields(CodecCounters)])
text = st.text(max_size=40)
stamp = {"role": st.sampled_from(["send", "recv"]),
         "t": st.floats(0, 1e6, allow_nan=False).map(lambda x: round(x, 3))}
any_event = st.one_of(
    st.builds(events.Listening, address=text, pid=st.integers(1, 2**22), **stamp),
    st.builds(events.MapLoaded, pages=st.integers(0, 2**40),
              seconds=st.floats(0, 1e4, allow_nan=False), refresh=st.integers(0, 1000),
              **stamp),
    st.builds(events.Connected, side=st.sampled_from(["qemu", "wan"]), peer=text, **stamp),
    st.builds(events.Refused, peer=text, reason=text, **stamp),
    st.builds(events.Notice, message=text, **stamp),
    st.builds(events.Stats, counters=counters, guest_rate_bps=st.integers(0, 2**40),
              wan_rate_bps=st.integers(0, 2**40), **stamp),
    st.builds(events.Summary, counters=counters,
              cpu_s=st.floats(0, 1e5, allow_nan=False).map(lambda x: round(x, 3)), **stamp),
    st.builds(events.Failed, message=text, **stamp),
)


@given(any_event)
def test_every_event_round_trips(ev):
    assert events.decode(events.encode(ev)) == ev


def test_the_wire_form_is_flat_json_named_by_event():
    line = events.encode(events.Summary(counters=CodecCounters(guest_bytes=10, pages_sent=2),
                                        role="send", t=1.5))
    raw = json.loads(line)
    assert raw["event"] == "summary" and raw["role"] == "send" and raw["t"] == 1.5
    assert raw["guest_bytes"] == 10 and raw["pages_sent"] == 2 and "counters" not in raw


def test_a_summary_without_cpu_time_reads_as_zero():
    """A relay from before summaries said their CPU time: its summary still reads."""
    line = '{"event": "summary", "role": "send", "t": 2.0, "guest_bytes": 10}'
    ev = events.decode(line)
    assert isinstance(ev, events.Summary) and ev.cpu_s == 0.0
    assert ev.counters.guest_bytes == 10


def test_lines_that_are_not_ours_decode_to_none():
    for line in ("", "not json", "[1, 2]", '{"event": "from-a-newer-relay"}',
                 '{"event": "listening", "address": "x", "pid": "12"}',  # pid of the wrong type
                 '{"event": "summary", "guest_bytes": -1.5}',
                 '{"event": "error"}',  # no message
                 "[" * 100_000):
        assert events.decode(line) is None, line


def test_the_relay_writes_events_the_service_reads(tmp_path):
    """The relay's Emitter and the service's RelayEnd use the one schema."""
    import io

    from pcteleport.sites.libvirt.relays import RelayEnd
    from pcteleport.teleport.relay import Emitter

    out = io.StringIO()
    emit = Emitter("recv", out)
    emit(events.Listening(address="10.0.0.1:5000", pid=42))
    emit(events.Stats(counters=CodecCounters(pages_teleported=7), wan_rate_bps=8))
    emit(events.Failed(message="replica differs at block 3"))
    end = RelayEnd(site=None, role="recv")  # type: ignore[arg-type]  # no site needed here
    for line in out.getvalue().splitlines():
        end.on_line(line)
    end.on_line("a stray print")
    assert end.pid() == 42
    assert isinstance(end.latest, events.Stats) and end.latest.counters.pages_teleported == 7
    assert end.event(events.Failed).message == "replica differs at block 3"
    assert [type(e) for e in end.events] == [events.Listening, events.Stats, events.Failed]


def test_a_killed_relay_is_named_not_its_peer_that_lost_the_connection():
    """The send relay killed by a signal: the recv relay says the WAN connection closed first;
    the failure the operator reads names the killed one."""
    import threading

    from pcteleport.sites.libvirt.relays import RelayPair

    class Site:
        def __init__(self, name: str) -> None:
            self.name = name

    class Ended:
        def __init__(self, status: int | None, signal: str | None = None) -> None:
            self.exit_status, self.exit_signal = status, signal
            self.stderr_lines: list[str] = []
            self.done = threading.Event()
            self.done.set()

        def how_it_ended(self) -> str:
            return f"killed by signal {self.exit_signal}" if self.exit_signal else "exit"

    pair = RelayPair(Site("tokyo"), Site("osaka"))  # type: ignore[arg-type]
    pair.recv.proc = Ended(1)  # type: ignore[assignment]
    pair.recv.on_line(events.encode(events.Failed(
        message="the WAN connection closed before the end of the stream")))
    pair.send.proc = Ended(None)  # type: ignore[assignment]  # (not ended yet)
    assert pair.failure() == ("relay recv at osaka: the WAN connection closed before the end "
                              "of the stream")
    pair.send.proc = Ended(None, "KILL")  # type: ignore[assignment]
    assert pair.failure() == "relay send at tokyo: killed by signal KILL"
