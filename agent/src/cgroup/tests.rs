//! cgroup tests: parsers on kernel-format text, both layouts on fixture trees, and one real
//! cgroup on this machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::parse;
use super::*;

fn fixture(name: &str) -> FsRoot {
    FsRoot::new(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

#[test]
fn mountinfo_of_a_hybrid_host() {
    let layout = CgroupLayout::detect(&fixture("cgroup-v1")).unwrap();
    assert_eq!(layout.kind(), "hybrid");
    let CgroupLayout::V1 {
        controllers,
        unified,
    } = &layout
    else {
        panic!("not v1: {layout:?}");
    };
    assert_eq!(
        unified.as_deref(),
        Some(Path::new("/sys/fs/cgroup/unified"))
    );
    let names: Vec<&str> = controllers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"]
    );
    assert_eq!(
        layout.v1_mount("cpuacct"),
        Some(Path::new("/sys/fs/cgroup/cpuacct"))
    );
}

#[test]
fn mountinfo_of_pure_v2_and_co_mounted_v1() {
    let layout = CgroupLayout::detect(&fixture("cgroup-v2")).unwrap();
    assert_eq!(
        layout,
        CgroupLayout::V2 {
            root: PathBuf::from("/sys/fs/cgroup")
        }
    );
    assert_eq!(layout.kind(), "v2");

    // Older distributions co-mount cpu and cpuacct; a v1 name=systemd mount alone is not v1.
    let text = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";
    let layout = parse::layout_from_mountinfo(text).unwrap();
    assert_eq!(layout.kind(), "v1");
    assert_eq!(
        layout.v1_mount("cpu"),
        Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
    );
    assert_eq!(layout.v1_mount("cpuacct"), layout.v1_mount("cpu"));
    assert_eq!(layout.v1_mount("pids"), None);

    let systemd_only = "\
26 25 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
30 22 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    assert_eq!(
        parse::layout_from_mountinfo(systemd_only).unwrap().kind(),
        "v2"
    );
    assert_eq!(
        parse::layout_from_mountinfo("22 1 0:1 / / rw - ext4 /dev/sda rw\n"),
        None
    );
    let err = CgroupLayout::detect(&FsRoot::new("/nonexistent-root")).unwrap_err();
    assert!(err.to_string().contains("/proc/self/mountinfo"), "{err}");
}

#[test]
fn mountinfo_escapes_are_decoded() {
    let mounts = parse::mountinfo(
        "40 31 0:37 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\ngarbage line\n",
    );
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/with space"));
    assert_eq!(mounts[0].fstype, "cgroup2");
}

#[test]
fn v1_stats_from_the_fixture() {
    let fs = fixture("cgroup-v1");
    let layout = CgroupLayout::detect(&fs).unwrap();
    let stats = read_stats(&fs, &layout, "/fog-agent/job-abc");
    assert_eq!(stats.notes, Vec::<String>::new());
    assert_eq!(stats.cpu_usage_nanos, Some(320_663_543));
    let hz = clock_ticks_per_sec();
    assert_eq!(stats.cpu_user_nanos, Some(30 * 1_000_000_000 / hz));
    assert_eq!(stats.cpu_system_nanos, Some(1_000_000_000 / hz));
    assert_eq!(stats.cpu_nr_periods, Some(8));
    assert_eq!(stats.cpu_nr_throttled, Some(5));
    assert_eq!(stats.cpu_throttled_nanos, Some(116_041_838));
    assert_eq!(stats.memory_usage_bytes, Some(528_384));
    assert_eq!(stats.memory_peak_bytes, Some(1_826_816));
    assert_eq!(stats.memory_limit_bytes, Some(268_435_456));
    assert_eq!(stats.oom_kills, Some(2));
    assert_eq!(stats.oom_events, None);
    assert_eq!(stats.memory_limit_hits, Some(17));
    assert_eq!(stats.pids_current, Some(3));
    assert_eq!(stats.pids_limit, Some(64));
    // The _recursive files win; both devices summed.
    assert_eq!(stats.io_read_bytes, Some(8_388_608 + 4096));
    assert_eq!(stats.io_write_bytes, Some(4_198_400));
    assert_eq!(stats.io_read_ops, Some(65));
    assert_eq!(stats.io_write_ops, Some(9));
}

#[test]
fn procs_of_a_job_on_both_layouts() {
    let v1 = fixture("cgroup-v1");
    let layout = CgroupLayout::detect(&v1).unwrap();
    assert_eq!(
        read_procs(&v1, &layout, "/fog-agent/job-abc").unwrap(),
        [4242, 4250]
    );
    let err = read_procs(&v1, &layout, "/fog-agent/job-gone")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pids/fog-agent/job-gone/cgroup.procs"),
        "{err}"
    );
    assert!(read_procs(&v1, &layout, "/fog-agent/../etc").is_err());

    let v2 = fixture("cgroup-v2");
    let layout = CgroupLayout::detect(&v2).unwrap();
    assert_eq!(
        read_procs(&v2, &layout, "/fog-agent/job-abc").unwrap(),
        [777]
    );
}

