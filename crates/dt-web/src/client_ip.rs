//! The browser's IP address, as device web authentication compares it with dtsh's.
//!
//! `X-Forwarded-For` is honoured only when the TCP peer is a configured trusted proxy, and
//! then read from the right: each trusted hop appends the address it saw, so the first
//! address (from the right) that is not a trusted proxy is the client. Anything a client
//! writes into the header itself lies to the left of that and is ignored. With no trusted
//! proxy configured the header is ignored entirely (the TCP peer is the browser).
//! The PROXY protocol is not read (see docs/web.md).

use std::net::IpAddr;

/// The client address for a request that arrived from `peer` with these
/// `X-Forwarded-For` header values (in order of appearance).
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_proxies: &[IpAddr],
) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted_proxies.contains(&ip) {
                    return ip;
                }
            }
            // An unreadable hop: nothing to its left can be trusted either.
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_is_ignored_from_an_untrusted_peer() {
        assert_eq!(
            client_ip(ip("127.0.0.2"), ["127.0.0.1"], &[]),
            ip("127.0.0.2")
        );
        assert_eq!(
            client_ip(ip("127.0.0.2"), ["127.0.0.1"], &[ip("10.0.0.1")]),
            ip("127.0.0.2")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_spoofed_hops_on_the_left_are_ignored() {
        let lb = ip("10.0.0.1");
        assert_eq!(client_ip(lb, ["198.51.100.7"], &[lb]), ip("198.51.100.7"));
        // The client wrote "1.2.3.4" itself; the proxy appended what it saw.
        assert_eq!(
            client_ip(lb, ["1.2.3.4, 198.51.100.7"], &[lb]),
            ip("198.51.100.7")
        );
        // Two trusted hops.
        let inner = ip("10.0.0.2");
        assert_eq!(
            client_ip(inner, ["1.2.3.4", "198.51.100.7, 10.0.0.1"], &[lb, inner]),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(lb, [], &[lb]), lb);
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(client_ip(lb, ["1.2.3.4, nonsense"], &[lb]), lb);
    }
}
