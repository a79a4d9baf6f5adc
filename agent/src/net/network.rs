//! [`JobNetworks`]: what the job runner asks of the network. A job is attached before its
//! container starts (a namespace, loopback up, the configuration list's ADD, its
//! `resolv.conf` and `hosts`) and detached when it ends (DEL, the namespace removed, its host
//! ports released). Everything an attachment needs to be undone is cached in
//! `<run_dir>/cache/<job id>.json` *before* the ADD (the list, the capability arguments, then
//! the result), so a detach works after a crash at any point, and [`JobNetworks::reconcile`]
//! detaches whatever no active job owns after a restart.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::cni::{self, ConfList};
use super::conflist;
use super::dns::{self, Resolvers};
use super::firewall;
use super::netns;
use super::ports::PortAllocator;
use super::{Attachment, NetError, NetworkRequest, Protocol, PublishedPort};
use crate::config::CniNetwork;

/// The job's interface name inside its namespace.
pub const IFNAME: &str = "eth0";
/// A job's resolver configuration, in its job dir (bind-mounted at `/etc/resolv.conf`).
pub const RESOLV_CONF: &str = "resolv.conf";
/// A job's hosts file, in its job dir (bind-mounted at `/etc/hosts`).
pub const HOSTS: &str = "hosts";

/// What a detach needs, cached per job.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    /// The configuration list the job was attached with.
    list: Value,
    /// The capability arguments it was given.
    runtime_config: Map<String, Value>,
    /// The ADD result, once there is one.
    result: Option<Value>,
}

/// The CNI network jobs are attached to.
#[derive(Debug)]
pub struct JobNetworks {
    config: CniNetwork,
    list: ConfList,
    resolvers: Resolvers,
    ports: PortAllocator,
    publish_address: Option<IpAddr>,
    /// Whether [`Self::prepare`] succeeded.
    prepared: Mutex<bool>,
}

impl JobNetworks {
    /// Loads the configuration list (an operator's list that does not parse is an error now;
    /// the plugins and the host are checked by [`Self::prepare`], when a job first needs them).
    pub fn open(config: &CniNetwork) -> Result<Self, NetError> {
        let list = conflist::load(config)?;
        let resolvers = Resolvers::for_jobs(&config.dns);
        if resolvers.servers.is_empty() {
            tracing::warn!("jobs have no DNS resolver: the host has only loopback ones; set [jobs.network] dns");
        }
        Ok(Self {
            config: config.clone(),
            list,
            resolvers,
            ports: PortAllocator::new(config.port_range),
            publish_address: config.publish_address.or_else(default_route_address),
            prepared: Mutex::new(false),
        })
    }

    /// Makes the host ready for jobs' networks, once per agent run (again after a failure):
    /// every plugin of the list (and `loopback`) present, the run dirs made, the isolation rules
    /// installed. An agent that runs no job never touches the host's network.
    pub fn prepare(&self) -> Result<(), NetError> {
        let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        if *prepared {
            return Ok(());
        }
        for plugin in self.list.plugin_types().chain(["loopback"]) {
            if !self.config.plugin_dir.join(plugin).is_file() {
                return Err(NetError::Config {
                    source_name: self.list.name.clone(),
                    message: format!(
                        "plugin {plugin:?} is not in {} (install containernetworking-plugins, or set [jobs] network = \"none\")",
                        self.config.plugin_dir.display()
                    ),
                });
            }
        }
        for dir in [
            netns_dir(&self.config.run_dir),
            cache_dir(&self.config.run_dir),
        ] {
            std::fs::create_dir_all(&dir).map_err(|error| NetError::Io { path: dir, error })?;
        }
        firewall::install(&self.config, &self.resolvers.servers)?;
        *prepared = true;
        Ok(())
    }

