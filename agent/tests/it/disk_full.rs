//! The state filesystem full, with real runc: the agent's state dir on a small ext4 the test
//! makes (a file, `mkfs.ext4`, `mount -o loop`; unmounted on drop), filled by a job's logs.
//! Stops still happen (StopJob and the agent's own time-limit stop), the containers go, new
//! jobs and imports are refused naming `state.min_free_bytes`, capacity says so, and the
//! records reach their final state on disk once space returns. Skipped, with the reason
//! printed, when not root or when no loop device can be mounted. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fog_agent::config::ByteSize;
use fog_proto::v1 as pb;
use tonic::Code;

use crate::jobs::{capacity, ended, get, spec, start, unique, wait_for, Harness, HEAVY};

const MIB: u64 = 1 << 20;

/// A small ext4 filesystem on a loop device, mounted in a temp dir; lazily unmounted on drop
/// (whatever still holds it, the loop device goes with the last user).
struct LoopFs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `None` (with the reason printed) when this host cannot make one.
    fn new(bytes: u64) -> Option<Self> {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a loop filesystem needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("state.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let tool = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        };
        if let Err(err) = tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
        ) {
            eprintln!("skipped: cannot make an ext4 filesystem: {err}");
            return None;
        }
        if let Err(err) = tool(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop"])
                .arg(&image)
                .arg(&mnt),
        ) {
            eprintln!("skipped: cannot mount a loop filesystem (no loop device?): {err}");
            return None;
        }
        Some(Self { mnt, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    /// Takes whatever a job left free (down to the last block) into `<mnt>/test-filler`, so
    /// that every later allocation fails with ENOSPC whoever asks.
    fn fill_up(&self) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.mnt.join("test-filler"))
            .unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let data = vec![0u8; chunk];
            while file.write_all(&data).is_ok() {}
        }
        let _ = file.sync_all();
    }

    fn free_the_filler(&self) {
        std::fs::remove_file(self.mnt.join("test-filler")).unwrap();
    }

    /// Free bytes for an unprivileged writer.
    fn free(&self) -> u64 {
        fog_agent::state::headroom::free_bytes(&self.mnt).unwrap()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
    }
}

/// A job's state in the database on disk (not the agent's memory).
fn stored_state(state_dir: &Path, id: &str) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    db.query_row("SELECT state FROM jobs WHERE job_id = ?1", [id], |r| {
        r.get(0)
    })
    .ok()
}

