//! Image store tests on layouts written by [`super::testing`] (busybox from `busybox-static`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::image::MediaType;

use super::testing::{self, LayerFormat, TestEntry};
use super::{ImageError, ImageStore, ImportCancel, ImportLimits};

struct Fixture {
    _tmp: tempfile::TempDir,
    layout: PathBuf,
    state: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let state = tmp.path().join("state");
        testing::busybox_layout(&layout, "busybox:latest").unwrap();
        Fixture {
            _tmp: tmp,
            layout,
            state,
        }
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(&self.state).unwrap()
    }

    fn push(&self, entries: &[TestEntry]) {
        testing::push_layer(&self.layout, "busybox:latest", entries).unwrap();
    }

    fn import(&self) -> Result<super::ImageRecord, ImageError> {
        self.store().import(&self.layout, None)
    }

    /// Nothing but the lock and (maybe) refs in the store: a failed import left nothing.
    fn assert_store_empty(&self) {
        let names: Vec<String> = fs::read_dir(self.state.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != ".lock" && n != "refs.json")
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
        assert!(self.store().list().unwrap().is_empty());
    }

    fn layer_blob(&self, index: usize) -> (PathBuf, String) {
        let manifest = testing::manifest_of(&self.layout, "busybox:latest").unwrap();
        let desc = &manifest.layers()[index];
        (
            testing::blob_path(&self.layout, desc),
            desc.digest().to_string(),
        )
    }
}

fn file(path: &str, contents: &str) -> TestEntry {
    TestEntry::File {
        path: path.to_owned(),
        contents: contents.as_bytes().to_vec(),
        mode: 0o644,
    }
}

fn dir(path: &str) -> TestEntry {
    TestEntry::Dir {
        path: path.to_owned(),
    }
}

fn symlink(path: &str, target: &str) -> TestEntry {
    TestEntry::Symlink {
        path: path.to_owned(),
        target: target.to_owned(),
    }
}

fn whiteout(path: &str) -> TestEntry {
    TestEntry::Whiteout {
        path: path.to_owned(),
    }
}

fn exists(path: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(path).is_ok()
}

