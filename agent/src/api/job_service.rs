//! The job RPCs of `fog.agent.v1.Agent` (called from [`super::service`] after authorization):
//! blocking job-manager calls run on the blocking pool; WatchJob and JobLogs are bounded
//! channels fed by one producer task each, which stops when the client goes away, the job
//! ends, or the daemon shuts down.

use std::sync::Arc;
use std::time::Duration;

use fog_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};

use super::error::{blocking, image_error, ApiError};
use super::job_convert as convert;
use super::service::ResponseStream;
use super::{shutting_down, Shared};
use crate::jobs::logs::{self, LogFollower, Stream};
use crate::jobs::{JobError, JobEvent, JobManager};

/// How often followed logs are polled.
const LOG_POLL: Duration = Duration::from_millis(200);
/// Messages buffered per stream.
const STREAM_QUEUE: usize = 256;

fn manager(shared: &Shared) -> Result<Arc<JobManager>, ApiError> {
    shared
        .jobs
        .clone()
        .ok_or_else(|| ApiError::Unimplemented("jobs are not enabled in this agent".into()))
}

/// A request's `job_id`, checked by StartJob's rule before any lookup (so a reply never
/// echoes an id that could not exist).
fn job_id(id: &str) -> Result<&str, ApiError> {
    crate::jobs::spec::check_job_id(id)?;
    Ok(id)
}

/// StartJob.
pub async fn start_job(
    shared: &Shared,
    request: pb::StartJobRequest,
) -> Result<pb::StartJobResponse, ApiError> {
    let jobs = manager(shared)?;
    let spec = convert::job_spec(request.spec.as_ref())?;
    // Capacity is known once the inventory is: wait for the first collection.
    shared.inventory.get(false).await.map_err(ApiError::from)?;
    let (view, created) = blocking("job start", move || jobs.start(&spec)).await?;
    Ok(pb::StartJobResponse {
        job: Some(convert::job(&view)),
        created,
    })
}

/// StopJob.
pub async fn stop_job(
    shared: &Shared,
    request: pb::StopJobRequest,
) -> Result<pb::StopJobResponse, ApiError> {
    let jobs = manager(shared)?;
    job_id(&request.job_id)?;
    let grace = convert::stop_grace(request.grace_millis)?;
    let view = blocking("job stop", move || jobs.stop(&request.job_id, grace)).await?;
    Ok(pb::StopJobResponse {
        job: Some(convert::job(&view)),
    })
}

/// GetJob.
pub fn get_job(
    shared: &Shared,
    request: &pb::GetJobRequest,
) -> Result<pb::GetJobResponse, ApiError> {
    let view = manager(shared)?.get(job_id(&request.job_id)?)?;
    Ok(pb::GetJobResponse {
        job: Some(convert::job(&view)),
    })
}

/// ListJobs: one page, newest first, of at most `page_size` jobs (0 or above
/// [`convert::MAX_PAGE_SIZE`]: that many) that also fits into `[api] max_message_bytes`; the
/// page ends early, with a token, at the first job that would not fit (a first job larger than
/// the limit is still sent, and fails as it would in GetJob).
pub fn list_jobs(
    shared: &Shared,
    request: &pb::ListJobsRequest,
) -> Result<pb::ListJobsResponse, ApiError> {
    let jobs = manager(shared)?;
    let epoch = jobs.list_epoch();
    let before = convert::page_token(&request.page_token, epoch)?;
    let limit = convert::page_size(request.page_size);
    // One more than the page, to know whether another page follows.
    let views = jobs.list_page(request.active_only, before, limit + 1);
    // Room for the token and the response's own framing.
    let budget = shared.max_message_bytes.saturating_sub(64);
    let mut used = 0;
    let mut page = Vec::new();
    let mut last = None;
    for (seq, view) in views.iter().take(limit) {
        let job = convert::job(view);
        let size = prost::encoding::message::encoded_len(1, &job);
        if !page.is_empty() && used + size > budget {
            break;
        }
        used += size;
        page.push(job);
        last = Some(*seq);
    }
    let more = views.len() > page.len();
    let next_page_token = match last {
        Some(seq) if more => convert::next_page_token(epoch, seq),
        _ => String::new(),
    };
    Ok(pb::ListJobsResponse {
        jobs: page,
        next_page_token,
    })
}

