//! `fog-agent image import DIR [--tag NAME]` and `fog-agent image list`: the OCI image store
//! under the state dir (`[state] dir` of `--config`, the embedded defaults without it, or
//! `--state-dir`), imports within the `[images]` limits of the same config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::render;
use crate::config::Config;
use crate::image::{ImageRecord, ImageStore};

/// Arguments of `fog-agent image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The `image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout directory (`skopeo copy ... oci:DIR[:TAG]`): verify every
    /// blob, unpack the layers into a rootfs, record it.
    Import(ImportArgs),
    /// List the imported images.
    List(ListArgs),
}

/// Where the store is.
#[derive(Debug, Clone, Args)]
pub struct StoreOpts {
    /// Config file (TOML) whose `[state] dir` holds the store; without it the embedded
    /// defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides `[state] dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `fog-agent image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The OCI image layout directory (holds `oci-layout`, `index.json`, `blobs/`).
    pub dir: PathBuf,
    /// The reference to record (default: the index's `org.opencontainers.image.ref.name`);
    /// also picks the manifest of a layout holding several.
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
    /// The store.
    #[command(flatten)]
    pub store: StoreOpts,
}

/// Arguments of `fog-agent image list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreOpts,
}

/// Runs `fog-agent image ...`.
pub fn run(args: &ImageArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ImageCommand::Import(a) => import(a),
        ImageCommand::List(a) => list(a),
    }
}

fn open(opts: &StoreOpts) -> anyhow::Result<ImageStore> {
    let config = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(crate::config::DEFAULT_TOML, "<embedded defaults>")?,
    };
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| config.state.dir.clone());
    let store = ImageStore::open(&state_dir)
        .with_context(|| format!("cannot open the image store in {}", state_dir.display()))?;
    Ok(store.with_limits((&config).into()))
}

fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let record = store
        .import(&args.dir, args.tag.as_deref())
        .with_context(|| format!("cannot import {}", args.dir.display()))?;
    if args.store.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!(
            "imported {} {} ({}) into {}",
            record.reference,
            short_digest(&record.manifest_digest),
            render::bytes(record.size_bytes),
            record.rootfs.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let records = store.list().context("cannot list images")?;
    if args.store.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        println!("no images in {}", store.dir().display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = render::table(&["reference", "digest", "size", "imported", "cmd"], &[2]);
    for record in &records {
        table.add_row(vec![
            record.reference.clone(),
            short_digest(&record.manifest_digest),
            render::bytes(record.size_bytes),
            imported_at(record),
            command_line(record),
        ]);
    }
    println!("{}", render::indent(&table, 0));
    Ok(ExitCode::SUCCESS)
}

/// `sha256:` and the first 12 hex digits, like `docker images`.
fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn imported_at(record: &ImageRecord) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(record.imported_at_unix);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn command_line(record: &ImageRecord) -> String {
    let argv: Vec<&str> = record
        .config
        .entrypoint
        .iter()
        .chain(&record.config.cmd)
        .map(String::as_str)
        .collect();
    if argv.is_empty() {
        "-".to_owned()
    } else {
        argv.join(" ")
    }
}
