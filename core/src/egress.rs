//! Where a rule's upstream traffic may go: redirect targets, the addresses a
//! host name resolves to, and which token realms get the rule's credentials.
//!
//! The operator configured the upstream, so its own host is trusted that far;
//! what the upstream *says* is not. A `Location` or a token `realm` could
//! point the origin at its own metadata service (169.254.169.254), an admin
//! port on loopback, or the operator's private network, and a token realm on
//! plain `http` would put the rule's password on the wire. [`EgressPolicy`]
//! decides, as pure functions of the URL and the addresses, and the origin
//! enforces it on every redirect, every token request and every DNS answer.
//!
//! # Key decisions
//!
//! * **Scheme**: `https` always; plain `http` only when the rule's upstream is
//!   itself `http` (a local registry). A redirect never downgrades.
//! * **Address classes** ([`AddressClass`]): public, loopback, link-local,
//!   private (RFC 1918, unique-local `fc00::/7`, CGNAT `100.64/10` and the
//!   other special-purpose ranges that are not globally routable), reserved
//!   (multicast, broadcast, `240/4`). A target is allowed when it is public,
//!   or in a class the upstream itself is in (a loopback upstream may
//!   redirect to loopback, a registry on the private network to a mirror on
//!   it), or its host is on the rule's `redirect_hosts` allow-list (CDNs on
//!   odd hosts). Reserved addresses never are.
//! * **Host names** cannot be classified without DNS, so they are checked
//!   twice: here only `localhost` names are (as loopback); at connect time
//!   the origin's resolver applies [`EgressPolicy::check_address`] to every
//!   address a name resolves to, so a name that resolves (or rebinds) to a
//!   private address is refused too. The upstream's own host name is trusted
//!   whatever it resolves to, and what it resolves to is what the upstream's
//!   classes are learned from ([`Classes`]).
//! * **IPv4 inside IPv6** (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
//!   NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is classified by the IPv4
//!   address it carries, so `[::ffff:127.0.0.1]` is loopback. `::` and
//!   `0.0.0.0` reach the local host on Linux: loopback.
//! * **Hosts are read as a WHATWG URL parser reads them**: a host whose last
//!   label is numeric is an IPv4 literal (`2130706433`, `0x7f.1`, `127.1` are
//!   all 127.0.0.1), so such spellings cannot pass as host names.
//!   Percent-encoded, non-ASCII and zone-id hosts, and targets with
//!   credentials in the URL, are refused rather than interpreted.
//! * **Credentials** ([`EgressPolicy::realm_credentials`]) go to a token
//!   realm only over `https`, or over `http` to the upstream's own host when
//!   the upstream itself is `http`. Everything else gets no credentials;
//!   `Authorization` on requests is the origin's business (same origin only).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of network an address is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// This host: `127/8`, `::1`, and `0.0.0.0`/`::` (which Linux routes here).
    Loopback,
    /// `169.254/16`, `fe80::/10` (cloud metadata services live here).
    LinkLocal,
    /// Private networks: RFC 1918, `fc00::/7`, `fec0::/10`, CGNAT `100.64/10`,
    /// and special-purpose ranges that are not globally routable
    /// (`192.0.0/24`, documentation and benchmarking ranges, `2001:db8::/32`).
    Private,
    /// Multicast, broadcast, `240/4`, `0/8` (except `0.0.0.0`), `100::/64`:
    /// never a registry.
    Reserved,
}

impl AddressClass {
    fn bit(self) -> u8 {
        match self {
            AddressClass::Public => 1,
            AddressClass::Loopback => 2,
            AddressClass::LinkLocal => 4,
            AddressClass::Private => 8,
            AddressClass::Reserved => 16,
        }
    }

    /// Lower-case name for messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Private => "private",
            AddressClass::Reserved => "reserved",
        }
    }
}

/// A set of [`AddressClass`]es (a bit set, so it fits an atomic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classes(u8);

impl Classes {
    /// No class.
    pub const EMPTY: Classes = Classes(0);

    /// This set plus `class`.
    pub fn with(self, class: AddressClass) -> Classes {
        Classes(self.0 | class.bit())
    }