#[test]
fn busybox_imports_with_its_tree_and_config() {
    let fx = Fixture::new();
    let record = fx.import().unwrap();
    assert_eq!(record.reference, "busybox:latest");
    let desc = testing::manifest_descriptor(&fx.layout, "busybox:latest").unwrap();
    assert_eq!(record.manifest_digest, desc.digest().to_string());
    let hex = desc.digest().digest().to_owned();
    assert_eq!(
        record.rootfs,
        std::path::absolute(&fx.state)
            .unwrap()
            .join("images")
            .join(&hex)
            .join("rootfs")
    );
    let rootfs = &record.rootfs;
    let busybox = fs::read(testing::BUSYBOX).unwrap();
    assert_eq!(fs::read(rootfs.join("bin/busybox")).unwrap(), busybox);
    let meta = fs::metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let tmp = fs::metadata(rootfs.join("tmp")).unwrap();
    assert!(tmp.is_dir());
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(
        fs::metadata(rootfs.join("root"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    assert_eq!(record.config.cmd, vec!["/bin/sh".to_owned()]);
    assert!(record.config.entrypoint.is_empty());
    assert!(record.config.env[0].starts_with("PATH="));
    assert_eq!(record.config.working_dir, None);
    assert_eq!(record.config.user, None);
    // busybox plus passwd and group; symlinks count nothing.
    assert!(record.size_bytes > busybox.len() as u64);
    assert!(record.size_bytes < busybox.len() as u64 + 1024);
    assert!(record.imported_at_unix > 1_700_000_000);

    let store = fx.store();
    assert_eq!(store.get("busybox:latest").unwrap().unwrap(), record);
    assert_eq!(store.get(&record.manifest_digest).unwrap().unwrap(), record);
    assert_eq!(store.get("busybox:other").unwrap(), None);
    assert_eq!(
        store.get(&format!("sha256:{}", "0".repeat(64))).unwrap(),
        None
    );
    assert_eq!(store.get("sha256:../../etc").unwrap(), None);
    assert_eq!(store.list().unwrap(), vec![record]);
}

#[test]
fn re_import_is_idempotent_and_a_second_tag_shares_the_rootfs() {
    let fx = Fixture::new();
    let first = fx.import().unwrap();
    // Mark the rootfs: a re-import must not unpack again.
    fs::write(first.rootfs.join("marker"), "x").unwrap();
    let again = fx.import().unwrap();
    assert_eq!(again, first);
    assert!(first.rootfs.join("marker").exists());
    assert_eq!(fx.store().list().unwrap().len(), 1);

    let other = fx.store().import(&fx.layout, Some("mine:1")).unwrap();
    assert_eq!(other.reference, "mine:1");
    assert_eq!(other.manifest_digest, first.manifest_digest);
    assert_eq!(other.rootfs, first.rootfs);
    let list = fx.store().list().unwrap();
    let names: Vec<&str> = list.iter().map(|r| r.reference.as_str()).collect();
    assert_eq!(names, ["busybox:latest", "mine:1"]);
}

#[test]
fn a_retagged_reference_leaves_the_old_image_listed_by_digest() {
    let fx = Fixture::new();
    let old = fx.import().unwrap();
    fx.push(&[file("etc/motd", "hello\n")]);
    let new = fx.import().unwrap();
    assert_ne!(new.manifest_digest, old.manifest_digest);
    assert_eq!(
        fs::read_to_string(new.rootfs.join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert!(!old.rootfs.join("etc/motd").exists());
    let list = fx.store().list().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].reference, "busybox:latest");
    assert_eq!(list[0].manifest_digest, new.manifest_digest);
    assert_eq!(list[1].reference, old.manifest_digest);
    assert_eq!(
        fx.store()
            .get(&old.manifest_digest)
            .unwrap()
            .unwrap()
            .rootfs,
        old.rootfs
    );
}

#[test]
fn removing_references_and_digests() {
    let fx = Fixture::new();
    let store = fx.store();
    let first = fx.import().unwrap();
    store.import(&fx.layout, Some("mine:1")).unwrap();
    let never = |_: &super::ImageRecord| -> Result<(), String> { panic!("not the last name") };

    // One of two names: only the name goes.
    let removed = store.remove("busybox:latest", never).unwrap().unwrap();
    assert_eq!(removed.references, ["busybox:latest"]);
    assert!(removed.trash.is_none());
    assert!(store.get("busybox:latest").unwrap().is_none());
    assert!(first.rootfs.is_dir());

    // The last name: a refusing check leaves everything as it was.
    let err = store
        .remove("mine:1", |record| {
            assert_eq!(record.manifest_digest, first.manifest_digest);
            Err("active jobs run it: j1".to_owned())
        })
        .unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("j1"), "{err}");
    assert!(store.get("mine:1").unwrap().is_some() && first.rootfs.is_dir());

    // Allowed: the name and the image go; the rootfs is in the trash for the caller.
    let removed = store.remove("mine:1", |_| Ok(())).unwrap().unwrap();
    assert_eq!(removed.record.reference, "mine:1");
    let trash = removed.trash.unwrap();
    assert!(trash.join("rootfs/bin/busybox").exists());
    assert!(!first.rootfs.exists());
    assert!(store.list().unwrap().is_empty());
    assert!(
        store.remove("mine:1", |_| Ok(())).unwrap().is_none(),
        "unknown now"
    );

    // By digest: every name pointing at it at once; and a crashed removal's trash is cleared
    // by the next import.
    fx.import().unwrap();
    store.import(&fx.layout, Some("mine:2")).unwrap();
    let removed = store
        .remove(&first.manifest_digest, |_| Ok(()))
        .unwrap()
        .unwrap();
    assert_eq!(removed.references, ["busybox:latest", "mine:2"]);
    assert!(store.list().unwrap().is_empty());
    fx.import().unwrap();
    assert!(!trash.exists() && !removed.trash.unwrap().exists());
}

#[test]
fn a_layer_digest_mismatch_is_rejected_naming_the_blob() {
    let fx = Fixture::new();
    let (path, digest) = fx.layer_blob(0);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let err = fx.import().unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { digest: d, .. } if *d == digest),
        "{err}"
    );
    assert!(err.to_string().contains(&digest), "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    fx.assert_store_empty();
}

#[test]
fn a_config_or_manifest_digest_mismatch_is_rejected_naming_the_blob() {
    let fx = Fixture::new();
    let manifest = testing::manifest_of(&fx.layout, "busybox:latest").unwrap();
    let config_path = testing::blob_path(&fx.layout, manifest.config());
    let text = fs::read_to_string(&config_path).unwrap();
    fs::write(&config_path, text.replace("/bin/sh", "/bin/zz")).unwrap();
    let err = fx.import().unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "blob {}: digest mismatch",
            manifest.config().digest()
        )),
        "{err}"
    );

    let fx = Fixture::new();
    let manifest = testing::manifest_of(&fx.layout, "busybox:latest").unwrap();
    let desc = testing::manifest_descriptor(&fx.layout, "busybox:latest").unwrap();
    let path = testing::blob_path(&fx.layout, &desc);
    // Same size, other bytes: one hex digit of the config digest changed.
    let text = fs::read_to_string(&path).unwrap();
    let config_hex = manifest.config().digest().digest();
    let first = if config_hex.starts_with('a') {
        "b"
    } else {
        "a"
    };
    let changed = text.replace(config_hex, &format!("{first}{}", &config_hex[1..]));
    assert_eq!(changed.len(), text.len());
    assert_ne!(changed, text);
    fs::write(&path, changed).unwrap();
    let err = fx.import().unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("blob {}: digest mismatch", desc.digest())),
        "{err}"
    );
    fx.assert_store_empty();
}

