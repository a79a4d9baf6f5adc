//! Semantic checks of a parsed config ([`Config::problems`]): every bad value, each with its key.

use super::host::{MAX_NETWORK_BITS_PER_SECOND, MIN_NETWORK_BITS_PER_SECOND};
use super::{Config, Problem};

impl Config {
    /// Every semantic problem of this config (empty when valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &'static str, message: String| {
            if !ok {
                out.push(Problem { key, message });
            }
        };
        let api = &self.api;
        check(
            !api.listen.is_empty() || api.unix_socket().is_some(),
            "api.listen",
            "no listener: set api.listen or api.unix_socket".into(),
        );
        let plaintext = api.insecure_loopback;
        for addr in &api.listen {
            check(
                !plaintext || addr.ip().is_loopback(),
                "api.insecure_loopback",
                format!("plaintext is allowed on loopback addresses only, not {addr}"),
            );
        }
        if !api.listen.is_empty() && !plaintext {
            for (key, path) in [
                ("api.tls_cert", &api.tls_cert),
                ("api.tls_key", &api.tls_key),
                ("api.client_ca", &api.client_ca),
            ] {
                check(
                    !path.as_os_str().is_empty(),
                    key,
                    "required for mutual TLS on api.listen".into(),
                );
            }
        }
        if let Some(socket) = api.unix_socket() {
            check(
                socket.is_absolute(),
                "api.unix_socket",
                format!("must be an absolute path, not {}", socket.display()),
            );
        }
        check(
            (1024..=256 * 1024 * 1024).contains(&api.max_message_bytes.0),
            "api.max_message_bytes",
            format!(
                "{} bytes is outside 1 KiB to 256 MiB",
                api.max_message_bytes.0
            ),
        );
        check(
            (1..=100_000).contains(&api.max_concurrent_streams),
            "api.max_concurrent_streams",
            format!("{} is outside 1 to 100000", api.max_concurrent_streams),
        );
        check(
            (100..=3_600_000).contains(&api.request_timeout_millis),
            "api.request_timeout_millis",
            format!("{} is outside 100 to 3600000", api.request_timeout_millis),
        );
        check(
            api.shutdown_grace_millis <= 600_000,
            "api.shutdown_grace_millis",
            format!("{} is more than 600000", api.shutdown_grace_millis),
        );
        for (key, value, range) in [
            ("api.max_connections", api.max_connections, 1..=1_000_000),
            (
                "api.max_connections_per_peer",
                api.max_connections_per_peer,
                1..=1_000_000,
            ),
            (
                "api.max_pending_handshakes",
                api.max_pending_handshakes,
                1..=1_000_000,
            ),
            (
                "api.max_pending_handshakes_per_peer",
                api.max_pending_handshakes_per_peer,
                1..=1_000_000,
            ),
            ("api.fd_reserve", api.fd_reserve, 64..=1_000_000),
        ] {
            check(
                range.contains(&value),
                key,
                format!("{value} is outside {} to {}", range.start(), range.end()),
            );
        }
        check(
            (100..=600_000).contains(&api.handshake_timeout_millis),
            "api.handshake_timeout_millis",
            format!("{} is outside 100 to 600000", api.handshake_timeout_millis),
        );
        check(
            api.tls_reload_interval_millis == 0 || api.tls_reload_interval_millis >= 100,
            "api.tls_reload_interval_millis",
            format!(
                "{} is neither 0 nor at least 100",
                api.tls_reload_interval_millis
            ),
        );
        if let Some(crl) = api.crl_file() {
            check(
                crl.is_absolute(),
                "api.crl_file",
                format!("must be an absolute path, not {}", crl.display()),
            );
        }
        check(
            self.state.dir.is_absolute(),
            "state.dir",
            format!("must be an absolute path, not {:?}", self.state.dir),
        );
        check(
            self.state.slack_bytes.0 <= 1 << 40,
            "state.slack_bytes",
            format!("{} bytes is more than 1 TiB", self.state.slack_bytes.0),
        );
        check(
            valid_tcti(&self.tpm.tcti),
            "tpm.tcti",
            format!(
                "{:?} is not a TCTI (device:PATH, swtpm:host=H,port=P, mssim:..., tabrmd)",
                self.tpm.tcti
            ),
        );
        let telemetry = &self.telemetry;
        check(
            (10..=60_000).contains(&telemetry.min_interval_millis),
            "telemetry.min_interval_millis",
            format!("{} is outside 10 to 60000", telemetry.min_interval_millis),
        );
        check(
            (1..=1024).contains(&telemetry.queue_depth),
            "telemetry.queue_depth",
            format!("{} is outside 1 to 1024", telemetry.queue_depth),
        );
        check(
            (1..=100_000).contains(&telemetry.max_subscribers),
            "telemetry.max_subscribers",
            format!("{} is outside 1 to 100000", telemetry.max_subscribers),
        );
        let jobs = &self.jobs;
        check(
            jobs.runtime.is_absolute(),
            "jobs.runtime",
            format!("must be an absolute path, not {:?}", jobs.runtime),
        );
        check(
            jobs.dir.as_os_str().is_empty() || jobs.dir.is_absolute(),
            "jobs.dir",
            format!("must be empty or an absolute path, not {:?}", jobs.dir),
        );
        for (i, dir) in jobs.cdi_spec_dirs.iter().enumerate() {
            check(
                dir.is_absolute(),
                "jobs.cdi_spec_dirs",
                format!("entry {i} must be an absolute path, not {dir:?}"),
            );
        }
        check(
            jobs.scratch_max_inodes >= 16,
            "jobs.scratch_max_inodes",
            format!("{} is less than 16", jobs.scratch_max_inodes),
        );
        check(
            (4096..=1 << 40).contains(&jobs.log_max_bytes.0),
            "jobs.log_max_bytes",
            format!("{} bytes is outside 4 KiB to 1 TiB", jobs.log_max_bytes.0),
        );
        check(
            (1000..=jobs.max_time_limit_millis).contains(&jobs.default_time_limit_millis),
            "jobs.default_time_limit_millis",
            format!(
                "{} is outside 1000 to jobs.max_time_limit_millis ({})",
                jobs.default_time_limit_millis, jobs.max_time_limit_millis
            ),
        );
        check(
            !jobs.cgroup_parent.is_empty()
                && jobs
                    .cgroup_parent
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != ".."),
            "jobs.cgroup_parent",
            format!(
                "{:?} is not a relative cgroup path like \"fog-agent\"",
                jobs.cgroup_parent
            ),
        );
        check(
            (100..=60_000).contains(&jobs.telemetry_interval_millis),
            "jobs.telemetry_interval_millis",
            format!("{} is outside 100 to 60000", jobs.telemetry_interval_millis),
        );
        check(
            jobs.retention_millis == 0 || jobs.retention_millis >= 1000,
            "jobs.retention_millis",
            format!(
                "{} is below 1000 (0 keeps ended jobs forever)",
                jobs.retention_millis
            ),
        );
        if let Some(net) = jobs.network.cni() {
            for (key, path, may_be_empty) in [
                ("jobs.network.plugin_dir", &net.plugin_dir, false),
                ("jobs.network.conflist", &net.conflist, true),
                ("jobs.network.run_dir", &net.run_dir, false),
            ] {
                check(
                    path.is_absolute() || (may_be_empty && path.as_os_str().is_empty()),
                    key,
                    format!("must be an absolute path, not {path:?}"),
                );
            }
            check(
                !net.name.is_empty()
                    && net.name.len() <= 64
                    && net
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                "jobs.network.name",
                format!("{:?} is not 1 to 64 of [A-Za-z0-9_.-]", net.name),
            );
            check(
                (1..16).contains(&net.bridge.len())
                    && net
                        .bridge
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                "jobs.network.bridge",
                format!(
                    "{:?} is not an interface name (1 to 15 of [A-Za-z0-9_.-])",
                    net.bridge
                ),
            );
            check(
                matches!(net.subnet, ipnet::IpNet::V4(v4) if v4.prefix_len() <= 30),
                "jobs.network.subnet",
                format!(
                    "{} is not an IPv4 subnet of at least 4 addresses",
                    net.subnet
                ),
            );
            if let Some(subnet6) = net.subnet6 {
                check(
                    matches!(subnet6, ipnet::IpNet::V6(v6) if v6.prefix_len() <= 120),
                    "jobs.network.subnet6",
                    format!("{subnet6} is not an IPv6 subnet of at least 256 addresses (or \"\")"),
                );
            }
        }
        let receipts = &self.receipts;
        check(
            (1..=86_400).contains(&receipts.interval_secs),
            "receipts.interval_secs",
            format!("{} is outside 1 to 86400", receipts.interval_secs),
        );
        check(
            (1..=86_400).contains(&receipts.quote_interval_secs),
            "receipts.quote_interval_secs",
            format!("{} is outside 1 to 86400", receipts.quote_interval_secs),
        );
        let images = &self.images;
        check(
            images.max_unpacked_bytes.0 >= 1 << 20,
            "images.max_unpacked_bytes",
            format!("{} bytes is below 1 MiB", images.max_unpacked_bytes.0),
        );
        check(
            images.max_entries >= 16,
            "images.max_entries",
            format!("{} is below 16", images.max_entries),
        );
        check(
            images.max_compressed_bytes.0 >= 1 << 20,
            "images.max_compressed_bytes",
            format!("{} bytes is below 1 MiB", images.max_compressed_bytes.0),
        );
        for (key, list) in [
            ("images.allowed_registries", &images.allowed_registries),
            ("images.insecure_registries", &images.insecure_registries),
        ] {
            for registry in list {
                check(
                    is_registry_name(registry),
                    key,
                    format!("{registry:?} is not a registry host[:port] (no scheme, no path)"),
                );
            }
        }
        for registry in &images.insecure_registries {
            check(
                images.allowed_registries.contains(registry),
                "images.insecure_registries",
                format!("{registry:?} is not in images.allowed_registries"),
            );
        }
        if let Some(ca) = images.ca_file() {
            check(
                ca.is_absolute(),
                "images.ca_file",
                format!("{} is not an absolute path (or \"\")", ca.display()),
            );
        }
        check(
            (1..=1_000_000).contains(&jobs.max_retained_jobs),
            "jobs.max_retained_jobs",
            format!("{} is outside 1 to 1000000", jobs.max_retained_jobs),
        );
        check(
            (1024..=64 << 20).contains(&jobs.max_spec_bytes.0),
            "jobs.max_spec_bytes",
            format!("{} bytes is outside 1 KiB to 64 MiB", jobs.max_spec_bytes.0),
        );
        let metrics = &self.metrics;
        check(
            (100..=3_600_000).contains(&metrics.sample_interval_millis),
            "metrics.sample_interval_millis",
            format!(
                "{} is outside 100 to 3600000",
                metrics.sample_interval_millis
            ),
        );
        check(
            metrics.tls_cert.as_os_str().is_empty() == metrics.tls_key.as_os_str().is_empty(),
            "metrics.tls_key",
            "set both metrics.tls_cert and metrics.tls_key for HTTPS, or neither".into(),
        );
        let market = &self.market;
        for url in &market.endpoints {
            if let Err(err) = super::parse_endpoint(url) {
                check(false, "market.endpoints", err);
            }
        }
        if !market.endpoints.is_empty() {
            for (key, path) in [
                ("market.ca", &market.ca),
                ("market.client_cert", &market.client_cert),
                ("market.client_key", &market.client_key),
            ] {
                check(
                    !path.as_os_str().is_empty(),
                    key,
                    "required when market.endpoints is set".into(),
                );
            }
        }
        for (key, value, range) in [
            (
                "market.max_streams",
                u64::from(market.max_streams),
                1..=100_000,
            ),
            (
                "market.reconnect_min_millis",
                market.reconnect_min_millis,
                10..=3_600_000,
            ),
            (
                "market.reconnect_max_millis",
                market.reconnect_max_millis,
                10..=3_600_000,
            ),
            (
                "market.reconnect_spread_millis",
                market.reconnect_spread_millis,
                0..=3_600_000,
            ),
            (
                "market.healthy_after_millis",
                market.healthy_after_millis,
                0..=86_400_000,
            ),
            (
                "market.keepalive_interval_millis",
                market.keepalive_interval_millis,
                1_000..=86_400_000,
            ),
            (
                "market.dead_after_millis",
                market.dead_after_millis,
                1_000..=3_600_000,
            ),
            (
                "market.connect_timeout_millis",
                market.connect_timeout_millis,
                100..=600_000,
            ),
            (
                "market.stream_idle_timeout_millis",
                market.stream_idle_timeout_millis,
                100..=86_400_000,
            ),
            (
                "market.rotate_after_millis",
                market.rotate_after_millis,
                0..=31_536_000_000,
            ),
            ("market.drain_millis", market.drain_millis, 0..=3_600_000),
        ] {
            check(
                range.contains(&value),
                key,
                format!("{value} is outside {} to {}", range.start(), range.end()),
            );
        }
        check(
            market.reconnect_min_millis <= market.reconnect_max_millis,
            "market.reconnect_max_millis",
            format!(
                "{} is below market.reconnect_min_millis ({})",
                market.reconnect_max_millis, market.reconnect_min_millis
            ),
        );
        let network = self.capacity.network_bits_per_second;
        check(
            network == 0
                || (MIN_NETWORK_BITS_PER_SECOND..=MAX_NETWORK_BITS_PER_SECOND).contains(&network),
            "capacity.network_bits_per_second",
            format!(
                "must be 0 (measured) or {MIN_NETWORK_BITS_PER_SECOND} to \
                 {MAX_NETWORK_BITS_PER_SECOND}, got {network}"
            ),
        );
        for gpu in &self.capacity.reserve_gpus {
            check(
                valid_pci_bus_id(gpu),
                "capacity.reserve_gpus",
                format!("{gpu:?} is not a PCI bus id like 0000:01:00.0"),
            );
        }
        out
    }
}

/// True for the TCTI forms tss-esapi accepts.
pub(super) fn valid_tcti(tcti: &str) -> bool {
    let (name, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match name {
        "device" => conf.starts_with('/'),
        "swtpm" | "mssim" => true,
        "tabrmd" => true,
        _ => false,
    }
}

/// True for `dddd:bb:dd.f` in lowercase or uppercase hex.
pub(super) fn valid_pci_bus_id(id: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = id.split([':', '.']).collect();
    matches!(parts.as_slice(), [d, b, s, f] if hex(d, 4) && hex(b, 2) && hex(s, 2) && hex(f, 1))
}

/// A registry as a reference names it: `host` or `host:port`, letters, digits, `.`, `-`, `:`
/// (and `[]` around an IPv6 address).
fn is_registry_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}
