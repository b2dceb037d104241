"""The pure part of a migration's telemetry (sites/libvirt/migration/stats.py)."""

from __future__ import annotations

from pcteleport.records import PageCounts, Phase
from pcteleport.sites.libvirt.migration import stats
from pcteleport.teleport import events
from pcteleport.teleport.counters import CodecCounters

JOB = {"memory_total": 1000 * 4096, "memory_remaining": 250 * 4096, "memory_bps": 12_000_000,
       "memory_dirty_rate": 100, "memory_page_size": 4096, "memory_constant": 300,
       "memory_normal": 450, "memory_iteration": 2, "downtime": 310}


def test_a_sample_from_libvirt_alone():
    s = stats.build_sample(3.5, Phase.ITERATIVE, JOB, wan_rate=5e6)
    assert s.t == 3.5 and s.phase == Phase.ITERATIVE and s.iteration == 2
    assert s.remaining_bytes == 250 * 4096 and s.total_bytes == 1000 * 4096
    assert s.dirty_rate_bytes_per_s == 100 * 4096  # libvirt gives pages/s
    assert s.pages == PageCounts(teleported=0, zero=300, sent=450)
    assert s.expected_downtime_ms == 310.0 and s.wan_rate_bytes_per_s == 5e6


def test_the_relays_counts_replace_libvirts():
    relay = events.Stats(counters=CodecCounters(pages_teleported=600, pages_zero=300,
                                                pages_sent=100))
    s = stats.build_sample(1.0, Phase.ITERATIVE, JOB, wan_rate=-3, relay=relay)
    assert s.pages == PageCounts(600, 300, 100)
    # pages the map named whose base blocks differ (written since the base): sent, counted
    relay = events.Stats(counters=CodecCounters(pages_teleported=600, pages_sent=100,
                                                pages_refused=40))
    s = stats.build_sample(1.0, Phase.ITERATIVE, JOB, wan_rate=0, relay=relay)
    assert s.pages == PageCounts(600, 0, 100, written_since_base=40)
    assert s.wan_rate_bytes_per_s == 0.0  # a counter read out of order is no negative rate


def test_a_job_without_stats_yet():
    s = stats.build_sample(0.5, Phase.ITERATIVE, {}, wan_rate=0.0)
    assert s.total_bytes == 0 and s.expected_downtime_ms is None and s.pages == PageCounts()
    assert stats.progress_line(s, None).endswith("[0%]")


def test_the_progress_line_says_when_the_remainder_grew():
    s = stats.build_sample(9.0, Phase.ITERATIVE, JOB, wan_rate=1e6)
    assert "remaining grew" not in stats.progress_line(s, remaining_min=300 * 4096)
    line = stats.progress_line(s, remaining_min=100 * 4096)
    assert "remaining grew to 1000.0 KiB (iteration 2: the guest dirtied memory)" in line
    assert line.endswith("[75%]")


def test_wan_rate_between_readings():
    r = stats.WanRate(None, 0.0)
    assert r.update(1000, 1.0) == 0.0  # the first reading has nothing before it
    assert r.update(3000, 2.0) == 2000.0
    assert r.update(3000, 2.0) == 0.0  # the same reading again: no new rate
    assert r.update(None, 3.0) == 0.0
    assert r.update(7000, 4.0) == 2000.0  # measured from the last good reading


def test_final_counts():
    done = {"memory_processed": 5_000_000, "memory_constant": 10, "memory_normal": 20}
    summary = events.Summary(counters=CodecCounters(guest_bytes=4_000_000, pages_teleported=5,
                                                    pages_zero=6, pages_sent=7))
    assert stats.final_counts(done, None) == (5_000_000, PageCounts(0, 10, 20))
    assert stats.final_counts(done, summary) == (5_000_000, PageCounts(5, 6, 7))
    assert stats.final_counts({}, summary) == (4_000_000, PageCounts(5, 6, 7))
    assert stats.final_counts({}, None) == (0, PageCounts())