    /// The namespace file of job `id`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        netns_dir(&self.config.run_dir).join(id)
    }

    /// Takes free host ports for `wanted` (all or none).
    pub fn allocate_ports(&self, wanted: &[(u16, Protocol)]) -> Result<Vec<u16>, NetError> {
        self.ports.allocate(wanted)
    }

    /// Gives back ports [`Self::allocate_ports`] gave for `wanted`.
    pub fn release_ports(&self, wanted: &[(u16, Protocol)], host_ports: &[u16]) {
        self.ports.release(
            host_ports
                .iter()
                .zip(wanted)
                .map(|(&port, &(_, protocol))| (port, protocol)),
        );
    }

    /// Attaches job `id` (see the module doc) with the host ports allocated for it, writing
    /// its `resolv.conf` and `hosts` into `job_dir`. On failure nothing of it is left and its
    /// ports are released.
    pub fn attach(
        &self,
        id: &str,
        request: &NetworkRequest,
        host_ports: &[u16],
        job_dir: &Path,
    ) -> Result<Attachment, NetError> {
        if self.has_traces(id) {
            tracing::warn!(job = %id, "detaching a network no record owned");
            // Best effort: the create below fails if the namespace is still there.
            if let Err(err) = self.detach(id, None) {
                tracing::warn!(job = %id, error = %err, "cannot detach the stale network");
            }
        }
        let attached = self.attach_with_ports(id, request, host_ports, job_dir);
        if attached.is_err() {
            if let Err(err) = self.detach(id, None) {
                tracing::warn!(job = %id, error = %err, "cannot undo a failed network attach");
            }
            self.release_ports(&request.ports, host_ports);
        }
        attached
    }

    fn attach_with_ports(
        &self,
        id: &str,
        request: &NetworkRequest,
        host_ports: &[u16],
        job_dir: &Path,
    ) -> Result<Attachment, NetError> {
        self.prepare()?;
        let netns = self.netns_path(id);
        netns::create(&netns)?;
        let no_capabilities = Map::new();
        cni::add(
            &conflist::loopback(),
            &self.at(id, &netns, "lo", &no_capabilities),
        )?;
        let runtime_config = runtime_config(request, host_ports);
        let mut cached = Cached {
            list: self.list.to_json(),
            runtime_config,
            result: None,
        };
        self.write_cache(id, &cached)?;
        let result = cni::add(
            &self.list,
            &self.at(id, &netns, IFNAME, &cached.runtime_config),
        )?;
        cached.result = Some(result.clone());
        self.write_cache(id, &cached)?;
        let addresses = addresses(&result);
        let ips: Vec<IpAddr> = addresses
            .iter()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        write_file(&job_dir.join(RESOLV_CONF), &self.resolvers.resolv_conf())?;
        write_file(&job_dir.join(HOSTS), &dns::hosts(id, &ips))?;
        Ok(Attachment {
            netns,
            addresses,
            host_interface: host_interface(&result).unwrap_or_default(),
            ports: request
                .ports
                .iter()
                .zip(host_ports)
                .map(|(&(container_port, protocol), &host_port)| PublishedPort {
                    container_port,
                    protocol,
                    host_port,
                    host_address: self.publish_address,
                })
                .collect(),
            ingress_bits_per_second: request.ingress_bits_per_second,
            egress_bits_per_second: request.egress_bits_per_second,
        })
    }

    /// Whether anything of job `id`'s network is on the host (its namespace or its cache).
    pub fn has_traces(&self, id: &str) -> bool {
        self.netns_path(id).exists() || self.cache_path(id).exists()
    }

    /// Detaches job `id`: DEL with what its cache says (or the current list when there is no
    /// cache), the namespace removed, the cache removed, and the ports of `attachment`
    /// released. Every step runs; the first failure is returned.
    pub fn detach(&self, id: &str, attachment: Option<&Attachment>) -> Result<(), NetError> {
        let netns = self.netns_path(id);
        let cached = self.read_cache(id);
        let (list, runtime_config, result) = match cached {
            Some(c) => match ConfList::parse("(cached)", &c.list.to_string()) {
                Ok(list) => (list, c.runtime_config, c.result),
                Err(_) => (self.list.clone(), c.runtime_config, c.result),
            },
            None => (self.list.clone(), Map::new(), None),
        };
        let deleted = cni::del(
            &list,
            &self.at(id, &netns, IFNAME, &runtime_config),
            result.as_ref(),
        );
        let removed = netns::remove(&netns);
        let cache = self.cache_path(id);
        let uncached = match std::fs::remove_file(&cache) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(NetError::Io { path: cache, error })
            }
            _ => Ok(()),
        };
        if let Some(attachment) = attachment {
            self.ports
                .release(attachment.ports.iter().map(|p| (p.host_port, p.protocol)));
        }
        deleted.and(removed).and(uncached)
    }

    /// After a restart: holds the ports of the jobs still active, and detaches every
    /// namespace or cache no active job owns.
    pub fn reconcile<'a>(
        &self,
        active: impl IntoIterator<Item = (&'a str, Option<&'a Attachment>)>,
    ) {
        let mut owned = BTreeSet::new();
        let mut attached = false;
        for (id, attachment) in active {
            owned.insert(id.to_owned());
            if let Some(attachment) = attachment {
                attached = true;
                self.ports
                    .hold(attachment.ports.iter().map(|p| (p.host_port, p.protocol)));
            }
        }
        let mut found = BTreeSet::new();
        for dir in [
            netns_dir(&self.config.run_dir),
            cache_dir(&self.config.run_dir),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                found.insert(name.strip_suffix(".json").unwrap_or(&name).to_owned());
            }
        }
        if attached {
            if let Err(err) = self.prepare() {
                tracing::error!(error = %err, "cannot prepare the host for jobs' networks");
            }
        }
        for id in found.difference(&owned) {
            tracing::warn!(job = %id, "detaching a job network no active job owns");
            if let Err(err) = self.detach(id, None) {
                tracing::warn!(job = %id, error = %err, "cannot detach a leftover job network");
            }
        }
    }

    fn at<'a>(
        &'a self,
        id: &'a str,
        netns: &'a Path,
        ifname: &'a str,
        runtime_config: &'a Map<String, Value>,
    ) -> cni::Attachment<'a> {
        cni::Attachment {
            plugin_dir: &self.config.plugin_dir,
            container_id: id,
            netns,
            ifname,
            runtime_config,
        }
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        cache_dir(&self.config.run_dir).join(format!("{id}.json"))
    }

    fn write_cache(&self, id: &str, cached: &Cached) -> Result<(), NetError> {
        let text = serde_json::to_string(cached).unwrap_or_default();
        write_file(&self.cache_path(id), &text)
    }

    fn read_cache(&self, id: &str) -> Option<Cached> {
        let text = std::fs::read_to_string(self.cache_path(id)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The capability arguments of a request: `portMappings` and `bandwidth` (rates and bursts
/// in bits; the burst is a tenth of a second of the rate, at least two full-size frames).
fn runtime_config(request: &NetworkRequest, host_ports: &[u16]) -> Map<String, Value> {
    let mut config = Map::new();
    if !request.ports.is_empty() {
        let mappings: Vec<Value> = request
            .ports
            .iter()
            .zip(host_ports)
            .map(|(&(container_port, protocol), &host_port)| {
                json!({
                    "hostPort": host_port,
                    "containerPort": container_port,
                    "protocol": protocol.name(),
                })
            })
            .collect();
        config.insert("portMappings".into(), mappings.into());
    }
    let burst = |rate: u64| (rate / 10).max(2 * 1514 * 8);
    let mut bandwidth = Map::new();
    for (direction, rate) in [
        ("ingress", request.ingress_bits_per_second),
        ("egress", request.egress_bits_per_second),
    ] {
        if rate > 0 {
            bandwidth.insert(format!("{direction}Rate"), rate.into());
            bandwidth.insert(format!("{direction}Burst"), burst(rate).into());
        }
    }
    if !bandwidth.is_empty() {
        config.insert("bandwidth".into(), Value::Object(bandwidth));
    }
    config
}

/// The addresses (with prefix) of an ADD result.
fn addresses(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str().map(str::to_owned))
        .collect()
}

/// The host side of the job's link: in a result's `interfaces`, the host interface (no
/// `sandbox`) listed right before the first one in the job's namespace (bridge: `[bridge,
/// veth, eth0]`; ptp: `[veth, eth0]`).
fn host_interface(result: &Value) -> Option<String> {
    let interfaces = result.get("interfaces")?.as_array()?;
    let first_inside = interfaces.iter().position(|i| {
        i.get("sandbox")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    })?;
    let host = interfaces.get(first_inside.checked_sub(1)?)?;
    host.get("name")?.as_str().map(str::to_owned)
}

/// The first address of the interface holding the default IPv4 route (`/proc/net/route`).
fn default_route_address() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let interface = routes.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let name = fields.next()?;
        (fields.next()? == "00000000").then(|| name.to_owned())
    })?;
    let networks = sysinfo::Networks::new_with_refreshed_list().ok()?;
    let address = (&networks)
        .into_iter()
        .find(|(name, _)| name.as_os_str() == interface.as_str())?
        .1
        .ip_networks()
        .iter()
        .map(|net| net.addr)
        .find(IpAddr::is_ipv4);
    address
}

