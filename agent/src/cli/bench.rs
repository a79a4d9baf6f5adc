//! `fog-agent bench`, `fog-agent bench-peer` and the hidden child entry point
//! `fog-agent internal bench-run`.

use std::io::{IsTerminal, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;

use crate::bench::{self, child, BenchRecord, Mode, Progress, Status, SuiteConfig};
use crate::fsroot::FsRoot;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fog-agent";

/// Arguments of `fog-agent bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Short samples and small sizes, about a minute (the default).
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// The onboarding suite: longer samples, larger arrays and files.
    #[arg(long)]
    pub full: bool,
    /// Only these ids or id prefixes, comma-separated (e.g. `cpu,mem.bandwidth`). Ids: cpu.int.{single,multi},
    /// cpu.fp32.{single,multi}, cpu.sysbench_prime.{single,multi}, mem.bandwidth, mem.latency,
    /// disk.seq.{write,read}, disk.rand.read, net.throughput.{up,down}, net.rtt,
    /// opencl.{fp32,fp64,membw,transfer,launch}.
    #[arg(long, value_delimiter = ',', value_name = "ID[,ID...]")]
    pub only: Option<Vec<String>>,
    /// Address of a `fog-agent bench-peer` for the network benchmarks (skipped without it).
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<String>,
    /// Print the results as JSON (`fog-bench-v1`).
    #[arg(long)]
    pub json: bool,
    /// Re-run everything, ignoring cached results.
    #[arg(long)]
    pub force: bool,
    /// State directory (database and disk test file).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Arguments of `fog-agent bench-peer`.
#[derive(Debug, Args)]
pub struct BenchPeerArgs {
    /// Address to listen on, e.g. `0.0.0.0:5201` or `127.0.0.1:0` (the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
}

/// Arguments of the child entry point (not for humans).
#[derive(Debug, Args)]
pub struct BenchRunArgs {
    /// Print the OpenCL devices as JSON and exit.
    #[arg(long)]
    pub list_opencl: bool,
    /// Benchmark ids to run.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// `quick` or `full`.
    #[arg(long, default_value = "quick")]
    pub mode: String,
    /// State directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// CPU facts as JSON.
    #[arg(long)]
    pub cpu_facts: Option<String>,
    /// Network peer.
    #[arg(long)]
    pub peer: Option<String>,
    /// OpenCL device index.
    #[arg(long)]
    pub device: Option<usize>,
}

/// Runs the child entry point.
pub fn run_child(args: &BenchRunArgs) -> ExitCode {
    if args.list_opencl {
        return child::list_opencl_main();
    }
    let Some(mode) = Mode::parse(&args.mode) else {
        eprintln!("fog-agent: bad mode {:?}", args.mode);
        return ExitCode::from(super::EXIT_USAGE);
    };
    let cpu = match args.cpu_facts.as_deref().map(serde_json::from_str) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("fog-agent: bad --cpu-facts: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
        None => bench::cpu_facts_from_sysfs(&FsRoot::host()),
    };
    child::main(&child::ChildArgs {
        ids: args.ids.clone(),
        mode,
        state_dir: args.state_dir.clone(),
        cpu,
        peer: args.peer.clone(),
        device: args.device,
    })
}

/// Runs `fog-agent bench-peer`: serves until killed.
pub fn run_peer(args: &BenchPeerArgs) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    println!("listening on {addr}");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    fog_bench::net::serve(&listener, &AtomicBool::new(false)).context("bench-peer failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `fog-agent bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let mode = if args.full { Mode::Full } else { Mode::Quick };
    let inventory = crate::inventory::collect_from(FsRoot::host());
    let config = SuiteConfig {
        mode,
        only: args.only.clone(),
        peer: args.peer.clone(),
        force: args.force,
        state_dir: args.state_dir.clone(),
        fingerprint: bench::fingerprint(&inventory),
        cpu: bench::cpu_facts(&inventory),
        exe: std::env::current_exe().context("cannot find the agent executable")?,
    };
    let mut progress: Box<dyn Progress> = if std::io::stderr().is_terminal() && !args.json {
        Box::new(Bars::default())
    } else {
        Box::new(Lines)
    };
    let records = bench::run_suite(&config, progress.as_mut())?;
    drop(progress);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "format": bench::BENCH_FORMAT,
            "agent_version": env!("CARGO_PKG_VERSION"),
            "mode": mode.as_str(),
            "fingerprint": config.fingerprint,
            "results": records,
        });
        serde_json::to_writer_pretty(&mut out, &doc).context("cannot write results")?;
        writeln!(out).context("cannot write results")?;
    } else {
        writeln!(out, "{}", table(&records)).context("cannot write results")?;
    }
    let failed = records.iter().any(|r| r.status == Status::Failed);
    Ok(if failed {
        ExitCode::from(super::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// Formats a figure with 3 significant-ish digits.
fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The result table.
pub fn table(records: &[BenchRecord]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "benchmark",
        "device",
        "median",
        "unit",
        "min",
        "max",
        "CV %",
        "n",
        "status",
    ]);
    for r in records {
        let status = match (
            r.status,
            r.cached,
            r.summary.as_ref().is_some_and(|s| s.noisy),
        ) {
            (Status::Ok, true, _) => "ok (cached)".to_owned(),
            (Status::Ok, false, true) => "ok, noisy".to_owned(),
            (Status::Ok, false, false) => "ok".to_owned(),
            (s, _, _) => format!(
                "{}: {}",
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                r.reason.as_deref().unwrap_or("")
            ),
        };
        match &r.summary {
            Some(s) => t.add_row([
                r.id.clone(),
                r.device.clone(),
                fmt_num(s.median),
                r.unit.clone().unwrap_or_default(),
                fmt_num(s.min),
                fmt_num(s.max),
                format!("{:.1}", s.cv * 100.0),
                s.samples.to_string(),
                status,
            ]),
            None => t.add_row([
                r.id.clone(),
                r.device.clone(),
                "-".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                status,
            ]),
        };
    }
    t
}

/// Plain progress lines on stderr (not a terminal).
#[derive(Debug)]
struct Lines;

impl Progress for Lines {
    fn start(&mut self, id: &str, device: &str, index: usize, total: usize) {
        eprintln!("[{index}/{total}] {id} on {device}");
    }
    fn done(&mut self, r: &BenchRecord) {
        match (&r.summary, r.status) {
            (Some(s), Status::Ok) => eprintln!(
                "  {}: {} {}{}",
                r.id,
                fmt_num(s.median),
                r.unit.as_deref().unwrap_or(""),
                if r.cached { " (cached)" } else { "" }
            ),
            _ => eprintln!(
                "  {}: {:?}: {}",
                r.id,
                r.status,
                r.reason.as_deref().unwrap_or("")
            ),
        }
    }
}

/// A progress bar on a terminal.
#[derive(Debug, Default)]
struct Bars(Option<indicatif::ProgressBar>);

impl Progress for Bars {
    fn start(&mut self, id: &str, device: &str, index: usize, total: usize) {
        let bar = self.0.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{pos}/{len}] {wide_bar} {elapsed} {msg}",
            ) {
                b.set_style(style);
            }
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        bar.set_position(index.saturating_sub(1) as u64);
        bar.set_message(format!("{id} on {device}"));
    }
    fn done(&mut self, _: &BenchRecord) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