#[test]
fn a_size_mismatch_is_rejected() {
    let fx = Fixture::new();
    let (path, digest) = fx.layer_blob(0);
    let mut bytes = fs::read(&path).unwrap();
    bytes.push(0);
    fs::write(&path, &bytes).unwrap();
    let err = fx.import().unwrap_err();
    match &err {
        ImageError::SizeMismatch {
            digest: d,
            expected,
            actual,
        } => {
            assert_eq!(*d, digest);
            assert_eq!(*actual, *expected + 1);
        }
        other => panic!("expected a size mismatch, got {other}"),
    }
    assert!(err.to_string().contains("size mismatch"), "{err}");
    fx.assert_store_empty();
}

#[test]
fn a_missing_blob_is_named() {
    let fx = Fixture::new();
    fx.push(&[file("etc/motd", "hi\n")]);
    let (path, digest) = fx.layer_blob(1);
    fs::remove_file(&path).unwrap();
    let err = fx.import().unwrap_err();
    assert!(
        matches!(&err, ImageError::MissingBlob { digest: d, .. } if *d == digest),
        "{err}"
    );
    assert!(err.to_string().contains("is missing"), "{err}");
    fx.assert_store_empty();
}

#[test]
fn unknown_layer_media_types_are_refused() {
    let media = "application/vnd.example.layer+squashfs";
    let fx = Fixture::new();
    testing::rewrite_image(
        &fx.layout,
        "busybox:latest",
        |_| {},
        |layers| {
            layers[0].set_media_type(MediaType::from(media));
        },
    )
    .unwrap();
    let err = fx.import().unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("unsupported media type") && text.contains(media),
        "{text}"
    );
    fx.assert_store_empty();
}

