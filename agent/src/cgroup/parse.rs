//! Parsers for `/proc/self/mountinfo` and the cgroup v1/v2 stat files. Pure functions on text.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{CgroupLayout, V1_CONTROLLERS};

/// One line of `/proc/self/mountinfo`, the fields the layout needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount point (octal escapes like `\040` decoded).
    pub mount_point: PathBuf,
    /// The filesystem type (`cgroup`, `cgroup2`, ...).
    pub fstype: String,
    /// The per-superblock options (for cgroup v1: the controllers, `rw`, `name=...`).
    pub super_options: Vec<String>,
}

/// Parses mountinfo lines (`36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`);
/// malformed lines are skipped.
pub fn mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let mount_point = left.nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_options = right.next().unwrap_or("");
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Decodes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(b) = u8::try_from(value) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The layout from mountinfo text: v1 controller mounts (with the cgroup2 mount as `unified`
/// when there is one), or pure v2. `None` when there is no cgroup mount at all. A v1 mount
/// without controllers (`name=systemd`) does not make a host v1.
pub fn layout_from_mountinfo(text: &str) -> Option<CgroupLayout> {
    let mounts = mountinfo(text);
    let mut controllers: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut unified = None;
    for mount in &mounts {
        match mount.fstype.as_str() {
            "cgroup" => {
                for option in &mount.super_options {
                    if V1_CONTROLLERS.contains(&option.as_str()) {
                        controllers
                            .entry(option.clone())
                            .or_insert_with(|| mount.mount_point.clone());
                    }
                }
            }
            "cgroup2" if unified.is_none() => unified = Some(mount.mount_point.clone()),
            _ => {}
        }
    }
    match (controllers.is_empty(), unified) {
        (false, unified) => Some(CgroupLayout::V1 {
            controllers,
            unified,
        }),
        (true, Some(root)) => Some(CgroupLayout::V2 { root }),
        (true, None) => None,
    }
}

/// Why the text of a cgroup stat file was not understood. The caller names the file; the
/// offending text is cut to 60 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A file holding one number holds something else.
    #[error("expected a number, found {0:?}")]
    NotANumber(String),
    /// A line without the expected fields, or with a non-numeric value.
    #[error("bad line {0:?}")]
    BadLine(String),
    /// A `key=value` field of `io.stat` without `=` or with a non-numeric value.
    #[error("bad field {0:?}")]
    BadField(String),
    /// `cpuacct.stat` has neither a `user` nor a `system` line.
    #[error("no user or system line")]
    NoUserOrSystem,
}

/// A file holding one unsigned number.
pub fn single_u64(text: &str) -> Result<u64, ParseError> {
    let t = text.trim();
    t.parse().map_err(|_| ParseError::NotANumber(short(t)))
}

/// `max` (no limit) or a number (`pids.max`, `memory.max`).
pub fn max_or_u64(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        t => single_u64(t).map(Some),
    }
}

/// v1 reports "no memory limit" as the largest page-aligned counter (`9223372036854771712` on
/// 4 KiB pages, `PAGE_COUNTER_MAX * PAGE_SIZE`); anything at or above 2^62 is "no limit".
pub fn v1_memory_limit(bytes: u64) -> Option<u64> {
    (bytes < 1 << 62).then_some(bytes)
}

/// `key value` lines (`cpu.stat`, `memory.events`, `memory.oom_control`); non-numeric values
/// are skipped, a line without a value is an error.
pub fn flat_keyed(text: &str) -> Result<BTreeMap<String, u64>, ParseError> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            return Err(ParseError::BadLine(short(line)));
        };
        if let Ok(v) = value.parse::<u64>() {
            out.insert(key.to_owned(), v);
        }
    }
    Ok(out)
}

/// `cpuacct.stat` in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuacctStat {
    /// `user` ticks as nanoseconds.
    pub user_nanos: Option<u64>,
    /// `system` ticks as nanoseconds.
    pub system_nanos: Option<u64>,
}

/// `cpuacct.stat` (`user 30\nsystem 1\n`, in USER_HZ ticks) converted with `ticks_per_sec`.
pub fn cpuacct_stat(text: &str, ticks_per_sec: u64) -> Result<CpuacctStat, ParseError> {
    let kv = flat_keyed(text)?;
    let nanos = |ticks: u64| ticks.saturating_mul(1_000_000_000) / ticks_per_sec.max(1);
    let stat = CpuacctStat {
        user_nanos: kv.get("user").copied().map(nanos),
        system_nanos: kv.get("system").copied().map(nanos),
    };
    if stat.user_nanos.is_none() && stat.system_nanos.is_none() {
        return Err(ParseError::NoUserOrSystem);
    }
    Ok(stat)
}

/// Reads and writes summed over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadWrite {
    /// Sum of the `Read` lines.
    pub read: u64,
    /// Sum of the `Write` lines.
    pub write: u64,
}

/// `blkio.throttle.io_service_bytes` / `io_serviced` (`254:0 Read 8388608` per device and
/// operation, then `Total N`): `Read` and `Write` summed over devices.
pub fn blkio_rw(text: &str) -> Result<ReadWrite, ParseError> {
    let mut rw = ReadWrite::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            [_device, op, value] => {
                let value: u64 = value
                    .parse()
                    .map_err(|_| ParseError::BadLine(short(line)))?;
                match *op {
                    "Read" => rw.read = rw.read.saturating_add(value),
                    "Write" => rw.write = rw.write.saturating_add(value),
                    _ => {}
                }
            }
            ["Total", _] => {}
            _ => return Err(ParseError::BadLine(short(line))),
        }
    }
    Ok(rw)
}

/// `io.stat` summed over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoStat {
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// v2 `io.stat` (`254:0 rbytes=1114112 wbytes=4096 rios=47 wios=1 dbytes=0 dios=0` per device).
pub fn io_stat(text: &str) -> Result<IoStat, ParseError> {
    let mut io = IoStat::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let _device = parts.next();
        for pair in parts {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(ParseError::BadField(short(pair)));
            };
            let slot = match key {
                "rbytes" => &mut io.rbytes,
                "wbytes" => &mut io.wbytes,
                "rios" => &mut io.rios,
                "wios" => &mut io.wios,
                _ => continue,
            };
            let value: u64 = value
                .parse()
                .map_err(|_| ParseError::BadField(short(pair)))?;
            *slot = slot.saturating_add(value);
        }
    }
    Ok(io)
}

/// The first 60 characters, for error messages.
fn short(s: &str) -> String {
    s.chars().take(60).collect()
}
