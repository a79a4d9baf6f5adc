//! `fog-agent inventory [--json]`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::fsroot::FsRoot;
use crate::inventory;

/// Arguments of `fog-agent inventory`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Print the machine format (JSON, documented in agent/INVENTORY.md).
    #[arg(long)]
    pub json: bool,

    /// Read /proc, /sys and /etc below this directory instead of `/` (for fixture trees; the
    /// probes that need the live machine, such as CPUID, NVML and OpenCL, are then skipped).
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

/// Runs `fog-agent inventory`.
pub fn run(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let fs = args.root.clone().map_or_else(FsRoot::host, FsRoot::new);
    let inventory = inventory::collect_from(fs);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &inventory).context("cannot write the inventory")?;
        writeln!(out).context("cannot write the inventory")?;
    } else {
        let _ = &inventory;
    }
    Ok(ExitCode::SUCCESS)
}
