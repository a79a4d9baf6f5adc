//! CNI 1.0 plugin invocation (the runtime's side of the CNI specification): a network
//! configuration list is applied by running each plugin in order for ADD, each getting the
//! previous one's result, and in reverse order for DEL, with the cached ADD result.
//!
//! A plugin is `<plugin_dir>/<type>`, run with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` (and an empty `CNI_ARGS`), its configuration (the
//! list's `cniVersion` and `name`, `prevResult`, and the `runtimeConfig` entries its
//! `capabilities` ask for) on stdin; it answers a result or a CNI error on stdout. A plugin that
//! runs past [`PLUGIN_TIMEOUT`] is killed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::NetError;

/// The CNI version the agent speaks.
pub const CNI_VERSION: &str = "1.0.0";
/// Longest a plugin may run.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest result a plugin may print.
const MAX_OUTPUT: u64 = 1 << 20;

/// A network configuration list (`.conflist`), checked enough to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// The plugins' configurations, each with a `type`.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Parses a configuration list; `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, NetError> {
        let bad = |message: String| NetError::Config {
            source_name: source.to_owned(),
            message,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let field = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("{key}: a string is required")))
        };
        let cni_version = field("cniVersion")?;
        let name = field("name")?;
        let plugins = value
            .get("plugins")
            .and_then(Value::as_array)
            .filter(|plugins| !plugins.is_empty())
            .ok_or_else(|| bad("plugins: a non-empty list is required".to_owned()))?;
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, plugin)| {
                let plugin = plugin
                    .as_object()
                    .ok_or_else(|| bad(format!("plugins[{i}]: an object is required")))?;
                match plugin.get("type").and_then(Value::as_str) {
                    Some(t) if is_plugin_name(t) => Ok(plugin.clone()),
                    _ => Err(bad(format!(
                        "plugins[{i}].type: a plugin file name is required"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cni_version,
            name,
            plugins,
        })
    }

    /// The list as JSON (how it is cached with a job's result).
    pub fn to_json(&self) -> Value {
        json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    /// The plugins' types, in order.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
    }
}

/// A plugin type is a file name in the plugin dir, never a path.
fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with('.')
}

/// What one attachment is: the container, its namespace, the interface name, and the
/// runtime's capability arguments (`portMappings`, `bandwidth`).
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// Where the plugins are (`CNI_PATH`).
    pub plugin_dir: &'a Path,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// Capability arguments by capability name.
    pub runtime_config: &'a Map<String, Value>,
}

/// ADD: runs the list's plugins in order; returns the last result. On a failure the plugins
/// that succeeded are undone (DEL, in reverse) before the error is returned.
pub fn add(list: &ConfList, at: &Attachment<'_>) -> Result<Value, NetError> {
    let mut prev: Option<Value> = None;
    for (i, plugin) in list.plugins.iter().enumerate() {
        match run(list, plugin, "ADD", at, prev.as_ref()) {
            Ok(result) => prev = Some(result),
            Err(err) => {
                let applied = ConfList {
                    plugins: list.plugins[..i].to_vec(),
                    ..list.clone()
                };
                if let Err(undo) = del(&applied, at, prev.as_ref()) {
                    tracing::warn!(container = at.container_id, error = %undo, "cannot undo a failed CNI ADD");
                }
                return Err(err);
            }
        }
    }
    prev.ok_or_else(|| NetError::Config {
        source_name: list.name.clone(),
        message: "no plugins".to_owned(),
    })
}

