//! `fog-agent image import|list` on layouts written by `fog_agent::image::testing` (busybox from
//! `busybox-static`), the imported rootfs run with `chroot`, and interop with the reference
//! tools: a layout rewritten by `skopeo copy` imports, and `umoci unpack` of the same layout
//! gives the same tree as our import.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fog_agent::image::testing::{self, TestEntry};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
        .args(args)
        .output()
        .expect("run fog-agent")
}

fn ok_json(args: &[&str]) -> Value {
    let out = agent(args);
    assert!(
        out.status.success(),
        "fog-agent {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A layout with the busybox layer and a second layer exercising whiteouts, an opaque dir,
/// a hard link and symlinks.
fn rich_layout(dir: &Path, tag: &str) {
    testing::busybox_layout(dir, tag).unwrap();
    let file = |path: &str, contents: &str, mode: u32| TestEntry::File {
        path: path.to_owned(),
        contents: contents.as_bytes().to_vec(),
        mode,
    };
    testing::push_layer(
        dir,
        tag,
        &[
            TestEntry::Dir {
                path: "srv/".to_owned(),
            },
            file("srv/a", "a", 0o644),
            file("srv/b", "b", 0o600),
            TestEntry::Dir {
                path: "srv/d/".to_owned(),
            },
            file("srv/d/lower", "lower", 0o644),
        ],
    )
    .unwrap();
    testing::push_layer(
        dir,
        tag,
        &[
            TestEntry::Whiteout {
                path: "srv/b".to_owned(),
            },
            TestEntry::Whiteout {
                path: "bin/ls".to_owned(),
            },
            TestEntry::OpaqueDir {
                path: "srv/d".to_owned(),
            },
            file("srv/d/upper", "upper", 0o755),
            TestEntry::Hardlink {
                path: "srv/a2".to_owned(),
                target: "srv/a".to_owned(),
            },
            TestEntry::Symlink {
                path: "srv/abs".to_owned(),
                target: "/srv/a".to_owned(),
            },
            file("usr/bin/suid", "#!/bin/sh\n", 0o4755),
        ],
    )
    .unwrap();
}

#[test]
fn import_then_list_then_run_the_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let state = tmp.path().join("state");
    testing::busybox_layout(&layout, "busybox:latest").unwrap();

    let record = ok_json(&[
        "image",
        "import",
        s(&layout),
        "--state-dir",
        s(&state),
        "--json",
    ]);
    assert_eq!(record["reference"], "busybox:latest");
    let digest = record["manifest_digest"].as_str().unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(record["config"]["cmd"][0], "/bin/sh");
    let rootfs = PathBuf::from(record["rootfs"].as_str().unwrap());
    assert!(rootfs.is_absolute());
    assert_eq!(
        fs::read(rootfs.join("bin/busybox")).unwrap(),
        fs::read(testing::BUSYBOX).unwrap()
    );

    // The rootfs runs: busybox sh inside a chroot (we are root).
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "echo hello from $(uname -s); ls /bin | wc -l",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("hello from Linux"));
    let count: usize = lines.next().unwrap().trim().parse().unwrap();
    assert_eq!(count, testing::APPLETS.len() + 1, "applets + busybox");

    // A second tag of the same image; human import line.
    let out = agent(&[
        "image",
        "import",
        s(&layout),
        "--tag",
        "bb:2",
        "--state-dir",
        s(&state),
    ]);
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with("imported bb:2 sha256:"), "{line}");
    assert!(line.contains(&digest[..19]), "{line}");

    let list = ok_json(&["image", "list", "--state-dir", s(&state), "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["reference"], "bb:2");
    assert_eq!(list[1]["reference"], "busybox:latest");
    assert_eq!(list[0]["manifest_digest"], list[1]["manifest_digest"]);

    let out = agent(&["image", "list", "--state-dir", s(&state)]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().map(str::trim).collect();
    assert!(rows[0].starts_with("REFERENCE"), "{table}");
    assert!(rows[2].starts_with("busybox:latest"), "{table}");
    assert!(
        rows[2].contains(&digest[..19]) && rows[2].contains("/bin/sh"),
        "{table}"
    );
}

#[test]
fn errors_exit_1_with_one_line_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let state = tmp.path().join("state");
    testing::busybox_layout(&layout, "busybox:latest").unwrap();
    let manifest = testing::manifest_of(&layout, "busybox:latest").unwrap();
    let layer = &manifest.layers()[0];
    let blob = testing::blob_path(&layout, layer);
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 1;
    fs::write(&blob, bytes).unwrap();

    let out = agent(&["image", "import", s(&layout), "--state-dir", s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fog-agent: cannot import"), "{err}");
    assert!(
        err.contains(&format!("blob {}: digest mismatch", layer.digest())),
        "{err}"
    );
    let list = ok_json(&["image", "list", "--state-dir", s(&state), "--json"]);
    assert_eq!(list, Value::Array(Vec::new()));

    let out = agent(&["image", "import", s(tmp.path()), "--state-dir", s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an OCI image layout"));

    let out = agent(&["image", "import"]);
    assert_eq!(out.status.code(), Some(2));
    let out = agent(&["image", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kind, mode, owner, size/content hash or link target of every path below `root`, plus
/// hard-link groups (paths sharing an inode).
fn tree(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            let desc = if meta.file_type().is_symlink() {
                format!(
                    "link -> {} {owner}",
                    fs::read_link(&path).unwrap().display()
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o} {owner}", meta.mode() & 0o7777)
            } else {
                inodes.entry(meta.ino()).or_default().push(rel.clone());
                let hash = hex::encode(Sha256::digest(fs::read(&path).unwrap()));
                format!(
                    "file {:o} {owner} {} {hash}",
                    meta.mode() & 0o7777,
                    meta.len()
                )
            };
            out.insert(rel, desc);
        }
    }
    let mut groups: Vec<Vec<String>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

#[test]
fn umoci_unpack_gives_the_same_tree_as_our_import() {
    assert!(
        have("umoci"),
        "umoci is missing: packaging/setup-debian.sh --test installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    rich_layout(&layout, "rich");
    let record = ok_json(&[
        "image",
        "import",
        s(&layout),
        "--state-dir",
        s(&tmp.path().join("state")),
        "--json",
    ]);
    let ours = PathBuf::from(record["rootfs"].as_str().unwrap());
    let bundle = tmp.path().join("bundle");
    let out = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:rich", s(&layout)),
            s(&bundle),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut theirs, their_links) = tree(&bundle.join("rootfs"));
    let (mine, my_links) = tree(&ours);
    // The one difference on purpose: we drop setuid (umoci keeps it).
    let suid = theirs.get_mut("usr/bin/suid").unwrap();
    assert!(suid.starts_with("file 4755 "), "{suid}");
    *suid = suid.replacen("file 4755 ", "file 755 ", 1);
    assert!(mine.contains_key("srv/d/upper") && !mine.contains_key("srv/d/lower"));
    assert!(!mine.contains_key("bin/ls") && !mine.contains_key("srv/b"));
    let only_theirs: Vec<_> = theirs
        .iter()
        .filter(|(k, v)| mine.get(*k) != Some(v))
        .collect();
    let only_mine: Vec<_> = mine
        .iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .collect();
    assert!(
        only_theirs.is_empty() && only_mine.is_empty(),
        "umoci has {only_theirs:#?}\nwe have {only_mine:#?}"
    );
    assert_eq!(my_links, their_links);
    assert_eq!(
        my_links,
        vec![vec!["srv/a".to_owned(), "srv/a2".to_owned()]]
    );
}

#[test]
fn a_layout_rewritten_by_skopeo_imports() {
    assert!(
        have("skopeo"),
        "skopeo is missing: packaging/setup-debian.sh --test installs it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    rich_layout(&layout, "rich");
    let copied = tmp.path().join("copied");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            &format!("oci:{}:rich", s(&layout)),
            &format!("oci:{}:copied:1", s(&copied)),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = tmp.path().join("state");
    let ours = ok_json(&[
        "image",
        "import",
        s(&layout),
        "--state-dir",
        s(&state),
        "--json",
    ]);
    let theirs = ok_json(&[
        "image",
        "import",
        s(&copied),
        "--state-dir",
        s(&state),
        "--json",
    ]);
    assert_eq!(theirs["reference"], "copied:1");
    assert_eq!(theirs["config"], ours["config"]);
    let (a, a_links) = tree(Path::new(ours["rootfs"].as_str().unwrap()));
    let (b, b_links) = tree(Path::new(theirs["rootfs"].as_str().unwrap()));
    assert_eq!(a, b);
    assert_eq!(a_links, b_links);
}