    /// Whether `class` is in the set.
    pub fn contains(self, class: AddressClass) -> bool {
        self.0 & class.bit() != 0
    }

    /// Both sets.
    pub fn union(self, other: Classes) -> Classes {
        Classes(self.0 | other.0)
    }

    /// The raw bits (to keep the set in an atomic).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// A set from [`Classes::bits`].
    pub fn from_bits(bits: u8) -> Classes {
        Classes(bits & 31)
    }
}

/// Classifies an address; IPv4 carried in IPv6 is classified as IPv4.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_unspecified() => AddressClass::Loopback,
        (0, ..) => AddressClass::Reserved,
        (127, ..) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (10, ..) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::Private, // CGNAT
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Private,
        (198, 18..=19, _) => AddressClass::Private, // benchmarking
        (224..=255, ..) => AddressClass::Reserved,  // multicast, 240/4, broadcast
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    match s[0] {
        _ if ip.is_unspecified() || ip.is_loopback() => AddressClass::Loopback,
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfec0..=0xffff if s[0] < 0xff00 => AddressClass::Private, // site-local
        0xfc00..=0xfdff => AddressClass::Private,                  // unique local
        0xff00..=0xffff => AddressClass::Reserved,                 // multicast
        0x2001 if s[1] == 0x0db8 => AddressClass::Private,         // documentation
        0x0064 if s[1] == 0xff9b && s[2] == 1 => AddressClass::Private, // local NAT64
        0x0100 if s[1..4] == [0, 0, 0] => AddressClass::Reserved,  // discard-only
        _ => AddressClass::Public,
    }
}

/// The IPv4 address carried by a mapped, compatible, NAT64 or 6to4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match s {
        // `::` and `::1` are IPv6's own; `::a.b.c.d` (compatible) otherwise.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A URL's host, as a connection would use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An address literal (IPv6 without brackets).
    Ip(IpAddr),
    /// A DNS name: lower case, without a trailing dot.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Where a URL sends a request: scheme, host and port, nothing else (paths
/// and queries, which may carry presigned secrets, are never kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The host.
    pub host: Host,
    /// The port, when the URL names one.
    pub port: Option<u16>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses an absolute `http(s)` URL's scheme, host and port.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
        Some((s, _)) => return Err(format!("scheme `{s}` is not http or https")),
        None => return Err("not an absolute http(s) URL".to_owned()),
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err("carries credentials in the URL".to_owned());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6.split_once(']').ok_or("unterminated IPv6 literal")?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("invalid IPv6 literal `[{inner}]`"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("junk after the IPv6 literal")?,
            ),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (parse_host(host)?, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("invalid port `{p}`"))?,
        ),
    };
    Ok(Target { scheme, host, port })
}

/// A host that is not a bracketed IPv6 literal: a DNS name or an IPv4
/// literal in any spelling a WHATWG parser accepts.
fn parse_host(host: &str) -> Result<Host, String> {
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err("has no host".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!("invalid host `{host}`"));
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return parse_ipv4_loose(name)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| format!("invalid IPv4 host `{host}`"));
    }
    Ok(Host::Name(name.to_owned()))
}

