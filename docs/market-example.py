#!/usr/bin/env python3
"""A market that fog-agents dial into: the worked example of the market link.

An agent opens one mutual-TLS gRPC call to its market,
`grpctunnel.v1.TunnelService/OpenReverseTunnel`, and then serves `fog.agent.v1.Agent` *through*
that call (jhump/grpctunnel's reverse tunnel). So the market runs a gRPC server for
TunnelService, and each agent's tunnel becomes a channel for the ordinary generated
`fog.agent.v1` stubs. This example, on grpcio and grpctunnel-py 0.3.0:

1. serves TunnelService with mutual TLS (client certificates required, signed by `--ca`);
2. files each tunnel under the agent's identity, the URI SAN `fog://agent/<host_id>` of the
   agent's client certificate (host_id is the agent's /etc/machine-id);
3. waits for an agent (`--agent HOST_ID`, or the first one to connect) and calls it:
   GetInventory, GetCapacity, 3 samples of WatchHostTelemetry, one message of WatchCapacity.

Run it (`pip install grpcio grpcio-tools grpctunnel-py==0.3.0`), from the repository root:

    python3 docs/market-example.py --listen 127.0.0.1:8443 --proto-dir proto \
        --cert DIR/market-server.pem --key DIR/market-server.key --ca DIR/ca.pem

and point an agent at it (`fog-agent dev-certs --out DIR [--host-id ID]` writes all these files
for localhost):

    [market]
    endpoints = ["https://127.0.0.1:8443"]
    ca = "DIR/ca.pem"              # the CA of the market's server certificate
    client_cert = "DIR/agent.pem"  # the agent's certificate: URI SAN fog://agent/<host_id>
    client_key = "DIR/agent.key"

The agent checks the market too: the server certificate must chain to the agent's `[market] ca`,
name the host the agent dials, and carry the URI SAN `fog://role/market` (or
`fog://role/auditor`); calls through the tunnel get that role.

grpctunnel-py 0.3.0 quirks that the code below works around:

- a server-streaming call returns a coroutine: `responses = await stub.WatchX(request)`, then
  `async for response in responses`;
- `timeout=` is ignored: bound each call with `asyncio.wait_for` (the agent also honours a
  `grpc-timeout` request header, e.g. `metadata=(("grpc-timeout", "10S"),)`);
- a server-streaming call cannot be cancelled: `cancel_stream` sends the protocol's cancel
  frame itself, or the agent would keep that stream open until the tunnel closes;
- the `affinity_key` callback gets the tunnel, not the gRPC servicer context: `agent_uri` reads
  the peer certificate from the context that the tunnel keeps (a private attribute).

Exit status: 0 when every call answered as expected; 1 with a message otherwise.
"""

import argparse
import asyncio
import atexit
import importlib
import os
import pathlib
import shutil
import sys
import tempfile
import time
import weakref
from types import SimpleNamespace
from typing import Callable, Optional

import grpc
from google.protobuf import empty_pb2
from grpc_tools import protoc
from grpctunnel import TunnelServiceHandler, TunnelServiceHandlerOptions
from grpctunnel.proto.v1 import ClientToServer, add_TunnelServiceServicer_to_server

AGENT_URI_PREFIX = "fog://agent/"


def load_agent_api(proto_dir: pathlib.Path) -> SimpleNamespace:
    """Generates the fog.agent.v1 Python stubs from the .proto files into a temporary directory
    and imports them: `api.pb` (messages of agent.proto), `api.grpc` (AgentStub), `api.jobs`."""
    out = tempfile.mkdtemp(prefix="fog-market-stubs-")
    atexit.register(shutil.rmtree, out, True)
    files = sorted(str(p.relative_to(proto_dir)) for p in (proto_dir / "fog/agent/v1").glob("*.proto"))
    if not files:
        raise SystemExit(f"no fog/agent/v1/*.proto under {proto_dir}")
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    module = lambda name: importlib.import_module(f"fog.agent.v1.{name}")  # noqa: E731
    return SimpleNamespace(pb=module("agent_pb2"), grpc=module("agent_pb2_grpc"), jobs=module("jobs_pb2"))


