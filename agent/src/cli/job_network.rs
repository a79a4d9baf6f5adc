//! The network side of `fog-agent client job`: the `--publish` and `--ingress-rate` /
//! `--egress-rate` flags (clap value parsers, so a bad value is a usage error naming the flag),
//! and the network part of a job's human line (addresses, published ports, traffic).

use fog_proto::v1 as pb;

use super::render::bytes;

/// A container port to publish: `PORT`, `PORT/tcp` or `PORT/udp` (TCP when not given).
pub fn parse_publish(value: &str) -> Result<pb::PortMapping, String> {
    let (port, protocol) = match value.split_once('/') {
        None => (value, pb::PortProtocol::Tcp),
        Some((port, protocol)) => (port, parse_protocol(protocol)?),
    };
    let container_port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1 to 65535); expected PORT[/tcp|/udp]"))?;
    Ok(pb::PortMapping {
        container_port: u32::from(container_port),
        protocol: protocol.into(),
    })
}

fn parse_protocol(name: &str) -> Result<pb::PortProtocol, String> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" => Ok(pb::PortProtocol::Tcp),
        "udp" => Ok(pb::PortProtocol::Udp),
        _ => Err(format!(
            "{name:?} is not a protocol; expected PORT[/tcp|/udp]"
        )),
    }
}

/// What a rate may look like, for error messages.
const RATE_FORMS: &str = "expected bits per second: an integer, or a number with a suffix k, M, \
                          G or T (x1000 each), optionally followed by \"bit\" (10M, 10Mbit, 1.5G)";

/// A rate in bits per second: `10000`, `10M`, `10Mbit`, `1.5G` (suffixes k, M, G, T are powers
/// of 1000, in either case; `bit` may follow). The result is a whole number of bits per second
/// that fits the API's `int64`.
pub fn parse_rate(value: &str) -> Result<i64, String> {
    let bad = || format!("{value:?}: {RATE_FORMS}");
    let text = value.trim();
    let text = text.strip_suffix("bit").unwrap_or(text);
    let (number, multiplier) = split_si_suffix(text).ok_or_else(bad)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 12 {
        return Err(bad());
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction_value = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u128>().map_err(|_| bad())?
    };
    let whole_value = whole.parse::<u128>().map_err(|_| bad())?;
    let scaled = whole_value
        .checked_mul(multiplier * scale)
        .and_then(|w| w.checked_add(fraction_value * multiplier))
        .ok_or_else(|| format!("{value:?} is too large"))?;
    if scaled % scale != 0 {
        return Err(format!(
            "{value:?} is not a whole number of bits per second"
        ));
    }
    i64::try_from(scaled / scale).map_err(|_| format!("{value:?} is too large"))
}

/// The number before an SI suffix and the suffix's multiplier (1 without one).
fn split_si_suffix(text: &str) -> Option<(&str, u128)> {
    let last = text.chars().last()?;
    let multiplier = match last.to_ascii_lowercase() {
        'k' => 1_000,
        'm' => 1_000_000,
        'g' => 1_000_000_000,
        't' => 1_000_000_000_000,
        _ if last.is_ascii_digit() => return Some((text, 1)),
        _ => return None,
    };
    Some((&text[..text.len() - 1], multiplier))
}

/// A rate in bits per second with an SI prefix: `0 bit/s`, `8 kbit/s`, `1.5 Gbit/s`.
pub fn rate(bits_per_second: u64) -> String {
    const PREFIXES: [&str; 4] = ["k", "M", "G", "T"];
    let mut value = bits_per_second as f64;
    let mut prefix = "";
    for next in PREFIXES {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        prefix = next;
    }
    if prefix.is_empty() || value.fract() < 0.05 {
        format!("{value:.0} {prefix}bit/s")
    } else {
        format!("{value:.1} {prefix}bit/s")
    }
}

/// The network part of a job's human line: its traffic, addresses and published ports
/// (`host_address:host_port -> container_port/proto`); empty for a job without a network.
pub fn job_network(job: &pb::Job) -> String {
    let usage = job.usage.clone().unwrap_or_default();
    let has_traffic = usage.network_receive_bytes > 0 || usage.network_transmit_bytes > 0;
    if job.addresses.is_empty() && job.published_ports.is_empty() && !has_traffic {
        return String::new();
    }
    let mut text = format!(
        " net received {} sent {}",
        bytes(usage.network_receive_bytes),
        bytes(usage.network_transmit_bytes)
    );
    if !job.addresses.is_empty() {
        text.push_str(&format!(" addresses {}", job.addresses.join(", ")));
    }
    if !job.published_ports.is_empty() {
        let ports: Vec<String> = job.published_ports.iter().map(published_port).collect();
        text.push_str(&format!(" ports {}", ports.join(", ")));
    }
    text
}