/// WHATWG IPv4 parsing: 1–4 parts, each decimal, octal (`0` prefix) or hex
/// (`0x`), the last filling the remaining bytes.
fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let n = if let Some(hex) = part.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if part.len() > 1 && part.starts_with('0') {
            u64::from_str_radix(&part[1..], 8).ok()?
        } else if part.is_empty() {
            return None;
        } else {
            part.parse::<u64>().ok()?
        };
        numbers.push(n);
    }
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (5 - numbers.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut value = *last;
    for (i, &n) in init.iter().enumerate() {
        value += n << (8 * (3 - i));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// An entry of a rule's `redirect_hosts`: `cdn.example.net` (that host) or
/// `*.cloudfront.net` (any name below it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    suffix: bool,
    host: String,
}

impl HostPattern {
    /// Parses an allow-list entry.
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        let (suffix, rest) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let host = match parse_host(rest) {
            Ok(Host::Name(name)) => name,
            Ok(Host::Ip(ip)) if !suffix => ip.to_string(),
            _ if rest.starts_with('[') && !suffix => match parse_target(&format!("https://{rest}"))
            {
                Ok(Target {
                    host: Host::Ip(ip),
                    port: None,
                    ..
                }) => ip.to_string(),
                _ => return Err(format!("`{pattern}` is not a host name or address")),
            },
            _ => {
                return Err(format!(
                    "`{pattern}` is not a host name, an address or `*.` followed by a name"
                ));
            }
        };
        Ok(HostPattern { suffix, host })
    }

    fn matches(&self, host: &Host) -> bool {
        match host {
            Host::Ip(ip) => !self.suffix && self.host == ip.to_string(),
            Host::Name(name) if self.suffix => name
                .strip_suffix(self.host.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Host::Name(name) => *name == self.host,
        }
    }
}

/// Why a request was not sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The URL could not be read as a target.
    #[error("{target:?} is not a usable URL: {reason}")]
    Invalid {
        /// The URL as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain `http` where the upstream is `https`.
    #[error("{target} is plain http while the rule's upstream is https")]
    Scheme {
        /// Where the request would have gone.
        target: String,
    },
    /// An address in a class the upstream is not in.
    #[error(
        "{target} is a {} address ({address}) and the rule's upstream is not on one; list the host in the rule's redirect_hosts if it is trusted",
        class.as_str()
    )]
    Address {
        /// Where the request would have gone.
        target: String,
        /// The refused address.
        address: IpAddr,
        /// Its class.
        class: AddressClass,
    },
    /// Credentials would travel in the clear to another host.
    #[error(
        "token realm {target} is neither https nor the upstream's own host; the rule's credentials are not sent there"
    )]
    Credentials {
        /// The realm.
        target: String,
    },
}

impl Refusal {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Invalid { .. } => "invalid",
            Refusal::Scheme { .. } => "scheme",
            Refusal::Address { .. } => "address",
            Refusal::Credentials { .. } => "credentials",
        }
    }
}

/// One rule's egress policy: its upstream and its redirect allow-list.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    upstream: Target,
    allow: Vec<HostPattern>,
}

