"""Guest memory on the WAN is encrypted (issue 16): AES-256-GCM frames keyed per migration and
per direction; `--insecure` keeps MAC-only frames for comparison. Unit level, then through the
real relays with a recording proxy standing in for the WAN."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcteleport.teleport import wan

SECRET = os.urandom(32)
MARKER = b"customer-card-4111-1111-1111-1111"


def frames(payloads: list[bytes], **kw) -> bytes:
    out = io.BytesIO()
    w = wan.FrameWriter(out.write, **kw)
    for p in payloads:
        w.send(wan.DATA, p)
    return out.getvalue()


def read_all(data: bytes, **kw) -> list[bytes]:
    r = wan.FrameReader(io.BytesIO(data).read, **kw)
    out = []
    while (f := r.next()) is not None:
        out.append(f.payload)
    return out


def test_encrypted_frames_hide_the_payload_and_open_with_the_same_key():
    payloads = [MARKER * 100, b"", MARKER]
    wire = frames(payloads, secret=SECRET)
    assert MARKER not in wire
    assert read_all(wire, secret=SECRET) == payloads
    # --insecure: authenticated, in clear (what the issue measured: the marker 3,753 times)
    clear = frames(payloads, secret=SECRET, encrypt=False)
    assert MARKER in clear and len(clear) == len(wire)
    assert read_all(clear, secret=SECRET, encrypt=False) == payloads


@pytest.mark.parametrize("how", ["other secret", "other direction", "one end insecure"])
def test_a_frame_that_does_not_open_is_named(how):
    wire = frames([MARKER], secret=SECRET)
    kw = {"other secret": {"secret": os.urandom(32)},
          "other direction": {"secret": SECRET, "direction": wan.BACK},
          "one end insecure": {"secret": SECRET, "encrypt": False}}[how]
    with pytest.raises(wan.WanError, match="WAN frame 0 failed authentication"):
        read_all(wire, **kw)


def test_altered_replayed_or_reordered_frames_are_caught():
    wire = bytearray(frames([b"a" * 100, b"b" * 100], secret=SECRET))
    flipped = bytearray(wire)
    flipped[20] ^= 1  # inside frame 0's body
    with pytest.raises(wan.WanError, match="frame 0 failed authentication"):
        read_all(bytes(flipped), secret=SECRET)
    size = len(wire) // 2
    first, second = bytes(wire[:size]), bytes(wire[size:])
    with pytest.raises(wan.WanError, match="expected frame 1, got 0"):
        read_all(first + first, secret=SECRET)  # a replay
    with pytest.raises(wan.WanError, match="expected frame 0, got 1"):
        read_all(second + first, secret=SECRET)
    # the header is bound to the body: a frame's type changed in flight does not open
    retyped = bytearray(wire)
    retyped[3] = wan.ERROR
    with pytest.raises(wan.WanError, match="failed authentication"):
        read_all(bytes(retyped), secret=SECRET)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
       framing=st.sampled_from([{}, {"secret": SECRET}, {"secret": SECRET, "encrypt": False}]),
       views=st.booleans())
def test_a_payload_sent_in_parts_is_the_frame_of_the_joined_payload(parts, framing, views):
    """The encoder hands a DATA frame's kind byte and its compressed bytes as two parts: the
    frame on the wire is the one of the joined payload, byte for byte, in every framing."""
    given = [memoryview(p) for p in parts] if views else parts
    out = io.BytesIO()
    wan.FrameWriter(out.write, **framing).send(wan.DATA, *given)
    assert out.getvalue() == frames([b"".join(parts)], **framing)
    assert read_all(out.getvalue(), **framing) == [b"".join(parts)]


def test_each_direction_has_its_own_key():
    """The two relays number their frames from 0 alike: with one key they would seal two
    frames under the same nonce. The bodies of frame 0 differ per direction."""
    fwd = frames([MARKER], secret=SECRET)
    back = frames([MARKER], secret=SECRET, direction=wan.BACK)
    assert fwd[:wan.HEADER.size] == back[:wan.HEADER.size] and fwd != back


class RecordingWan(threading.Thread):
    """A TCP proxy between the relays that keeps every byte crossing it, both ways."""

    def __init__(self, to_port: int) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.to_port = to_port
        self.seen = bytearray()
        self.lock = threading.Lock()

    def run(self) -> None:
        a, _ = self.server.accept()
        b = socket.create_connection(("127.0.0.1", self.to_port))
        pumps = [threading.Thread(target=self._pump, args=(x, y), daemon=True)
                 for x, y in ((a, b), (b, a))]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join(60)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                with self.lock:
                    self.seen += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("insecure", [False, True])
def test_guest_memory_crosses_the_relays_wan_encrypted(tmp_path, insecure):
    """A guest page holding a marker, through the real relays: nowhere on the wire unless the
    relays were told --insecure."""
    import random

    from tests.streamgen import PAGE, build_stream
    from tests.test_relay import FakeDestQemu, Relay, free_port, source_qemu

    rng = random.Random(9)
    page = (MARKER * (PAGE // len(MARKER) + 1))[:PAGE]
    recs = [("pc.ram", i * PAGE, page if i % 2 else rng.randbytes(PAGE)) for i in range(40)]
    stream = build_stream([recs])
    disk = tmp_path / "disk.raw"
    disk.write_bytes(rng.randbytes(16 * PAGE))
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(24).hex())
    extra = ["--insecure"] if insecure else []
    qemu_port, wan_port, src_port = free_port(), free_port(), free_port()
    dest = FakeDestQemu(qemu_port)
    dest.start()
    recv = Relay("recv", "--listen", f"127.0.0.1:{wan_port}", "--to", f"127.0.0.1:{qemu_port}",
                 "--disk", str(disk), "--secret-file", str(secret), *extra)
    recv.wait_event("listening")
    proxy = RecordingWan(wan_port)
    proxy.start()
    send = Relay("send", "--listen", f"127.0.0.1:{src_port}", "--to",
                 f"127.0.0.1:{proxy.port}", "--disk", str(disk), "--secret-file", str(secret),
                 *extra)
    try:
        send.wait_event("listening")
        assert source_qemu(src_port, stream) == b"PONG-SHUT"
        assert send.finish() == 0, send.stderr()
        assert recv.finish() == 0, recv.stderr()
        dest.join(10)
        assert bytes(dest.received) == stream
        proxy.join(10)
        assert len(proxy.seen) > 20 * 1024  # the pages did cross it
        assert (MARKER in proxy.seen) is insecure
    finally:
        send.kill()
        recv.kill()