/// Followers of both logs from their current ends.
fn followers_at_end(jobs: &JobManager, id: &str) -> Result<Vec<LogFollower>, JobError> {
    let (out, err) = jobs.log_paths(id)?;
    let len = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    Ok(vec![
        LogFollower::new(out.clone(), Stream::Stdout, len(&out)),
        LogFollower::new(err.clone(), Stream::Stderr, len(&err)),
    ])
}

/// New complete lines of every follower (with `flush`, also the incomplete last ones).
fn poll_all(followers: &mut [LogFollower], flush: bool) -> Vec<logs::Line> {
    let mut out = Vec::new();
    for follower in followers {
        match follower.poll() {
            Ok(lines) => out.extend(lines),
            Err(err) => tracing::debug!(error = %err, "log poll failed"),
        }
        if flush {
            out.extend(follower.flush());
        }
    }
    out
}

/// WatchJob.
pub fn watch_job(
    shared: &Shared,
    request: pb::WatchJobRequest,
) -> Result<ResponseStream<pb::WatchJobResponse>, ApiError> {
    use pb::watch_job_response::Event;
    let jobs = manager(shared)?;
    let (view, mut events) = jobs.subscribe(job_id(&request.job_id)?)?;
    let mut followers = if request.logs {
        followers_at_end(&jobs, &request.job_id)?
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let send = |event: Event| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(pb::WatchJobResponse { event: Some(event) }))
                    .await
                    .is_ok()
            }
        };
        let mut ended = !view.record.state.is_active();
        if !send(Event::Job(convert::job(&view))).await || ended {
            return;
        }
        let mut poll = tokio::time::interval(LOG_POLL);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(JobEvent::Changed(view)) => {
                        ended = !view.record.state.is_active();
                        if ended {
                            for line in poll_all(&mut followers, true) {
                                if !send(Event::Log(convert::log_line(line))).await {
                                    return;
                                }
                            }
                        }
                        if !send(Event::Job(convert::job(&view))).await || ended {
                            return;
                        }
                    }
                    Ok(JobEvent::Telemetry(sample, usage)) => {
                        let msg = Event::Telemetry(pb::JobTelemetry {
                            sample: Some(convert::sample(&sample)),
                            usage: Some(convert::usage(&usage)),
                        });
                        if !send(msg).await {
                            return;
                        }
                    }
                    // A slow reader skips events; the next state/sample is complete.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = poll.tick(), if !followers.is_empty() => {
                    for line in poll_all(&mut followers, false) {
                        if !send(Event::Log(convert::log_line(line))).await {
                            return;
                        }
                    }
                }
                () = tx.closed() => return,
                () = shutting_down(shutdown.clone()) => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// JobLogs.
pub fn job_logs(
    shared: &Shared,
    request: pb::JobLogsRequest,
) -> Result<ResponseStream<pb::JobLogsResponse>, ApiError> {
    let jobs = manager(shared)?;
    let n = convert::tail_lines(request.tail_lines)?;
    let (out, err) = jobs.log_paths(job_id(&request.job_id)?)?;
    let io = |e: std::io::Error| ApiError::Internal(format!("cannot read the job's logs: {e}"));
    let (mut lines, out_end) = logs::tail(&out, Stream::Stdout, n).map_err(io)?;
    let (err_lines, err_end) = logs::tail(&err, Stream::Stderr, n).map_err(io)?;
    lines.extend(err_lines);
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let shutdown = shared.shutdown.clone();
    let id = request.job_id.clone();
    tokio::spawn(async move {
        let send = |line: logs::Line| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(pb::JobLogsResponse {
                    log: Some(convert::log_line(line)),
                }))
                .await
                .is_ok()
            }
        };
        for line in lines {
            if !send(line).await {
                return;
            }
        }
        if !request.follow {
            return;
        }
        let mut followers = vec![
            LogFollower::new(out, Stream::Stdout, out_end),
            LogFollower::new(err, Stream::Stderr, err_end),
        ];
        let mut poll = tokio::time::interval(LOG_POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let ended = jobs.get(&id).map_or(true, |v| !v.record.state.is_active());
                    for line in poll_all(&mut followers, ended) {
                        if !send(line).await {
                            return;
                        }
                    }
                    if ended {
                        return;
                    }
                }
                () = tx.closed() => return,
                () = shutting_down(shutdown.clone()) => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The image store, or UNIMPLEMENTED in an agent without one.
