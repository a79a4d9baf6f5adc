//! Parsers for the `/proc` files host telemetry reads: `/proc/stat`, `/proc/loadavg`,
//! `/proc/meminfo`, `/proc/pressure/*`, `/proc/net/dev` and `/proc/diskstats`.
//!
//! Each takes the file's text and returns our own types or a [`ParseError`] naming the file and
//! what was wrong; reading goes through [`crate::fsroot::FsRoot`] in the sampler.

use super::{
    CpuTimes, DiskSample, LoadAverage, MemorySample, NetDevSample, Pressure, PressureLine,
};

/// `USER_HZ`: the unit of `/proc/stat` times. The kernel fixes it at 100 on every Linux
/// architecture (it is part of the user-space ABI, independent of `CONFIG_HZ`).
pub const USER_HZ: u64 = 100;

/// Bytes per sector in `/proc/diskstats` (always 512, whatever the device's block size).
const SECTOR_BYTES: u64 = 512;

/// A `/proc` file's content was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {file}: {detail}")]
pub struct ParseError {
    /// The file, e.g. `/proc/stat`.
    pub file: &'static str,
    /// What was wrong.
    pub detail: String,
}

fn error(file: &'static str, detail: impl Into<String>) -> ParseError {
    ParseError {
        file,
        detail: detail.into(),
    }
}

/// Parses the aggregate `cpu` line of `/proc/stat` and counts the `cpuN` lines.
pub fn parse_stat(text: &str) -> Result<(CpuTimes, u32), ParseError> {
    const FILE: &str = "/proc/stat";
    let mut total = None;
    let mut cpus = 0u32;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => total = Some(cpu_times(line, fields)?),
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    let total = total.ok_or_else(|| error(FILE, "no aggregate cpu line"))?;
    Ok((total, cpus))
}

/// Parses the per-CPU `cpuN` lines of `/proc/stat`: `(N, times)` in file order.
pub fn parse_stat_per_cpu(text: &str) -> Result<Vec<(u32, CpuTimes)>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(index) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let index = index
            .parse::<u32>()
            .map_err(|_| error("/proc/stat", format!("bad cpu number in {line:?}")))?;
        out.push((index, cpu_times(line, fields)?));
    }
    Ok(out)
}

/// The times of one `cpu` line (after its name), converted from `USER_HZ` ticks to ms.
fn cpu_times<'a>(
    line: &str,
    fields: impl Iterator<Item = &'a str>,
) -> Result<CpuTimes, ParseError> {
    const FILE: &str = "/proc/stat";
    let values = fields
        .map(|f| f.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| error(FILE, format!("non-numeric field in {line:?}")))?;
    if values.len() < 4 {
        return Err(error(FILE, format!("too few fields in {line:?}")));
    }
    let at = |i: usize| values.get(i).copied().unwrap_or(0) * 1000 / USER_HZ;
    Ok(CpuTimes {
        user_millis: at(0),
        nice_millis: at(1),
        system_millis: at(2),
        idle_millis: at(3),
        iowait_millis: at(4),
        irq_millis: at(5),
        softirq_millis: at(6),
        steal_millis: at(7),
        guest_millis: at(8),
        guest_nice_millis: at(9),
    })
}

/// Busy and steal shares (percent) between two readings; `None` when no time passed or the
/// counters went backwards (a different boot).
pub fn cpu_shares(prev: &CpuTimes, now: &CpuTimes) -> Option<(f64, f64)> {
    // guest and guest_nice are already counted in user and nice.
    let sum = |t: &CpuTimes| {
        t.user_millis
            + t.nice_millis
            + t.system_millis
            + t.idle_millis
            + t.iowait_millis
            + t.irq_millis
            + t.softirq_millis
            + t.steal_millis
    };
    let total = sum(now).checked_sub(sum(prev))?;
    let idle =
        (now.idle_millis + now.iowait_millis).checked_sub(prev.idle_millis + prev.iowait_millis)?;
    let steal = now.steal_millis.checked_sub(prev.steal_millis)?;
    if total == 0 {
        return None;
    }
    let busy = total.saturating_sub(idle);
    let pct = |part: u64| (part as f64 * 100.0 / total as f64).clamp(0.0, 100.0);
    Some((pct(busy), pct(steal)))
}

/// Parses `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<LoadAverage, ParseError> {
    const FILE: &str = "/proc/loadavg";
    let mut fields = text.split_ascii_whitespace().map(str::parse::<f64>);
    let mut next = || match fields.next() {
        Some(Ok(value)) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(error(
            FILE,
            format!("expected three load averages in {text:?}"),
        )),
    };
    Ok(LoadAverage {
        one: next()?,
        five: next()?,
        fifteen: next()?,
    })
}

