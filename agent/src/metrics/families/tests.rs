//! The families of one made-up snapshot, in both formats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::attest::{Operation, OperationCounts};
use crate::bench::{BenchmarkError, BenchmarkReport, BenchmarkResult, BenchmarkState};
use crate::capacity::{Allocations, CapacityLedger, GpuTotal, Totals};
use crate::config::CapacityConfig;
use crate::gpu::{GpuSample, GpuStatus};
use crate::jobs::JobMetrics;
use crate::metrics::{render, Format, Snapshot};
use crate::telemetry::{
    CollectorStat, CpuSample, CpuTimes, HostSample, HubStats, LoadAverage, MemorySample,
};

fn snapshot() -> Snapshot {
    let times = CpuTimes {
        user_millis: 1500,
        idle_millis: 9000,
        ..CpuTimes::default()
    };
    let mut ok_gpu = GpuSample::unavailable("0000:01:00.0", "");
    ok_gpu.status = GpuStatus::Ok;
    ok_gpu.error = None;
    ok_gpu.utilization_percent = Some(0);
    ok_gpu.power_milliwatts = Some(70_500);
    let host = HostSample {
        sequence: 3,
        cpu: Some(CpuSample {
            times,
            load: Some(LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            }),
            logical_cpus: 2,
            ..CpuSample::default()
        }),
        per_cpu: vec![(0, times), (1, times)],
        memory: Some(MemorySample {
            total_bytes: 1 << 30,
            available_bytes: 1 << 29,
            ..MemorySample::default()
        }),
        gpus: vec![
            ok_gpu,
            GpuSample::unavailable("0000:02:00.0", "GPU is lost"),
        ],
        collectors: vec![CollectorStat {
            name: "cpu",
            duration: Duration::from_micros(250),
            errors_total: 2,
        }],
        ..HostSample::default()
    };
    let ledger = CapacityLedger::new(
        CapacityConfig::default(),
        Totals {
            cpu_millicores: Some(2000),
            memory_bytes: Some(1000),
            disk_bytes: Some(1000),
            network_bits_per_second: Some(8_000_000_000),
            gpus: vec![
                GpuTotal {
                    pci_bus_id: "0000:01:00.0".into(),
                    name: "A".into(),
                    memory_total_bytes: 0,
                },
                GpuTotal {
                    pci_bus_id: "0000:02:00.0".into(),
                    name: "B".into(),
                    memory_total_bytes: 0,
                },
            ],
            notes: Vec::new(),
        },
    );
    ledger.set_allocations(Allocations {
        gpus: BTreeMap::from([("0000:01:00.0".into(), "job-7".into())]),
        network_egress_bits_per_second: 800_000_000,
        ..Allocations::default()
    });
    Snapshot {
        host: Some(Arc::new(host)),
        hub: HubStats {
            subscribers: 2,
            samples: 3,
            dropped: 4,
        },
        capacity: ledger.current(),
        benchmarks: Some(Arc::new(Ok(BenchmarkReport {
            state: BenchmarkState::Done,
            error: None,
            fingerprint: "f".into(),
            measured_at: None,
            results: vec![BenchmarkResult {
                benchmark_id: "cpu.fma.f32".into(),
                device: "cpu".into(),
                metric: "gflops".into(),
                value: 123.5,
                unit: "GFLOP/s".into(),
                samples: 5,
                relative_spread: 0.01,
                duration_millis: 1,
                detail_json: Vec::new(),
            }],
        }))),
        attestation: BTreeMap::from([(
            Operation::Quote,
            OperationCounts {
                ok: 1,
                failed: 2,
                last_failure: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
                ..OperationCounts::default()
            },
        )]),
        jobs: vec![JobMetrics {
            job_id: "job-7".into(),
            state: "running".into(),
            cpu_seconds: Some(12.5),
            gpu_seconds: vec![("0000:01:00.0".into(), 30.25)],
            gpu_now: vec![("0000:01:00.0".into(), Some(1 << 30), Some(0.4))],
            network: Some(crate::net::NetCounters {
                in_bytes: 5000,
                in_packets: 50,
                out_bytes: 700,
                out_packets: 7,
            }),
            ..JobMetrics::default()
        }],
        state_disk: Some(crate::jobs::StateDiskMetrics {
            status: crate::state::headroom::DiskStatus {
                free_bytes: 100,
                floor_bytes: 4096,
                slack_bytes: 0,
            },
            unsaved_records: 3,
        }),
        process: None,
        process_start: None,
        connections: crate::metrics::ApiConnections {
            listeners: vec![crate::metrics::ListenerConnections {
                listener: "127.0.0.1:7443".into(),
                open: 3,
                pending: 1,
                max_connections: 64,
                closed: vec![("peer_limit", 5), ("evicted", 2)],
            }],
            tls_reloads_ok: 1,
            tls_reloads_failed: 0,
        },
        market: vec![fog_tunnel::LinkStatus {
            endpoint: "https://market.example:8443".into(),
            up: true,
            role: "market".into(),
            connects: 2,
            failures: 5,
            streams_open: 4,
            streams_total: 40,
            streams_refused: 1,
            bytes_in: 1000,
            bytes_out: 250_000,
            ..fog_tunnel::LinkStatus::default()
        }],
        receipts: Some(crate::receipts::stats::ReceiptCounts {
            signed: 7,
            sign_failures: 2,
            quotes: 3,
            quote_failures: 0,
            pending: 1,
        }),
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn prometheus_text_has_node_exporter_names_and_values() {
    let text = render(snapshot(), Format::PrometheusText).unwrap();
    let l = lines(&text);
    for want in [
        "# TYPE node_cpu_seconds_total counter",
        "node_cpu_seconds_total{cpu=\"1\",mode=\"user\"} 1.5",
        "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 9.0",
        "node_load1 0.5",
        "node_memory_MemTotal_bytes 1073741824.0",
        "fog_telemetry_collector_errors_total{collector=\"cpu\"} 2.0",
        "fog_gpu_up{pci_bus_id=\"0000:01:00.0\"} 1.0",
        "fog_gpu_up{pci_bus_id=\"0000:02:00.0\"} 0.0",
        "fog_gpu_utilization_ratio{pci_bus_id=\"0000:01:00.0\"} 0.0",
        "fog_gpu_power_watts{pci_bus_id=\"0000:01:00.0\"} 70.5",
        "fog_gpu_job_info{pci_bus_id=\"0000:01:00.0\",job_id=\"job-7\"} 1.0",
        "fog_job_cpu_seconds_total{job_id=\"job-7\"} 12.5",
        "fog_job_gpu_seconds_total{job_id=\"job-7\",pci_bus_id=\"0000:01:00.0\"} 30.25",
        "fog_job_gpu_memory_used_bytes{job_id=\"job-7\",pci_bus_id=\"0000:01:00.0\"} 1073741824.0",
        "fog_job_gpu_sm_utilization_ratio{job_id=\"job-7\",pci_bus_id=\"0000:01:00.0\"} 0.4",
        "fog_capacity_gpus{state=\"allocated\"} 1.0",
        "fog_capacity_cpu_cores{state=\"total\"} 2.0",
        "fog_job_network_receive_bytes_total{job_id=\"job-7\"} 5000.0",
        "fog_job_network_receive_packets_total{job_id=\"job-7\"} 50.0",
        "fog_job_network_transmit_bytes_total{job_id=\"job-7\"} 700.0",
        "fog_job_network_transmit_packets_total{job_id=\"job-7\"} 7.0",
        "# TYPE fog_job_network_receive_bytes_total counter",
        "fog_capacity_network_ingress_bytes_per_second{state=\"total\"} 1000000000.0",
        "fog_capacity_network_ingress_bytes_per_second{state=\"reserved\"} 0.0",
        "fog_capacity_network_egress_bytes_per_second{state=\"allocated\"} 100000000.0",
        "fog_capacity_network_egress_bytes_per_second{state=\"free\"} 900000000.0",
        "fog_benchmark_result{id=\"cpu.fma.f32\",device=\"cpu\",metric=\"gflops\",unit=\"GFLOP/s\"} 123.5",
        "fog_benchmark_state{state=\"done\"} 1.0",
        "fog_attestation_requests_total{operation=\"quote\",result=\"error\"} 2.0",
        "fog_attestation_last_failure_timestamp_seconds{operation=\"quote\"} 1700000000.0",
        "fog_receipts_signed_total 7.0",
        "fog_receipts_sign_failures_total 2.0",
        "fog_receipts_pending 1.0",
        "fog_telemetry_dropped_samples_total 4.0",
        "fog_state_filesystem_free_bytes 100.0",
        "fog_state_filesystem_floor_bytes 4096.0",
        "fog_state_filesystem_below_floor 1.0",
        "fog_state_slack_bytes 0.0",
        "fog_state_unsaved_job_records 3.0",
        "fog_api_connections{listener=\"127.0.0.1:7443\"} 3.0",
        "fog_api_handshakes_pending{listener=\"127.0.0.1:7443\"} 1.0",
        "fog_api_connections_limit{listener=\"127.0.0.1:7443\"} 64.0",
        "fog_api_connections_closed_total{listener=\"127.0.0.1:7443\",reason=\"peer_limit\"} 5.0",
        "fog_api_tls_reloads_total{result=\"ok\"} 1.0",
        "fog_market_tunnel_up{endpoint=\"https://market.example:8443\",index=\"0\"} 1.0",
        "fog_market_tunnel_connects_total{endpoint=\"https://market.example:8443\",index=\"0\"} 2.0",
        "fog_market_tunnel_failures_total{endpoint=\"https://market.example:8443\",index=\"0\"} 5.0",
        "fog_market_tunnel_streams{endpoint=\"https://market.example:8443\",index=\"0\"} 4.0",
        "fog_market_tunnel_streams_opened_total{endpoint=\"https://market.example:8443\",index=\"0\"} 40.0",
        "fog_market_tunnel_streams_refused_total{endpoint=\"https://market.example:8443\",index=\"0\"} 1.0",
        "fog_market_tunnel_message_bytes_total{endpoint=\"https://market.example:8443\",index=\"0\",direction=\"out\"} 250000.0",
    ] {
        assert!(l.contains(&want), "missing {want:?} in\n{text}");
    }
    // The failed GPU has no figure at all, so it cannot look idle.
    assert!(!text
        .lines()
        .any(|l| l.contains("0000:02:00.0") && !l.starts_with("fog_gpu_up")));
    assert!(!text.contains("# EOF"));
    // No quote ever succeeded: no made-up success time.
    assert!(!text.contains("fog_attestation_last_success_timestamp_seconds{"));
}

#[test]
fn a_job_without_a_network_has_no_network_series() {
    let mut s = snapshot();
    s.jobs[0].network = None;
    let text = render(s, Format::PrometheusText).unwrap();
    assert!(text.contains("fog_job_cpu_seconds_total{job_id=\"job-7\"}"));
    assert!(!text.contains("fog_job_network"), "{text}");
}

#[test]
fn openmetrics_ends_with_eof_and_suffixes_counters() {
    let text = render(snapshot(), Format::OpenMetrics).unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE node_cpu_seconds counter\n"));
    assert!(text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.5\n"));
}

#[test]
fn missing_parts_are_left_out_not_zero() {
    let mut s = snapshot();
    s.host = None;
    s.benchmarks = Some(Arc::new(Err(BenchmarkError::Failed("no".into()))));
    s.jobs.clear();
    s.state_disk = None;
    let text = render(s, Format::PrometheusText).unwrap();
    assert!(!text.contains("node_"));
    assert!(!text.contains("fog_benchmark"));
    assert!(!text.contains("fog_job_cpu"));
    assert!(!text.contains("fog_job_network"));
    assert!(!text.contains("fog_state_"));
    assert!(text.contains("fog_capacity_memory_bytes{state=\"free\"}"));
}
