//! The agent's nftables table (`inet fog_agent`) that isolates jobs. Packets a job sends
//! (in from the jobs' bridge) may not reach:
//!
//! - the host itself (any of its addresses: the `input` hook);
//! - other jobs (bridged packets pass the `forward` hook through `br_netfilter`, which is
//!   why `net.bridge.bridge-nf-call-ip{,6}tables` are set);
//! - link-local and cloud metadata (169.254.0.0/16, fe80::/10, fd00:ec2::254), RFC 1918,
//!   RFC 4193, CGNAT 100.64.0.0/10, loopback, multicast and the jobs' own subnets;
//!
//! except the ranges the operator allows (`[jobs.network] allow`) and the jobs' resolvers on
//! port 53. Replies of connections made to a job (published ports) pass. A refused packet is
//! answered at once: TCP with a reset, anything else with ICMP administratively prohibited,
//! so a job sees "connection refused" or "no route", never a timeout. Everything else (the
//! internet) is forwarded, and masqueraded by the bridge plugin.
//!
//! The table is replaced whole and atomically (`nft -f`) once per agent run, before the first
//! job is attached (or when a restarted agent finds jobs attached); other tables (the CNI
//! plugins' iptables-nft ones, the operator's) are left alone. It stays when the agent stops:
//! jobs outlive an agent restart.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::NetError;
use crate::config::CniNetwork;

/// The table's name (family `inet`).
pub const TABLE: &str = "fog_agent";

/// IPv4 ranges jobs may not reach (besides the host and their own subnet).
const DENIED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
];
/// IPv6 ranges jobs may not reach (besides the host and their own subnet). fd00:ec2::254 (the
/// cloud metadata service) is in fc00::/7.
const DENIED_V6: &[&str] = &[
    "::1/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// The ruleset (see the module doc) for a network and its jobs' resolvers.
pub fn ruleset(config: &CniNetwork, resolvers: &[IpAddr]) -> String {
    let mut deny: Vec<IpNet> = DENIED_V4
        .iter()
        .chain(DENIED_V6)
        .filter_map(|net| net.parse().ok())
        .collect();
    deny.push(config.subnet);
    deny.extend(config.subnet6);
    let resolvers: Vec<IpNet> = resolvers.iter().map(|&a| IpNet::from(a)).collect();
    let bridge = &config.bridge;
    format!(
        "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  set deny4 {{ type ipv4_addr; flags interval; auto-merge;{deny4} }}
  set deny6 {{ type ipv6_addr; flags interval; auto-merge;{deny6} }}
  set allow4 {{ type ipv4_addr; flags interval; auto-merge;{allow4} }}
  set allow6 {{ type ipv6_addr; flags interval; auto-merge;{allow6} }}
  set dns4 {{ type ipv4_addr; flags interval; auto-merge;{dns4} }}
  set dns6 {{ type ipv6_addr; flags interval; auto-merge;{dns6} }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname \"{bridge}\" jump from_job
  }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname \"{bridge}\" jump to_host
  }}
  chain from_job {{
    ct state established,related accept
    jump allowed
    ip daddr @deny4 jump refuse
    ip6 daddr @deny6 jump refuse
  }}
  chain to_host {{
    ct state established,related accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept
    jump allowed
    jump refuse
  }}
  chain allowed {{
    ip daddr @dns4 meta l4proto {{ tcp, udp }} th dport 53 accept
    ip6 daddr @dns6 meta l4proto {{ tcp, udp }} th dport 53 accept
    ip daddr @allow4 accept
    ip6 daddr @allow6 accept
  }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }}
}}
",
        deny4 = elements(&deny, true),
        deny6 = elements(&deny, false),
        allow4 = elements(&config.allow, true),
        allow6 = elements(&config.allow, false),
        dns4 = elements(&resolvers, true),
        dns6 = elements(&resolvers, false),
    )
}

/// ` elements = { a, b };` for the nets of one family, or nothing.
fn elements(nets: &[IpNet], v4: bool) -> String {
    let listed: Vec<String> = nets
        .iter()
        .filter(|net| matches!(net, IpNet::V4(_)) == v4)
        .map(|net| net.trunc().to_string())
        .collect();
    if listed.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", listed.join(", "))
    }
}

/// Installs the ruleset (replacing the table) and turns on the bridge's netfilter calls.
pub fn install(config: &CniNetwork, resolvers: &[IpAddr]) -> Result<(), NetError> {
    bridge_netfilter()?;
    apply(&ruleset(config, resolvers))
}

/// Runs `nft -f -` with `rules`.
fn apply(rules: &str) -> Result<(), NetError> {
    let fail = |message: String| NetError::Firewall(message);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run nft (install nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| fail(format!("cannot write the rules to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot wait for nft: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "nft refused the rules ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Bridged packets pass the IP hooks (so jobs on one bridge can be kept apart):
/// `br_netfilter` loaded and its calls on, in this network namespace.
fn bridge_netfilter() -> Result<(), NetError> {
    const SYSCTLS: [&str; 2] = [
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    ];
    if !std::path::Path::new(SYSCTLS[0]).exists() {
        // Loaded on demand where it is a module; a failure shows in the check below.
        let _ = Command::new("modprobe")
            .arg("br_netfilter")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for sysctl in SYSCTLS {
        std::fs::write(sysctl, "1").map_err(|e| {
            NetError::Firewall(format!(
                "cannot set {sysctl} ({e}): jobs could reach each other without br_netfilter"
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_names_the_bridge_ranges_and_resolvers() {
        let config = CniNetwork {
            allow: vec![
                "192.168.1.10/32".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
            ..CniNetwork::default()
        };
        let rules = ruleset(&config, &["192.168.1.1".parse().unwrap()]);
        assert!(rules.contains("iifname \"fog0\" jump from_job"), "{rules}");
        assert!(rules.contains("set allow4 { type ipv4_addr; flags interval; auto-merge; elements = { 192.168.1.10/32 }; }"), "{rules}");
        assert!(rules.contains("elements = { 2001:db8::/64 };"), "{rules}");
        assert!(rules.contains("set dns4 { type ipv4_addr; flags interval; auto-merge; elements = { 192.168.1.1/32 }; }"), "{rules}");
        assert!(
            rules.contains("set dns6 { type ipv6_addr; flags interval; auto-merge; }"),
            "{rules}"
        );
        assert!(
            rules.contains("10.89.0.0/16") && rules.contains("fdf0:9a6e:7b1c::/64"),
            "{rules}"
        );
    }

    #[test]
    fn nft_accepts_the_ruleset() {
        // `nft -c` checks a ruleset against the kernel without applying it (needs root).
        let rules = ruleset(&CniNetwork::default(), &["198.51.100.53".parse().unwrap()]);
        let checked = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(rules.as_bytes())?;
                child.wait_with_output()
            });
        match checked {
            Err(e) => eprintln!("skipped: cannot run nft ({e})"),
            Ok(out) => assert!(
                out.status.success(),
                "{}\n{rules}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}