fn netns_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("netns")
}

fn cache_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("cache")
}

fn write_file(path: &Path, text: &str) -> Result<(), NetError> {
    std::fs::write(path, text).map_err(|error| NetError::Io {
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_arguments_of_a_request() {
        let request = NetworkRequest {
            ports: vec![(80, Protocol::Tcp), (53, Protocol::Udp)],
            ingress_bits_per_second: 10_000_000,
            egress_bits_per_second: 0,
        };
        let config = runtime_config(&request, &[30000, 30001]);
        assert_eq!(
            Value::Object(config),
            json!({
                "portMappings": [
                    {"hostPort": 30000, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 30001, "containerPort": 53, "protocol": "udp"},
                ],
                "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000},
            })
        );
        assert!(runtime_config(&NetworkRequest::default(), &[]).is_empty());
    }

    #[test]
    fn what_a_bridge_result_says() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "fog0", "mac": "aa"},
                {"name": "veth1234", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"},
            ],
            "ips": [
                {"interface": 2, "address": "10.89.0.2/16", "gateway": "10.89.0.1"},
                {"interface": 2, "address": "fdf0::2/64"},
            ],
        });
        assert_eq!(host_interface(&result).as_deref(), Some("veth1234"));
        assert_eq!(addresses(&result), ["10.89.0.2/16", "fdf0::2/64"]);
        assert_eq!(host_interface(&json!({"interfaces": []})), None);
    }
}