/// `host_address:host_port -> container_port/proto`; `*` for the host address when the agent
/// reports none (the port is forwarded on every host address), IPv6 in brackets.
fn published_port(port: &pb::PublishedPort) -> String {
    let host = match port.host_address.as_str() {
        "" => "*".to_owned(),
        v6 if v6.contains(':') => format!("[{v6}]"),
        v4 => v4.to_owned(),
    };
    let protocol = pb::PortProtocol::try_from(port.protocol)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("PORT_PROTOCOL_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| port.protocol.to_string());
    format!(
        "{host}:{} -> {}/{protocol}",
        port.host_port, port.container_port
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_takes_a_port_and_an_optional_protocol() {
        let mapping = |port, protocol: pb::PortProtocol| pb::PortMapping {
            container_port: port,
            protocol: protocol.into(),
        };
        assert_eq!(
            parse_publish("8080"),
            Ok(mapping(8080, pb::PortProtocol::Tcp))
        );
        assert_eq!(
            parse_publish("53/udp"),
            Ok(mapping(53, pb::PortProtocol::Udp))
        );
        assert_eq!(
            parse_publish("443/TCP"),
            Ok(mapping(443, pb::PortProtocol::Tcp))
        );
        for bad in ["0", "65536", "http", "", "80/sctp", "80/", "/tcp", "-1"] {
            assert!(parse_publish(bad).is_err(), "{bad:?}");
        }
        assert!(parse_publish("80/sctp")
            .unwrap_err()
            .contains("PORT[/tcp|/udp]"));
    }

    #[test]
    fn rates_are_bits_per_second_with_si_suffixes() {
        for (text, want) in [
            ("0", 0),
            ("8000", 8_000),
            ("8000bit", 8_000),
            ("10k", 10_000),
            ("10K", 10_000),
            ("10M", 10_000_000),
            ("10Mbit", 10_000_000),
            ("10mbit", 10_000_000),
            ("1.5G", 1_500_000_000),
            ("1.5Gbit", 1_500_000_000),
            ("2T", 2_000_000_000_000),
            ("0.001k", 1),
            (" 25G ", 25_000_000_000),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "M",
            "bit",
            "10X",
            "10Mbps",
            "1.5",
            "0.0001k",
            "1e6",
            "-1",
            "10 M",
            "1..5G",
            ".5G",
            "99999999T",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert!(parse_rate("10X").unwrap_err().contains("10Mbit"));
        assert!(parse_rate("99999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn rates_print_with_si_prefixes() {
        assert_eq!(rate(0), "0 bit/s");
        assert_eq!(rate(999), "999 bit/s");
        assert_eq!(rate(8_000), "8 kbit/s");
        assert_eq!(rate(1_500_000_000), "1.5 Gbit/s");
        assert_eq!(rate(25_000_000_000), "25 Gbit/s");
        assert_eq!(rate(10_000_000_000_000), "10 Tbit/s");
    }

    #[test]
    fn a_jobs_network_shows_traffic_addresses_and_ports() {
        let port =
            |host: &str, host_port, container_port, protocol: pb::PortProtocol| pb::PublishedPort {
                container_port,
                protocol: protocol.into(),
                host_address: host.into(),
                host_port,
            };
        let job = pb::Job {
            addresses: vec!["10.89.0.2/16".into(), "fdf0::2/64".into()],
            published_ports: vec![
                port("192.0.2.10", 30000, 80, pb::PortProtocol::Tcp),
                port("2001:db8::1", 30001, 53, pb::PortProtocol::Udp),
                port("", 30002, 8080, pb::PortProtocol::Tcp),
            ],
            usage: Some(pb::JobUsage {
                network_receive_bytes: 1536,
                network_transmit_bytes: 300,
                ..pb::JobUsage::default()
            }),
            ..pb::Job::default()
        };
        assert_eq!(
            job_network(&job),
            " net received 1.5 KiB sent 300 B addresses 10.89.0.2/16, fdf0::2/64 \
             ports 192.0.2.10:30000 -> 80/tcp, [2001:db8::1]:30001 -> 53/udp, \
             *:30002 -> 8080/tcp"
        );
        assert_eq!(job_network(&pb::Job::default()), "", "no network");
    }
}
