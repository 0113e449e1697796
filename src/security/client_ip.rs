//! The client's address: the socket peer, or, when the peer is a trusted proxy, the
//! right-most hop of the forwarding header that is not itself a trusted proxy.
//!
//! Which header the proxies write is configured (`UMS_PROXY_HEADER`): reading one the proxy
//! does not write would hand the choice of address to the client. Every line of a repeated
//! header is one list, in order (RFC 9110 §5.3), so a client's own line cannot stand in
//! front of the proxy's. Blocks and limits count an IPv6 client by its /64, the block a
//! single subscriber is usually given.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The forwarding header the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, HAProxy, most load balancers).
    XForwardedFor,
    /// `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
}

impl ProxyHeader {
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Some(ProxyHeader::XForwardedFor),
            "forwarded" => Some(ProxyHeader::Forwarded),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ProxyHeader::XForwardedFor => "x-forwarded-for",
            ProxyHeader::Forwarded => "forwarded",
        }
    }
}

/// One hop of a forwarding header: an address, or something that is not one (`unknown`, an
/// obfuscated identifier, garbage), which ends the part of the chain that can be trusted.
fn hops(headers: &HeaderMap, header: ProxyHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for line in headers.get_all(header.name()) {
        let Ok(line) = line.to_str() else {
            hops.push(None);
            continue;
        };
        for element in line.split(',') {
            hops.push(match header {
                ProxyHeader::XForwardedFor => element.trim().parse().ok(),
                ProxyHeader::Forwarded => forwarded_for(element),
            });
        }
    }
    hops
}

/// The `for=` address of one RFC 7239 element, without quotes, brackets or port.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    // IPv4 with an optional port.
    value.split(':').next()?.parse().ok()
}

pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    header: ProxyHeader,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    for hop in hops(headers, header).into_iter().rev() {
        let Some(ip) = hop else {
            return nearest;
        };
        nearest = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    nearest
}

/// The key blocks and rate limits count a client under: its IPv4 address, or the /64 of its
/// IPv6 address (one subscriber's share; counting single addresses would let it rotate
/// through 2^64 of them).
pub fn limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                line.parse().unwrap(),
            );
        }
        headers
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let forwarded = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(
            client_ip(
                ip("203.0.113.9"),
                &forwarded,
                ProxyHeader::XForwardedFor,
                &[]
            ),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_hands_over_the_right_most_untrusted_hop() {
        let x = ProxyHeader::XForwardedFor;
        let chain = headers("x-forwarded-for", &["1.2.3.4, 198.51.100.7, 10.0.0.3"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &chain, x, &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), x, &trusted()),
            ip("10.0.0.2")
        );
        let garbage = headers("x-forwarded-for", &["garbage"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &garbage, x, &trusted()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn every_line_of_a_repeated_header_is_one_list() {
        // The client's own line comes first; the proxy appended its line after it.
        let lines = headers("x-forwarded-for", &["6.6.6.6", "198.51.100.7"]);
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &lines,
                ProxyHeader::XForwardedFor,
                &trusted()
            ),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_configured_and_only_then() {
        let lines = headers(
            "forwarded",
            &[
                "for=6.6.6.6",
                "for=\"[2001:db8::17]:4711\";proto=https, For=10.0.0.3",
            ],
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &lines, ProxyHeader::Forwarded, &trusted()),
            ip("2001:db8::17")
        );
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &lines,
                ProxyHeader::XForwardedFor,
                &trusted()
            ),
            ip("10.0.0.2"),
            "a header the proxy does not write is ignored"
        );
        let obfuscated = headers("forwarded", &["for=198.51.100.7:80, for=_hidden"]);
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &obfuscated,
                ProxyHeader::Forwarded,
                &trusted()
            ),
            ip("10.0.0.2")
        );
        let unknown = headers("forwarded", &["for=unknown"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &unknown, ProxyHeader::Forwarded, &trusted()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            limit_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(limit_key(ip("198.51.100.7")), "198.51.100.7");
        assert_eq!(limit_key(ip("::ffff:198.51.100.7")), "198.51.100.7");
    }
}