#[test]
fn v2_stats_from_the_fixture() {
    let fs = fixture("cgroup-v2");
    let layout = CgroupLayout::detect(&fs).unwrap();
    let stats = read_stats(&fs, &layout, "/fog-agent/job-abc");
    assert_eq!(stats.notes, Vec::<String>::new());
    assert_eq!(
        stats,
        CgroupStats {
            cpu_usage_nanos: Some(2_316_354_000),
            cpu_user_nanos: Some(1_583_223_000),
            cpu_system_nanos: Some(733_131_000),
            cpu_nr_periods: Some(1234),
            cpu_nr_throttled: Some(56),
            cpu_throttled_nanos: Some(789_012_000),
            memory_usage_bytes: Some(52_559_872),
            memory_peak_bytes: Some(268_435_456),
            memory_limit_bytes: Some(268_435_456),
            oom_kills: Some(1),
            oom_events: Some(4),
            memory_limit_hits: Some(312),
            pids_current: Some(7),
            pids_limit: Some(64),
            io_read_bytes: Some(1_114_112 + 2048),
            io_write_bytes: Some(4096),
            io_read_ops: Some(49),
            io_write_ops: Some(1),
            notes: Vec::new(),
        }
    );
}

#[test]
fn v2_on_an_older_kernel_and_unlimited_cgroup() {
    let fs = fixture("cgroup-v2");
    let layout = CgroupLayout::detect(&fs).unwrap();
    let stats = read_stats(&fs, &layout, "fog-agent/job-old");
    assert_eq!(stats.cpu_usage_nanos, Some(1_000_000));
    assert_eq!(stats.cpu_nr_periods, None);
    assert_eq!(stats.memory_usage_bytes, Some(4096));
    assert_eq!(stats.memory_peak_bytes, None, "no memory.peak: not made up");
    assert_eq!(stats.memory_limit_bytes, None, "max means no limit");
    assert_eq!(stats.pids_limit, None);
    assert_eq!(stats.pids_current, Some(1));
    assert_eq!(stats.io_read_bytes, None);
    let notes = stats.notes.join("\n");
    assert!(notes.contains("memory.peak"), "{notes}");
    assert!(notes.contains("io.stat"), "{notes}");
    assert!(notes.contains("no throttling counters"), "{notes}");
    assert_eq!(stats.notes.len(), 3, "{notes}");
}

#[test]
fn a_missing_cgroup_gives_nones_and_notes_never_zeros() {
    for name in ["cgroup-v1", "cgroup-v2"] {
        let fs = fixture(name);
        let layout = CgroupLayout::detect(&fs).unwrap();
        let stats = read_stats(&fs, &layout, "/fog-agent/job-gone");
        assert_eq!(
            CgroupStats {
                notes: Vec::new(),
                ..stats.clone()
            },
            CgroupStats::default(),
            "{name}"
        );
        assert!(
            stats.notes.iter().all(|n| n.starts_with("no cgroup at ")),
            "{name}: {:?}",
            stats.notes
        );
        assert!(!stats.notes.is_empty());

        let stats = read_stats(&fs, &layout, "/fog-agent/../../etc");
        assert_eq!(stats.notes.len(), 1);
        assert!(stats.notes[0].contains("not a plain path"));
        assert_eq!(stats.cpu_usage_nanos, None);
    }
}

#[test]
fn hybrid_reads_a_controller_only_the_unified_hierarchy_has() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let write = |path: &str, text: &str| {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    // v1 has cpu/cpuacct only; memory and pids moved to the unified hierarchy.
    write(
        "/proc/self/mountinfo",
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
         41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    );
    write("/sys/fs/cgroup/unified/cgroup.controllers", "memory pids\n");
    write("/sys/fs/cgroup/cpu,cpuacct/j/cpuacct.usage", "5000\n");
    write(
        "/sys/fs/cgroup/cpu,cpuacct/j/cpuacct.stat",
        "user 0\nsystem 0\n",
    );
    write(
        "/sys/fs/cgroup/cpu,cpuacct/j/cpu.stat",
        "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
    );
    write("/sys/fs/cgroup/unified/j/memory.current", "8192\n");
    write("/sys/fs/cgroup/unified/j/memory.peak", "16384\n");
    write("/sys/fs/cgroup/unified/j/memory.max", "max\n");
    write(
        "/sys/fs/cgroup/unified/j/memory.events",
        "max 0\noom 0\noom_kill 0\n",
    );
    write("/sys/fs/cgroup/unified/j/pids.current", "2\n");
    write("/sys/fs/cgroup/unified/j/pids.max", "max\n");
    let fs = FsRoot::new(root);
    let layout = CgroupLayout::detect(&fs).unwrap();
    assert_eq!(layout.kind(), "hybrid");
    let stats = read_stats(&fs, &layout, "/j");
    assert_eq!(stats.cpu_usage_nanos, Some(5000));
    assert_eq!(stats.cpu_user_nanos, Some(0));
    assert_eq!(stats.memory_usage_bytes, Some(8192));
    assert_eq!(stats.memory_peak_bytes, Some(16384));
    assert_eq!(stats.pids_current, Some(2));
    assert_eq!(stats.io_read_bytes, None);
    assert_eq!(stats.notes, vec!["no blkio controller mounted".to_owned()]);
}

