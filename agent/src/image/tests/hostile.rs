//! Hostile images: special files, setuid bits, decompression bombs, cancelled imports.

use super::*;

/// Runs `f` on its own thread and waits at most `secs` for it: a call that blocks forever fails
/// the test instead of hanging it.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s (blocked)"))
}

#[test]
fn a_fifo_in_a_layer_is_created_and_never_opened() {
    let fx = Fixture::new();
    fx.push(&[
        dir("run/"),
        TestEntry::Fifo {
            path: "run/pipe".to_owned(),
        },
    ]);
    let (fx, record) = within(20, "importing a layer with a FIFO", move || {
        let record = fx.import();
        (fx, record)
    });
    let record = record.unwrap();
    let meta = fs::symlink_metadata(record.rootfs.join("run/pipe")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()),
        "{meta:?}"
    );
    assert_eq!(meta.mode() & 0o7777, 0o644);
    assert_eq!(meta.mtime(), 1_700_000_000, "its mtime is the entry's");
    // The store is free again: a second import and a removal go through.
    let again = within(20, "a second import", move || {
        let again = fx.store().import(&fx.layout, Some("again:1"));
        (fx, again)
    });
    let (fx, again) = again;
    assert_eq!(again.unwrap().manifest_digest, record.manifest_digest);
    let removed = fx.store().remove("again:1", |_| Ok(())).unwrap().unwrap();
    assert!(removed.trash.is_none(), "busybox:latest still points at it");
}

