//! The binary's exit codes: `0` ok, `1` failure, `2` usage (naming the bad flag), `78`
//! (EX_CONFIG) for a config file that does not parse or fails validation, in every command that
//! loads one (`check-config`, `serve`, `image`), each with a stderr line naming the bad key.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EX_CONFIG: i32 = 78;

/// Runs `fog-agent ARGS`, killing it after 60 s (a `serve` that wrongly accepted its config
/// would otherwise run forever), and returns its output.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fog-agent"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "fog-agent {args:?} still running after 60 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts the exit code and that stderr contains every needle.
fn assert_exit(out: &Output, code: i32, needles: &[&str], what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: stderr: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{what}: {needle:?} not in {stderr}"
        );
    }
}

/// Bad configs, each with the text stderr must contain (the key and what is wrong with it).
/// The state dir of each is `dir`, so nothing outside it is touched.
fn bad_configs(dir: &Path) -> Vec<(&'static str, String, Vec<&'static str>)> {
    let state = format!("[state]\ndir = {:?}\n", dir.join("state"));
    vec![
        (
            "malformed TOML",
            format!("{state}[api]\nlisten = [\"127.0.0.1:7443\"\n"),
            vec!["agent.toml:4:", "api.listen: unclosed array"],
        ),
        (
            "unknown key",
            format!("{state}[api]\nlisten_port = 7443\n"),
            vec!["api.listen_port: unknown field `listen_port`"],
        ),
        (
            "wrong type",
            format!("{state}[telemetry]\nmin_interval_millis = \"250ms\"\n"),
            vec!["telemetry.min_interval_millis:"],
        ),
        (
            "value out of range",
            format!("{state}[telemetry]\nqueue_depth = 0\n"),
            vec!["telemetry.queue_depth: 0 is outside 1 to 1024"],
        ),
    ]
}

#[test]
fn check_config_exits_78_on_a_bad_config_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    for (what, text, needles) in bad_configs(dir.path()) {
        std::fs::write(&file, text).unwrap();
        let out = run(&["check-config", file.to_str().unwrap()]);
        assert_exit(&out, EX_CONFIG, &needles, what);
    }
    // The shipped default is valid: 0.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    let out = run(&["check-config", shipped.to_str().unwrap()]);
    assert_exit(&out, 0, &[], "shipped default");
    // A file that cannot be read is a failure, not a configuration error: 1.
    let missing = dir.path().join("missing.toml");
    let out = run(&["check-config", missing.to_str().unwrap()]);
    assert_exit(&out, 1, &["cannot read config file"], "missing file");
}

#[test]
fn serve_exits_78_on_a_bad_config_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let mut cases = bad_configs(dir.path());
    // Passes the config's own shape check, but is no TCTI: found by `serve` itself.
    cases.push((
        "TCTI that does not parse",
        format!(
            "[state]\ndir = {:?}\n[tpm]\ntcti = \"swtpm:port=0\"\n",
            dir.path().join("state")
        ),
        vec!["tpm.tcti: TCTI \"swtpm:port=0\" is malformed"],
    ));
    for (what, text, needles) in cases {
        std::fs::write(&file, text).unwrap();
        let out = run(&["serve", "--config", file.to_str().unwrap()]);
        assert_exit(&out, EX_CONFIG, &needles, what);
    }
}

#[test]
fn image_commands_exit_78_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "[telemetry]\nqueue_depth = 0\n").unwrap();
    let out = run(&["image", "list", "--config", file.to_str().unwrap()]);
    assert_exit(
        &out,
        EX_CONFIG,
        &["telemetry.queue_depth: 0 is outside"],
        "image list",
    );
}

#[test]
fn usage_errors_exit_2() {
    // clap's own: an unknown flag, a missing argument, an unknown subcommand.
    for args in [
        &["inventory", "--no-such-flag"][..],
        &["check-config"],
        &["no-such-command"],
    ] {
        let out = run(args);
        assert_exit(&out, 2, &["Usage:"], &format!("{args:?}"));
    }
    // Argument values only the command checks: a malformed nonce (before any TPM is opened).
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "attest",
        "--nonce",
        "zz",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_exit(&out, 2, &["nonce must be"], "attest --nonce zz");
    // Bad values of `client job start`'s network flags, refused by clap before any connection
    // (nothing listens at the socket), each naming its flag.
    for (flag, value) in [
        ("--publish", "80/sctp"),
        ("--publish", "0"),
        ("--ingress-rate", "10X"),
        ("--egress-rate", "1.5"),
    ] {
        let out = run(&[
            "client",
            "--addr",
            "unix:/nonexistent/agent.sock",
            "job",
            "start",
            "--id",
            "j",
            "--image",
            "busybox:latest",
            flag,
            value,
        ]);
        assert_exit(
            &out,
            2,
            &[flag, value],
            &format!("job start {flag} {value}"),
        );
    }
    // Help and version are not errors.
    assert_exit(&run(&["--help"]), 0, &[], "--help");
    assert_exit(&run(&["--version"]), 0, &[], "--version");
}