#[test]
fn parsers_reject_garbage_with_a_reason() {
    assert_eq!(parse::single_u64("42\n"), Ok(42));
    assert!(parse::single_u64("x")
        .unwrap_err()
        .to_string()
        .contains("\"x\""));
    assert_eq!(parse::max_or_u64("max\n"), Ok(None));
    assert_eq!(parse::max_or_u64("64\n"), Ok(Some(64)));
    assert_eq!(parse::v1_memory_limit(9_223_372_036_854_771_712), None);
    assert_eq!(parse::v1_memory_limit(1 << 30), Some(1 << 30));
    assert!(parse::flat_keyed("lonely\n").is_err());
    assert_eq!(
        parse::flat_keyed("a 1\nb x\n\n").unwrap(),
        BTreeMap::from([("a".to_owned(), 1)])
    );
    assert!(parse::cpuacct_stat("other 1\n", 100).is_err());
    assert_eq!(
        parse::cpuacct_stat("user 250\nsystem 3\n", 100).unwrap(),
        parse::CpuacctStat {
            user_nanos: Some(2_500_000_000),
            system_nanos: Some(30_000_000)
        }
    );
    assert!(parse::blkio_rw("8:0 Read lots\n").is_err());
    assert_eq!(
        parse::blkio_rw("Total 0\n").unwrap(),
        parse::ReadWrite::default()
    );
    assert!(parse::io_stat("8:0 rbytes\n").is_err());
    assert!(parse::io_stat("8:0 rbytes=x\n").is_err());
    assert_eq!(parse::io_stat("").unwrap(), parse::IoStat::default());

    // A garbage file gives a note naming it, and None.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sys/fs/cgroup/j");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pids.current"), "lots\n").unwrap();
    let layout = CgroupLayout::V2 {
        root: PathBuf::from("/sys/fs/cgroup"),
    };
    let stats = read_stats(&FsRoot::new(tmp.path()), &layout, "/j");
    assert_eq!(stats.pids_current, None);
    assert!(
        stats
            .notes
            .iter()
            .any(|n| n.starts_with("/sys/fs/cgroup/j/pids.current: expected a number")),
        "{:?}",
        stats.notes
    );
}

/// A cgroup created on this machine (we are root), removed again even when the test fails.
struct LiveCgroup {
    dirs: Vec<PathBuf>,
    child: Option<std::process::Child>,
}

impl Drop for LiveCgroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.dirs.iter().rev() {
            // The child is gone, so the cgroup is empty; rmdir may need a moment to see it.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// The skip rule for tests that need root (they create cgroups): not root, the test says so on
/// stderr and returns; except in CI (`CI` set), where the tests run as root by design and a
/// missing root is a broken setup, so it fails. Same rule as the integration tests'
/// `support::skip`. True when the test can run.
fn runs_as_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = "needs root: it creates cgroups under /sys/fs/cgroup";
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    if ci {
        panic!("{test}: {reason} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipped: {test}: {reason}");
    false
}

#[test]
fn a_real_cgroup_on_this_machine_sees_cpu_time_grow() {
    if !runs_as_root("a_real_cgroup_on_this_machine_sees_cpu_time_grow") {
        return;
    }
    let fs = FsRoot::host();
    let layout = CgroupLayout::detect(&fs).unwrap();
    let name = format!("fog-test-{}", std::process::id());
    let mut live = LiveCgroup {
        dirs: Vec::new(),
        child: None,
    };
    let dirs: Vec<PathBuf> = match &layout {
        CgroupLayout::V1 { .. } => ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|c| layout.v1_mount(c).unwrap().join(&name))
            .collect(),
        CgroupLayout::V2 { root } => vec![root.join(&name)],
    };
    for dir in &dirs {
        std::fs::create_dir(dir).unwrap();
        live.dirs.push(dir.clone());
    }
    let child = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = child.id();
    live.child = Some(child);
    for dir in &dirs {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    let path = format!("/{name}");
    let first = read_stats(&fs, &layout, &path);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let second = read_stats(&fs, &layout, &path);
    let (a, b) = (
        first.cpu_usage_nanos.unwrap(),
        second.cpu_usage_nanos.unwrap(),
    );
    assert!(b > a, "cpu time did not grow: {a} -> {b}");
    // A busy loop for 400 ms on a shared 2-core machine: at least 50 ms of CPU.
    assert!(b - a > 50_000_000, "cpu grew only {} ns", b - a);
    assert!(second.cpu_user_nanos.is_some());
    assert!(second.pids_current.unwrap() >= 1);
    assert_eq!(read_procs(&fs, &layout, &path).unwrap(), [pid]);
    // v1 does not move a task's existing charge with it (move_charge_at_immigrate 0) and a busy
    // loop allocates nothing new: the value may be 0, but it is read.
    assert!(second.memory_usage_bytes.is_some(), "{:?}", second.notes);
    drop(live);
    assert!(dirs.iter().all(|d| !d.exists()), "cgroup dirs left behind");
}
