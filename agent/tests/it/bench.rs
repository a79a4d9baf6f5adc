//! `fog-agent bench` end to end: child isolation (crash, hang), the cache, the `--json` schema,
//! a real `bench-peer` over loopback and the OpenCL kernels on PoCL.

// Helpers of tests: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_fog-agent");

fn bench(state: &std::path::Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(EXE)
        .arg("bench")
        .arg("--json")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        // The fault benchmarks exist in this binary through the `test-util` feature (the self
        // dev-dependency in agent/Cargo.toml); the switch then makes them selectable.
        .env(
            fog_agent::bench::suite::TEST_FAULTS_ENV,
            fog_agent::bench::suite::TEST_FAULTS_VALUE,
        )
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn result<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {doc}"))
}

#[test]
fn crash_and_hang_are_reported_and_the_suite_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (code, doc) = bench(
        dir.path(),
        &["--only", "test.crash,test.hang,cpu.sysbench_prime.single"],
    );
    assert_eq!(code, 1, "failed benchmarks give exit code 1");
    let crash = result(&doc, "test.crash");
    assert_eq!(crash["status"], "failed");
    assert!(
        crash["reason"].as_str().unwrap().contains("SIGSEGV"),
        "{crash}"
    );
    let hang = result(&doc, "test.hang");
    assert_eq!(hang["status"], "failed");
    assert!(
        hang["reason"].as_str().unwrap().starts_with("timed out"),
        "{hang}"
    );
    let prime = result(&doc, "cpu.sysbench_prime.single");
    assert_eq!(prime["status"], "ok", "{prime}");
}

#[test]
fn fault_benchmarks_do_not_exist_without_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(EXE)
        .args(["bench", "--only", "test.crash", "--state-dir"])
        .arg(dir.path())
        .env_remove(fog_agent::bench::suite::TEST_FAULTS_ENV)
        .output()
        .unwrap();
    // An unknown `--only` id is a usage error.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown benchmark id"));
}

#[test]
fn json_schema_and_cache_reuse_and_force() {
    let dir = tempfile::tempdir().unwrap();
    let (code, first) = bench(dir.path(), &["--only", "cpu.sysbench_prime.single"]);
    assert_eq!(code, 0);
    assert_eq!(first["format"], "fog-bench-v1");
    assert_eq!(first["mode"], "quick");
    assert!(first["fingerprint"].as_str().unwrap().len() > 10);
    let r = result(&first, "cpu.sysbench_prime.single");
    for key in [
        "id",
        "kernel_version",
        "status",
        "device",
        "unit",
        "summary",
        "details",
        "verified",
        "duration_s",
        "env_before",
        "env_after",
        "cached",
    ] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    for key in ["median", "min", "max", "mean", "cv", "samples", "noisy"] {
        assert!(r["summary"].get(key).is_some(), "missing summary.{key}");
    }
    assert_eq!(r["unit"], "events/s");
    assert_eq!(r["cached"], false);
    assert!(r["summary"]["samples"].as_u64().unwrap() >= 5);

    let (_, second) = bench(dir.path(), &["--only", "cpu.sysbench_prime.single"]);
    let r2 = result(&second, "cpu.sysbench_prime.single");
    assert_eq!(r2["cached"], true);
    assert_eq!(r2["summary"], r["summary"]);

    let (_, forced) = bench(
        dir.path(),
        &["--only", "cpu.sysbench_prime.single", "--force"],
    );
    assert_eq!(
        result(&forced, "cpu.sysbench_prime.single")["cached"],
        false
    );
}

#[test]
fn fingerprint_change_reruns() {
    use fog_agent::bench::{self, Mode, Silent, SuiteConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = |fp: &str| SuiteConfig {
        mode: Mode::Quick,
        only: Some(vec!["cpu.sysbench_prime.single".into()]),
        peer: None,
        force: false,
        state_dir: dir.path().to_owned(),
        fingerprint: fp.into(),
        cpu: bench::cpu_facts_from_sysfs(&fog_agent::fsroot::FsRoot::host()),
        exe: EXE.into(),
    };
    let a = bench::run_suite(&config("fp-a"), &mut Silent).unwrap();
    assert!(!a[0].cached && a[0].status == bench::Status::Ok, "{a:?}");
    let again = bench::run_suite(&config("fp-a"), &mut Silent).unwrap();
    assert!(again[0].cached);
    let b = bench::run_suite(&config("fp-b"), &mut Silent).unwrap();
    assert!(!b[0].cached, "a new fingerprint must re-run");
    // The attestation payload hook returns what is cached for a fingerprint.
    let payload = bench::cached_results(dir.path(), "fp-b").unwrap();
    assert_eq!(payload["results"].as_array().unwrap().len(), 1);
    assert_eq!(
        bench::cached_results(dir.path(), "fp-c").unwrap()["results"],
        serde_json::json!([])
    );
}

#[test]
fn network_against_a_real_bench_peer_and_skipped_without() {
    let dir = tempfile::tempdir().unwrap();
    let (_, doc) = bench(dir.path(), &["--only", "net.rtt"]);
    let r = result(&doc, "net.rtt");
    assert_eq!(r["status"], "skipped");
    assert!(r["reason"].as_str().unwrap().contains("--peer"));

    let mut peer = Command::new(EXE)
        .args(["bench-peer", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(peer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let (code, doc) = bench(dir.path(), &["--only", "net", "--peer", &addr]);
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert_eq!(code, 0, "{doc}");
    for id in ["net.throughput.up", "net.throughput.down"] {
        let r = result(&doc, id);
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["unit"], "Gbit/s");
        assert_eq!(r["details"]["streams"], 4);
    }
    let rtt = result(&doc, "net.rtt");
    assert!(
        rtt["details"]["p95_us"].as_f64().unwrap() >= rtt["details"]["min_us"].as_f64().unwrap()
    );
}

/// Needs an OpenCL platform (PoCL: `pocl-opencl-icd`, installed by `packaging/setup-debian.sh
/// --test`). Without one it is skipped with the agent's reason, except in CI, where PoCL is
/// always installed and its absence is a broken setup: see `support::skip`.
#[test]
fn opencl_on_pocl() {
    let dir = tempfile::tempdir().unwrap();
    let (_, doc) = bench(dir.path(), &["--only", "opencl"]);
    let fp32 = result(&doc, "opencl.fp32");
    if fp32["status"] == "skipped" {
        return crate::support::skip(
            "opencl_on_pocl",
            &format!(
                "no OpenCL device (install pocl-opencl-icd): {}",
                fp32["reason"].as_str().unwrap_or("no reason given")
            ),
        );
    }
    for id in [
        "opencl.fp32",
        "opencl.membw",
        "opencl.transfer",
        "opencl.launch",
    ] {
        let r = result(&doc, id);
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["driver_versions"]
            .as_str()
            .unwrap()
            .starts_with("opencl "));
        assert!(r["gpu_health"]["nvml"]
            .as_str()
            .unwrap()
            .contains("unavailable"));
    }
    assert_eq!(fp32["details"]["chains"], 8);
}
