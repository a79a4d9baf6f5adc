//! Parsing and validating valid and invalid config fixtures.

use std::time::Duration;

use super::error::{key_path_at, line_column};
use super::validate::{valid_pci_bus_id, valid_tcti};
use super::*;

fn problems_of(text: &str) -> Vec<&'static str> {
    match Config::parse(text, "t.toml") {
        Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(|p| p.key).collect(),
        other => panic!("expected semantic errors, got {other:?}"),
    }
}

fn syntax_of(text: &str) -> (usize, String, String) {
    match Config::parse(text, "t.toml") {
        Err(ConfigError::Syntax {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn shipped_default_file_equals_embedded_defaults() {
    let parsed = Config::parse(DEFAULT_TOML, "packaging/agent.toml").unwrap();
    assert_eq!(parsed, Config::default());
    assert!(Config::default().problems().is_empty());
}

#[test]
fn empty_file_is_all_defaults() {
    assert_eq!(Config::parse("", "t.toml").unwrap(), Config::default());
}

#[test]
fn full_valid_file() {
    let text = r#"
[api]
listen = ["0.0.0.0:7443", "[::1]:7444"]
unix_socket = ""
tls_cert = "/x/server.pem"
tls_key = "/x/server.key"
client_ca = "/x/ca.pem"
max_message_bytes = "8 MiB"
max_concurrent_streams = 1000
[state]
dir = "/srv/fog"
[tpm]
tcti = "swtpm:host=127.0.0.1,port=2321"
[telemetry]
min_interval_millis = 100
queue_depth = 4
[capacity]
reserve_cpu_millicores = 2500
reserve_memory = "4 GiB"
reserve_disk = 0
reserve_gpus = ["0000:01:00.0"]
"#;
    let config = Config::parse(text, "t.toml").unwrap();
    assert_eq!(config.api.listen.len(), 2);
    assert_eq!(config.api.unix_socket(), None);
    assert_eq!(config.api.max_message_bytes, ByteSize(8 << 20));
    assert_eq!(config.capacity.reserve_memory, Amount::Bytes(4 << 30));
    assert_eq!(config.capacity.reserve_disk, Amount::Bytes(0));
    assert_eq!(config.telemetry.min_interval(), Duration::from_millis(100));
    assert_eq!(config.telemetry.max_subscribers, 4096, "default kept");
}

#[test]
fn unknown_key_is_named_with_its_section_and_line() {
    let (line, key, message) = syntax_of("[api]\nlisten = []\nlisten_addr = 3\n");
    assert_eq!(line, 3);
    assert_eq!(key, "api.listen_addr");
    assert!(message.contains("unknown field `listen_addr`"), "{message}");
}

#[test]
fn unknown_section_is_named() {
    let (line, key, _) = syntax_of("[state]\ndir = \"/x\"\n[gpu]\nx = 1\n");
    assert_eq!((line, key.as_str()), (3, "gpu"));
}

#[test]
fn wrong_type_and_bad_values_name_the_key() {
    let (_, key, _) = syntax_of("[telemetry]\nmin_interval_millis = \"fast\"\n");
    assert_eq!(key, "telemetry.min_interval_millis");
    let (_, key, message) = syntax_of("[api]\nlisten = [\"localhost\"]\n");
    assert_eq!(key, "api.listen");
    assert!(message.contains("socket address"), "{message}");
    let (_, key, message) = syntax_of("[capacity]\nreserve_memory = \"12 parsecs\"\n");
    assert_eq!(key, "capacity.reserve_memory");
    assert!(message.contains("unknown size unit"), "{message}");
    let (_, key, _) = syntax_of("[capacity]\nreserve_memory = \"120%\"\n");
    assert_eq!(key, "capacity.reserve_memory");
}

#[test]
fn malformed_toml_names_the_line() {
    let (line, key, _) = syntax_of("[api]\ninsecure_loopback = tru\n");
    assert_eq!((line, key.as_str()), (2, "api.insecure_loopback"));
    let (line, _, _) = syntax_of("[api\n");
    assert_eq!(line, 1);
}

#[test]
fn semantic_errors_are_all_reported() {
    let keys = problems_of(
        r#"
[api]
listen = ["192.0.2.1:7443"]
insecure_loopback = true
max_concurrent_streams = 0
[state]
dir = "relative"
[tpm]
tcti = "/dev/tpm0"
[telemetry]
min_interval_millis = 1
queue_depth = 0
[capacity]
reserve_gpus = ["gpu0"]
[jobs]
runtime = "runc"
cdi_spec_dirs = ["/etc/cdi", "etc/cdi"]
cgroup_parent = "../x"
telemetry_interval_millis = 5
retention_millis = 10
[metrics]
sample_interval_millis = 5
tls_cert = "/x/m.pem"
"#,
    );
    assert_eq!(
        keys,
        [
            "api.insecure_loopback",
            "api.max_concurrent_streams",
            "state.dir",
            "tpm.tcti",
            "telemetry.min_interval_millis",
            "telemetry.queue_depth",
            "jobs.runtime",
            "jobs.cdi_spec_dirs",
            "jobs.cgroup_parent",
            "jobs.telemetry_interval_millis",
            "jobs.retention_millis",
            "metrics.sample_interval_millis",
            "metrics.tls_key",
            "capacity.reserve_gpus",
        ]
    );
}

#[test]
fn network_capacity_is_measured_or_a_rate_in_range() {
    let parse = |text: &str| Config::parse(text, "t.toml");
    assert_eq!(
        parse("[capacity]\nnetwork_bits_per_second = 10_000_000_000\n")
            .unwrap()
            .capacity
            .network_bits_per_second,
        10_000_000_000
    );
    assert_eq!(Config::default().capacity.network_bits_per_second, 0);
    for bad in ["1", "7999", "10_000_000_000_001"] {
        assert_eq!(
            problems_of(&format!("[capacity]\nnetwork_bits_per_second = {bad}\n")),
            ["capacity.network_bits_per_second"],
            "{bad}"
        );
    }
    let (_, key, _) = syntax_of("[capacity]\nnetwork_bits_per_second = \"10G\"\n");
    assert_eq!(key, "capacity.network_bits_per_second");
}

#[test]
fn no_listener_and_missing_tls_paths() {
    assert_eq!(
        problems_of("[api]\nlisten = []\nunix_socket = \"\"\n"),
        ["api.listen"]
    );
    assert_eq!(
        problems_of("[api]\ntls_key = \"\"\nclient_ca = \"\"\n"),
        ["api.tls_key", "api.client_ca"]
    );
    // Plaintext loopback needs no TLS files.
    let ok = "[api]\ninsecure_loopback = true\ntls_cert = \"\"\ntls_key = \"\"\nclient_ca = \"\"\n";
    assert!(Config::parse(ok, "t.toml").is_ok());
}

#[test]
fn sizes_and_amounts() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("4 KiB"), Ok(4096));
    assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
    assert!(parse_size("").is_err());
    assert!(parse_size("GiB").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("99999999999999999999").is_err());
    assert!(parse_size("16777216 TiB").is_err(), "overflow");
    assert_eq!(parse_amount("10%"), Ok(Amount::Percent(10)));
    assert_eq!(parse_amount(" 100 %"), Ok(Amount::Percent(100)));
    assert!(parse_amount("101%").is_err());
    assert!(parse_amount("x%").is_err());
    assert_eq!(Amount::Percent(10).of(1000), 100);
    assert_eq!(Amount::Percent(100).of(u64::MAX), u64::MAX);
    assert_eq!(Amount::Bytes(5000).of(1000), 1000);
}

#[test]
fn size_errors_quote_the_text() {
    let message = |result: Result<Amount, SizeError>| result.unwrap_err().to_string();
    assert_eq!(
        message(parse_amount("GiB")),
        "\"GiB\" is not a size (expected e.g. \"4 GiB\")"
    );
    assert_eq!(
        message(parse_amount("12 parsecs")),
        "unknown size unit \"parsecs\" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
    );
    assert_eq!(
        message(parse_amount("16777216 TiB")),
        "\"16777216 TiB\" is too large"
    );
    assert_eq!(
        message(parse_amount("99999999999999999999")),
        "\"99999999999999999999\" is too large"
    );
    assert_eq!(
        message(parse_amount("x%")),
        "\"x%\" is not a percentage from 0% to 100%"
    );
    assert_eq!(message(parse_amount("101%")), "\"101%\" is more than 100%");
}

#[test]
fn tcti_and_pci_forms() {
    assert!(valid_tcti("device:/dev/tpmrm0"));
    assert!(valid_tcti("swtpm:host=127.0.0.1,port=2321"));
    assert!(valid_tcti("tabrmd"));
    assert!(!valid_tcti("device:tpmrm0"));
    assert!(!valid_tcti(""));
    assert!(valid_pci_bus_id("0000:c1:00.0"));
    assert!(!valid_pci_bus_id("c1:00.0"));
    assert!(!valid_pci_bus_id("0000:c1:00.00"));
}

#[test]
fn key_path_forms() {
    let text = "a = 1\n[api]\nlisten = 2\n[[x.y]]\n\"q\" = 3\n";
    assert_eq!(key_path_at(text, 0), "a");
    assert_eq!(
        key_path_at(text, text.find("listen").unwrap()),
        "api.listen"
    );
    assert_eq!(key_path_at(text, text.find("[api]").unwrap()), "api");
    assert_eq!(key_path_at(text, text.find("\"q\"").unwrap()), "x.y.q");
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
}

#[test]
fn every_unknown_key_and_wrong_type_is_named_at_once() {
    let text = "[api]\nlisten_port = 7443\nmax_message_bytes = \"4 MiB\"\n\n[telemetry]\nmin_interval_millis = \"250ms\"\nqueue_depth = 16\n\n[nope]\nx = 1\n\n[jobs]\nretention_millis = true\nbogus = 1\n";
    let errors = match Config::parse(text, "t.toml") {
        Err(ConfigError::Keys(errors)) => errors,
        other => panic!("expected every key error, got {other:?}"),
    };
    let found: Vec<(usize, String)> = errors
        .iter()
        .map(|err| match err {
            ConfigError::Syntax { line, key, .. } => (*line, key.clone()),
            other => panic!("not a key error: {other:?}"),
        })
        .collect();
    assert_eq!(
        found,
        [
            (2, "api.listen_port".to_owned()),
            (6, "telemetry.min_interval_millis".to_owned()),
            (9, "nope".to_owned()),
            (13, "jobs.retention_millis".to_owned()),
            (14, "jobs.bogus".to_owned()),
        ],
        "{errors:?}"
    );
    // One bad key is the plain error it always was.
    assert_eq!(syntax_of("[api]\nlisten_port = 1\n").1, "api.listen_port");
}

#[test]
fn market_endpoints_files_and_ranges_are_checked() {
    assert_eq!(
        problems_of(
            r#"
[market]
endpoints = ["https://m.example:8443", "http://m.example:1", "https://m.example"]
ca = ""
reconnect_min_millis = 5000
reconnect_max_millis = 1000
max_streams = 0
"#
        ),
        [
            "market.endpoints",
            "market.endpoints",
            "market.ca",
            "market.max_streams",
            "market.reconnect_max_millis",
        ]
    );
    // No endpoints: the files are not needed.
    assert!(Config::parse("[market]\nca = \"\"\n", "t.toml").is_ok());
}

#[test]
fn image_pull_policy_keys_are_checked() {
    assert_eq!(
        problems_of("[images]\nallowed_registries = [\"https://ghcr.io/x\"]\n"),
        ["images.allowed_registries"]
    );
    assert_eq!(
        problems_of("[images]\ninsecure_registries = [\"127.0.0.1:5000\"]\n"),
        ["images.insecure_registries"]
    );
    assert_eq!(
        problems_of("[images]\nca_file = \"relative.pem\"\n"),
        ["images.ca_file"]
    );
    assert_eq!(
        problems_of("[images]\nmax_compressed_bytes = \"1 KiB\"\n"),
        ["images.max_compressed_bytes"]
    );
    let ok = "[images]\nallowed_registries = [\"127.0.0.1:5000\", \"ghcr.io\"]\ninsecure_registries = [\"127.0.0.1:5000\"]\nca_file = \"/etc/fog-agent/registry-ca.pem\"\nmax_bytes = 0\n";
    assert!(Config::parse(ok, "t.toml").is_ok());
}

#[test]
fn receipt_intervals_are_checked() {
    assert_eq!(
        problems_of("[receipts]\ninterval_secs = 0\nquote_interval_secs = 86401\n"),
        ["receipts.interval_secs", "receipts.quote_interval_secs"]
    );
    let ok = "[receipts]\nenabled = false\ninterval_secs = 1\nquote_interval_secs = 86400\n";
    let config = Config::parse(ok, "t.toml").unwrap();
    assert!(!config.receipts.enabled);
}
