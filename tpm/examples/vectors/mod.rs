//! The output tree both conformance generators write: `cases/` (emptied first), the two trust
//! anchors under `anchors/`, pretty JSON files ending in a newline, and `manifest.json`.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

/// A conformance vector directory being written.
pub struct VectorDir {
    root: PathBuf,
}

impl VectorDir {
    /// `root` with its old `cases/` removed and the anchors of swtpm A and B written.
    pub fn reset(root: PathBuf, anchors_a: &[u8], anchors_b: &[u8]) -> Self {
        let cases = root.join("cases");
        if cases.exists() {
            std::fs::remove_dir_all(&cases).unwrap();
        }
        let dir = Self { root };
        dir.write("anchors/swtpm-a.pem", anchors_a);
        dir.write("anchors/swtpm-b.pem", anchors_b);
        dir
    }

    /// Writes `bytes` at `relative` (its directories created).
    pub fn write(&self, relative: &str, bytes: &[u8]) {
        let path = self.root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Writes `value` as pretty JSON ending in a newline at `relative`.
    pub fn write_json(&self, relative: &str, value: &impl Serialize) {
        let mut text = serde_json::to_vec_pretty(value).unwrap();
        text.push(b'\n');
        self.write(relative, &text);
    }

    /// Writes `manifest.json` (`format` and `cases`) and says how many cases went where.
    pub fn finish(&self, format: &str, cases: Vec<Value>) {
        let count = cases.len();
        self.write_json("manifest.json", &json!({"format": format, "cases": cases}));
        println!("{count} cases written to {}", self.root.display());
    }
}
