//! `fog-agent image import DIR [--tag NAME]`, `fog-agent image pull REF` and `fog-agent image
//! list`: the OCI image store under the state dir (`[state] dir` of `--config`, the embedded
//! defaults without it, or `--state-dir`), imports and pulls within the `[images]` limits and
//! registry policy of the same config. A pull here runs in this process (as `import` does) and
//! shares the blob cache and its locks with the daemon; it collects no garbage (it cannot see
//! the daemon's jobs): the daemon's next pull does.

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
    /// Pull an image from an OCI registry (`[images] allowed_registries`): by tag or by digest
    /// (`REPO@sha256:...`, which the manifest must hash to); blobs already cached are reused.
    Pull(PullArgs),
    /// List the imported images.
    List(ListArgs),
}

/// Arguments of `fog-agent image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// `[registry[:port]/]repository[:tag][@sha256:<hex>]` (no registry: Docker Hub).
    pub reference: String,
    /// Registry user name; the password (or token) is read from standard input
    /// (`--password-stdin`), never from the command line.
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password or token from standard input (one line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// The store.
    #[command(flatten)]
    pub store: StoreOpts,
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
        ImageCommand::Pull(a) => pull(a),
        ImageCommand::List(a) => list(a),
    }
}

fn load_config(opts: &StoreOpts) -> anyhow::Result<Config> {
    Ok(match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(crate::config::DEFAULT_TOML, "<embedded defaults>")?,
    })
}

fn open(opts: &StoreOpts) -> anyhow::Result<ImageStore> {
    let config = load_config(opts)?;
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

fn pull(args: &PullArgs) -> anyhow::Result<ExitCode> {
    use crate::image::pull::{self, Credentials, PullPolicy, PullProgress};
    use crate::image::ImportCancel;
    let config = load_config(&args.store)?;
    let store = open(&args.store)?;
    let credentials = match &args.username {
        Some(username) => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            Some(Credentials {
                username: username.clone(),
                password: password.trim_end_matches(['\r', '\n']).to_owned(),
            })
        }
        None => None,
    };
    let policy = PullPolicy::from(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let quiet = args.store.json;
    let record = runtime.block_on(async {
        let (progress, mut watch) = tokio::sync::watch::channel(PullProgress::default());
        let cancel = ImportCancel::new();
        let pulling = pull::pull(
            &store,
            &policy,
            &args.reference,
            credentials.as_ref(),
            &progress,
            &cancel,
        );
        tokio::pin!(pulling);
        let mut last_phase = "";
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                result = &mut pulling => break result,
                _ = ticker.tick() => {
                    let now = watch.borrow_and_update().clone();
                    if !quiet && (now.phase != last_phase || now.phase == "downloading") && !now.phase.is_empty() {
                        eprintln!("{}", progress_line(&now));
                        last_phase = now.phase;
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    cancel.cancel();
                }
            }
        }
    });
    let record = record.with_context(|| format!("cannot pull {}", args.reference))?;
    if args.store.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!(
            "pulled {} {} ({}) into {}",
            record.reference,
            short_digest(&record.manifest_digest),
            render::bytes(record.size_bytes),
            record.rootfs.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_line(p: &crate::image::pull::PullProgress) -> String {
    format!(
        "{}: layers {}/{}, {} of {} ({} cached)",
        p.phase,
        p.layers_done,
        p.layers_total,
        render::bytes(p.bytes_done),
        render::bytes(p.bytes_total),
        render::bytes(p.bytes_cached),
    )
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