/// Parses `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Result<MemorySample, ParseError> {
    const FILE: &str = "/proc/meminfo";
    let get = |key: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let (name, rest) = line.split_once(':')?;
            if name.trim() != key {
                return None;
            }
            let kb: u64 = rest.split_ascii_whitespace().next()?.parse().ok()?;
            kb.checked_mul(1024)
        })
    };
    let need = |key: &str| get(key).ok_or_else(|| error(FILE, format!("no {key} line")));
    let total = need("MemTotal")?;
    let available = need("MemAvailable")?;
    let swap_total = get("SwapTotal").unwrap_or(0);
    Ok(MemorySample {
        total_bytes: total,
        available_bytes: available,
        used_bytes: total.saturating_sub(available),
        free_bytes: get("MemFree").unwrap_or(0),
        cached_bytes: get("Buffers")
            .unwrap_or(0)
            .saturating_add(get("Cached").unwrap_or(0)),
        swap_total_bytes: swap_total,
        swap_used_bytes: swap_total.saturating_sub(get("SwapFree").unwrap_or(0)),
    })
}

/// Parses one `/proc/pressure/*` file.
pub fn parse_pressure(text: &str, file: &'static str) -> Result<Pressure, ParseError> {
    let mut pressure = Pressure::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_ascii_whitespace();
        let kind = fields.next().unwrap_or_default();
        let mut parsed = PressureLine::default();
        let mut seen = 0;
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| error(file, format!("bad field {field:?}")))?;
            let bad = || error(file, format!("bad value in {field:?}"));
            match key {
                "avg10" => parsed.avg10_percent = value.parse().map_err(|_| bad())?,
                "avg60" => parsed.avg60_percent = value.parse().map_err(|_| bad())?,
                "avg300" => parsed.avg300_percent = value.parse().map_err(|_| bad())?,
                "total" => parsed.total_micros = value.parse().map_err(|_| bad())?,
                _ => continue,
            }
            seen += 1;
        }
        if seen != 4 {
            return Err(error(file, format!("incomplete line {line:?}")));
        }
        match kind {
            "some" => pressure.some = Some(parsed),
            "full" => pressure.full = Some(parsed),
            other => return Err(error(file, format!("unknown line kind {other:?}"))),
        }
    }
    if pressure.some.is_none() {
        return Err(error(file, "no `some` line"));
    }
    Ok(pressure)
}

/// Parses `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> Result<Vec<NetDevSample>, ParseError> {
    const FILE: &str = "/proc/net/dev";
    let mut out = Vec::new();
    // Two header lines, then `name: 16 counters`.
    for line in text.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        let (name, counters) = line
            .split_once(':')
            .ok_or_else(|| error(FILE, format!("no interface name in {line:?}")))?;
        let values = counters
            .split_ascii_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| error(FILE, format!("non-numeric counter in {line:?}")))?;
        if values.len() < 16 {
            return Err(error(FILE, format!("too few counters in {line:?}")));
        }
        out.push(NetDevSample {
            name: name.trim().to_owned(),
            rx_bytes: values[0],
            rx_packets: values[1],
            rx_errors: values[2],
            rx_dropped: values[3],
            tx_bytes: values[8],
            tx_packets: values[9],
            tx_errors: values[10],
            tx_dropped: values[11],
        });
    }
    Ok(out)
}

