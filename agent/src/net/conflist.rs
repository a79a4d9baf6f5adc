//! The network configuration list jobs are attached with: the operator's own
//! (`[jobs.network] conflist`), or the built-in one made from `[jobs.network]`:
//!
//! - `bridge`: a veth per job on the host bridge, the host as gateway, masquerade for egress
//!   (IPv4, and IPv6 when `subnet6` is set), addresses from `host-local` IPAM kept under the
//!   run dir;
//! - `portmap`: published ports (DNAT from host ports, hairpin included);
//! - `bandwidth`: rate limits (tc token buckets on the host veth and an ifb device);
//! - `firewall`: accept rules for the job's addresses in the host's forwarding chains, so a
//!   host whose FORWARD policy drops (Docker's) still forwards jobs' traffic.
//!
//! Loopback is brought up by the `loopback` plugin, outside the list ([`loopback`]).

use std::path::Path;

use serde_json::json;

use super::cni::{ConfList, CNI_VERSION};
use super::NetError;
use crate::config::CniNetwork;

/// The list of `[jobs.network]`: the operator's file, or the built-in one.
pub fn load(config: &CniNetwork) -> Result<ConfList, NetError> {
    if config.conflist.as_os_str().is_empty() {
        return ConfList::parse("(built-in)", &built_in(config).to_string());
    }
    let text = std::fs::read_to_string(&config.conflist).map_err(|error| NetError::Io {
        path: config.conflist.clone(),
        error,
    })?;
    ConfList::parse(&config.conflist.display().to_string(), &text)
}

/// The built-in list (see the module doc).
pub fn built_in(config: &CniNetwork) -> serde_json::Value {
    let mut ranges = vec![json!([{ "subnet": config.subnet.to_string() }])];
    let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
    if let Some(subnet6) = config.subnet6 {
        ranges.push(json!([{ "subnet": subnet6.to_string() }]));
        routes.push(json!({ "dst": "::/0" }));
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": config.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir(&config.run_dir),
                    "ranges": ranges,
                    "routes": routes,
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "bandwidth", "capabilities": { "bandwidth": true } },
            { "type": "firewall" },
        ],
    })
}

/// The list that brings a namespace's loopback up.
pub fn loopback() -> ConfList {
    ConfList {
        cni_version: CNI_VERSION.to_owned(),
        name: "loopback".to_owned(),
        plugins: vec![serde_json::Map::from_iter([(
            "type".to_owned(),
            "loopback".into(),
        )])],
    }
}

/// Where host-local keeps its allocations.
fn ipam_dir(run_dir: &Path) -> String {
    run_dir.join("ipam").display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_list_follows_the_config() {
        let mut config = CniNetwork::default();
        let list = load(&config).unwrap();
        assert_eq!(
            list.plugin_types().collect::<Vec<_>>(),
            ["bridge", "portmap", "bandwidth", "firewall"]
        );
        let bridge = &list.plugins[0];
        assert_eq!(bridge["bridge"], "fog0");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.89.0.0/16");
        assert_eq!(
            bridge["ipam"]["ranges"][1][0]["subnet"],
            "fdf0:9a6e:7b1c::/64"
        );
        assert_eq!(bridge["ipam"]["dataDir"], "/run/fog-agent/net/ipam");
        config.subnet6 = None;
        let list = load(&config).unwrap();
        assert_eq!(
            list.plugins[0]["ipam"]["ranges"].as_array().unwrap().len(),
            1
        );
        assert_eq!(
            list.plugins[0]["ipam"]["routes"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn an_operators_list_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.conflist");
        std::fs::write(
            &path,
            r#"{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        let config = CniNetwork {
            conflist: path.clone(),
            ..CniNetwork::default()
        };
        assert_eq!(load(&config).unwrap().name, "mine");
        std::fs::write(&path, "{}").unwrap();
        let err = load(&config).unwrap_err().to_string();
        assert!(
            err.contains("jobs.conflist") && err.contains("cniVersion"),
            "{err}"
        );
    }
}