impl EgressPolicy {
    /// The policy for a rule whose upstream is `upstream_url`, with the
    /// rule's `redirect_hosts`.
    pub fn new(upstream_url: &str, redirect_hosts: &[String]) -> Result<EgressPolicy, String> {
        let upstream = parse_target(upstream_url).map_err(|e| format!("upstream: {e}"))?;
        let allow = redirect_hosts
            .iter()
            .map(|p| HostPattern::parse(p).map_err(|e| format!("redirect_hosts: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy { upstream, allow })
    }

    /// The upstream's target.
    pub fn upstream(&self) -> &Target {
        &self.upstream
    }

    /// The classes the upstream is known to be in without DNS (an address
    /// literal, or `localhost`); the origin adds what its host name resolves to.
    pub fn upstream_classes(&self) -> Classes {
        match literal_class(&self.upstream.host) {
            Some(class) => Classes::EMPTY.with(class),
            None => Classes::EMPTY,
        }
    }

    /// Whether `host` is the upstream's own host (trusted whatever it
    /// resolves to).
    pub fn is_upstream_host(&self, host: &str) -> bool {
        host_eq(&self.upstream.host, host)
    }

    /// Whether `host` is on the allow-list.
    pub fn is_allowed_host(&self, host: &str) -> bool {
        match parse_host_any(host) {
            Some(h) => self.allow.iter().any(|p| p.matches(&h)),
            None => false,
        }
    }

    /// Checks a redirect target (an absolute URL) before it is followed:
    /// the scheme, and the address class when the host is a literal or a
    /// `localhost` name. `upstream` is what is known of the upstream's classes.
    pub fn check_redirect(&self, url: &str, upstream: Classes) -> Result<Target, Refusal> {
        let target = parse_target(url).map_err(|reason| Refusal::Invalid {
            target: strip_query(url),
            reason,
        })?;
        if target.scheme == Scheme::Http && self.upstream.scheme == Scheme::Https {
            return Err(Refusal::Scheme {
                target: target.to_string(),
            });
        }
        if let Some(class) = literal_class(&target.host) {
            let address = match &target.host {
                Host::Ip(ip) => *ip,
                Host::Name(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            };
            self.check_class(&target, address, class, upstream)?;
        }
        Ok(target)
    }

    /// Checks one address `host` resolved to, at connect time. The
    /// upstream's own host is trusted; allow-listed hosts may be anywhere
    /// but reserved ranges; other hosts only on public addresses or in the
    /// upstream's classes.
    pub fn check_address(
        &self,
        host: &str,
        address: IpAddr,
        upstream: Classes,
    ) -> Result<(), Refusal> {
        if self.is_upstream_host(host) {
            return Ok(());
        }
        let target = Target {
            scheme: self.upstream.scheme,
            host: parse_host_any(host).unwrap_or_else(|| Host::Name(host.to_owned())),
            port: None,
        };
        self.check_class(&target, address, classify(address), upstream)
    }

    fn check_class(
        &self,
        target: &Target,
        address: IpAddr,
        class: AddressClass,
        upstream: Classes,
    ) -> Result<(), Refusal> {
        let allowed = match class {
            AddressClass::Reserved => false,
            AddressClass::Public => true,
            _ => upstream.contains(class) || self.allow.iter().any(|p| p.matches(&target.host)),
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Address {
                target: target.to_string(),
                address,
                class,
            })
        }
    }

    /// Checks a token realm (an absolute URL) like a redirect target, and
    /// says whether the rule's credentials may be sent to it: over `https`,
    /// or over `http` to the upstream's own host when the upstream is `http`.
    pub fn check_realm(&self, url: &str, upstream: Classes) -> Result<RealmCheck, Refusal> {
        let target = self.check_redirect(url, upstream)?;
        let credentials = match target.scheme {
            Scheme::Https => true,
            Scheme::Http => {
                self.upstream.scheme == Scheme::Http && target.host == self.upstream.host
            }
        };
        Ok(RealmCheck {
            target,
            credentials,
        })
    }
}

/// The outcome of [`EgressPolicy::check_realm`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmCheck {
    /// The realm's target.
    pub target: Target,
    /// Whether the rule's credentials may be sent to it.
    pub credentials: bool,
}

impl RealmCheck {
    /// The refusal to report when credentials are configured but may not go.
    pub fn credentials_refusal(&self) -> Refusal {
        Refusal::Credentials {
            target: self.target.to_string(),
        }
    }
}

/// The class of a host known without DNS.
fn literal_class(host: &Host) -> Option<AddressClass> {
    match host {
        Host::Ip(ip) => Some(classify(*ip)),
        Host::Name(name) if name == "localhost" || name.ends_with(".localhost") => {
            Some(AddressClass::Loopback)
        }
        Host::Name(_) => None,
    }
}

/// A host as a resolver or `Url::host_str` spells it (IPv6 with or without
/// brackets).
fn parse_host_any(host: &str) -> Option<Host> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Some(Host::Ip(IpAddr::V6(v6)));
    }
    parse_host(host).ok()
}

fn host_eq(a: &Host, b: &str) -> bool {
    parse_host_any(b).is_some_and(|b| *a == b)
}