def agent_uri(tunnel) -> Optional[str]:
    """The agent's `fog://agent/<host_id>` URI SAN from its client certificate, or None.

    grpcio's auth context lists every subject alternative name of the peer certificate under
    `x509_subject_alternative_name` (URIs as written, e.g. b"fog://agent/4c4c..."). grpctunnel-py
    hands `affinity_key` the tunnel; the servicer context is the tunnel's `_adapter._context`.
    Read it while the tunnel's call is live: grpcio 1.85 crashes (SIGSEGV) on `auth_context()`
    of a call that has ended, e.g. in `on_reverse_tunnel_close` after the server stopped."""
    context = tunnel._adapter._context
    names = [san.decode() for san in context.auth_context().get("x509_subject_alternative_name", [])]
    agents = [name for name in names if name.startswith(AGENT_URI_PREFIX) and len(name) > len(AGENT_URI_PREFIX)]
    return agents[0] if len(agents) == 1 else None


def cancel_stream(responses) -> None:
    """Ends a server-streaming call early: sends the stream's cancel frame (the agent answers
    CANCELLED) and stops reading. grpctunnel-py 0.3.0 has no public way to do this."""
    stream = responses._stream
    stream._channel._send_queue.put_nowait(ClientToServer(stream_id=stream._stream_id, cancel=empty_pb2.Empty()))
    stream._cancel()


