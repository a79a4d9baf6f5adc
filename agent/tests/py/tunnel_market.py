"""The test market of the market-link tests: agents dial in, it runs named scenarios through them.

Built on docs/market-example.py (imported from the repository, so the documented market is the
tested one): a grpcio server of grpctunnel.v1.TunnelService with mutual TLS, grpctunnel-py 0.3.0
for the reverse tunnels, the generated fog.agent.v1 stubs for the calls. Run by
agent/tests/it/market.rs.

Scenario mode (`--scenarios a,b,...`): waits for the agent (`--agent HOST_ID` or the first one),
runs the scenarios in order and writes `--results FILE`, a JSON object
{scenario: {"ok": bool, "detail": ...}}. Exits 0 when every scenario is ok, 1 otherwise.

Serve-only mode (`--serve-only`): accepts tunnels and reports, one JSON object a line on stdout
(and appended to `--events FILE`), {"t": unix time, "event": "listening" | "connected" |
"disconnected" | "stopped", ...}. SIGUSR2 stops the listener (every tunnel ends), SIGUSR1
(re)starts it on the same port, SIGTERM or SIGINT ends the process (exit 0).
"""

import argparse
import asyncio
import base64
import importlib
import importlib.util
import json
import os
import pathlib
import signal
import sys
import time

import grpc
from google.protobuf import json_format

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "market-example.py"
ENDED_JOB_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_STOPPED")