/// Parses `/proc/diskstats`, keeping the devices `keep` accepts (whole disks).
pub fn parse_diskstats(
    text: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<DiskSample>, ParseError> {
    const FILE: &str = "/proc/diskstats";
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 14 {
            return Err(error(FILE, format!("too few fields in {line:?}")));
        }
        let name = fields[2];
        if !keep(name) {
            continue;
        }
        let num = |i: usize| -> Result<u64, ParseError> {
            fields[i]
                .parse()
                .map_err(|_| error(FILE, format!("field {} of {name} is not a number", i + 1)))
        };
        out.push(DiskSample {
            name: name.to_owned(),
            reads_completed: num(3)?,
            read_bytes: num(5)?.saturating_mul(SECTOR_BYTES),
            read_time_millis: num(6)?,
            writes_completed: num(7)?,
            written_bytes: num(9)?.saturating_mul(SECTOR_BYTES),
            write_time_millis: num(10)?,
            ios_in_progress: num(11)?,
            io_time_millis: num(12)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_aggregate_and_cpu_count() {
        let text = "cpu  100 5 50 1000 10 1 2 30 0 0\ncpu0 50 0 25 500 5 0 1 15 0 0\ncpu1 50 5 25 500 5 1 1 15 0 0\nintr 1 2\nctxt 5\n";
        let (times, cpus) = parse_stat(text).unwrap();
        assert_eq!(cpus, 2);
        assert_eq!(times.user_millis, 1000);
        assert_eq!(times.steal_millis, 300);
        assert_eq!(times.idle_millis, 10_000);
        // Old kernels have only 4 fields.
        let (old, _) = parse_stat("cpu 1 2 3 4\n").unwrap();
        assert_eq!(old.steal_millis, 0);
    }

    #[test]
    fn stat_per_cpu_lines() {
        let text = "cpu  100 5 50 1000 10 1 2 30 0 0\ncpu0 50 0 25 500 5 0 1 15 0 0\ncpu3 50 5 25 500 5 1 1 15 0 0\nintr 1 2\n";
        let cpus = parse_stat_per_cpu(text).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!((cpus[0].0, cpus[0].1.user_millis), (0, 500));
        assert_eq!((cpus[1].0, cpus[1].1.nice_millis), (3, 50));
        assert!(parse_stat_per_cpu("cpux 1 2 3 4\n").is_err());
        assert!(parse_stat_per_cpu("cpu0 1 2\n").is_err());
    }

    #[test]
    fn stat_malformed() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("cpu 1 2\n").is_err());
        let err = parse_stat("cpu 1 x 3 4\n").unwrap_err();
        assert_eq!(err.file, "/proc/stat");
        assert!(err.to_string().contains("non-numeric"));
    }

    #[test]
    fn shares_between_readings() {
        let a = CpuTimes {
            user_millis: 100,
            idle_millis: 800,
            steal_millis: 100,
            ..CpuTimes::default()
        };
        let b = CpuTimes {
            user_millis: 400,
            idle_millis: 1300,
            steal_millis: 300,
            ..CpuTimes::default()
        };
        let (busy, steal) = cpu_shares(&a, &b).unwrap();
        assert!((busy - 50.0).abs() < 1e-9, "{busy}");
        assert!((steal - 20.0).abs() < 1e-9, "{steal}");
        assert_eq!(cpu_shares(&a, &a), None, "no time passed");
        assert_eq!(cpu_shares(&b, &a), None, "counters went backwards");
    }

    #[test]
    fn loadavg() {
        let load = parse_loadavg("0.44 0.78 0.47 1/90 21025\n").unwrap();
        assert_eq!((load.one, load.five, load.fifteen), (0.44, 0.78, 0.47));
        assert!(parse_loadavg("0.1 0.2").is_err());
        assert!(parse_loadavg("a b c").is_err());
        assert!(parse_loadavg("-1 0 0").is_err());
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\nBuffers:          10 kB\nCached:          200 kB\nSwapTotal:       500 kB\nSwapFree:        400 kB\n";
        let mem = parse_meminfo(text).unwrap();
        assert_eq!(mem.total_bytes, 1_024_000);
        assert_eq!(mem.used_bytes, 400 * 1024);
        assert_eq!(mem.cached_bytes, 210 * 1024);
        assert_eq!(mem.swap_used_bytes, 100 * 1024);
        let err = parse_meminfo("MemTotal: 5 kB\n").unwrap_err();
        assert!(err.detail.contains("MemAvailable"));
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB").is_err());
    }

    #[test]
    fn pressure() {
        let text = "some avg10=0.63 avg60=0.92 avg300=1.87 total=36418946\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let p = parse_pressure(text, "/proc/pressure/cpu").unwrap();
        let some = p.some.unwrap();
        assert_eq!(some.avg10_percent, 0.63);
        assert_eq!(some.total_micros, 36_418_946);
        assert_eq!(p.full.unwrap().total_micros, 0);
        // Older kernels have no `full` line for cpu.
        let p = parse_pressure(
            "some avg10=1 avg60=2 avg300=3 total=4\n",
            "/proc/pressure/cpu",
        )
        .unwrap();
        assert!(p.full.is_none());
        assert!(parse_pressure("", "/proc/pressure/io").is_err());
        assert!(parse_pressure("some avg10=x avg60=1 avg300=1 total=1", "/p").is_err());
        assert!(parse_pressure("some avg10=1 avg60=1", "/p").is_err());
        assert!(parse_pressure("most avg10=1 avg60=1 avg300=1 total=1", "/p").is_err());
    }

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n  eth0: 100 2 3 4 0 0 0 0 500 6 7 8 0 0 0 0\n";
        let devs = parse_net_dev(text).unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[1].name, "eth0");
        assert_eq!(
            (
                devs[1].rx_bytes,
                devs[1].rx_errors,
                devs[1].tx_bytes,
                devs[1].tx_dropped
            ),
            (100, 3, 500, 8)
        );
        assert!(parse_net_dev("h\nh\neth0 1 2 3\n").is_err());
        assert!(parse_net_dev("h\nh\neth0: 1 2 3\n").is_err());
    }

    #[test]
    fn diskstats_keeps_whole_disks() {
        let text = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n 254       0 vda 100 5 2000 30 50 7 800 20 1 40 60 0 0 0 0 0 0\n 254       1 vda1 90 5 1900 28 50 7 800 20 0 38 58 0 0 0 0 0 0\n";
        let disks = parse_diskstats(text, |name| name == "vda").unwrap();
        assert_eq!(disks.len(), 1);
        let vda = &disks[0];
        assert_eq!(vda.read_bytes, 2000 * 512);
        assert_eq!(vda.written_bytes, 800 * 512);
        assert_eq!((vda.ios_in_progress, vda.io_time_millis), (1, 40));
        assert!(parse_diskstats("8 0 sda 1 2\n", |_| true).is_err());
        assert!(parse_diskstats("8 0 sda 1 2 x 4 5 6 7 8 9 10 11\n", |_| true).is_err());
    }
}
