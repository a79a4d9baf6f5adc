//! The agent's own families: TPM attestation outcomes (`fog_attestation_*`), usage receipts
//! (`fog_receipts_*`), the API
//! listeners' connections (`fog_api_*`), the market link's tunnels (`fog_market_tunnel_*`),
//! build info, the
//! telemetry hub's subscribers and drops, and the agent process (`process_*`).

use std::fmt;

use super::{epoch_seconds, l1, Series, Snapshot, Writer};

pub(super) fn attestation_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let mut requests = Series::default();
    let mut success = Series::default();
    let mut failure = Series::default();
    for (op, counts) in &s.attestation {
        for (result, n) in [
            ("ok", counts.ok),
            ("invalid_argument", counts.invalid),
            ("error", counts.failed),
        ] {
            requests.push(
                vec![("operation", op.as_str().into()), ("result", result.into())],
                n as f64,
            );
        }
        success.push_opt(
            l1("operation", op.as_str()),
            counts.last_success.map(epoch_seconds),
        );
        failure.push_opt(
            l1("operation", op.as_str()),
            counts.last_failure.map(epoch_seconds),
        );
    }
    w.counter(
        "fog_attestation_requests",
        "TPM operations (quote, enrollment, activation) by result since start.",
        requests,
    )?;
    w.gauge(
        "fog_attestation_last_success_timestamp_seconds",
        "When the operation last succeeded.",
        success,
    )?;
    w.gauge(
        "fog_attestation_last_failure_timestamp_seconds",
        "When the operation last failed (TPM unavailable or error).",
        failure,
    )
}

pub(super) fn receipt_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let Some(r) = &s.receipts else {
        return Ok(());
    };
    w.counter1(
        "fog_receipts_signed",
        "Usage receipts signed by the TPM identity key since start.",
        Some(r.signed as f64),
    )?;
    w.counter1(
        "fog_receipts_sign_failures",
        "Attempts to sign pending usage receipts that failed (TPM unreachable or failing) since start.",
        Some(r.sign_failures as f64),
    )?;
    w.counter1(
        "fog_receipts_quotes",
        "Receipt quotes taken by the AK since start.",
        Some(r.quotes as f64),
    )?;
    w.counter1(
        "fog_receipts_quote_failures",
        "Receipt quote attempts that failed since start.",
        Some(r.quote_failures as f64),
    )?;
    w.gauge1(
        "fog_receipts_pending",
        "Usage receipts decided but not signed yet (waiting for the TPM).",
        Some(r.pending as f64),
    )
}

pub(super) fn api_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let c = &s.connections;
    let mut open = Series::default();
    let mut pending = Series::default();
    let mut max = Series::default();
    let mut closed = Series::default();
    for listener in &c.listeners {
        let name = || l1("listener", listener.listener.clone());
        open.push(name(), listener.open as f64);
        pending.push(name(), listener.pending as f64);
        max.push(name(), listener.max_connections as f64);
        for (reason, n) in &listener.closed {
            closed.push(
                vec![
                    ("listener", listener.listener.clone()),
                    ("reason", (*reason).into()),
                ],
                *n as f64,
            );
        }
    }
    w.gauge(
        "fog_api_connections",
        "Connections open on the TCP listener now (handshaking and established).",
        open,
    )?;
    w.gauge(
        "fog_api_handshakes_pending",
        "Unfinished TLS handshakes on the TCP listener now.",
        pending,
    )?;
    w.gauge(
        "fog_api_connections_limit",
        "The listener's connection limit in force (api.max_connections, capped by the fd budget).",
        max,
    )?;
    w.counter(
        "fog_api_connections_closed",
        "Connections closed by a limit (peer_limit, listener_limit, evicted), a failed or late handshake, or accept errors, since start.",
        closed,
    )?;
    if c.listeners.is_empty() {
        return Ok(());
    }
    let mut reloads = Series::default();
    reloads.push(l1("result", "ok"), c.tls_reloads_ok as f64);
    reloads.push(l1("result", "error"), c.tls_reloads_failed as f64);
    w.counter(
        "fog_api_tls_reloads",
        "TLS configurations reloaded from changed files or on SIGHUP, by result, since start.",
        reloads,
    )
}

