//! The agent process's own figures from `/proc/self`: RSS, virtual size, CPU time, threads,
//! open file descriptors (the standard `process_*` metrics every Prometheus client exports).
//! Three small reads per scrape; parsing is split from reading and tested on strings.

use std::path::Path;

/// The agent's own resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// user + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (`None` when `/proc/self/fd` was unreadable).
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

/// Fields of `/proc/<pid>/stat` after the command name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// utime, clock ticks.
    pub utime_ticks: u64,
    /// stime, clock ticks.
    pub stime_ticks: u64,
    /// num_threads.
    pub threads: u64,
    /// starttime, clock ticks after boot.
    pub start_ticks: u64,
    /// vsize, bytes.
    pub vsize_bytes: u64,
    /// rss, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may hold spaces and parentheses, so fields are
/// counted from the last `)`).
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let after = &text[text.rfind(')')? + 1..];
    // After ")" come fields 3.. of proc(5); index 0 here is field 3 (state).
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime_ticks: num(14)?,
        stime_ticks: num(15)?,
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
        rss_pages: num(24)?,
    })
}

/// The `btime` line of `/proc/stat`: boot time, seconds since the epoch.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// This process's figures now, or `None` when `/proc/self/stat` is unreadable.
pub fn read_self() -> Option<ProcessStats> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, which lives for the call.
    let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some(limit.rlim_cur);
    Some(ProcessStats {
        cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / clock_ticks(),
        resident_bytes: stat.rss_pages.saturating_mul(page_size()),
        virtual_bytes: stat.vsize_bytes,
        threads: stat.threads,
        // read_dir itself holds one descriptor open while counting.
        open_fds: open_fds.map(|n| n.saturating_sub(1)),
        max_fds,
    })
}

/// When this process started, seconds since the epoch.
pub fn start_time_seconds() -> Option<f64> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let btime = parse_btime(&std::fs::read_to_string(Path::new("/proc/stat")).ok()?)?;
    Some(btime as f64 + stat.start_ticks as f64 / clock_ticks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let text = "1234 (fog agent) (x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 9000 123456789 4321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.utime_ticks, 250);
        assert_eq!(stat.stime_ticks, 50);
        assert_eq!(stat.threads, 7);
        assert_eq!(stat.start_ticks, 9000);
        assert_eq!(stat.vsize_bytes, 123_456_789);
        assert_eq!(stat.rss_pages, 4321);
        assert!(parse_stat("1234 (x) S 1 2").is_none());
        assert!(parse_stat("no paren").is_none());
    }

    #[test]
    fn btime_line() {
        assert_eq!(
            parse_btime("cpu 1 2 3 4\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1 2 3 4\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let stats = read_self().unwrap();
        assert!(stats.resident_bytes > 1 << 20, "{stats:?}");
        assert!(stats.threads >= 1);
        assert!(stats.open_fds.unwrap() >= 3);
        let start = start_time_seconds().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 365.0);
    }
}