class Market:
    """The TunnelService server: each agent's tunnels are filed under its `fog://agent/<host_id>`.

    `on_event(kind, uri, peer)` is called with kind "connected" or "disconnected" as tunnels
    open and end (uri None for a certificate without an agent URI: such a tunnel is kept but
    never picked by `agent_channel`)."""

    def __init__(self, on_event: Optional[Callable[[str, Optional[str], str], None]] = None):
        self._on_event = on_event or (lambda kind, uri, peer: None)
        self._arrivals: asyncio.Queue = asyncio.Queue()
        self._identities = weakref.WeakKeyDictionary()  # tunnel -> (uri, peer), read at open
        self.handler = TunnelServiceHandler(
            TunnelServiceHandlerOptions(
                affinity_key=self._affinity_key,
                on_reverse_tunnel_open=lambda tunnel: self._event("connected", tunnel),
                on_reverse_tunnel_close=lambda tunnel: self._event("disconnected", tunnel),
            )
        )
        self.server: Optional[grpc.aio.Server] = None

    def _affinity_key(self, tunnel) -> Optional[str]:
        # Called first as a tunnel opens, then on_reverse_tunnel_open.
        uri = agent_uri(tunnel)
        self._identities[tunnel] = (uri, tunnel._adapter._context.peer())
        return uri

    def _event(self, kind: str, tunnel) -> None:
        uri, peer = self._identities.get(tunnel, (None, "?"))
        if kind == "connected" and uri is not None:
            self._arrivals.put_nowait(uri)
        self._on_event(kind, uri, peer)

    async def start(self, listen: str, cert: bytes, key: bytes, ca: bytes) -> int:
        """Listens on `listen` (HOST:PORT, port 0 = any) and returns the port."""
        self.server = grpc.aio.server()
        add_TunnelServiceServicer_to_server(self.handler.service(), self.server)
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = self.server.add_secure_port(listen, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        await self.server.start()
        return port

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stops listening and ends every tunnel (after `grace` seconds)."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    async def agent_channel(self, host_id: Optional[str], timeout: float):
        """Waits for the agent `host_id` (None: the first agent that connects) and returns its
        URI and a channel through its tunnel, for generated stubs."""
        if host_id:
            uri = AGENT_URI_PREFIX + host_id
        else:
            uri = await asyncio.wait_for(self._arrivals.get(), timeout)
        channel = self.handler.key_as_channel(uri)
        if not await channel.wait_for_ready(timeout):
            raise TimeoutError(f"no tunnel from {uri} within {timeout:g} s")
        return uri, channel


def write_port_file(path: pathlib.Path, port: int) -> None:
    """Writes the port so that a reader never sees a partial file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


async def call_agent(api: SimpleNamespace, channel, timeout: float) -> None:
    """The calls a market makes, through the tunnel, with the ordinary generated stub."""
    stub = api.grpc.AgentStub(channel)

    reply = await asyncio.wait_for(stub.GetInventory(api.pb.GetInventoryRequest()), timeout)
    inventory = reply.inventory
    log(f"GetInventory: {inventory.format}, agent {inventory.agent_version}, fingerprint {inventory.fingerprint.value[:16]}..., {len(reply.inventory_json)} bytes of JSON")

    reply = await asyncio.wait_for(stub.GetCapacity(api.pb.GetCapacityRequest()), timeout)
    cpu, memory = reply.capacity.cpu_millicores, reply.capacity.memory_bytes
    log(f"GetCapacity: sequence {reply.capacity.sequence}, {cpu.free}/{cpu.total} millicores and {memory.free >> 20}/{memory.total >> 20} MiB free")

    async def first(request_stream, count: int) -> list:
        responses = await request_stream  # grpctunnel-py: a coroutine of the response iterator
        got = []
        try:
            async for response in responses:
                got.append(response)
                if len(got) == count:
                    break
        finally:
            cancel_stream(responses)
        if len(got) < count:
            raise RuntimeError(f"the stream ended after {len(got)} of {count} messages")
        return got

    samples = await asyncio.wait_for(first(stub.WatchHostTelemetry(api.pb.WatchHostTelemetryRequest(interval_millis=0)), 3), timeout)
    for response in samples:
        sample = response.sample
        log(f"WatchHostTelemetry: sample {sample.sequence}, {sample.cpu.logical_cpus} CPUs, {sample.memory.available_bytes >> 20} MiB available")
    sequences = [response.sample.sequence for response in samples]
    if sequences != sorted(set(sequences)):
        raise RuntimeError(f"telemetry sequences {sequences} do not increase")

    (update,) = await asyncio.wait_for(first(stub.WatchCapacity(api.pb.WatchCapacityRequest()), 1), timeout)
    log(f"WatchCapacity: sequence {update.capacity.sequence}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (port 0: any free port)")
    parser.add_argument("--port-file", type=pathlib.Path, help="write the bound port here")
    parser.add_argument("--cert", required=True, type=pathlib.Path, help="the market's server certificate (PEM)")
    parser.add_argument("--key", required=True, type=pathlib.Path, help="its private key (PEM)")
    parser.add_argument("--ca", required=True, type=pathlib.Path, help="the CA that agents' client certificates chain to")
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path, help="the repository's proto/ directory")
    parser.add_argument("--agent", metavar="HOST_ID", help="the agent to call (default: the first that connects)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the agent and for each call")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    api = load_agent_api(args.proto_dir)
    market = Market(on_event=lambda kind, uri, peer: log(f"tunnel {kind}: {uri or 'a peer without an agent URI'} from {peer}"))
    port = await market.start(args.listen, args.cert.read_bytes(), args.key.read_bytes(), args.ca.read_bytes())
    log(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}")
    if args.port_file:
        write_port_file(args.port_file, port)
    try:
        uri, channel = await market.agent_channel(args.agent, args.timeout)
        log(f"calling {uri}")
        await call_agent(api, channel, args.timeout)
    finally:
        await market.stop(0)


def main() -> None:
    args = parse_args()
    try:
        asyncio.run(run(args))
    except (grpc.RpcError, asyncio.TimeoutError, TimeoutError, RuntimeError, OSError) as error:
        if isinstance(error, grpc.RpcError):
            error = f"{error.code().name}: {error.details()}"
        elif isinstance(error, asyncio.TimeoutError) and not str(error):
            error = f"no answer within {args.timeout:g} s"
        sys.exit(f"market-example: FAILED: {error}")
    log("done")


if __name__ == "__main__":
    main()
