//! `[jobs] network`: how jobs reach the world. Either the string `"none"` (each job has its own
//! network namespace with loopback only) or the `[jobs.network]` table, a CNI network (the
//! default when the key is absent).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `[jobs] network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobNetwork {
    /// `network = "none"`: loopback only.
    None,
    /// `[jobs.network]`: a network namespace per job, attached through CNI plugins.
    Cni(Box<CniNetwork>),
}

impl Default for JobNetwork {
    fn default() -> Self {
        Self::Cni(Box::default())
    }
}

impl JobNetwork {
    /// The CNI network, if jobs have one.
    pub fn cni(&self) -> Option<&CniNetwork> {
        match self {
            Self::None => None,
            Self::Cni(cni) => Some(cni),
        }
    }
}

/// `[jobs.network]`: the CNI network jobs are attached to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniNetwork {
    /// Where the CNI plugin binaries are (`CNI_PATH`).
    pub plugin_dir: PathBuf,
    /// The operator's own network configuration list (CNI 1.0 `.conflist`); empty = the
    /// built-in one made from the keys below (bridge, portmap, bandwidth, firewall).
    pub conflist: PathBuf,
    /// The network's name (the conflist's `name`, the IPAM's allocation namespace).
    pub name: String,
    /// The host bridge of the built-in conflist; the isolation rules key on it.
    pub bridge: String,
    /// The jobs' IPv4 subnet (host-local IPAM; the host is its first address).
    pub subnet: IpNet,
    /// The jobs' IPv6 subnet; `""` = IPv4 only.
    #[serde(deserialize_with = "empty_as_none")]
    pub subnet6: Option<IpNet>,
    /// Host ports published job ports are given from (`first-last`).
    pub port_range: PortRange,
    /// Resolvers written into jobs' `/etc/resolv.conf`; empty = the host's own, loopback ones
    /// left out (then systemd-resolved's upstream list when the host uses its stub).
    pub dns: Vec<IpAddr>,
    /// Ranges jobs may reach even though isolation refuses them (e.g. an operator's proxy).
    pub allow: Vec<IpNet>,
    /// The host address reported with published ports; `""` = the first address of the
    /// interface holding the default route.
    #[serde(deserialize_with = "empty_as_none")]
    pub publish_address: Option<IpAddr>,
    /// Where the agent keeps jobs' network namespaces (`<run_dir>/netns/<job id>`), IPAM
    /// allocations and CNI results; on a tmpfs, so nothing outlives a reboot.
    pub run_dir: PathBuf,
}

impl Default for CniNetwork {
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from("/usr/lib/cni"),
            conflist: PathBuf::new(),
            name: "fog-jobs".to_owned(),
            bridge: "fog0".to_owned(),
            subnet: IpNet::V4("10.89.0.0/16".parse().unwrap_or_default()),
            subnet6: "fdf0:9a6e:7b1c::/64".parse().ok(),
            port_range: PortRange {
                first: 30000,
                last: 32767,
            },
            dns: Vec::new(),
            allow: Vec::new(),
            publish_address: None,
            run_dir: PathBuf::from("/run/fog-agent/net"),
        }
    }
}

/// The keys of `[jobs.network]` (what `CniNetwork`'s derived `Deserialize` reads; a test
/// checks the two agree).
const CNI_FIELDS: &[&str] = &[
    "plugin_dir",
    "conflist",
    "name",
    "bridge",
    "subnet",
    "subnet6",
    "port_range",
    "dns",
    "allow",
    "publish_address",
    "run_dir",
];

impl<'de> Deserialize<'de> for JobNetwork {
    /// `"none"`, `"cni"` (the defaults) or a table. Asked for as a struct, so tools that walk
    /// the config's structs see the table's keys.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("CniNetwork", CNI_FIELDS, JobNetworkVisitor)
    }
}

struct JobNetworkVisitor;

impl<'de> Visitor<'de> for JobNetworkVisitor {
    type Value = JobNetwork;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"none\", \"cni\" or a [jobs.network] table")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<JobNetwork, E> {
        match value {
            "none" => Ok(JobNetwork::None),
            "cni" => Ok(JobNetwork::default()),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<JobNetwork, A::Error> {
        CniNetwork::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(|cni| JobNetwork::Cni(Box::new(cni)))
    }
}

/// A value that may be given as `""` for none.
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(de::Error::custom)
}

/// A range of ports, `first-last` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (at least `first`).
    pub last: u16,
}

impl PortRange {
    /// How many ports it holds.
    pub fn len(&self) -> usize {
        usize::from(self.last) - usize::from(self.first) + 1
    }

    /// Never: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Its ports in order.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (first, last) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} is not first-last"))?;
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("{p:?} is not a port (1 to 65535)")),
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(format!("{first} is after {last}"));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Records the field names a derived `Deserialize` asks for.
    struct FieldNames<'a>(&'a Cell<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    #[test]
    fn the_listed_fields_are_the_derived_ones() {
        let fields = Cell::new(&[][..]);
        assert!(CniNetwork::deserialize(FieldNames(&fields)).is_err());
        assert_eq!(fields.get(), CNI_FIELDS);
    }

    #[test]
    fn none_a_table_or_the_default() {
        #[derive(Deserialize)]
        struct Doc {
            network: JobNetwork,
        }
        let doc: Doc = toml::from_str("network = \"none\"").unwrap();
        assert_eq!(doc.network, JobNetwork::None);
        let doc: Doc = toml::from_str("network = \"cni\"").unwrap();
        assert_eq!(doc.network, JobNetwork::default());
        let doc: Doc =
            toml::from_str("[network]\nbridge = \"br9\"\nsubnet6 = \"fd00::/64\"").unwrap();
        let cni = doc.network.cni().unwrap();
        assert_eq!(cni.bridge, "br9");
        assert_eq!(cni.subnet6, "fd00::/64".parse().ok());
        assert_eq!(cni.subnet, CniNetwork::default().subnet);
        let doc: Doc = toml::from_str("[network]\nsubnet6 = \"\"").unwrap();
        assert_eq!(doc.network.cni().unwrap().subnet6, None);
        let err = toml::from_str::<Doc>("network = \"host\"").err().unwrap();
        assert!(err.to_string().contains("\"none\", \"cni\""), "{err}");
        let err = toml::from_str::<Doc>("[network]\nbrige = \"x\"")
            .err()
            .unwrap();
        assert!(err.to_string().contains("brige"), "{err}");
        let err = toml::from_str::<Doc>("[network]\nsubnet = \"10.0.0.0/99\"")
            .err()
            .unwrap();
        assert!(err.to_string().contains("subnet"), "{err}");
    }

    #[test]
    fn port_ranges() {
        let range: PortRange = "30000-30009".parse().unwrap();
        assert_eq!(range.len(), 10);
        assert_eq!(range.to_string(), "30000-30009");
        for bad in ["30000", "0-10", "10-9", "1-70000", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }
}
