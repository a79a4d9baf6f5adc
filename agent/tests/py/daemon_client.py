"""A market-side Python client of fog-agent over mutual TLS.

Generates stubs from proto/ with grpc_tools.protoc into a temporary directory, then calls
GetInventory, reads messages from WatchHostTelemetry and WatchCapacity, and calls
GetAttestation (UNAVAILABLE naming the TCTI: the test daemon's TPM is unreachable). Exits non-zero with
a message on the first failed expectation. Run by agent/tests/it/daemon.rs.
"""

import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate_stubs(proto_dir: pathlib.Path, out: pathlib.Path) -> None:
    files = sorted(str(p.relative_to(proto_dir)) for p in (proto_dir / "fog/agent/v1").glob("*.proto"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")


def expect(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True, help="host:port of the agent")
    parser.add_argument("--certs", required=True, type=pathlib.Path, help="fog-agent dev-certs output")
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        generate_stubs(args.proto_dir, pathlib.Path(out))
        sys.path.insert(0, out)
        agent_pb2 = importlib.import_module("fog.agent.v1.agent_pb2")
        agent_pb2_grpc = importlib.import_module("fog.agent.v1.agent_pb2_grpc")
        telemetry_pb2 = importlib.import_module("fog.agent.v1.telemetry_pb2")

        credentials = grpc.ssl_channel_credentials(
            root_certificates=(args.certs / "ca.pem").read_bytes(),
            private_key=(args.certs / "market.key").read_bytes(),
            certificate_chain=(args.certs / "market.pem").read_bytes(),
        )
        with grpc.secure_channel(args.addr, credentials) as channel:
            stub = agent_pb2_grpc.AgentStub(channel)

            reply = stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=60)
            expect(reply.inventory.format == "fog-inventory-v1", f"inventory format {reply.inventory.format!r}")
            document = json.loads(reply.inventory_json)
            expect(
                document["fingerprint"]["value"] == reply.inventory.fingerprint.value,
                "structured and JSON inventories agree on the fingerprint",
            )
            print(f"inventory: fingerprint {reply.inventory.fingerprint.value[:16]}...")

            stream = stub.WatchHostTelemetry(agent_pb2.WatchHostTelemetryRequest(interval_millis=100), timeout=30)
            sequences = []
            for message in stream:
                sample = message.sample
                expect(sample.memory.total_bytes > 0, "telemetry has memory")
                expect(sample.cpu.logical_cpus >= 1, "telemetry has CPUs")
                expect(sample.HasField("taken_at"), "telemetry has a timestamp")
                for gpu in sample.gpus:
                    expect(
                        gpu.status == telemetry_pb2.GPU_SAMPLE_STATUS_OK or gpu.error,
                        "an unavailable GPU says why",
                    )
                sequences.append(sample.sequence)
                if len(sequences) == 3:
                    stream.cancel()
                    break
            expect(sequences == sorted(sequences) and len(set(sequences)) == 3, f"sequences {sequences}")
            print(f"telemetry: samples {sequences}")

            stream = stub.WatchCapacity(agent_pb2.WatchCapacityRequest(), timeout=30)
            first = next(iter(stream))
            stream.cancel()
            expect(first.capacity.sequence >= 1, "capacity has a sequence number")
            cpu = first.capacity.cpu_millicores
            expect(cpu.free == max(0, cpu.total - cpu.reserved - cpu.allocated), "cpu free = total - reserved - allocated")
            print(f"capacity: sequence {first.capacity.sequence}")

            try:
                stub.GetAttestation(agent_pb2.GetAttestationRequest(nonce=bytes(range(32))), timeout=30)
                sys.exit("FAILED: GetAttestation answered, but the test daemon has no reachable TPM")
            except grpc.RpcError as err:
                expect(err.code() == grpc.StatusCode.UNAVAILABLE and "swtpm:host=127.0.0.1,port=1" in err.details(), f"GetAttestation: {err.code()} {err.details()}")
                print(f"attestation: {err.code().name}: {err.details()}")

            try:
                stub.GetAttestation(agent_pb2.GetAttestationRequest(nonce=b"short"), timeout=30)
                sys.exit("FAILED: a 5-byte nonce was accepted")
            except grpc.RpcError as err:
                expect(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"short nonce: {err.code()}")
                expect(err.details().startswith("nonce:"), f"short nonce names the field: {err.details()}")


if __name__ == "__main__":
    main()