def load_example():
    spec = importlib.util.spec_from_file_location("market_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()
SCENARIOS = {}


class Failed(Exception):
    """An expectation did not hold; the argument is the scenario's detail."""


def expect(condition: bool, what) -> None:
    if not condition:
        raise Failed(what)


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


def padded_capacity_request(size: int) -> bytes:
    """A GetCapacityRequest of exactly `size` bytes: field 1000 (unknown to the agent, which
    skips it) as bytes. Needs size >= 3."""
    tag = bytes([0xC2, 0x3E])  # (1000 << 3) | 2 as a varint
    for length_bytes in range(1, 6):
        payload = size - len(tag) - length_bytes
        length = bytearray()
        value = max(payload, 0)
        while True:
            length.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                break
        if payload >= 0 and len(length) == length_bytes:
            return tag + bytes(length) + b"\0" * payload
    raise ValueError(f"no padded request of {size} bytes")


def write_file(path: pathlib.Path, text: str) -> None:
    """Writes so that a reader never sees a partial file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def code_of(error: grpc.RpcError) -> str:
    return error.code().name


class Context:
    def __init__(self, args, api, uri, channel):
        self.args, self.api, self.uri, self.channel = args, api, uri, channel
        self.stub = api.grpc.AgentStub(channel)
        self.pb, self.jobs = api.pb, api.jobs

    async def call(self, rpc, request):
        return await asyncio.wait_for(rpc(request), self.args.timeout)

    async def first(self, rpc, request, count: int) -> list:
        """The first `count` messages of a server-streaming call, which is then cancelled."""
        responses = await rpc(request)
        got = []
        try:
            async for response in responses:
                got.append(response)
                if len(got) == count:
                    break
        finally:
            example.cancel_stream(responses)
        return got

    async def all(self, rpc, request) -> list:
        """Every message of a server-streaming call that ends by itself."""
        return [response async for response in await rpc(request)]

    async def expect_code(self, coroutine, code: str, what: str) -> dict:
        try:
            reply = await asyncio.wait_for(coroutine, self.args.timeout)
        except grpc.RpcError as error:
            got = {"code": code_of(error), "details": error.details()}
            expect(got["code"] == code, {what: got, "expected": code})
            return got
        raise Failed({what: f"answered {type(reply).__name__}", "expected": code})


@scenario
async def inventory(ctx: Context):
    reply = await ctx.call(ctx.stub.GetInventory, ctx.pb.GetInventoryRequest())
    expect(reply.inventory.format == "fog-inventory-v1", f"format {reply.inventory.format!r}")
    document = json.loads(reply.inventory_json)
    expect(document["fingerprint"]["value"] == reply.inventory.fingerprint.value, "the JSON and structured fingerprints differ")
    return {"fingerprint": reply.inventory.fingerprint.value, "agent_version": reply.inventory.agent_version, "bytes": reply.ByteSize()}


def check_capacity(capacity) -> None:
    expect(capacity.sequence >= 1, f"capacity sequence {capacity.sequence}")
    for name in ("cpu_millicores", "memory_bytes", "disk_bytes"):
        amount = getattr(capacity, name)
        free = max(0, amount.total - amount.reserved - amount.allocated - amount.stored)
        if name == "disk_bytes":
            # Disk's free is also bounded by what the filesystem has available (capacity.proto).
            expect(amount.free <= free, f"{name}: free {amount.free}, more than {free}")
        else:
            expect(amount.free == free, f"{name}: free {amount.free}, expected {free}")


@scenario
async def capacity(ctx: Context):
    reply = await ctx.call(ctx.stub.GetCapacity, ctx.pb.GetCapacityRequest())
    check_capacity(reply.capacity)
    return {"sequence": reply.capacity.sequence, "cpu_millicores_total": reply.capacity.cpu_millicores.total}


@scenario
async def telemetry(ctx: Context):
    request = ctx.pb.WatchHostTelemetryRequest(interval_millis=ctx.args.telemetry_interval_millis)
    samples = [response.sample for response in await asyncio.wait_for(ctx.first(ctx.stub.WatchHostTelemetry, request, 3), ctx.args.timeout)]
    sequences = [sample.sequence for sample in samples]
    expect(len(samples) == 3, f"the stream ended after {len(samples)} samples")
    expect(sequences == sorted(set(sequences)), f"sequences {sequences}")
    for sample in samples:
        expect(sample.memory.total_bytes > 0 and sample.cpu.logical_cpus >= 1 and sample.HasField("taken_at"), "a sample lacks memory, CPUs or its time")
    return {"sequences": sequences}


@scenario
async def watch_capacity(ctx: Context):
    updates = await asyncio.wait_for(ctx.first(ctx.stub.WatchCapacity, ctx.pb.WatchCapacityRequest(), 1), ctx.args.timeout)
    expect(len(updates) == 1, "the stream ended without a message")
    check_capacity(updates[0].capacity)
    return {"sequence": updates[0].capacity.sequence}


@scenario
async def job(ctx: Context):
    expect(ctx.args.job_spec_json, "no --job-spec-json")
    text = ctx.args.job_spec_json
    spec = json_format.Parse(pathlib.Path(text[1:]).read_text() if text.startswith("@") else text, ctx.jobs.JobSpec())
    job_id = spec.job_id
    state = lambda job: ctx.jobs.JobState.Name(job.state)  # noqa: E731
    detail = {"job_id": job_id}

    started = await ctx.call(ctx.stub.StartJob, ctx.pb.StartJobRequest(spec=spec))
    detail["started"] = {"state": state(started.job), "created": started.created}
    expect(started.job.spec.job_id == job_id, detail)

    states = []

    async def watch():
        responses = await ctx.stub.WatchJob(ctx.pb.WatchJobRequest(job_id=job_id))
        try:
            async for response in responses:
                if response.HasField("job"):
                    states.append(state(response.job))
                    if states[-1] == "JOB_STATE_RUNNING" or states[-1] in ENDED_JOB_STATES:
                        return
        finally:
            example.cancel_stream(responses)

    await asyncio.wait_for(watch(), ctx.args.timeout)
    detail["watched"] = states
    expect(states and (states[-1] == "JOB_STATE_RUNNING" or states[-1] in ENDED_JOB_STATES), detail)

    want = ctx.args.job_log_contains
    deadline = time.monotonic() + ctx.args.timeout
    while True:
        lines = await asyncio.wait_for(ctx.all(ctx.stub.JobLogs, ctx.pb.JobLogsRequest(job_id=job_id, tail_lines=1000)), ctx.args.timeout)
        text = b"\n".join(response.log.line for response in lines).decode(errors="replace")
        if not want or want in text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    detail["logs"] = text[-2000:]
    expect(not want or want in text, dict(detail, expected_in_logs=want))

    stopped = await ctx.call(ctx.stub.StopJob, ctx.pb.StopJobRequest(job_id=job_id, grace_millis=2000))
    detail["stopped"] = {"state": state(stopped.job), "termination": ctx.jobs.TerminationReason.Name(stopped.job.termination)}
    expect(detail["stopped"]["state"] in ENDED_JOB_STATES, detail)
    return detail


@scenario
async def attestation(ctx: Context):
    nonce = bytes.fromhex(ctx.args.nonce_hex) if ctx.args.nonce_hex else os.urandom(32)
    want = ctx.args.attestation_expect
    try:
        reply = await ctx.call(ctx.stub.GetAttestation, ctx.pb.GetAttestationRequest(nonce=nonce))
    except grpc.RpcError as error:
        detail = {"code": code_of(error), "details": error.details()}
        expect(detail["code"] == want, dict(detail, expected=want))
        return detail
    report = reply.report
    record = {
        "nonce_hex": nonce.hex(),
        "format": report.format,
        "host_id": report.host_id,
        "created_at": report.created_at.ToJsonString(),
        "report_json": report.report_json.decode(),
        "response_b64": base64.b64encode(reply.SerializeToString()).decode(),
    }
    if ctx.args.attestation_out:
        write_file(ctx.args.attestation_out, json.dumps(record, indent=1))
    detail = {"code": "OK", "format": report.format, "host_id": report.host_id, "report_json_bytes": len(report.report_json)}
    expect(want == "OK" and report.format == "fog-attest-v1", dict(detail, expected=want))
    return detail


@scenario
async def empty_request(ctx: Context):
    # GetCapacityRequest serializes to no bytes: grpctunnel-py then sends NewStream and
    # half_close with no request_message frame at all; the agent must take the default request.
    expect(ctx.pb.GetCapacityRequest().SerializeToString() == b"", "GetCapacityRequest is not empty")
    reply = await ctx.call(ctx.stub.GetCapacity, ctx.pb.GetCapacityRequest())
    check_capacity(reply.capacity)
    return {"sequence": reply.capacity.sequence}


@scenario
async def large_response(ctx: Context):
    what = ctx.args.large_response
    want = ctx.args.large_response_min_bytes
    if what == "inventory":
        reply = await ctx.call(ctx.stub.GetInventory, ctx.pb.GetInventoryRequest())
        json.loads(reply.inventory_json)
        sizes = [reply.ByteSize()]
    elif what == "listjobs":
        reply = await ctx.call(ctx.stub.ListJobs, ctx.pb.ListJobsRequest())
        sizes = [reply.ByteSize()]
    elif what.startswith("joblogs:"):
        request = ctx.pb.JobLogsRequest(job_id=what.split(":", 1)[1], tail_lines=100000)
        responses = await asyncio.wait_for(ctx.all(ctx.stub.JobLogs, request), ctx.args.timeout)
        offsets = {}
        for response in responses:
            log = response.log
            expect(log.offset > offsets.get(log.stream, -1), f"offsets do not increase at {log.offset}")
            offsets[log.stream] = log.offset
        sizes = [response.ByteSize() for response in responses]
    else:
        raise Failed(f"--large-response {what!r}: inventory, listjobs or joblogs:JOB_ID")
    detail = {"what": what, "messages": len(sizes), "bytes": sum(sizes), "largest_message": max(sizes, default=0)}
    expect(detail["bytes"] >= want, dict(detail, expected_at_least=want))
    return detail


@scenario
async def over_limit(ctx: Context):
    # Through grpctunnel-py's ordinary call: it sends the whole request (waiting for the agent's
    # window updates) before it reads the answer, so the agent must keep granting window for the
    # data of a stream it has already failed, until the market half-closes it.
    limit = ctx.args.max_message_bytes
    expect(limit, "no --max-message-bytes")
    call = ctx.channel.unary_unary("/fog.agent.v1.Agent/GetCapacity", request_serializer=lambda raw: raw, response_deserializer=ctx.pb.GetCapacityResponse.FromString)
    detail = {"limit": limit}
    detail["over"] = await ctx.expect_code(call(padded_capacity_request(limit + 1)), "RESOURCE_EXHAUSTED", f"a request of {limit + 1} bytes")
    check_capacity((await ctx.call(call, padded_capacity_request(limit))).capacity)
    detail["at_limit"] = "OK"
    await ctx.call(ctx.stub.GetCapacity, ctx.pb.GetCapacityRequest())
    detail["after"] = "OK"
    return detail


@scenario
async def unknown_method(ctx: Context):
    detail = {}
    for method in ("/fog.agent.v1.Agent/NoSuchMethod", "/fog.agent.v1.NoSuchService/GetCapacity"):
        call = ctx.channel.unary_unary(method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        detail[method] = await ctx.expect_code(call(b""), "UNIMPLEMENTED", method)
    return detail


@scenario
async def admin_only(ctx: Context):
    detail = {}
    detail["RemoveImage"] = await ctx.expect_code(ctx.stub.RemoveImage(ctx.pb.RemoveImageRequest(name="busybox:latest")), "PERMISSION_DENIED", "RemoveImage")
    detail["ImportImage"] = await ctx.expect_code(ctx.stub.ImportImage(ctx.pb.ImportImageRequest(layout_dir="/nonexistent")), "PERMISSION_DENIED", "ImportImage")

    async def run_benchmarks():
        responses = await ctx.stub.RunBenchmarks(ctx.pb.RunBenchmarksRequest())
        try:
            return await responses.__anext__()
        finally:
            example.cancel_stream(responses)

    detail["RunBenchmarks"] = await ctx.expect_code(run_benchmarks(), "PERMISSION_DENIED", "RunBenchmarks")
    return detail


async def run_scenarios(args, api, market) -> bool:
    uri, channel = await market.agent_channel(args.agent, args.timeout)
    example.log(f"agent {uri}")
    ctx = Context(args, api, uri, channel)
    results = {}
    for name in args.scenarios:
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(SCENARIOS[name](ctx), 4 * args.timeout)
            results[name] = {"ok": True, "detail": detail}
        except Failed as failure:
            results[name] = {"ok": False, "detail": failure.args[0]}
        except grpc.RpcError as error:
            results[name] = {"ok": False, "detail": {"code": code_of(error), "details": error.details()}}
        except (asyncio.TimeoutError, TimeoutError):
            results[name] = {"ok": False, "detail": f"no answer within {args.timeout:g} s"}
        except Exception as error:  # a bug here, or in grpctunnel-py: report it, go on
            results[name] = {"ok": False, "detail": f"{type(error).__name__}: {error}"}
        results[name]["seconds"] = round(time.monotonic() - started, 3)
        example.log(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} {json.dumps(results[name]['detail'])[:300]}")
    if args.results:
        write_file(args.results, json.dumps(results, indent=1))
    return all(result["ok"] for result in results.values())


async def serve_only(args, credentials) -> None:
    events = open(args.events, "a") if args.events else None

    def emit(event: str, **fields) -> None:
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields})
        print(line, flush=True)
        if events:
            events.write(line + "\n")
            events.flush()

    market = example.Market(on_event=lambda kind, uri, peer: emit(kind, agent=uri, peer=peer))
    host = args.listen.rsplit(":", 1)[0]
    port = int(args.listen.rsplit(":", 1)[1])
    wake = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for signum, what in ((signal.SIGUSR1, "start"), (signal.SIGUSR2, "stop"), (signal.SIGTERM, "exit"), (signal.SIGINT, "exit")):
        loop.add_signal_handler(signum, wake.put_nowait, what)
    async def stop() -> None:
        if market.server is not None:
            await market.stop(0)
            emit("stopped", port=port)
            await asyncio.sleep(0.1)  # lets the ended tunnels report "disconnected"

    what = "start"
    while what != "exit":
        if what == "start":
            await stop()
            port = await market.start(f"{host}:{port}", *credentials)
            emit("listening", port=port)
            if args.port_file:
                example.write_port_file(args.port_file, port)
        elif what == "stop":
            await stop()
        what = await wake.get()
    await stop()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", type=pathlib.Path)
    parser.add_argument("--cert", required=True, type=pathlib.Path)
    parser.add_argument("--key", required=True, type=pathlib.Path)
    parser.add_argument("--ca", required=True, type=pathlib.Path)
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path)
    parser.add_argument("--agent", metavar="HOST_ID")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the agent to connect and for each call")
    parser.add_argument("--scenarios", type=lambda text: [name for name in text.split(",") if name], default=[])
    parser.add_argument("--results", type=pathlib.Path)
    parser.add_argument("--serve-only", action="store_true")
    parser.add_argument("--events", type=pathlib.Path)
    parser.add_argument("--telemetry-interval-millis", type=int, default=0)
    parser.add_argument("--job-spec-json", help="the job's JobSpec as protobuf JSON, or @FILE")
    parser.add_argument("--job-log-contains", help="text the job's output must contain")
    parser.add_argument("--nonce-hex")
    parser.add_argument("--attestation-expect", default="OK", help="the status code GetAttestation must answer")
    parser.add_argument("--attestation-out", type=pathlib.Path, help="write the attestation report (JSON) here")
    parser.add_argument("--large-response", default="inventory", help="inventory, listjobs or joblogs:JOB_ID")
    parser.add_argument("--large-response-min-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-message-bytes", type=int, help="the agent's [api] max_message_bytes")
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if not args.serve_only and not args.scenarios:
        parser.error("give --scenarios or --serve-only")
    return args


async def main(args) -> int:
    api = example.load_agent_api(args.proto_dir)
    credentials = (args.cert.read_bytes(), args.key.read_bytes(), args.ca.read_bytes())
    if args.serve_only:
        await serve_only(args, credentials)
        return 0
    market = example.Market(on_event=lambda kind, uri, peer: example.log(f"tunnel {kind}: {uri} from {peer}"))
    port = await market.start(args.listen, *credentials)
    example.log(f"listening on port {port}")
    if args.port_file:
        example.write_port_file(args.port_file, port)
    try:
        return 0 if await run_scenarios(args, api, market) else 1
    finally:
        await market.stop(0)


if __name__ == "__main__":
    arguments = parse_args()
    try:
        sys.exit(asyncio.run(main(arguments)))
    except (asyncio.TimeoutError, TimeoutError) as error:
        sys.exit(f"tunnel_market: FAILED: no agent within {arguments.timeout:g} s {error}")
