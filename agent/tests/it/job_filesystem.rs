//! What a job's filesystem offers common software, and how its end is told, with real runc: a
//! writable `/tmp` and `HOME`, a `/dev/shm` of the asked size, tmpfs memory charged to the
//! job (filling `/tmp` past the memory limit is an OOM kill, the host is fine), the message of
//! a job that ended on its own, and usage that stops counting at the time limit.

use std::time::Duration;

use fog_proto::v1 as pb;

use crate::jobs::{ended, spec, start, unique, wait_for, Harness, HEAVY};

const MIB: i64 = 1 << 20;

/// The job's stdout so far.
fn stdout(h: &Harness, id: &str) -> String {
    let dir = h.config.jobs.dir_under(&h.config.state.dir).join(id);
    std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default()
}

async fn harness() -> Harness {
    Harness::start_configured(|_| {}, |_, options| options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_and_home_are_writable_and_shm_has_the_asked_size() {
    let mut h = harness().await;
    let id = unique("fs");
    let script = "set -e; echo tmp > /tmp/a; cat /tmp/a; echo \"home=$HOME\"; \
                  mkdir -p \"$HOME/.cache\" && echo cached > \"$HOME/.cache/x\" && cat \"$HOME/.cache/x\"; \
                  df -k /dev/shm | tail -1; df -k /tmp | tail -1; \
                  if echo no > /etc/x 2>/dev/null; then echo root-writable; fi";
    let mut s = spec(&id, script);
    s.resources.as_mut().unwrap().shm_bytes = 48 * MIB;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    let out = stdout(&h, &id);
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}\n{out}");
    assert!(out.contains("tmp\n"), "{out}");
    assert!(out.contains("home=/tmp\n"), "{out}");
    assert!(out.contains("cached\n"), "{out}");
    assert!(
        !out.contains("root-writable"),
        "the image's root stays read-only: {out}"
    );
    // `df -k`: filesystem, 1K-blocks, used, available, use%, mount point.
    let size_kib = |mount: &str| -> i64 {
        let line = out
            .lines()
            .find(|l| l.ends_with(&format!(" {mount}")))
            .unwrap_or_else(|| panic!("no df line for {mount}: {out}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(size_kib("/dev/shm"), 48 * 1024, "{out}");
    assert_eq!(
        size_kib("/tmp"),
        64 * 1024,
        "/tmp holds at most the memory limit: {out}"
    );

    // Without shm_bytes: half the memory limit.
    let id = unique("shm-default");
    start(&mut h.client, spec(&id, "df -k /dev/shm | tail -1")).await;
    wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
    let out = stdout(&h, &id);
    let size: i64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(size, 32 * 1024, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_tmp_past_the_memory_limit_is_an_oom_kill_of_the_job() {
    let _heavy = HEAVY.lock().await;
    let mut h = harness().await;
    let id = unique("tmp-oom");
    // 32 MiB of memory; /tmp is sized at the limit, so only the cgroup can stop 40 MiB of
    // writes before ENOSPC: the job is charged for its tmpfs pages.
    let mut s = spec(
        &id,
        "dd if=/dev/zero of=/tmp/fill bs=1M count=40 && echo wrote-it",
    );
    s.resources.as_mut().unwrap().memory_bytes = 32 * MIB;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(60), ended).await;
    assert_eq!(
        job.termination(),
        pb::TerminationReason::OomKilled,
        "{job:?}\n{}",
        stdout(&h, &id)
    );
    assert!(!stdout(&h, &id).contains("wrote-it"));
    // The host is fine: the next job runs.
    let next = unique("after");
    start(&mut h.client, spec(&next, "echo ok")).await;
    let job = wait_for(&mut h.client, &next, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ends_on_its_own_says_how() {
    let mut h = harness().await;
    for (code, message) in [
        (0, "exited on its own with exit code 0"),
        (3, "exited on its own with exit code 3"),
    ] {
        let id = unique("own");
        start(&mut h.client, spec(&id, &format!("sleep 0.3; exit {code}"))).await;
        let job = wait_for(&mut h.client, &id, Duration::from_secs(30), ended).await;
        assert_eq!(job.message, message, "{job:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_stops_at_the_time_limit_even_when_the_job_ignores_sigterm() {
    let _heavy = HEAVY.lock().await;
    let mut h = harness().await;
    let id = unique("limit");
    // Busy, and deaf to SIGTERM: it runs through the whole stop grace.
    let mut s = spec(&id, "trap '' TERM; while :; do :; done");
    s.time_limit_millis = 2_000;
    s.resources.as_mut().unwrap().cpu_millicores = 1000;
    start(&mut h.client, s).await;
    let job = wait_for(&mut h.client, &id, Duration::from_secs(60), ended).await;
    assert_eq!(
        job.termination(),
        pb::TerminationReason::TimeLimit,
        "{job:?}"
    );
    assert!(
        job.message.starts_with("stopped at its time limit"),
        "{}",
        job.message
    );
    let usage = job.usage.unwrap();
    assert!(
        usage.duration_millis <= 2_000,
        "billed past the limit: {usage:?}"
    );
    // At most one CPU for 2 s (plus the tick's rounding), not the 5 s grace on top.
    assert!(usage.cpu_seconds < 3.0, "{usage:?}");
}