pub(super) fn market_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    if s.market.is_empty() {
        return Ok(());
    }
    let mut up = Series::default();
    let mut connects = Series::default();
    let mut failures = Series::default();
    let mut open = Series::default();
    let mut streams = Series::default();
    let mut refused = Series::default();
    let mut bytes = Series::default();
    // The index (position in `[market] endpoints`) tells apart an endpoint listed twice (a
    // round-robin name that reaches several market replicas).
    for (index, link) in s.market.iter().enumerate() {
        let name = || {
            vec![
                ("endpoint", link.endpoint.clone()),
                ("index", index.to_string()),
            ]
        };
        up.push(name(), if link.up { 1.0 } else { 0.0 });
        connects.push(name(), link.connects as f64);
        failures.push(name(), link.failures as f64);
        open.push(name(), link.streams_open as f64);
        streams.push(name(), link.streams_total as f64);
        refused.push(name(), link.streams_refused as f64);
        for (direction, n) in [("in", link.bytes_in), ("out", link.bytes_out)] {
            bytes.push(
                vec![
                    ("endpoint", link.endpoint.clone()),
                    ("index", index.to_string()),
                    ("direction", direction.into()),
                ],
                n as f64,
            );
        }
    }
    w.gauge(
        "fog_market_tunnel_up",
        "1 while the reverse tunnel to the market endpoint is open, else 0.",
        up,
    )?;
    w.counter(
        "fog_market_tunnel_connects",
        "Tunnels opened to the endpoint since start (each reconnect is one more).",
        connects,
    )?;
    w.counter(
        "fog_market_tunnel_failures",
        "Attempts to open a tunnel to the endpoint that failed, since start.",
        failures,
    )?;
    w.gauge(
        "fog_market_tunnel_streams",
        "Streams (RPCs from the market) open on the endpoint's tunnel now.",
        open,
    )?;
    w.counter(
        "fog_market_tunnel_streams_opened",
        "Streams the market opened through the endpoint's tunnels since start.",
        streams,
    )?;
    w.counter(
        "fog_market_tunnel_streams_refused",
        "Streams refused at once (market.max_streams, unknown revision, draining) since start.",
        refused,
    )?;
    w.counter(
        "fog_market_tunnel_message_bytes",
        "Request (in) and response (out) message bytes through the endpoint's tunnels since start.",
        bytes,
    )
}

pub(super) fn agent_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let mut info = Series::default();
    info.push(l1("version", env!("CARGO_PKG_VERSION")), 1.0);
    w.gauge("fog_agent_build_info", "1, with the agent's version.", info)?;
    w.gauge1(
        "fog_telemetry_subscribers",
        "Telemetry subscribers now (WatchHostTelemetry streams, plus the metrics endpoint's own).",
        Some(s.hub.subscribers as f64),
    )?;
    w.counter1(
        "fog_telemetry_samples",
        "Host samples the telemetry sampler took since start.",
        Some(s.hub.samples as f64),
    )?;
    w.counter1(
        "fog_telemetry_dropped_samples",
        "Samples dropped from full subscriber queues since start (slow readers).",
        Some(s.hub.dropped as f64),
    )?;
    if let Some(p) = s.process {
        w.counter1(
            "process_cpu_seconds",
            "User and system CPU time of the agent process.",
            Some(p.cpu_seconds),
        )?;
        w.gauge1(
            "process_resident_memory_bytes",
            "Resident memory of the agent process.",
            Some(p.resident_bytes as f64),
        )?;
        w.gauge1(
            "process_virtual_memory_bytes",
            "Virtual memory of the agent process.",
            Some(p.virtual_bytes as f64),
        )?;
        w.gauge1(
            "process_threads",
            "Threads of the agent process.",
            Some(p.threads as f64),
        )?;
        w.gauge1(
            "process_open_fds",
            "Open file descriptors of the agent process.",
            p.open_fds.map(|n| n as f64),
        )?;
        w.gauge1(
            "process_max_fds",
            "Open file descriptor limit of the agent process.",
            p.max_fds.map(|n| n as f64),
        )?;
    }
    w.gauge1(
        "process_start_time_seconds",
        "When the agent process started (seconds since the epoch).",
        s.process_start,
    )
}
