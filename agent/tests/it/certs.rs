//! The README's OpenSSL recipe for market certificates ("Operators" → "Certificates for the
//! market"), run as written (only the host names differ: the test dials 127.0.0.1), against
//! `fog-agent serve` and `fog-agent client`: the market role is served, the auditor role is
//! refused where the role table says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The README's commands, with the test's names and addresses.
const RECIPE: &str = r#"
set -euo pipefail
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \
  -subj "/CN=fog market CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -subj "/CN=localhost" -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -out server.pem \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n')
for role in market auditor; do
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -subj "/CN=$role" -keyout $role.key -out $role.csr
  openssl x509 -req -in $role.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out $role.pem \
    -extfile <(printf "subjectAltName=URI:fog://role/$role\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
done
"#;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
}

#[test]
fn readme_openssl_recipe_issues_working_market_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-c", RECIPE])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl recipe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\nunix_socket = \"\"\n\
             tls_cert = \"{d}/server.pem\"\ntls_key = \"{d}/server.key\"\nclient_ca = \"{d}/ca.pem\"\n\
             [state]\ndir = \"{d}/state\"\n[bench]\nrun_on_start = false\n[metrics]\nenabled = false\n"
        ),
    )
    .unwrap();
    let mut serve = agent()
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = |role: &str| {
        agent()
            .args(["client", "--addr", &format!("https://127.0.0.1:{port}")])
            .arg("--ca")
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join(format!("{role}.pem")))
            .arg("--key")
            .arg(dir.path().join(format!("{role}.key")))
            .args(["capacity", "--json"])
            .output()
            .unwrap()
    };
    let market = client("market");
    let auditor = client("auditor");
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        market.status.success(),
        "market: {}",
        String::from_utf8_lossy(&market.stderr)
    );
    let capacity: serde_json::Value = serde_json::from_slice(&market.stdout).unwrap();
    assert!(capacity["sequence"].is_string(), "{capacity}");
    // GetCapacity is for market and admin only.
    assert!(!auditor.status.success());
    let stderr = String::from_utf8_lossy(&auditor.stderr).to_lowercase();
    assert!(stderr.contains("permission"), "auditor: {stderr}");
}