fn strip_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified() {
        use AddressClass::*;
        let cases = [
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.1.2", Loopback),
            ("0.0.0.0", Loopback),
            ("0.1.2.3", Reserved),
            ("169.254.169.254", LinkLocal),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("172.15.0.1", Public),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("100.127.255.255", Private),
            ("100.128.0.1", Public),
            ("198.18.0.1", Private),
            ("198.19.255.1", Private),
            ("198.20.0.1", Public),
            ("192.0.2.7", Private),
            ("224.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("240.0.0.1", Reserved),
            ("::1", Loopback),
            ("::", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("ff02::1", Reserved),
            ("2001:db8::1", Private),
            ("2606:4700::1111", Public),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b:1::1", Private),
            ("2002:7f00:1::", Loopback),
            ("2002:0808:0808::", Public),
            ("100::1", Reserved),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    /// (URL, Some((host, port)) or None when refused)
    type ParseCase<'a> = (&'a str, Option<(&'a str, Option<u16>)>);

    #[test]
    fn targets_are_parsed_like_a_url_parser_would() {
        let cases: &[ParseCase] = &[
            (
                "https://cdn.example.net/blob?sig=x",
                Some(("cdn.example.net", None)),
            ),
            (
                "HTTPS://CDN.Example.NET.:8443/b",
                Some(("cdn.example.net", Some(8443))),
            ),
            ("http://127.0.0.1:5000/v2/", Some(("127.0.0.1", Some(5000)))),
            ("http://2130706433/", Some(("127.0.0.1", None))),
            ("http://0x7f.1/", Some(("127.0.0.1", None))),
            ("http://0177.0.0.1/", Some(("127.0.0.1", None))),
            ("http://127.1/", Some(("127.0.0.1", None))),
            (
                "http://169.254.169.254/latest",
                Some(("169.254.169.254", None)),
            ),
            (
                "http://[::ffff:7f00:1]:80/",
                Some(("[::ffff:127.0.0.1]", Some(80))),
            ),
            ("http://[fe80::1]/", Some(("[fe80::1]", None))),
            ("https://a.b\\@evil/", Some(("a.b", None))),
            ("http://256.0.0.1/", None),
            ("http://1.2.3.4.5/", None),
            ("http://4294967296/", None),
            ("http://[fe80::1%25eth0]/", None),
            ("http://%31%32%37.0.0.1/", None),
            ("http://user:pw@host/", None),
            ("ftp://host/", None),
            ("/relative", None),
            ("http:///x", None),
            ("http://host:99999/", None),
            ("http://host:+1/", None),
            ("http://exämple.com/", None),
        ];
        for (url, want) in cases {
            let got = parse_target(url);
            match want {
                Some((host, port)) => {
                    let t = got.unwrap_or_else(|e| panic!("{url}: {e}"));
                    assert_eq!(t.host.to_string(), *host, "{url}");
                    assert_eq!(t.port, *port, "{url}");
                }
                None => assert!(got.is_err(), "{url} parsed as {got:?}"),
            }
        }
    }

    fn policy(upstream: &str, allow: &[&str]) -> EgressPolicy {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        EgressPolicy::new(upstream, &allow).unwrap()
    }

    #[test]
    fn redirects_are_checked_by_scheme_and_address_class() {
        // (upstream, allow-list, redirect target, allowed?)
        let cases: &[(&str, &[&str], &str, bool)] = &[
            // A public https upstream: https anywhere public, nothing local.
            (
                "https://registry-1.docker.io",
                &[],
                "https://production.cloudflare.docker.com/x",
                true,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://8.8.8.8/x",
                true,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "http://cdn.example.net/x",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://127.0.0.1/x",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://localhost/x",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://a.localhost./x",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://169.254.169.254/latest",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://[fe80::1]/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://10.0.0.8/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://172.20.0.1/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://192.168.0.1/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://100.100.100.200/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://[fd00::1]/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://[::ffff:127.0.0.1]/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://[::ffff:a9fe:a9fe]/",
                false,
            ),
            ("https://registry-1.docker.io", &[], "https://[::1]/", false),
            (
                "https://registry-1.docker.io",
                &[],
                "https://0.0.0.0/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://2130706433/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://0x7f000001/",
                false,
            ),
            (
                "https://registry-1.docker.io",
                &[],
                "https://224.0.0.1/",
                false,
            ),
            ("https://registry-1.docker.io", &[], "gopher://x/", false),
            // Hostnames pass here; their addresses are checked at connect time.
            (
                "https://registry-1.docker.io",
                &[],
                "https://internal.corp/x",
                true,
            ),
            // A loopback upstream may redirect to loopback (tests' 127.0.0.2 CDN).
            (
                "http://127.0.0.1:5000",
                &[],
                "http://127.0.0.2:9000/b",
                true,
            ),
            (
                "http://127.0.0.1:5000",
                &[],
                "http://localhost:9000/b",
                true,
            ),
            (
                "http://localhost:5000",
                &[],
                "http://127.0.0.2:9000/b",
                true,
            ),
            ("http://127.0.0.1:5000", &[], "http://[::1]:9000/b", true),
            ("http://127.0.0.1:5000", &[], "http://10.0.0.1/b", false),
            (
                "http://127.0.0.1:5000",
                &[],
                "http://169.254.169.254/",
                false,
            ),
            // A private upstream may redirect within private, not to loopback.
            ("http://10.0.0.5:5000", &[], "http://192.168.1.9/b", true),
            ("http://10.0.0.5:5000", &[], "http://127.0.0.1:8080/", false),
            (
                "http://198.18.4.2:5000",
                &[],
                "http://127.0.0.1:8080/",
                false,
            ),
            (
                "http://10.0.0.5:5000",
                &[],
                "http://169.254.169.254/",
                false,
            ),
            // The allow-list opens local classes for named hosts.
            (
                "https://registry.example",
                &["cdn.internal"],
                "https://cdn.internal/b",
                true,
            ),
            (
                "https://registry.example",
                &["10.1.2.3"],
                "https://10.1.2.3/b",
                true,
            ),
            (
                "https://registry.example",
                &["10.1.2.3"],
                "https://10.1.2.4/b",
                false,
            ),
            (
                "https://registry.example",
                &["*.localhost"],
                "https://a.localhost/b",
                true,
            ),
            (
                "https://registry.example",
                &["*.localhost"],
                "https://localhost/b",
                false,
            ),
            (
                "https://registry.example",
                &["cdn.internal"],
                "https://224.0.0.1/b",
                false,
            ),
            // ...but never downgrades the scheme.
            (
                "https://registry.example",
                &["cdn.internal"],
                "http://cdn.internal/b",
                false,
            ),
        ];
        for (upstream, allow, target, want) in cases {
            let p = policy(upstream, allow);
            let got = p.check_redirect(target, p.upstream_classes());
            assert_eq!(got.is_ok(), *want, "{upstream} → {target}: {got:?}");
        }
    }

    /// (upstream, allow-list, learned classes, host, address, allowed?)
    type AddressCase<'a> = (&'a str, &'a [&'a str], Classes, &'a str, &'a str, bool);

    #[test]
    fn resolved_addresses_are_checked_against_what_the_upstream_is() {
        let public = Classes::EMPTY.with(AddressClass::Public);
        let private = Classes::EMPTY.with(AddressClass::Private);
        // (upstream, allow-list, learned classes, host, address, allowed?)
        let cases: &[AddressCase] = &[
            (
                "https://registry.example",
                &[],
                public,
                "cdn.example",
                "8.8.8.8",
                true,
            ),
            (
                "https://registry.example",
                &[],
                public,
                "cdn.example",
                "127.0.0.1",
                false,
            ),
            (
                "https://registry.example",
                &[],
                public,
                "cdn.example",
                "169.254.169.254",
                false,
            ),
            (
                "https://registry.example",
                &[],
                public,
                "cdn.example",
                "::ffff:10.0.0.1",
                false,
            ),
            (
                "https://registry.example",
                &[],
                public,
                "cdn.example",
                "fe80::1",
                false,
            ),
            // The upstream's own name is trusted, whatever it resolves to.
            (
                "https://registry.example",
                &[],
                public,
                "registry.example",
                "10.0.0.1",
                true,
            ),
            (
                "https://registry.example",
                &[],
                public,
                "REGISTRY.example.",
                "10.0.0.1",
                true,
            ),
            // A registry found on the private network may use private mirrors.
            (
                "https://registry.corp",
                &[],
                private,
                "mirror.corp",
                "10.9.9.9",
                true,
            ),
            (
                "https://registry.corp",
                &[],
                private,
                "mirror.corp",
                "127.0.0.1",
                false,
            ),
            (
                "https://registry.example",
                &["*.cdn.corp"],
                public,
                "a.cdn.corp",
                "10.0.0.1",
                true,
            ),
            (
                "https://registry.example",
                &["*.cdn.corp"],
                public,
                "a.cdn.corp",
                "255.255.255.255",
                false,
            ),
            (
                "http://127.0.0.1:5000",
                &[],
                Classes::EMPTY,
                "localhost",
                "127.0.0.1",
                false,
            ),
            (
                "http://127.0.0.1:5000",
                &[],
                Classes::EMPTY.with(AddressClass::Loopback),
                "localhost",
                "::1",
                true,
            ),
        ];
        for (upstream, allow, learned, host, addr, want) in cases {
            let p = policy(upstream, allow);
            let got = p.check_address(host, ip(addr), *learned);
            assert_eq!(got.is_ok(), *want, "{upstream}: {host} → {addr}: {got:?}");
        }
    }

    #[test]
    fn credentials_go_to_realms_on_https_or_the_http_upstream_itself() {
        // (upstream, realm, Some(credentials?) or None when refused outright)
        let cases: &[(&str, &str, Option<bool>)] = &[
            (
                "https://registry-1.docker.io",
                "https://auth.docker.io/token",
                Some(true),
            ),
            (
                "https://registry-1.docker.io",
                "http://auth.docker.io/token",
                None,
            ),
            (
                "https://registry-1.docker.io",
                "http://registry-1.docker.io/token",
                None,
            ),
            ("https://ghcr.io", "https://ghcr.io/token", Some(true)),
            (
                "http://127.0.0.1:5000",
                "http://127.0.0.1:5001/token",
                Some(true),
            ),
            (
                "http://127.0.0.1:5000",
                "http://127.0.0.2:5001/token",
                Some(false),
            ),
            (
                "http://127.0.0.1:5000",
                "http://localhost:5001/token",
                Some(false),
            ),
            (
                "http://registry.corp",
                "http://auth.corp/token",
                Some(false),
            ),
            (
                "http://registry.corp",
                "https://auth.corp/token",
                Some(true),
            ),
            (
                "https://registry-1.docker.io",
                "https://169.254.169.254/token",
                None,
            ),
            ("https://registry-1.docker.io", "file:///etc/passwd", None),
        ];
        for (upstream, realm, want) in cases {
            let p = policy(upstream, &[]);
            let got = p.check_realm(realm, p.upstream_classes());
            assert_eq!(
                got.as_ref().ok().map(|r| r.credentials),
                *want,
                "{upstream} → {realm}: {got:?}"
            );
        }
    }

    #[test]
    fn refusals_name_the_target_without_its_query() {
        let p = policy("https://registry-1.docker.io", &[]);
        let err = p
            .check_redirect(
                "https://127.0.0.1:8080/x?X-Amz-Signature=secret",
                p.upstream_classes(),
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("https://127.0.0.1:8080"), "{text}");
        assert!(text.contains("loopback"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(err.reason(), "address");
    }

    #[test]
    fn allow_list_entries_are_validated() {
        for ok in [
            "cdn.example.net",
            "*.cloudfront.net",
            "10.0.0.1",
            "[fd00::1]",
            "CDN.Example.",
        ] {
            assert!(HostPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a/b",
            "*.10.0.0.1",
            "https://cdn",
            "a b",
            "x.*.net",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        let p = HostPattern::parse("*.cloudfront.net").unwrap();
        assert!(p.matches(&Host::Name("d1.cloudfront.net".into())));
        assert!(p.matches(&Host::Name("a.b.cloudfront.net".into())));
        assert!(!p.matches(&Host::Name("cloudfront.net".into())));
        assert!(!p.matches(&Host::Name("evilcloudfront.net".into())));
    }

    #[test]
    fn nothing_panics_on_odd_input() {
        let p = policy("https://registry.example", &[]);
        for url in [
            "",
            "://",
            "http://",
            "http://[",
            "http://[]",
            "http://:80",
            "http://a:",
            "http://.",
            "http://..",
            "http://0x",
            "http://0x.0x",
            "http://00000000000000000000000001/",
            "http://99999999999999999999999/",
            "https://[::ffff:1.2.3.4%]",
            "http://a..b/",
        ] {
            let _ = p.check_redirect(url, Classes::EMPTY);
            let _ = p.check_realm(url, Classes::EMPTY);
        }
    }
}
