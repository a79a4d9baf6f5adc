"""A conformance market for fog-agent's market link: it speaks the reverse tunnel's frames itself.

No grpctunnel-py here: a raw grpcio servicer of `grpctunnel.v1.TunnelService/OpenReverseTunnel`
(messages compiled at run time from the repository's proto/grpctunnel/v1/tunnel.proto) scripts
the market's frames and checks every frame the agent answers with: settings, headers before
data, chunk sizes, the flow-control windows, statuses, how the tunnel ends. Run by
agent/tests/it/market.rs.

Each scenario is a function below; `--scenarios a,b,...` runs them in order (default: all that
need no extra argument) and `--results FILE` gets {scenario: {"ok": bool, "detail": ...}}.
Exits 0 when every scenario is ok, 1 otherwise. Scenarios share a tunnel while it lasts; those
that end it (duplicate_id, lower_id, unknown_stream) wait for the agent to dial again.
"""

import argparse
import asyncio
import collections
import importlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

NEGOTIATE = ("grpctunnel-negotiate", "on")
WINDOW = 65536
CHUNK_MAX = 16384
AGENT = "fog.agent.v1.Agent"


def load_protos(proto_dir: pathlib.Path):
    """Compiles grpctunnel/v1/tunnel.proto and fog/agent/v1/*.proto (google.rpc.Status comes
    from googleapis-common-protos) and imports them."""
    out = tempfile.mkdtemp(prefix="fog-scripted-market-")
    files = ["grpctunnel/v1/tunnel.proto"] + sorted(str(p.relative_to(proto_dir)) for p in (proto_dir / "fog/agent/v1").glob("*.proto"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", *files])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    # Regular packages, so that this grpctunnel wins over an installed grpctunnel-py's.
    for package in ("grpctunnel", "grpctunnel/v1"):
        (pathlib.Path(out) / package / "__init__.py").touch()
    sys.path.insert(0, out)
    modules = {name: importlib.import_module(name) for name in ("grpctunnel.v1.tunnel_pb2", "fog.agent.v1.agent_pb2")}
    shutil.rmtree(out, ignore_errors=True)
    return modules["grpctunnel.v1.tunnel_pb2"], modules["fog.agent.v1.agent_pb2"]


tunnel_pb = agent_pb = None  # set by main()


class Failed(Exception):
    """An expectation did not hold; the argument is the scenario's detail."""


def expect(condition: bool, what) -> None:
    if not condition:
        raise Failed(what)


def padded_capacity_request(size: int) -> bytes:
    """A GetCapacityRequest of exactly `size` bytes (>= 3): field 1000, unknown to the agent."""
    for length_bytes in range(1, 6):
        payload = size - 2 - length_bytes
        value, length = max(payload, 0), bytearray()
        while True:
            length.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                break
        if payload >= 0 and len(length) == length_bytes:
            return bytes([0xC2, 0x3E]) + bytes(length) + b"\0" * payload
    raise ValueError(size)


CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def code_name(status) -> str:
    return CODES.get(status.code, f"code {status.code}")


class Stream:
    """What the agent sent on one stream, checked as it arrives."""

    def __init__(self, sid: int, window: int, revision: int = 1):
        self.sid = sid
        self.revision = revision
        self.headers = None
        self.messages = []
        self.chunks = []  # data bytes of each data frame
        self.close = None
        self.violations = []
        self.granted = window  # response bytes the market allowed (revision 1)
        self.received = 0
        self.window_updates = []  # the agent's window updates (request bytes it consumed)
        self._message = None
        self._size = 0

    def take(self, frame, flow_control: bool) -> None:
        kind = frame.WhichOneof("frame")
        if self.close is not None and kind != "window_update":  # control frames go their own way
            self.violations.append(f"{kind} after close_stream")
        if kind == "window_update":
            self.window_updates.append(frame.window_update)
        elif kind == "response_headers":
            if self.headers is not None or self.chunks:
                self.violations.append("response_headers twice or after data")
            self.headers = frame.response_headers
        elif kind in ("response_message", "more_response_data"):
            if self.headers is None:
                self.violations.append(f"{kind} before response_headers")
            data = frame.response_message.data if kind == "response_message" else frame.more_response_data
            if kind == "response_message":
                if self._message is not None:
                    self.violations.append("response_message before the previous message was complete")
                self._message, self._size = bytearray(), frame.response_message.size
            elif self._message is None:
                self.violations.append("more_response_data with no message envelope")
                self._message, self._size = bytearray(), 0
            if len(data) > CHUNK_MAX:
                self.violations.append(f"a chunk of {len(data)} bytes (> {CHUNK_MAX})")
            if flow_control and self.received + len(data) > self.granted:
                self.violations.append(f"a chunk of {len(data)} bytes with {self.granted - self.received} left in the window")
            self.chunks.append(len(data))
            self.received += len(data)
            self._message += data
            if len(self._message) > self._size:
                self.violations.append("more response data than the message's size")
            if len(self._message) >= self._size:
                self.messages.append(bytes(self._message))
                self._message = None
        elif kind == "close_stream":
            if self.headers is None:
                self.violations.append("close_stream before response_headers")
            if self._message is not None and frame.close_stream.status.code == 0:
                self.violations.append("close_stream OK in the middle of a message")
            self.close = frame.close_stream
        else:
            self.violations.append(f"unexpected frame {kind}")

    @property
    def code(self) -> str:
        return None if self.close is None else code_name(self.close.status)

    def summary(self) -> dict:
        summary = {"code": self.code, "messages": len(self.messages), "data_bytes": self.received}
        if self.close is not None and self.close.status.message:
            summary["message"] = self.close.status.message
        if self.violations:
            summary["violations"] = self.violations
        return summary


class Tunnel:
    """One OpenReverseTunnel call, as the market sees it."""

    def __init__(self, context, negotiated: bool, timeout: float):
        self.context = context
        self.negotiated = negotiated
        self.timeout = timeout
        self.request_headers = dict(context.invocation_metadata())
        self.frames = []  # (monotonic time, raw bytes, ServerToClient)
        self.streams = {}
        self.queues = collections.defaultdict(asyncio.Queue)
        self.next_id = 1
        self.eof = asyncio.Event()
        self.reset = asyncio.Event()
        self.release = asyncio.Event()
        self.ended_at = None
        self._write = asyncio.Lock()  # grpcio takes one write at a time

    def stream(self, sid: int, window: int = WINDOW, revision: int = 1) -> Stream:
        if sid not in self.streams:
            self.streams[sid] = Stream(sid, window, revision)
        return self.streams[sid]

    def on_frame(self, raw: bytes) -> None:
        frame = tunnel_pb.ServerToClient.FromString(raw)
        self.frames.append((time.monotonic(), raw, frame))
        self.queues[frame.stream_id].put_nowait(frame)

    @property
    def alive(self) -> bool:
        return not (self.eof.is_set() or self.reset.is_set() or self.release.is_set())

    def allocate(self) -> int:
        sid, self.next_id = self.next_id, self.next_id + 1
        return sid

    async def send(self, sid: int, **frame) -> None:
        async with self._write:
            await self.context.write(tunnel_pb.ClientToServer(stream_id=sid, **frame).SerializeToString())

    async def open(self, sid: int, method: str, headers=None, window: int = WINDOW, revision: int = 1) -> Stream:
        metadata = tunnel_pb.Metadata()
        for key, value in (headers or {}).items():
            metadata.md[key].val.append(value)
        self.next_id = max(self.next_id, sid + 1)
        stream = self.stream(sid, window, revision)
        await self.send(sid, new_stream=tunnel_pb.NewStream(method_name=method, request_headers=metadata, initial_window_size=window, protocol_revision=revision))
        return stream

    async def request(self, sid: int, data: bytes) -> None:
        await self.send(sid, request_message=tunnel_pb.MessageData(size=len(data), data=data[:CHUNK_MAX]))
        for offset in range(CHUNK_MAX, len(data), CHUNK_MAX):
            await self.send(sid, more_request_data=data[offset : offset + CHUNK_MAX])

    async def half_close(self, sid: int) -> None:
        await self.send(sid, half_close={})

    async def next(self, sid: int, timeout: float, grant: bool = True):
        """The next frame of stream `sid` (None after `timeout`), checked; with `grant`, the
        market hands the consumed response bytes back (a window update)."""
        try:
            frame = await asyncio.wait_for(self.queues[sid].get(), timeout)
        except asyncio.TimeoutError:
            return None
        stream = self.stream(sid)
        stream.take(frame, stream.revision == 1 and self.negotiated)
        kind = frame.WhichOneof("frame")
        if grant and kind in ("response_message", "more_response_data") and stream.revision == 1:
            n = len(frame.response_message.data) if kind == "response_message" else len(frame.more_response_data)
            if n:
                stream.granted += n
                await self.send(sid, window_update=n)
        return frame

    async def until(self, sid: int, done, timeout: float = None, grant: bool = True) -> Stream:
        """Reads stream `sid` until `done(stream)` or its close_stream; Failed after `timeout`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        stream = self.stream(sid)
        while stream.close is None and not done(stream):
            frame = await self.next(sid, max(0.0, deadline - time.monotonic()), grant)
            expect(frame is not None, {"stream": sid, "timeout": timeout or self.timeout, "so_far": stream.summary()})
        return stream

    async def finish(self, sid: int, timeout: float = None, grant: bool = True) -> Stream:
        return await self.until(sid, lambda stream: False, timeout, grant)

    async def unary(self, method: str, request: bytes = b"", headers=None, revision: int = 1) -> Stream:
        sid = self.allocate()
        await self.open(sid, method, headers, revision=revision)
        if request:
            await self.request(sid, request)
        await self.half_close(sid)
        return await self.finish(sid)

    async def how_ended(self, timeout: float) -> str:
        """"reset" (the agent cancelled the call), "half-closed", or "alive" after `timeout`."""
        waiters = [asyncio.ensure_future(self.eof.wait()), asyncio.ensure_future(self.reset.wait())]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if self.eof.is_set() and not self.reset.is_set():
            # grpcio reports a client's reset as the end of its messages first, then cancels
            # the handler: give the cancellation a moment.
            try:
                await asyncio.wait_for(self.reset.wait(), 1.0)
            except asyncio.TimeoutError:
                return "half-closed"
        return "reset" if self.reset.is_set() else "alive"


class Pending:
    """A call that arrived and waits for a scenario to decide its response headers."""

    def __init__(self, context):
        self.context = context
        self.arrived_at = time.monotonic()
        self.negotiate = asyncio.get_running_loop().create_future()
        self.tunnel = asyncio.get_running_loop().create_future()
        self.dead = False


class Market:
    def __init__(self, args):
        self.args = args
        self.arrivals = asyncio.Queue()
        self.current = None
        self.tunnels = 0
        self.arrival_times = []  # every OpenReverseTunnel call, taken or not

    async def servicer(self, request_iterator, context):
        pending = Pending(context)
        self.arrival_times.append(pending.arrived_at)
        self.arrivals.put_nowait(pending)
        try:
            negotiate = await pending.negotiate
        except asyncio.CancelledError:
            pending.dead = True
            raise
        await context.send_initial_metadata((NEGOTIATE,) if negotiate else ())
        tunnel = Tunnel(context, negotiate and dict(context.invocation_metadata()).get(NEGOTIATE[0]) == NEGOTIATE[1], self.args.timeout)
        pending.tunnel.set_result(tunnel)

        async def read() -> None:
            while True:
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    tunnel.ended_at = time.monotonic()
                    tunnel.eof.set()
                    return
                tunnel.on_frame(raw)

        reader = asyncio.create_task(read())
        try:
            await tunnel.release.wait()  # the call ends (OK) when the scenarios are done with it
        except asyncio.CancelledError:  # the agent reset the call
            tunnel.reset.set()
            raise
        finally:
            tunnel.ended_at = tunnel.ended_at or time.monotonic()
            reader.cancel()

    async def start(self) -> int:
        self.server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(self.servicer)  # raw bytes both ways
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpctunnel.v1.TunnelService", {"OpenReverseTunnel": handler}),))
        args = self.args
        credentials = grpc.ssl_server_credentials([(args.key.read_bytes(), args.cert.read_bytes())], root_certificates=args.ca.read_bytes(), require_client_auth=True)
        port = self.server.add_secure_port(args.listen, credentials)
        await self.server.start()
        return port

    async def arrival(self, timeout: float) -> Pending:
        deadline = time.monotonic() + timeout
        while True:
            pending = await asyncio.wait_for(self.arrivals.get(), max(0.0, deadline - time.monotonic()))
            if not pending.dead and not pending.context.done():
                return pending

    async def accept(self, negotiate: bool, timeout: float = None) -> Tunnel:
        pending = await self.arrival(timeout or self.args.timeout)
        pending.negotiate.set_result(negotiate)
        self.current = await pending.tunnel
        self.current.arrived_at = pending.arrived_at
        self.tunnels += 1
        return self.current

    async def tunnel(self, negotiate: bool = True, fresh: bool = False) -> Tunnel:
        """The current tunnel if it is alive, negotiated as asked and not `fresh`; else the
        current one is ended (the call returns OK) and the agent's next one is taken."""
        current = self.current
        if current is not None and current.alive and current.negotiated == negotiate and not fresh:
            return current
        if current is not None:
            current.release.set()
        return await self.accept(negotiate, self.args.reconnect_seconds + self.args.timeout)


SCENARIOS = {}
DEFAULT = []


def scenario(default: bool = True):
    def register(function):
        SCENARIOS[function.__name__] = function
        if default:
            DEFAULT.append(function.__name__)
        return function

    return register


def method(name: str) -> str:
    return f"/{AGENT}/{name}"


def telemetry_request() -> bytes:
    return agent_pb.WatchHostTelemetryRequest(interval_millis=0).SerializeToString()


def check_ok(stream: Stream, response_type, what: str):
    expect(stream.code == "OK" and not stream.violations and len(stream.messages) == 1, {what: stream.summary()})
    return response_type.FromString(stream.messages[0])


@scenario()
async def rev0(market: Market):
    tunnel = await market.tunnel(negotiate=False)
    await asyncio.sleep(0.5)
    settings = [frame for _, _, frame in tunnel.frames if frame.WhichOneof("frame") == "settings"]
    expect(not settings, "a settings frame on a tunnel whose market did not negotiate")
    stream = await tunnel.unary(method("GetCapacity"), revision=0)
    reply = check_ok(stream, agent_pb.GetCapacityResponse, "GetCapacity")
    # A stream with a request message and no window updates either way.
    sid = tunnel.allocate()
    await tunnel.open(sid, method("WatchHostTelemetry"), window=0, revision=0)
    await tunnel.request(sid, telemetry_request())
    await tunnel.half_close(sid)
    watch = await tunnel.until(sid, lambda s: len(s.messages) >= 2, grant=False)
    await tunnel.send(sid, cancel={})
    watch = await tunnel.finish(sid, grant=False)
    detail = {"capacity_sequence": reply.capacity.sequence, "watch": watch.summary(), "agent_window_updates": watch.window_updates}
    expect(watch.code == "CANCELLED" and len(watch.messages) >= 2 and not watch.violations and not watch.window_updates, detail)
    return detail


@scenario()
async def settings_first(market: Market):
    tunnel = await market.tunnel(negotiate=True, fresh=True)
    expect(tunnel.negotiated, f"the agent's request headers lack {NEGOTIATE}: {tunnel.request_headers}")
    frame = await tunnel.next(-1, market.args.timeout)
    expect(frame is not None, "no frame from the agent")
    want = tunnel_pb.ServerToClient(stream_id=-1, settings=tunnel_pb.Settings(supported_protocol_revisions=[0, 1], initial_window_size=WINDOW)).SerializeToString()
    raw = tunnel.frames[0][1]
    expect(raw == want, {"first_frame": raw.hex(), "expected": want.hex()})
    reply = check_ok(await tunnel.unary(method("GetCapacity")), agent_pb.GetCapacityResponse, "GetCapacity")
    return {"settings": raw.hex(), "capacity_sequence": reply.capacity.sequence}


@scenario()
async def tiny_window(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    stream = await tunnel.open(sid, method("GetInventory"), window=100)
    await tunnel.half_close(sid)
    pauses, grants = 0, 0
    while stream.close is None:
        frame = await tunnel.next(sid, market.args.timeout, grant=False)
        expect(frame is not None, {"stalled": stream.summary(), "granted": stream.granted})
        if stream.received == stream.granted and stream.close is None:
            if pauses < 3:
                # The window is used up: the agent must wait for the market.
                early = await tunnel.next(sid, 0.3, grant=False)
                expect(early is None or early.WhichOneof("frame") not in ("response_message", "more_response_data"), {"sent_past_window": stream.summary()})
                pauses += 1
                if early is not None:
                    continue
            grant = 100 if grants < 5 else 4096
            grants += 1
            stream.granted += grant
            await tunnel.send(sid, window_update=grant)
    detail = dict(stream.summary(), pauses=pauses, grants=grants, largest_chunk=max(stream.chunks, default=0))
    expect(stream.code == "OK" and not stream.violations and len(stream.messages) == 1, detail)
    expect(len(stream.messages[0]) >= 1024, dict(detail, error="the inventory is smaller than 1 KiB"))
    agent_pb.GetInventoryResponse.FromString(stream.messages[0])
    return detail


@scenario()
async def overrun(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    await tunnel.open(sid, method("GetCapacity"))
    data = padded_capacity_request(WINDOW + 1)
    await tunnel.send(sid, request_message=tunnel_pb.MessageData(size=len(data), data=data))  # one chunk past the window
    stream = await tunnel.finish(sid)
    after = await tunnel.unary(method("GetCapacity"))
    detail = {"overrun": stream.summary(), "after": after.summary()}
    expect(stream.code == "RESOURCE_EXHAUSTED" and not stream.violations and after.code == "OK" and tunnel.alive, detail)
    return detail


@scenario()
async def slow_and_fast(market: Market):
    tunnel = await market.tunnel()
    slow = tunnel.allocate()
    stream = await tunnel.open(slow, method("WatchHostTelemetry"), window=64)
    await tunnel.request(slow, telemetry_request())
    await tunnel.half_close(slow)
    await tunnel.until(slow, lambda s: s.received >= 64, grant=False)
    started = time.monotonic()
    fast = await asyncio.gather(*(tunnel.unary(method("GetCapacity")) for _ in range(10)))
    seconds = round(time.monotonic() - started, 3)
    codes = [s.code for s in fast]
    await tunnel.send(slow, cancel={})
    stream = await tunnel.finish(slow, grant=False)
    detail = {"fast_codes": codes, "fast_seconds": seconds, "slow": stream.summary()}
    expect(codes == ["OK"] * 10 and seconds < 5 and not any(s.violations for s in fast), detail)
    # CANCELLED, or DEADLINE_EXCEEDED if the agent gave up on the empty window first.
    expect(stream.code in ("CANCELLED", "DEADLINE_EXCEEDED") and stream.received <= 64 and not stream.violations, detail)
    return detail


async def ends_tunnel(market: Market, tunnel: Tunnel, broken_at: float, detail: dict) -> dict:
    """After the protocol error sent at `broken_at`, the agent must reset the call (not
    half-close it, nor leave it open), then dial again after its backoff."""
    detail["ended"] = await tunnel.how_ended(market.args.timeout)
    if detail["ended"] != "reset":
        tunnel.release.set()  # end it from here: the next scenarios get the agent's next tunnel
    fresh = await market.accept(negotiate=True, timeout=market.args.reconnect_seconds + market.args.timeout)
    # The agent's first call after the error (it may have given up on calls the market let wait).
    redial = next(t for t in market.arrival_times if t > broken_at)
    detail["reconnect_seconds"] = round(redial - broken_at, 3)
    detail["after"] = (await fresh.unary(method("GetCapacity"))).summary()
    expect(detail["ended"] == "reset", detail)
    expect(detail["reconnect_seconds"] <= market.args.reconnect_seconds, detail)
    expect(detail["after"]["code"] == "OK", detail)
    return detail


@scenario()
async def duplicate_id(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    await tunnel.open(sid, method("WatchHostTelemetry"))
    await tunnel.request(sid, telemetry_request())
    await tunnel.half_close(sid)
    await tunnel.until(sid, lambda s: len(s.messages) >= 1)
    broken_at = time.monotonic()
    await tunnel.open(sid, method("GetCapacity"))  # the id of a stream still open
    return await ends_tunnel(market, tunnel, broken_at, {"duplicate": sid})


@scenario()
async def lower_id(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate() + 10
    first = await tunnel.open(sid, method("GetCapacity"))
    await tunnel.half_close(sid)
    await tunnel.finish(sid)
    expect(first.code == "OK", {"first": first.summary()})
    broken_at = time.monotonic()
    await tunnel.open(sid - 5, method("GetCapacity"))  # never used, but below the last id
    return await ends_tunnel(market, tunnel, broken_at, {"after_id": sid, "lower": sid - 5})


@scenario()
async def unknown_stream(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate() + 100
    broken_at = time.monotonic()
    await tunnel.send(sid, window_update=1000)  # a stream never opened
    return await ends_tunnel(market, tunnel, broken_at, {"unknown": sid})


@scenario()
async def late_frames(market: Market):
    tunnel = await market.tunnel()
    done = await tunnel.unary(method("GetCapacity"))
    sid = done.sid
    await tunnel.send(sid, window_update=1000)
    await tunnel.send(sid, more_request_data=b"late")
    await tunnel.send(sid, half_close={})
    await tunnel.send(sid, cancel={})
    after = await tunnel.unary(method("GetCapacity"))
    await asyncio.sleep(0.2)
    late = []
    while not tunnel.queues[sid].empty():
        late.append(tunnel.queues[sid].get_nowait().WhichOneof("frame"))
    detail = {"first": done.summary(), "after": after.summary(), "frames_after_close": late, "tunnel_alive": tunnel.alive}
    expect(done.code == "OK" and after.code == "OK" and tunnel.alive and not late, detail)
    return detail


@scenario()
async def boundary_16k(market: Market):
    tunnel = await market.tunnel()
    detail = {}
    for size in (CHUNK_MAX, CHUNK_MAX + 1):
        stream = await tunnel.unary(method("GetCapacity"), padded_capacity_request(size))
        await asyncio.sleep(0.2)  # window updates are control frames: they may trail the close
        while not tunnel.queues[stream.sid].empty():
            stream.take(tunnel.queues[stream.sid].get_nowait(), True)
        detail[size] = dict(stream.summary(), agent_window_updates=stream.window_updates)
        expect(stream.code == "OK" and not stream.violations and sum(stream.window_updates) == size, detail)
    return detail


@scenario()
async def cancel(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    await tunnel.open(sid, method("WatchHostTelemetry"))
    await tunnel.request(sid, telemetry_request())
    await tunnel.half_close(sid)
    stream = await tunnel.until(sid, lambda s: len(s.messages) >= 1)
    sent = time.monotonic()
    await tunnel.send(sid, cancel={})
    stream = await tunnel.finish(sid, timeout=5)
    detail = dict(stream.summary(), close_seconds=round(time.monotonic() - sent, 3))
    expect(stream.code == "CANCELLED" and not stream.violations, detail)
    return detail


@scenario()
async def grpc_timeout(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    started = time.monotonic()
    await tunnel.open(sid, method("WatchHostTelemetry"), headers={"grpc-timeout": "300m"})
    await tunnel.request(sid, telemetry_request())
    await tunnel.half_close(sid)
    stream = await tunnel.finish(sid, timeout=10)
    detail = dict(stream.summary(), seconds=round(time.monotonic() - started, 3))
    expect(stream.code == "DEADLINE_EXCEEDED" and not stream.violations and 0.25 <= detail["seconds"] <= 5, detail)
    return detail


@scenario()
async def empty_request(market: Market):
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    await tunnel.open(sid, f"{AGENT}/GetCapacity")  # no leading "/": also a method name
    await tunnel.half_close(sid)
    stream = await tunnel.finish(sid)
    reply = check_ok(stream, agent_pb.GetCapacityResponse, "GetCapacity")
    return dict(stream.summary(), capacity_sequence=reply.capacity.sequence)


@scenario()
async def revision_2(market: Market):
    tunnel = await market.tunnel()
    stream = await tunnel.unary(method("GetCapacity"), revision=2)
    after = await tunnel.unary(method("GetCapacity"))
    detail = {"revision_2": stream.summary(), "after": after.summary()}
    expect(stream.code == "UNAVAILABLE" and not stream.violations and after.code == "OK", detail)
    return detail


@scenario()
async def unknown_method(market: Market):
    tunnel = await market.tunnel()
    stream = await tunnel.unary(method("NoSuchMethod"))
    expect(stream.code == "UNIMPLEMENTED" and not stream.violations, stream.summary())
    return stream.summary()


@scenario(default=False)
async def max_streams(market: Market):
    limit = market.args.max_streams
    expect(limit, "no --max-streams")
    tunnel = await market.tunnel()
    ids = []
    for _ in range(limit):
        sid = tunnel.allocate()
        ids.append(sid)
        await tunnel.open(sid, method("WatchHostTelemetry"))
        await tunnel.request(sid, telemetry_request())
        await tunnel.half_close(sid)
    for sid in ids:
        await tunnel.until(sid, lambda s: s.headers is not None)
    over = await tunnel.unary(method("GetCapacity"))
    for sid in ids:
        await tunnel.send(sid, cancel={})
    codes = [(await tunnel.finish(sid)).code for sid in ids]
    after = await tunnel.unary(method("GetCapacity"))
    detail = {"over": over.summary(), "cancelled": codes, "after": after.summary()}
    expect(over.code == "RESOURCE_EXHAUSTED" and set(codes) == {"CANCELLED"} and after.code == "OK", detail)
    return detail


@scenario(default=False)
async def idle_timeout(market: Market):
    idle = market.args.stream_idle_timeout_millis
    expect(idle, "no --stream-idle-timeout-millis")
    tunnel = await market.tunnel()
    sid = tunnel.allocate()
    started = time.monotonic()
    await tunnel.open(sid, method("GetCapacity"))  # and then nothing
    stream = await tunnel.finish(sid, timeout=idle / 1000 * 2 + 5)
    detail = dict(stream.summary(), seconds=round(time.monotonic() - started, 3), idle_millis=idle)
    expect(stream.code == "DEADLINE_EXCEEDED" and idle / 1000 * 0.9 <= detail["seconds"] <= idle / 1000 * 1.5 + 2, detail)
    return detail


async def run(args) -> bool:
    market = Market(args)
    port = await market.start()
    print(f"scripted market on port {port}", flush=True)
    if args.port_file:
        partial = args.port_file.with_name(args.port_file.name + ".partial")
        partial.write_text(f"{port}\n")
        os.replace(partial, args.port_file)
    results = {}
    try:
        for name in args.scenarios:
            started = time.monotonic()
            try:
                detail = await asyncio.wait_for(SCENARIOS[name](market), 4 * args.timeout + args.reconnect_seconds)
                results[name] = {"ok": True, "detail": detail}
            except Failed as failure:
                results[name] = {"ok": False, "detail": failure.args[0]}
            except (asyncio.TimeoutError, TimeoutError):
                results[name] = {"ok": False, "detail": "timed out (no agent, or no answer)"}
            except Exception as error:  # a bug here, or the call broke: report it, go on
                results[name] = {"ok": False, "detail": f"{type(error).__name__}: {error}"}
            results[name]["seconds"] = round(time.monotonic() - started, 3)
            print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} {json.dumps(results[name]['detail'], default=str)[:400]}", flush=True)
    finally:
        if market.current is not None:
            market.current.release.set()
        await market.server.stop(0.5)
        if args.results:
            partial = args.results.with_name(args.results.name + ".partial")
            partial.write_text(json.dumps(results, indent=1, default=str))
            os.replace(partial, args.results)
    return all(result["ok"] for result in results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", type=pathlib.Path)
    parser.add_argument("--cert", required=True, type=pathlib.Path)
    parser.add_argument("--key", required=True, type=pathlib.Path)
    parser.add_argument("--ca", required=True, type=pathlib.Path)
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path)
    parser.add_argument("--scenarios", type=lambda text: [name for name in text.split(",") if name])
    parser.add_argument("--results", type=pathlib.Path)
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds for the agent to connect and to answer")
    parser.add_argument("--reconnect-seconds", type=float, default=10.0, help="longest wait for the agent to dial again after a tunnel ends")
    parser.add_argument("--max-streams", type=int, help="the agent's [market] max_streams (scenario max_streams)")
    parser.add_argument("--stream-idle-timeout-millis", type=int, help="the agent's [market] stream_idle_timeout_millis (scenario idle_timeout)")
    args = parser.parse_args()
    args.scenarios = args.scenarios or DEFAULT + [name for name, given in (("max_streams", args.max_streams), ("idle_timeout", args.stream_idle_timeout_millis)) if given]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    global tunnel_pb, agent_pb
    tunnel_pb, agent_pb = load_protos(args.proto_dir)
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
