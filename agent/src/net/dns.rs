//! The resolvers jobs use, and the `/etc/resolv.conf` and `/etc/hosts` a job gets.
//!
//! `[jobs.network] dns` when given; otherwise the host's `/etc/resolv.conf` without its
//! loopback resolvers (a job has its own loopback, so `127.0.0.53` would be nobody), and when
//! that leaves none, systemd-resolved's upstream list (`/run/systemd/resolve/resolv.conf`).
//! The isolation rules let jobs reach these resolvers on port 53 even in private ranges.

use std::net::IpAddr;
use std::path::Path;

/// The host's resolver configuration.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's upstream resolvers, when the host uses its stub.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// What a job's `/etc/resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolvers {
    /// Name servers, in order.
    pub servers: Vec<IpAddr>,
    /// The host's `search` domains.
    pub search: Vec<String>,
}

impl Resolvers {
    /// The configured resolvers, or the host's (see the module doc).
    pub fn for_jobs(configured: &[IpAddr]) -> Self {
        Self::choose(
            configured,
            &read(Path::new(HOST_RESOLV_CONF)),
            &read(Path::new(RESOLVED_UPSTREAM)),
        )
    }

    fn choose(configured: &[IpAddr], host: &str, upstream: &str) -> Self {
        let host = parse(host);
        if !configured.is_empty() {
            return Self {
                servers: configured.to_vec(),
                search: host.search,
            };
        }
        if !host.servers.is_empty() {
            return host;
        }
        Self {
            servers: parse(upstream).servers,
            search: host.search,
        }
    }

    /// The text of a job's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        let mut text = String::from("# Written by fog-agent for this job.\n");
        for server in &self.servers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.search.is_empty() {
            text.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        text
    }
}

/// A job's `/etc/hosts`: localhost, and its own name on its addresses.
pub fn hosts(hostname: &str, addresses: &[IpAddr]) -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for address in addresses {
        text.push_str(&format!("{address}\t{hostname}\n"));
    }
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The non-loopback name servers and the search domains of a resolv.conf.
fn parse(text: &str) -> Resolvers {
    let mut resolvers = Resolvers::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scoped IPv6 address (`fe80::1%eth0`) names a host interface: not for jobs.
                if let Some(Ok(server)) = words.next().map(str::parse::<IpAddr>) {
                    if !server.is_loopback() && !server.is_unspecified() {
                        resolvers.servers.push(server);
                    }
                }
            }
            Some("search") | Some("domain") => {
                resolvers.search = words.map(str::to_owned).collect()
            }
            _ => {}
        }
    }
    resolvers
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB: &str = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
    const UPSTREAM: &str = "nameserver 192.168.1.1\nnameserver 2001:db8::53\n";

    #[test]
    fn loopback_resolvers_are_left_out_for_the_upstream_ones() {
        let r = Resolvers::choose(&[], STUB, UPSTREAM);
        assert_eq!(
            r.servers,
            [
                "192.168.1.1".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
        assert_eq!(r.search, ["lan"]);
        let r = Resolvers::choose(&[], "nameserver 198.51.100.53\nnameserver ::1\n", UPSTREAM);
        assert_eq!(r.servers, ["198.51.100.53".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn configured_resolvers_win() {
        let configured = ["203.0.113.53".parse().unwrap()];
        let r = Resolvers::choose(&configured, STUB, UPSTREAM);
        assert_eq!(r.servers, configured);
        assert_eq!(
            r.resolv_conf(),
            "# Written by fog-agent for this job.\nnameserver 203.0.113.53\nsearch lan\n"
        );
    }

    #[test]
    fn no_resolver_at_all_is_an_empty_list() {
        assert!(Resolvers::choose(&[], STUB, "").servers.is_empty());
    }

    #[test]
    fn hosts_names_the_job() {
        let text = hosts("job-1", &["10.89.0.2".parse().unwrap()]);
        assert!(text.ends_with("10.89.0.2\tjob-1\n"), "{text}");
    }
}