#[test]
fn a_fifo_in_place_of_a_layout_file_is_refused_without_blocking() {
    use std::ffi::CString;
    let mkfifo = |path: &Path| {
        fs::remove_file(path).unwrap();
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    let fx = Fixture::new();
    mkfifo(&fx.layout.join("oci-layout"));
    let (fx, err) = within(
        20,
        "importing a layout whose oci-layout is a FIFO",
        move || {
            let err = fx.import().unwrap_err();
            (fx, err)
        },
    );
    assert!(err.to_string().contains("oci-layout"), "{err}");
    fx.assert_store_empty();

    let fx = Fixture::new();
    let manifest = testing::manifest_of(&fx.layout, "busybox:latest").unwrap();
    mkfifo(&testing::blob_path(&fx.layout, manifest.config()));
    let (fx, err) = within(
        20,
        "importing a layout whose config blob is a FIFO",
        move || {
            let err = fx.import().unwrap_err();
            (fx, err)
        },
    );
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(cause.as_deref(), Some("not a regular file"), "{err}");
    fx.assert_store_empty();
}

#[test]
fn no_privilege_comes_from_an_image() {
    let fx = Fixture::new();
    // A vfs_cap_data v2 granting cap_setuid, as `setcap cap_setuid+ep` writes it.
    let capability = vec![
        0x01, 0x00, 0x00, 0x02, 0x80, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    fx.push(&[
        dir("opt/"),
        TestEntry::File {
            path: "opt/suid".to_owned(),
            contents: b"#!/bin/sh\n".to_vec(),
            mode: 0o4755,
        },
        TestEntry::File {
            path: "opt/sgid".to_owned(),
            contents: b"#!/bin/sh\n".to_vec(),
            mode: 0o2755,
        },
        TestEntry::DirWithMode {
            path: "opt/shared/".to_owned(),
            mode: 0o2775,
        },
        TestEntry::FileWithXattr {
            path: "opt/capable".to_owned(),
            contents: b"#!/bin/sh\n".to_vec(),
            mode: 0o755,
            name: "security.capability".to_owned(),
            value: capability,
        },
    ]);
    let record = fx.import().unwrap();
    let mode = |p: &str| fs::symlink_metadata(record.rootfs.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("opt/suid"), 0o755, "setuid dropped");
    assert_eq!(mode("opt/sgid"), 0o755, "setgid dropped");
    assert_eq!(mode("opt/shared"), 0o2775, "a directory's setgid stays");
    assert_eq!(mode("opt/capable"), 0o755);
    let path = std::ffi::CString::new(
        record
            .rootfs
            .join("opt/capable")
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1, "no file capability is written");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
}

fn limited(
    limits: ImportLimits,
) -> impl Fn(&Fixture) -> Result<crate::image::ImageRecord, ImageError> {
    move |fx: &Fixture| fx.store().with_limits(limits).import(&fx.layout, None)
}

#[test]
fn a_decompression_bomb_stops_at_max_unpacked_bytes() {
    let fx = Fixture::new();
    testing::push_zeros_layer(&fx.layout, "busybox:latest", "zeros", 64 << 20).unwrap();
    let (bomb, _) = fx.layer_blob(1);
    assert!(fs::metadata(&bomb).unwrap().len() < 1 << 20, "a small blob");
    let limits = ImportLimits {
        max_unpacked_bytes: 16 << 20,
        ..ImportLimits::default()
    };
    let err = limited(limits)(&fx).unwrap_err();
    match &err {
        ImageError::OverLimit { key, max, .. } => {
            assert_eq!((*key, *max), ("max_unpacked_bytes", 16 << 20));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("images.max_unpacked_bytes"),
        "{err}"
    );
    fx.assert_store_empty();
    // Under a cap that fits, the same image imports.
    let limits = ImportLimits {
        max_unpacked_bytes: 128 << 20,
        ..ImportLimits::default()
    };
    let record = limited(limits)(&fx).unwrap();
    assert_eq!(
        fs::metadata(record.rootfs.join("zeros")).unwrap().len(),
        64 << 20
    );
}

#[test]
fn an_image_past_max_entries_stops() {
    let fx = Fixture::new();
    let entries: Vec<TestEntry> = (0..100).map(|i| file(&format!("f{i}"), "x")).collect();
    fx.push(&entries);
    let limits = ImportLimits {
        max_entries: 120,
        ..ImportLimits::default()
    };
    let err = limited(limits)(&fx).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::OverLimit {
                key: "max_entries",
                max: 120,
                ..
            }
        ),
        "{err:?}"
    );
    fx.assert_store_empty();
}

#[test]
fn an_import_that_would_not_leave_min_free_bytes_is_refused_before_unpacking() {
    let fx = Fixture::new();
    let limits = ImportLimits {
        min_free_bytes: u64::MAX / 2,
        ..ImportLimits::default()
    };
    let err = limited(limits)(&fx).unwrap_err();
    assert!(matches!(err, ImageError::NoSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("state.min_free_bytes"), "{err}");
    fx.assert_store_empty();
}

#[test]
fn a_cancelled_import_stops_and_leaves_nothing() {
    let fx = Fixture::new();
    let cancel = ImportCancel::new();
    cancel.cancel();
    let err = fx
        .store()
        .import_cancellable(&fx.layout, None, &cancel)
        .unwrap_err();
    assert!(matches!(err, ImageError::Cancelled), "{err:?}");
    fx.assert_store_empty();
}

#[test]
fn an_import_waiting_for_the_store_lock_stops_when_cancelled() {
    let fx = Fixture::new();
    let lock = testing::hold_store_lock(&fx.state).unwrap();
    let cancel = ImportCancel::new();
    let waiting = {
        let cancel = cancel.clone();
        let (layout, store) = (fx.layout.clone(), fx.store());
        std::thread::spawn(move || store.import_cancellable(&layout, None, &cancel))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "waits while another import holds the store"
    );
    let guard = cancel.cancel_on_drop();
    drop(guard);
    let err = within(10, "a cancelled import", move || waiting.join().unwrap()).unwrap_err();
    assert!(matches!(err, ImageError::Cancelled), "{err:?}");
    drop(lock);
    fx.assert_store_empty();
}

#[test]
fn an_import_cancelled_while_it_unpacks_stops_between_chunks() {
    let fx = Fixture::new();
    testing::push_zeros_layer(&fx.layout, "busybox:latest", "zeros", 1 << 30).unwrap();
    let cancel = ImportCancel::new();
    let running = {
        let cancel = cancel.clone();
        let (layout, store) = (fx.layout.clone(), fx.store());
        std::thread::spawn(move || store.import_cancellable(&layout, None, &cancel))
    };
    // Cancel once the big file is being written.
    let images = fx.state.join("images");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let writing = || {
        fs::read_dir(&images).ok().is_some_and(|dir| {
            dir.filter_map(Result::ok)
                .any(|e| e.path().join("rootfs/zeros").exists())
        })
    };
    while !writing() && !running.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    cancel.cancel();
    let err = within(20, "a cancelled import", move || running.join().unwrap()).unwrap_err();
    assert!(matches!(err, ImageError::Cancelled), "{err:?}");
    fx.assert_store_empty();
}