#[test]
fn zstd_layers_are_unpacked_and_their_diff_ids_checked() {
    let fx = Fixture::new();
    testing::push_layer_with(
        &fx.layout,
        "busybox:latest",
        &[file("etc/zstd-motd", "squeezed\n")],
        testing::LayerFormat::Zstd,
    )
    .unwrap();
    let record = fx.import().unwrap();
    assert_eq!(
        fs::read_to_string(record.rootfs.join("etc/zstd-motd")).unwrap(),
        "squeezed\n"
    );

    let fx = Fixture::new();
    testing::push_layer_with(
        &fx.layout,
        "busybox:latest",
        &[file("etc/zstd-motd", "squeezed\n")],
        testing::LayerFormat::Zstd,
    )
    .unwrap();
    let wrong = format!("sha256:{}", "cd".repeat(32));
    testing::rewrite_image(
        &fx.layout,
        "busybox:latest",
        |config| *config.rootfs_mut().diff_ids_mut().last_mut().unwrap() = wrong.clone(),
        |_| {},
    )
    .unwrap();
    let err = fx.import().unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    fx.assert_store_empty();
}

#[test]
fn a_diff_id_mismatch_is_rejected() {
    let fx = Fixture::new();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    testing::rewrite_image(
        &fx.layout,
        "busybox:latest",
        |config| config.rootfs_mut().diff_ids_mut()[0] = wrong.clone(),
        |_| {},
    )
    .unwrap();
    let err = fx.import().unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&wrong), "{err}");
    fx.assert_store_empty();
}

#[test]
fn whiteouts_delete_lower_entries_and_opaque_dirs_empty_them() {
    let fx = Fixture::new();
    fx.push(&[
        dir("a/"),
        file("a/keep", "keep"),
        file("a/gone", "gone"),
        dir("d/"),
        file("d/old", "old"),
        dir("d/sub/"),
        file("d/sub/old2", "old2"),
        dir("e/"),
        file("e/old", "old"),
        dir("e/sub/"),
        file("e/sub/old", "old"),
    ]);
    fx.push(&[
        whiteout("a/gone"),
        whiteout("bin/ls"),
        whiteout("no/such/thing"),
        TestEntry::OpaqueDir {
            path: "d".to_owned(),
        },
        file("d/new", "new"),
        // The opaque marker after entries of its own layer: those stay.
        dir("e/sub/"),
        file("e/sub/new", "new"),
        file("e/new", "new"),
        TestEntry::OpaqueDir {
            path: "e".to_owned(),
        },
    ]);
    let rootfs = fx.import().unwrap().rootfs;
    assert_eq!(fs::read_to_string(rootfs.join("a/keep")).unwrap(), "keep");
    assert!(!exists(rootfs.join("a/gone")));
    assert!(!exists(rootfs.join("a/.wh.gone")));
    assert!(!exists(rootfs.join("bin/ls")));
    assert!(exists(rootfs.join("bin/cat")));
    assert!(!exists(rootfs.join("no")), "a whiteout creates nothing");
    assert!(!exists(rootfs.join("d/old")));
    assert!(!exists(rootfs.join("d/sub")));
    assert!(!exists(rootfs.join("d/.wh..wh..opq")));
    assert_eq!(fs::read_to_string(rootfs.join("d/new")).unwrap(), "new");
    assert!(!exists(rootfs.join("e/old")));
    assert!(!exists(rootfs.join("e/sub/old")));
    assert_eq!(fs::read_to_string(rootfs.join("e/new")).unwrap(), "new");
    assert_eq!(fs::read_to_string(rootfs.join("e/sub/new")).unwrap(), "new");
}