fn image_store(shared: &Shared) -> Result<std::sync::Arc<crate::image::ImageStore>, ApiError> {
    shared
        .images
        .clone()
        .ok_or_else(|| ApiError::Unimplemented("images are not enabled in this agent".into()))
}

/// Tells the capacity ledger what the stored images take now (after an import or a removal;
/// a store that cannot be listed is logged and leaves the last figure).
async fn publish_image_bytes(shared: &Shared) {
    let Some(store) = shared.images.clone() else {
        return;
    };
    let capacity = shared.capacity.clone();
    let counted = blocking("image store size", move || {
        store
            .stored_bytes()
            .map(|bytes| capacity.set_image_bytes(bytes))
            .map_err(|err| ApiError::Internal(crate::inventory::error_chain(&err)))
    })
    .await;
    if let Err(err) = counted {
        tracing::warn!(error = %err, "cannot size the image store for the disk capacity");
    }
}

/// ImportImage: a layout dir on this host into the image store (blocking pool). The import
/// stops (and leaves nothing behind) when this request's future is dropped, which happens when
/// the client goes away or the request's deadline passes (`[api] request_timeout_millis`, or
/// the client's shorter `grpc-timeout`), and when the agent shuts down.
pub async fn import_image(
    shared: &Shared,
    request: pb::ImportImageRequest,
) -> Result<pb::ImportImageResponse, ApiError> {
    use crate::image::{ImageError, ImportCancel};
    let store = image_store(shared)?;
    if !request.layout_dir.starts_with('/') {
        return Err(ApiError::invalid(
            "layout_dir",
            format!("{:?} must be an absolute path", request.layout_dir),
        ));
    }
    if let Some(jobs) = &shared.jobs {
        // Not while the state filesystem is below its floor (RESOURCE_EXHAUSTED naming it).
        jobs.check_state_floor()?;
    }
    let reference = (!request.reference.is_empty()).then(|| request.reference.clone());
    let dir = std::path::PathBuf::from(&request.layout_dir);
    let cancel = ImportCancel::new();
    let _cancel_when_dropped = cancel.cancel_on_drop();
    let import = {
        let cancel = cancel.clone();
        blocking("image import", move || {
            store
                .import_cancellable(&dir, reference.as_deref(), &cancel)
                .map_err(|err| match err {
                    ImageError::BadReference { .. } => image_error("reference", err),
                    _ => image_error("layout_dir", err),
                })
        })
    };
    let record = tokio::select! {
        record = import => record?,
        () = shutting_down(shared.shutdown.clone()) => {
            cancel.cancel();
            return Err(ApiError::Unavailable("image import cancelled: the agent is shutting down".into()));
        }
    };
    tracing::info!(reference = %record.reference, digest = %record.manifest_digest, "image imported");
    publish_image_bytes(shared).await;
    Ok(pb::ImportImageResponse {
        image: Some(image(record)),
    })
}