def _stats(t: float, sent: int, wan: int, wan_bps: int, teleported: int = 0) -> events.Stats:
    return events.Stats(counters=CodecCounters(pages_sent=sent, wan_bytes=wan,
                                               pages_teleported=teleported),
                        wan_rate_bps=wan_bps, t=t)


def test_the_switch_over_is_sized_by_what_the_wan_drains():
    from pcteleport.sites.libvirt.migration.switchover import DrainRate

    d = DrainRate(link_bytes_per_s=None)
    assert d.update(_stats(1, 0, 0, 0)) is None  # nothing crossed yet: no rate to tell
    # 100 Mbit/s on the WAN: the remainder is sized at 12.5 MB/s, however well the first
    # pass's pages compressed (1000 pages in 1 MB: 4:1) — the remainder is other pages.
    assert d.update(_stats(2, 1000, 1_024_000, 100_000_000)) == 12_500_000
    # A burst of 500,000 teleported pages (2 GB of guest memory in a second, a few WAN bytes
    # each) does not raise it either.
    assert d.update(_stats(3, 1010, 1_100_000, 100_000_000, teleported=500_000)) == 12_500_000
    # The best rate of the last seconds counts, and a measured link faster than that.
    assert d.update(_stats(4, 1020, 1_200_000, 40_000_000)) == 12_500_000
    assert DrainRate(link_bytes_per_s=20e6).update(_stats(1, 0, 0, 8e6)) == 20e6


def test_qemu_is_told_again_only_when_the_rate_moved():
    from pcteleport.sites.libvirt.migration.switchover import DrainRate

    d = DrainRate()
    assert d.worth_telling(10e6)
    d.applied = 10e6
    assert not d.worth_telling(10.3e6) and d.worth_telling(11e6)


def test_relay_cpu_per_gb_of_guest_memory():
    pages = CodecCounters(pages_teleported=100_000, pages_zero=122_070, pages_sent=22_070)
    send = events.Summary(counters=pages, cpu_s=0.8)
    recv = events.Summary(counters=CodecCounters(pages_teleported=100_000), cpu_s=0.5)
    cpu = stats.relay_cpu(send, recv)
    assert cpu is not None
    assert cpu.guest_memory_bytes == 244_140 * 4096  # the stream's pages, as sent
    assert cpu.send_s == 0.8 and cpu.recv_s == 0.5
    assert cpu.send_s_per_gb == round(0.8 / (244_140 * 4096 / 1e9), 3)
    assert cpu.recv_s_per_gb == round(0.5 / (244_140 * 4096 / 1e9), 3)
    # a relay that did not say (older, or no summary) gives no figure rather than a wrong one
    assert stats.relay_cpu(send, None) is None
    assert stats.relay_cpu(send, events.Summary(counters=pages)) is None
    assert stats.relay_cpu(events.Summary(counters=CodecCounters(), cpu_s=0.1), recv) is None
def test_the_sampler_polls_once_a_second_and_never_in_a_burst():
    c = stats.Cadence(start=100.0)
    assert c.due_in(100.0) == 0.5  # a first sample soon
    seen = []
    now = 100.0
    for took in (0.01, 0.02, 0.01, 56.9, 0.01, 0.01):  # the fourth poll blocked ~57 s
        now += c.due_in(now)
        now += took
        seen.append(round(now, 2))
        c.polled(now)
    # a steady second apart, whatever each poll took; after the blocked one, half a second
    # from its return, then a steady second again: never two samples 10 ms apart
    assert seen == [100.51, 101.52, 102.51, 160.4, 160.91, 161.91]
    assert c.due_in(seen[-1] + 2.0) == 0.0  # late: due now, once


def test_a_stall_counts_from_the_last_time_any_byte_moved():
    s = stats.Stall(now=100.0)
    assert s.still_for(0, 100.0) == 0.0  # the first reading is progress
    assert s.still_for(0, 110.0) == 10.0
    assert s.still_for(5, 111.0) == 0.0  # disk or memory moved
    assert s.still_for(5, 140.5) == 29.5
    assert s.still_for(4, 141.0) == 30.0  # a smaller sum (a counter reset) is no progress