/// Waits (at most 60 s) until a job has written the filesystem down to its last 256 KiB, then
/// takes the rest.
async fn wait_until_full(fs: &LoopFs) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs.free() > 256 * 1024 {
        assert!(
            Instant::now() < deadline,
            "the disk never filled: {} free",
            fs.free()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fs.fill_up();
}

/// StopJob of job `id` (200 ms grace) on the full disk: it answers OK within 30 s.
async fn stop_on_full_disk(h: &mut Harness, id: &str) -> pb::Job {
    tokio::time::timeout(
        Duration::from_secs(30),
        h.client.stop_job(pb::StopJobRequest {
            job_id: id.to_owned(),
            grace_millis: 200,
        }),
    )
    .await
    .expect("StopJob within 30 s")
    .expect("StopJob answers OK on a full disk")
    .into_inner()
    .job
    .unwrap()
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 checks existence only.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_filesystem_never_keeps_a_job_from_stopping() {
    let Some(fs) = LoopFs::new(96 * MIB) else {
        return;
    };
    // A job writing as fast as it can: not next to a CPU measurement.
    let _heavy = HEAVY.lock().await;
    let state_dir = fs.path().join("state");
    let mut h = Harness::start_configured(
        |c| {
            c.state.dir = state_dir.clone();
            c.state.min_free_bytes = ByteSize(16 * MIB);
            // No slack: the records cannot be committed until space returns.
            c.state.slack_bytes = ByteSize(0);
            // The logs fill the disk, as in the report.
            c.jobs.log_max_bytes = ByteSize(1 << 30);
        },
        |_, o| o,
    )
    .await;
    // A job the agent stops itself at its time limit, while the disk is full.
    let limited = unique("limited");
    let mut s = spec(&limited, "trap 'exit 0' TERM; sleep 600 & wait");
    s.time_limit_millis = 8_000;
    start(&mut h.client, s).await;
    let filler = unique("filler");
    start(
        &mut h.client,
        spec(&filler, "yes fill-the-state-filesystem"),
    )
    .await;
    let pid_file = state_dir.join("jobs").join(&filler).join("container.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no container.pid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_until_full(&fs).await;

    // Stopping works, and the container is gone.
    let stopped = stop_on_full_disk(&mut h, &filler).await;
    assert_eq!(stopped.state(), pb::JobState::Stopped, "{stopped:?}");
    assert_eq!(stopped.termination(), pb::TerminationReason::StopRequested);
    assert!(!h.containers().contains(&filler), "{:?}", h.containers());
    assert!(!process_alive(pid), "the filler's process still runs");

    // The agent's own time-limit stop happens too.
    let job = wait_for(&mut h.client, &limited, Duration::from_secs(40), ended).await;
    assert_eq!(job.state(), pb::JobState::Stopped, "{job:?}");
    assert_eq!(job.termination(), pb::TerminationReason::TimeLimit);
    assert!(!h.containers().contains(&limited));

    // Below the floor: no new job, no import, and capacity says why.
    let refused = h
        .client
        .start_job(pb::StartJobRequest {
            spec: Some(spec(&unique("refused"), "true")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("state.min_free_bytes: "),
        "{}",
        refused.message()
    );
    let import = h
        .client
        .import_image(pb::ImportImageRequest {
            layout_dir: "/nonexistent-layout".to_owned(),
            reference: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(import.code(), Code::ResourceExhausted, "{import:?}");
    assert!(
        import.message().contains("state.min_free_bytes"),
        "{import:?}"
    );
    let floor_note = |c: &pb::Capacity| c.notes.iter().any(|n| n.contains("min_free_bytes"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !floor_note(&capacity(&mut h.client).await) {
        assert!(
            Instant::now() < deadline,
            "capacity has no note on the floor"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Space returns: the records reach their final state on disk, and jobs start again.
    std::fs::remove_file(state_dir.join("jobs").join(&filler).join("stdout.log")).unwrap();
    fs.free_the_filler();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let states = [
            stored_state(&state_dir, &filler),
            stored_state(&state_dir, &limited),
        ];
        if states.iter().all(|s| s.as_deref() == Some("stopped")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records not final on disk 15 s after space returned: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while floor_note(&capacity(&mut h.client).await) {
        assert!(Instant::now() < deadline, "the floor note stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = unique("again");
    start(&mut h.client, spec(&again, "echo ok")).await;
    let job = wait_for(&mut h.client, &again, Duration::from_secs(30), ended).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    assert_eq!(
        get(&mut h.client, &filler).await.state(),
        pb::JobState::Stopped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slack_is_released_for_the_records_and_made_again() {
    let Some(fs) = LoopFs::new(96 * MIB) else {
        return;
    };
    // A job writing as fast as it can: not next to a CPU measurement.
    let _heavy = HEAVY.lock().await;
    let state_dir = fs.path().join("state");
    let slack = state_dir.join(fog_agent::state::headroom::SLACK_FILE);
    let mut h = Harness::start_configured(
        |c| {
            c.state.dir = state_dir.clone();
            c.state.min_free_bytes = ByteSize(8 * MIB);
            c.state.slack_bytes = ByteSize(4 * MIB);
            c.jobs.log_max_bytes = ByteSize(1 << 30);
        },
        |_, o| o,
    )
    .await;
    assert_eq!(std::fs::metadata(&slack).unwrap().len(), 4 * MIB);
    let filler = unique("filler");
    start(
        &mut h.client,
        spec(&filler, "yes fill-the-state-filesystem"),
    )
    .await;
    wait_until_full(&fs).await;
    let stopped = stop_on_full_disk(&mut h, &filler).await;
    assert_eq!(stopped.state(), pb::JobState::Stopped, "{stopped:?}");
    assert!(!h.containers().contains(&filler));
    assert!(!slack.exists(), "the slack was released for the records");
    std::fs::remove_file(state_dir.join("jobs").join(&filler).join("stdout.log")).unwrap();
    fs.free_the_filler();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(slack.exists() && stored_state(&state_dir, &filler).as_deref() == Some("stopped")) {
        assert!(
            Instant::now() < deadline,
            "slack {} / record {:?} 15 s after space returned",
            slack.exists(),
            stored_state(&state_dir, &filler)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::metadata(&slack).unwrap().len(), 4 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_disk_is_what_the_filesystem_has_and_a_scratch_past_it_is_refused_at_admission() {
    let Some(fs) = LoopFs::new(256 * MIB) else {
        return;
    };
    // Other data on the state filesystem: 160 MiB the agent did not write.
    std::fs::write(fs.path().join("other-data"), vec![1u8; 160 * MIB as usize]).unwrap();
    let state_dir = fs.path().join("state");
    let mut h = Harness::start_configured(
        |c| {
            c.state.dir = state_dir.clone();
            c.state.min_free_bytes = ByteSize(8 * MIB);
            c.state.slack_bytes = ByteSize(0);
            c.capacity.reserve_disk = fog_agent::config::Amount::Bytes(4 * MIB);
        },
        |_, o| o,
    )
    .await;
    // A first job makes the agent look at the disk (and waits for the inventory).
    let first = unique("small");
    let mut s = spec(&first, "sleep 60");
    s.resources.as_mut().unwrap().scratch_bytes = (8 * MIB) as i64;
    start(&mut h.client, s).await;
    let disk = capacity(&mut h.client).await.disk_bytes.unwrap();
    let available = fs.free();
    // (1 MiB of slack for what the agent's own records took since.)
    assert!(
        disk.free + 8 * MIB + 4 * MIB <= available + MIB,
        "free {} must be within the filesystem's available {available} less the floor and \
         reserve (total {}, reserved {})",
        disk.free,
        disk.total,
        disk.reserved
    );
    assert!(
        disk.total - disk.reserved - disk.allocated > available,
        "the test needs a total-based figure that over-reports: {disk:?}, {available} available"
    );

    // More than is available, less than total - reserve: refused now, with no record kept.
    let big = unique("big");
    let mut s = spec(&big, "sleep 60");
    s.resources.as_mut().unwrap().scratch_bytes = (available + 16 * MIB) as i64;
    let status = h
        .client
        .start_job(pb::StartJobRequest { spec: Some(s) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("resources.scratch_bytes"),
        "{}",
        status.message()
    );
    let missing = h
        .client
        .get_job(pb::GetJobRequest {
            job_id: big.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "the id is not taken");
    // The same id with a scratch that fits starts.
    let mut s = spec(&big, "sleep 60");
    s.resources.as_mut().unwrap().scratch_bytes = (8 * MIB) as i64;
    let job = start(&mut h.client, s).await.job.unwrap();
    assert_eq!(job.state(), pb::JobState::Running, "{job:?}");
}