/// PullImage: a producer task runs the pull (cancelled when the client goes away or the agent
/// shuts down) and streams its progress (the latest state each time it changes), then the image;
/// after the pull, garbage collection keeps the store within `[images] max_bytes`.
pub fn pull_image(
    shared: &Shared,
    request: pb::PullImageRequest,
) -> Result<ResponseStream<pb::PullImageResponse>, ApiError> {
    use crate::image::pull::{self, Credentials, PullProgress};
    use crate::image::ImportCancel;
    let store = image_store(shared)?;
    if request.reference.is_empty() {
        return Err(ApiError::invalid("reference", "empty"));
    }
    if request.username.is_empty() && !request.password.is_empty() {
        return Err(ApiError::invalid("username", "empty while password is set"));
    }
    if let Some(jobs) = &shared.jobs {
        jobs.check_state_floor()?;
    }
    let credentials = (!request.username.is_empty()).then_some(Credentials {
        username: request.username,
        password: request.password,
    });
    let policy = shared.pull_policy.clone();
    let jobs = shared.jobs.clone();
    let shutdown = shared.shutdown.clone();
    let capacity = shared.capacity.clone();
    let reference = request.reference;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(async move {
        let (progress, mut watch) = tokio::sync::watch::channel(PullProgress::default());
        let cancel = ImportCancel::new();
        let _cancel_when_done = cancel.cancel_on_drop();
        let pulling = pull::pull(
            &store,
            &policy,
            &reference,
            credentials.as_ref(),
            &progress,
            &cancel,
        );
        tokio::pin!(pulling);
        let result = loop {
            tokio::select! {
                result = &mut pulling => break result,
                changed = watch.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now = watch.borrow_and_update().clone();
                    // A full queue skips a progress message; the next one says more.
                    let _ = tx.try_send(Ok(pb::PullImageResponse {
                        event: Some(pb::pull_image_response::Event::Progress(pull_progress(&now))),
                    }));
                }
                () = tx.closed() => return,
                () = shutting_down(shutdown.clone()) => {
                    cancel.cancel();
                    let _ = tx.send(Err(ApiError::Unavailable("image pull cancelled: the agent is shutting down".into()).into())).await;
                    return;
                }
            }
        };
        let answer = match result {
            Ok(record) => {
                let digest = record.manifest_digest.clone();
                let gc_store = store.clone();
                let max_bytes = policy.max_store_bytes;
                let collected = tokio::task::spawn_blocking(move || {
                    collect_garbage(&gc_store, jobs.as_deref(), max_bytes, &digest)
                })
                .await;
                if let Ok(Err(err)) = collected {
                    tracing::warn!(error = %crate::inventory::error_chain(&err), "image garbage collection failed");
                }
                if let Ok(bytes) = store.stored_bytes() {
                    capacity.set_image_bytes(bytes);
                }
                Ok(pb::PullImageResponse {
                    event: Some(pb::pull_image_response::Event::Image(image(record))),
                })
            }
            Err(err) => Err(image_error("reference", err).into()),
        };
        let _ = tx.send(answer).await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

fn pull_progress(p: &crate::image::pull::PullProgress) -> pb::PullProgress {
    pb::PullProgress {
        phase: p.phase.to_owned(),
        layers_total: p.layers_total,
        layers_done: p.layers_done,
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        bytes_cached: p.bytes_cached,
    }
}

/// Garbage collection after a pull (never the image just pulled): images go through the job
/// runner's removal, which refuses those an active job runs.
pub(crate) fn collect_garbage(
    store: &crate::image::ImageStore,
    jobs: Option<&JobManager>,
    max_bytes: u64,
    keep: &str,
) -> Result<crate::image::GcReport, crate::image::ImageError> {
    let report = store.collect_garbage(max_bytes, Some(keep), &mut |digest| match jobs {
        Some(jobs) => jobs.remove_image(digest),
        None => store.remove(digest, |_| Ok(())).inspect(|removed| {
            if let Some(removed) = removed {
                removed.delete_trash();
            }
        }),
    })?;
    if !report.removed.is_empty() || !report.kept_in_use.is_empty() {
        tracing::info!(removed = ?report.removed, kept_in_use = ?report.kept_in_use, bytes_after = report.bytes_after, "image garbage collection");
    }
    Ok(report)
}

fn image(record: crate::image::ImageRecord) -> pb::Image {
    pb::Image {
        reference: record.reference,
        manifest_digest: record.manifest_digest,
        size_bytes: record.size_bytes,
        imported_at: Some(prost_types::Timestamp::from(
            std::time::UNIX_EPOCH + Duration::from_secs(record.imported_at_unix),
        )),
    }
}

/// RemoveImage: through the job runner, which refuses while an active job runs the image
/// (blocking pool: deleting a rootfs takes a while).
pub async fn remove_image(
    shared: &Shared,
    request: pb::RemoveImageRequest,
) -> Result<pb::RemoveImageResponse, ApiError> {
    use crate::image::ImageError;
    let store = image_store(shared)?;
    if request.name.is_empty() {
        return Err(ApiError::invalid(
            "name",
            "empty (give a reference or a sha256: digest)",
        ));
    }
    let jobs = shared.jobs.clone();
    let name = request.name.clone();
    let removed = blocking("image removal", move || {
        match jobs {
            Some(jobs) => jobs.remove_image(&name),
            // No job runner: nothing can run an image.
            None => store.remove(&name, |_| Ok(())).inspect(|removed| {
                if let Some(removed) = removed {
                    removed.delete_trash();
                }
            }),
        }
        .map_err(|err| match err {
            ImageError::InUse { .. } | ImageError::BadReference { .. } => image_error("name", err),
            other => ApiError::Internal(crate::inventory::error_chain(&other)),
        })
    })
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("name: no image {:?}", request.name)))?;
    publish_image_bytes(shared).await;
    Ok(pb::RemoveImageResponse {
        rootfs_removed: removed.trash.is_some(),
        removed_references: removed.references,
        image: Some(image(removed.record)),
    })
}