MiB = 2**20


def _feed(conv: stats.Convergence, passes: list[int], seconds_per_pass: float,
          samples_per_pass: int = 5) -> float:
    """Samples as libvirt gives them: each pass starts at its size and falls within it."""
    now = 0.0
    for n, size in enumerate(passes, start=1):
        for k in range(samples_per_pass):
            conv.update(n, size - k * size // samples_per_pass, now)
            now += seconds_per_pass / samples_per_pass
    return now


def test_passes_that_shrink_converge():
    conv = stats.Convergence()
    now = _feed(conv, [256 * MiB, 96 * MiB, 60 * MiB, 40 * MiB, 25 * MiB, 15 * MiB, 9 * MiB,
                       5 * MiB, 3 * MiB, 2 * MiB, MiB // 2], 20)
    assert now > 200 and not conv.stuck(now)


def test_passes_that_stay_as_big_never_converge():
    """The lab's run that copied 6 GiB for a 256 MiB guest: every pass ~96 MiB."""
    conv = stats.Convergence()
    now = _feed(conv, [256 * MiB] + [96 * MiB] * 10, 20)
    assert now > 180 and not conv.stuck(now)  # 11 passes: too few to say
    now = _feed(conv, [256 * MiB] + [96 * MiB] * 12, 20)
    assert conv.stuck(now) and conv.typical_pass() == 96 * MiB


def test_a_late_shrink_is_progress():
    conv = stats.Convergence()
    now = _feed(conv, [256 * MiB] + [96 * MiB] * 11 + [60 * MiB], 20)
    assert not conv.stuck(now)


def test_fast_passes_need_three_minutes_before_the_verdict():
    conv = stats.Convergence()
    now = _feed(conv, [8 * MiB] * 100, 1)
    assert now < 180 and not conv.stuck(now)
    assert conv.stuck(180.0)


def test_auto_converge_gets_more_passes():
    conv = stats.Convergence.for_run(auto_converge=True)
    now = _feed(conv, [256 * MiB] + [96 * MiB] * 12, 20)
    assert not conv.stuck(now)
    now = _feed(conv, [256 * MiB] + [96 * MiB] * 30, 20)
    assert conv.stuck(now)


def test_the_disks_copy_is_not_a_pass():
    conv = stats.Convergence()
    for t in range(300):
        conv.update(0, 50 * MiB, float(t))
    assert not conv.stuck(300.0) and conv.started_at is None


def test_the_message_says_why_and_what_helps():
    s = stats.build_sample(300.0, Phase.ITERATIVE, {**JOB, "memory_iteration": 9,
                                                    "memory_dirty_rate": 2095,
                                                    "memory_bps": 5 * MiB}, wan_rate=5e6)
    conv = stats.Convergence()
    _feed(conv, [256 * MiB] + [96 * MiB] * 12, 20)
    text = stats.not_converging(s, conv, auto_converge=False)
    assert text.startswith("not converging: after 9 passes over its memory the guest still "
                           "dirtied 96.0 MiB between passes (it writes 8.2 MiB/s, the "
                           "migration moves 5.0 MiB/s)")
    assert "--auto-converge slows the guest" in text and "\n" not in text
    assert "even with auto-converge" in stats.not_converging(s, conv, auto_converge=True)


def test_a_bigger_guest_gets_longer_as_nova_gives_it():
    conv = stats.Convergence()
    now = _feed(conv, [256 * MiB] + [96 * MiB] * 12, 20)  # 260 s of passes that never shrink
    assert conv.stuck(now, ram_bytes=256 * MiB)  # 205 s for 256 MiB
    assert not conv.stuck(now, ram_bytes=2**30)  # 800 s for 1 GiB
    assert conv.stuck(800.0, ram_bytes=2**30)