#[test]
fn upper_layers_replace_lower_entries_of_another_type() {
    let fx = Fixture::new();
    fx.push(&[
        file("x", "file"),
        dir("y/"),
        file("y/inner", "inner"),
        symlink("z", "/bin"),
    ]);
    fx.push(&[
        dir("x/"),
        file("y", "now a file"),
        file("z", "not through the link"),
    ]);
    let rootfs = fx.import().unwrap().rootfs;
    assert!(fs::symlink_metadata(rootfs.join("x")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(rootfs.join("y")).unwrap(), "now a file");
    let z = fs::symlink_metadata(rootfs.join("z")).unwrap();
    assert!(z.is_file());
    assert!(rootfs.join("bin/busybox").exists());
}

#[test]
fn modes_hardlinks_and_uncompressed_layers_are_preserved() {
    let fx = Fixture::new();
    testing::push_layer_with(
        &fx.layout,
        "busybox:latest",
        &[
            dir("opt/"),
            TestEntry::File {
                path: "opt/suid".to_owned(),
                contents: b"#!/bin/sh\n".to_vec(),
                mode: 0o4755,
            },
            TestEntry::Hardlink {
                path: "opt/link".to_owned(),
                target: "opt/suid".to_owned(),
            },
            TestEntry::Hardlink {
                path: "opt/sh".to_owned(),
                target: "bin/busybox".to_owned(),
            },
            TestEntry::DirWithMode {
                path: "opt/private/".to_owned(),
                mode: 0o750,
            },
        ],
        LayerFormat::Tar,
    )
    .unwrap();
    let record = fx.import().unwrap();
    let rootfs = &record.rootfs;
    let suid = fs::metadata(rootfs.join("opt/suid")).unwrap();
    // Setuid is dropped (see no_privilege_comes_from_an_image).
    assert_eq!(suid.permissions().mode() & 0o7777, 0o755);
    let link = fs::metadata(rootfs.join("opt/link")).unwrap();
    assert_eq!((link.dev(), link.ino()), (suid.dev(), suid.ino()));
    assert_eq!(link.nlink(), 2);
    let sh = fs::metadata(rootfs.join("opt/sh")).unwrap();
    let busybox = fs::metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!(sh.ino(), busybox.ino());
    assert_eq!(
        fs::metadata(rootfs.join("opt/private"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
    // The hard link to busybox is counted once.
    assert!(record.size_bytes < 2 * busybox.len());
}

/// Imports a layout with one extra hostile layer; returns the error.
fn hostile(entries: &[TestEntry]) -> (Fixture, ImageError) {
    let fx = Fixture::new();
    fx.push(entries);
    let err = fx.import().unwrap_err();
    fx.assert_store_empty();
    (fx, err)
}

#[test]
fn path_escapes_are_refused() {
    let (_fx, err) = hostile(&[file("../evil", "x")]);
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    assert!(err.to_string().contains("`..`"), "{err}");

    let (_fx, err) = hostile(&[file("etc/../../evil", "x")]);
    assert!(err.to_string().contains("`..`"), "{err}");

    let (_fx, err) = hostile(&[file("/abs-evil", "x")]);
    assert!(err.to_string().contains("absolute path"), "{err}");

    // A relative symlink that climbs out, then a write through it.
    let (_fx, err) = hostile(&[
        symlink("esc", "../../../../../../../../tmp"),
        file("esc/pwned", "x"),
    ]);
    assert!(err.to_string().contains("leads out of the rootfs"), "{err}");
    assert!(err.to_string().contains("esc/pwned"), "{err}");

    // Same through a chain of two symlinks across layers.
    let fx = Fixture::new();
    fx.push(&[symlink("up", ".."), dir("deep/")]);
    fx.push(&[symlink("deep/up2", "../up"), file("deep/up2/x", "x")]);
    let err = fx.import().unwrap_err();
    assert!(err.to_string().contains("leads out of the rootfs"), "{err}");
    fx.assert_store_empty();

    let (_fx, err) = hostile(&[TestEntry::Hardlink {
        path: "h".to_owned(),
        target: "../../../../etc/passwd".to_owned(),
    }]);
    assert!(err.to_string().contains("hard link target"), "{err}");

    let (_fx, err) = hostile(&[TestEntry::Hardlink {
        path: "h".to_owned(),
        target: "/etc/shadow".to_owned(),
    }]);
    assert!(err.to_string().contains("hard link target"), "{err}");

    let (_fx, err) = hostile(&[TestEntry::CharDevice {
        path: "dev/mem".to_owned(),
        major: 1,
        minor: 1,
    }]);
    assert!(err.to_string().contains("device nodes"), "{err}");
}

#[test]
fn absolute_symlinks_resolve_inside_the_rootfs() {
    let host_dir = tempfile::tempdir().unwrap();
    let host_dir_str = host_dir.path().to_str().unwrap().to_owned();
    let host_file = host_dir.path().join("precious");
    fs::write(&host_file, "host").unwrap();

    let fx = Fixture::new();
    fx.push(&[
        symlink("abs", &host_dir_str),
        symlink("etc/link", host_file.to_str().unwrap()),
    ]);
    fx.push(&[
        file("abs/pwned", "inside"),
        file("etc/link", "replaces the link"),
    ]);
    let rootfs = fx.import().unwrap().rootfs;
    // Written below <rootfs><host dir>, never into the host dir.
    assert!(!host_dir.path().join("pwned").exists());
    let inside = rootfs
        .join(host_dir_str.trim_start_matches('/'))
        .join("pwned");
    assert_eq!(fs::read_to_string(inside).unwrap(), "inside");
    assert_eq!(fs::read_to_string(&host_file).unwrap(), "host");
    assert!(fs::symlink_metadata(rootfs.join("etc/link"))
        .unwrap()
        .is_file());
}

#[test]
fn manifest_choice_and_references() {
    let fx = Fixture::new();
    testing::busybox_layout(&fx.layout, "second").unwrap();
    testing::push_layer(&fx.layout, "second", &[file("etc/second", "2")]).unwrap();
    let err = fx.import().unwrap_err();
    assert!(matches!(err, ImageError::ManifestChoice(_)), "{err}");
    assert!(err.to_string().contains("--tag"), "{err}");

    let store = fx.store();
    let second = store.import(&fx.layout, Some("second")).unwrap();
    assert!(second.rootfs.join("etc/second").exists());
    let first = store.import(&fx.layout, Some("busybox:latest")).unwrap();
    assert!(!first.rootfs.join("etc/second").exists());
    let err = store.import(&fx.layout, Some("third")).unwrap_err();
    assert!(
        err.to_string().contains("none is tagged \"third\""),
        "{err}"
    );

    for bad in ["", "has space", "sha256:abc", "x\ny"] {
        let err = store.import(&fx.layout, Some(bad)).unwrap_err();
        assert!(
            matches!(err, ImageError::BadReference { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn a_directory_that_is_not_a_layout_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("state")).unwrap();
    let err = store.import(tmp.path(), None).unwrap_err();
    assert!(matches!(err, ImageError::NotALayout { .. }), "{err}");
    assert!(err.to_string().contains("no oci-layout file"), "{err}");

    fs::write(
        tmp.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    let err = store.import(tmp.path(), None).unwrap_err();
    assert!(err.to_string().contains("2.0.0"), "{err}");

    fs::write(
        tmp.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(tmp.path().join("index.json"), "{not json").unwrap();
    let err = store.import(tmp.path(), None).unwrap_err();
    assert!(err.to_string().starts_with("index.json:"), "{err}");
}

#[test]
fn a_crashed_import_leaves_a_temp_dir_that_the_next_import_removes() {
    let fx = Fixture::new();
    let store = fx.store();
    let stale = store.dir().join(".tmp-deadbeef-1");
    fs::create_dir_all(stale.join("rootfs/bin")).unwrap();
    store.import(&fx.layout, None).unwrap();
    assert!(!stale.exists());
    assert!(store.list().unwrap().len() == 1);
}

mod hostile;