/// DEL: runs the list's plugins in reverse order with the ADD result (when known), every one
/// of them even when one fails; returns the first failure.
pub fn del(list: &ConfList, at: &Attachment<'_>, result: Option<&Value>) -> Result<(), NetError> {
    let mut first_error = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(err) = run(list, plugin, "DEL", at, result) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A plugin's configuration for one invocation.
fn plugin_config(
    list: &ConfList,
    plugin: &Map<String, Value>,
    runtime_config: &Map<String, Value>,
    prev: Option<&Value>,
) -> Value {
    let mut config = plugin.clone();
    config.insert("cniVersion".into(), list.cni_version.clone().into());
    config.insert("name".into(), list.name.clone().into());
    if let Some(prev) = prev {
        config.insert("prevResult".into(), prev.clone());
    }
    let wanted: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            runtime_config
                .iter()
                .filter(|(name, _)| caps.get(*name) == Some(&Value::Bool(true)))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    if !wanted.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    Value::Object(config)
}

/// Runs one plugin; its result for ADD, `Null` for DEL.
fn run(
    list: &ConfList,
    plugin: &Map<String, Value>,
    command: &'static str,
    at: &Attachment<'_>,
    prev: Option<&Value>,
) -> Result<Value, NetError> {
    let kind = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let failed = |message: String| NetError::Plugin {
        command,
        plugin: kind.clone(),
        message,
    };
    let config = plugin_config(list, plugin, at.runtime_config, prev);
    let stdin = serde_json::to_vec(&config).map_err(|e| failed(e.to_string()))?;
    let exe: PathBuf = at.plugin_dir.join(&kind);
    let (status, stdout, stderr) = exec(&exe, command, at, &stdin).map_err(failed)?;
    if !status.success() {
        return Err(failed(error_message(&stdout, &stderr, status)));
    }
    if command != "ADD" {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&stdout)
        .map_err(|e| failed(format!("its result is not JSON ({e}): {}", tail(&stdout))))
}

/// Runs `exe` with the CNI environment and `stdin`; its status, stdout and stderr.
fn exec(
    exe: &Path,
    command: &str,
    at: &Attachment<'_>,
    stdin: &[u8],
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>), String> {
    let mut child = Command::new(exe)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", at.container_id)
        .env("CNI_NETNS", at.netns)
        .env("CNI_IFNAME", at.ifname)
        .env("CNI_ARGS", "")
        .env("CNI_PATH", at.plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    // Output is read on threads so a chatty plugin never blocks on a full pipe.
    let out = read_on_thread(child.stdout.take());
    let err = read_on_thread(child.stderr.take());
    // Written on a thread too, so a plugin that does not read cannot block the agent past
    // the timeout; one that exits without reading its config fails on its own terms.
    let input = child.stdin.take();
    let config = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut input) = input {
            let _ = input.write_all(&config);
        }
    });
    let status = wait_bounded(&mut child, PLUGIN_TIMEOUT);
    // Ignored: the writer ends once the plugin has (its pipe closes).
    let _ = writer.join();
    let status = status?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

fn read_on_thread<R: Read + Send + 'static>(stream: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(stream) = stream {
            // Ignored: what was read before an error is what the plugin said.
            let _ = stream.take(MAX_OUTPUT).read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` at most `timeout`, then kills it.
fn wait_bounded(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(500);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                // Ignored: it may have ended meanwhile; wait reaps it either way.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {} s", timeout.as_secs()));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}

/// The CNI error a failed plugin printed (`msg: details (code N)`), else its stderr.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(error) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = error.get("msg").and_then(Value::as_str) {
            let details = error
                .get("details")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            let code = error.get("code").and_then(Value::as_u64).unwrap_or(0);
            return format!("{msg}{details} (CNI error {code})");
        }
    }
    let said = if stderr.is_empty() { stdout } else { stderr };
    format!("{status}: {}", tail(said))
}

/// The end of a plugin's output, for an error message.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.char_indices().rev().nth(500).map_or(0, |(i, _)| i);
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"n","plugins":[
        {"type":"bridge","bridge":"b0"},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn a_list_is_checked() {
        let list = ConfList::parse("t", LIST).unwrap();
        assert_eq!(
            list.plugin_types().collect::<Vec<_>>(),
            ["bridge", "portmap"]
        );
        for (bad, what) in [
            ("{", "EOF"),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sbin/x"}]}"#,
                "plugins[0].type",
            ),
        ] {
            let err = ConfList::parse("t", bad).unwrap_err().to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }

    #[test]
    fn a_plugin_gets_only_the_capabilities_it_asks_for() {
        let list = ConfList::parse("t", LIST).unwrap();
        let runtime: Map<String, Value> = serde_json::from_str(
            r#"{"portMappings":[{"hostPort":30000,"containerPort":80,"protocol":"tcp"}],
                "bandwidth":{"ingressRate":1000}}"#,
        )
        .unwrap();
        let prev = json!({"cniVersion":"1.0.0"});
        let bridge = plugin_config(&list, &list.plugins[0], &runtime, None);
        assert_eq!(bridge["name"], "n");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("runtimeConfig").is_none());
        assert!(bridge.get("prevResult").is_none());
        let portmap = plugin_config(&list, &list.plugins[1], &runtime, Some(&prev));
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            30000
        );
        assert!(portmap["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(portmap["prevResult"], prev);
    }

    #[test]
    fn a_cni_error_is_reported_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("failing");
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"no luck\",\"details\":\"because\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let list = ConfList::parse(
            "t",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"failing"}]}"#,
        )
        .unwrap();
        let runtime = Map::new();
        let at = Attachment {
            plugin_dir: dir.path(),
            container_id: "c1",
            netns: Path::new("/nonexistent"),
            ifname: "eth0",
            runtime_config: &runtime,
        };
        let err = add(&list, &at).unwrap_err().to_string();
        assert_eq!(
            err,
            "CNI ADD of plugin \"failing\": no luck: because (CNI error 7)"
        );
        let err = run(
            &list,
            &list.plugins[0],
            "ADD",
            &Attachment {
                plugin_dir: Path::new("/nonexistent"),
                ..at
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot run /nonexistent/failing"), "{err}");
    }
}
