//! Outbound network access through the host, off by default.
//!
//! The guest has no sockets of its own: Python's `socket` and `ssl` modules
//! are replaced by shims (`guest/src/net.py`) whose connections are made by
//! the host, here. The host checks a [`NetworkPolicy`] before it connects:
//! the host name and port against the allow-list, then every address the
//! name resolves to against the ranges that are never public (loopback,
//! private, link-local and cloud metadata, unspecified, multicast, reserved;
//! IPv4-mapped, -compatible, NAT64 and 6to4 IPv6 forms are checked as the
//! IPv4 address they carry). It then connects to exactly the address it
//! checked (no second lookup a DNS answer could change), and does TLS itself
//! (rustls, verified against the Mozilla roots of `webpki-root-certs` plus
//! any the policy adds). A redirect is a new connection by the Python client,
//! so it is checked the same way.
//!
//! Why sockets and not an HTTP call: `http.client`, `urllib.request` and
//! clients built on sockets (urllib3, so `requests`) then work unchanged,
//! keep-alive and streaming included, while the host still decides every
//! address; an HTTP-level callback would need each client patched.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A URL scheme a rule may name: it fixes the default port, and `https`
/// requires TLS before any byte is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Any host (`*`).
    Any,
    /// One name or address literal, lowercase.
    Exact(String),
    /// `*.example.com`: subdomains of `example.com` (stored as
    /// `.example.com`), not the domain itself.
    Suffix(String),
}

/// One entry of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostPattern,
    /// `None`: 80 and 443 (or the scheme's port).
    port: Option<u16>,
    scheme: Option<Scheme>,
    /// Whether the name may resolve to loopback or private addresses.
    private: bool,
}

impl Rule {
    /// Parses `[scheme://]host[:port]`; `host` may be `*`, `*.domain`, a
    /// name, an IPv4 address or a bracketed IPv6 address.
    fn parse(text: &str, private: bool) -> Result<Rule, String> {
        let bad = |why: &str| format!("network rule {text:?}: {why}");
        let (scheme, rest) = match text.split_once("://") {
            Some(("http", rest)) => (Some(Scheme::Http), rest),
            Some(("https", rest)) => (Some(Scheme::Https), rest),
            Some((other, _)) => return Err(bad(&format!("unknown scheme {other:?}"))),
            None => (None, text),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad("junk after ]")),
            };
            (host.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (rest.to_owned(), None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| bad("bad port")))
            .transpose()?;
        let host = normalize_host(&host);
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(bad("bad host"));
        }
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(bad("bad wildcard"));
            }
            HostPattern::Suffix(format!(".{domain}"))
        } else if host.contains('*') {
            return Err(bad("a wildcard may only be `*` or lead as `*.`"));
        } else {
            HostPattern::Exact(host)
        };
        Ok(Rule {
            host,
            port,
            scheme,
            private,
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
        };
        let port_ok = match (self.port, self.scheme) {
            (Some(p), _) => p == port,
            (None, Some(Scheme::Http)) => port == 80,
            (None, Some(Scheme::Https)) => port == 443,
            (None, None) => port == 80 || port == 443,
        };
        host_ok && port_ok
    }
}

/// Lowercase, without a trailing dot or IPv6 brackets.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Which hosts a sandbox may connect to, and the limits of its connections.
/// The default allows nothing.
///
/// Rules are `[scheme://]host[:port]`: `api.example.com` (ports 80 and
/// 443), `https://api.example.com` (443, TLS required),
/// `http://10.0.0.5:8080`, `*.example.com` (subdomains), `*` (any host). A
/// name must resolve to public addresses only, unless its rule was added
/// with [`allow_private`](Self::allow_private); link-local and metadata
/// addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254, Azure's
/// 168.63.129.16, Alibaba Cloud's 100.100.100.200), unspecified, multicast
/// and reserved ones are refused always. TLS is always for the host name the
/// connection was allowed for (no other server name).
///
/// ```
/// let policy = eryx::NetworkPolicy::new()
///     .allow("https://api.github.com")?
///     .allow("*.example.com")?;
/// # Ok::<(), eryx::Error>(())
/// ```
#[derive(Clone)]
pub struct NetworkPolicy {
    rules: Vec<Rule>,
    connect_timeout: Duration,
    io_timeout: Duration,
    max_received_bytes: u64,
    max_connections: usize,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for NetworkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPolicy")
            .field("rules", &self.rules)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("max_received_bytes", &self.max_received_bytes)
            .field("max_connections", &self.max_connections)
            .field("extra_roots", &self.roots.len())
            .finish()
    }
}

impl Default for NetworkPolicy {
    fn default() -> NetworkPolicy {
        NetworkPolicy::new()
    }
}

impl NetworkPolicy {
    /// A policy that allows no host, with the default limits: connect
    /// timeout 10 s, read/write timeout 30 s (Python's socket timeout, when
    /// shorter, wins), 16 MiB received per connection, 16 connections open
    /// at once.
    pub fn new() -> NetworkPolicy {
        NetworkPolicy {
            rules: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            max_received_bytes: 16 << 20,
            max_connections: 16,
            roots: Vec::new(),
            tls: None,
        }
    }

    /// Allows `rule` (see the type's documentation), to public addresses
    /// only.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a rule that does not parse.
    pub fn allow(self, rule: &str) -> crate::Result<NetworkPolicy> {
        self.push(rule, false)
    }

    /// Allows `rule`, also when its name resolves to loopback or private
    /// addresses (10/8, 172.16/12, 192.168/16, 100.64/10, 127/8, ::1,
    /// fc00::/7): for services on the host's own network, named
    /// deliberately. Link-local and metadata addresses stay refused.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a rule that does not parse.
    pub fn allow_private(self, rule: &str) -> crate::Result<NetworkPolicy> {
        self.push(rule, true)
    }

    fn push(mut self, rule: &str, private: bool) -> crate::Result<NetworkPolicy> {
        let rule = Rule::parse(rule, private).map_err(crate::Error::Config)?;
        self.rules.push(rule);
        Ok(self)
    }

    /// Also trusts `certificate` (PEM or DER) as a TLS root, e.g. a
    /// private CA.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when it is neither.
    pub fn with_root_certificate(mut self, certificate: &[u8]) -> crate::Result<NetworkPolicy> {
        use rustls::pki_types::pem::PemObject;
        let mut found = Vec::new();
        if certificate.starts_with(b"-----") {
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(certificate) {
                found.push(
                    cert.map_err(|e| crate::Error::Config(format!("root certificate: {e}")))?,
                );
            }
        } else {
            found.push(rustls::pki_types::CertificateDer::from(
                certificate.to_vec(),
            ));
        }
        if found.is_empty() {
            return Err(crate::Error::Config(
                "root certificate: no certificate".into(),
            ));
        }
        self.roots.extend(found);
        self.tls = None;
        Ok(self)
    }

    /// How long a connect may take (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> NetworkPolicy {
        self.connect_timeout = timeout;
        self
    }

    /// How long one read or write may wait (default 30 s).
    pub fn with_io_timeout(mut self, timeout: Duration) -> NetworkPolicy {
        self.io_timeout = timeout;
        self
    }

    /// Most bytes one connection may receive (default 16 MiB); past it, a
    /// read fails with `limit`.
    pub fn with_max_received_bytes(mut self, bytes: u64) -> NetworkPolicy {
        self.max_received_bytes = bytes;
        self
    }

    /// Most connections one instance may have open at once (default 16).
    pub fn with_max_connections(mut self, connections: usize) -> NetworkPolicy {
        self.max_connections = connections;
        self
    }

    /// Whether any host is allowed.
    pub fn allows_any(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The TLS configuration: the Mozilla roots plus the policy's own.
    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(config) = &self.tls {
            return Ok(config.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| format!("tls: a root certificate of the policy: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = Arc::new(config);
        self.tls = Some(config.clone());
        Ok(config)
    }
}

/// How an address may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Public,
    /// Loopback and private networks: only for [`NetworkPolicy::allow_private`].
    Private(&'static str),
    /// Never: link-local, metadata, unspecified, multicast, reserved.
    Forbidden(&'static str),
}

fn classify_v4(ip: Ipv4Addr) -> Range {
    let [a, b, c, _] = ip.octets();
    // Cloud metadata services outside link-local: Azure's WireServer and
    // Alibaba Cloud's metadata (inside 100.64/10, so checked first).
    if ip == Ipv4Addr::new(168, 63, 129, 16) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Range::Forbidden("cloud metadata");
    }
    if ip.is_loopback() {
        Range::Private("loopback")
    } else if ip.is_private() {
        Range::Private("private")
    } else if a == 100 && (64..128).contains(&b) {
        Range::Private("shared (carrier-grade NAT)")
    } else if ip.is_link_local() {
        Range::Forbidden("link-local (cloud metadata)")
    } else if ip.is_unspecified() || a == 0 {
        Range::Forbidden("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Range::Forbidden("multicast or reserved")
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (b == 18 || b == 19)) {
        Range::Forbidden("reserved")
    } else if (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        Range::Forbidden("documentation")
    } else {
        Range::Public
    }
}

fn classify(ip: IpAddr) -> Range {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v6(ip: Ipv6Addr) -> Range {
    let segments = ip.segments();
    let octets = ip.octets();
    let embedded =
        |at: usize| Ipv4Addr::new(octets[at], octets[at + 1], octets[at + 2], octets[at + 3]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip.is_loopback() {
        return Range::Private("loopback");
    }
    if ip.is_unspecified() {
        return Range::Forbidden("unspecified");
    }
    // ::a.b.c.d (IPv4-compatible, deprecated).
    if segments[..6].iter().all(|s| *s == 0) {
        return classify_v4(embedded(12));
    }
    // Local-use NAT64 (64:ff9b:1::/48) translates into networks of the
    // operator's choosing, never the public internet.
    if segments[..3] == [0x64, 0xff9b, 1] {
        return Range::Forbidden("local-use NAT64");
    }
    // NAT64 64:ff9b::/96, SIIT ::ffff:0:a.b.c.d and 6to4 2002::/16 carry an
    // IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return classify_v4(embedded(12));
    }
    if segments[0] == 0x2002 {
        return classify_v4(embedded(2));
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Range::Forbidden("cloud metadata");
    }
    if segments[0] & 0xfe00 == 0xfc00 {
        return Range::Private("unique local");
    }
    if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
        return Range::Forbidden("link-local");
    }
    if segments[0] & 0xff00 == 0xff00 {
        return Range::Forbidden("multicast");
    }
    if segments[0] == 0x2001 && segments[1] == 0xdb8 {
        return Range::Forbidden("documentation");
    }
    Range::Public
}

/// The error text of a `net-*` call: `kind: message`.
fn fail(kind: &str, message: impl std::fmt::Display) -> String {
    format!("{kind}: {message}")
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

struct Connection {
    stream: Option<Stream>,
    /// The name (or address) the policy checked; TLS must be for it.
    host: String,
    /// The rule requires TLS before data.
    tls_required: bool,
    received: u64,
}

/// One instance's connections and its policy.
pub(crate) struct Connections {
    policy: NetworkPolicy,
    open: HashMap<u32, Connection>,
    next: u32,
}

impl Connections {
    pub(crate) fn new(policy: NetworkPolicy) -> Connections {
        Connections {
            policy,
            open: HashMap::new(),
            next: 1,
        }
    }

    fn timeout(&self, requested_ms: u32, default: Duration) -> Duration {
        match requested_ms {
            0 => default,
            ms => Duration::from_millis(ms.into()).min(default),
        }
    }

    /// Checks `host`:`port` against the policy and resolves it; returns the
    /// addresses to try and whether TLS is required.
    async fn check(&self, host: &str, port: u16) -> Result<(Vec<SocketAddr>, bool), String> {
        if !self.policy.allows_any() {
            return Err(fail(
                "policy",
                "outbound network access is off for this sandbox (its network policy allows no host)",
            ));
        }
        let name = normalize_host(host);
        let rules: Vec<&Rule> = self
            .policy
            .rules
            .iter()
            .filter(|rule| rule.matches(&name, port))
            .collect();
        if rules.is_empty() {
            return Err(fail(
                "policy",
                format!("{name}:{port} is not in this sandbox's network allow-list"),
            ));
        }
        let private_ok = rules.iter().any(|rule| rule.private);
        let tls_required = rules.iter().all(|rule| rule.scheme == Some(Scheme::Https));
        let addresses: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(
                self.policy.connect_timeout,
                tokio::net::lookup_host((name.as_str(), port)),
            )
            .await
            .map_err(|_| fail("timeout", format!("resolving {name}")))?
            .map_err(|e| fail("dns", format!("{name}: {e}")))?
            .collect(),
        };
        if addresses.is_empty() {
            return Err(fail("dns", format!("{name} has no address")));
        }
        // Every address the name has must pass: a name with one public and
        // one private address is refused, not tried until one works.
        for address in &addresses {
            match classify(address.ip()) {
                Range::Public => {}
                Range::Private(_) if private_ok => {}
                Range::Private(what) | Range::Forbidden(what) => {
                    return Err(fail(
                        "policy",
                        format!(
                            "{name} resolves to {}, a {what} address, which this sandbox's network policy refuses",
                            address.ip()
                        ),
                    ));
                }
            }
        }
        Ok((addresses, tls_required))
    }

    /// `net-connect`.
    pub(crate) async fn connect(
        &mut self,
        host: &str,
        port: u16,
        timeout_ms: u32,
    ) -> Result<u32, String> {
        if self.open.len() >= self.policy.max_connections {
            return Err(fail(
                "limit",
                format!(
                    "at most {} connections may be open at once",
                    self.policy.max_connections
                ),
            ));
        }
        let (addresses, tls_required) = self.check(host, port).await?;
        let timeout = self.timeout(timeout_ms, self.policy.connect_timeout);
        // One deadline for all of the name's addresses.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        for address in addresses {
            match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let id = self.next;
                    self.next = self.next.wrapping_add(1).max(1);
                    self.open.insert(
                        id,
                        Connection {
                            stream: Some(Stream::Tcp(stream)),
                            host: normalize_host(host),
                            tls_required,
                            received: 0,
                        },
                    );
                    return Ok(id);
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = Some(fail("refused", format!("{address}: connection refused")));
                }
                Ok(Err(e)) => last = Some(fail("io", format!("{address}: {e}"))),
                Err(_) => {
                    last = Some(fail(
                        "timeout",
                        format!(
                            "connecting to {address} took over {} ms",
                            timeout.as_millis()
                        ),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| fail("io", "no address to connect to")))
    }

    fn connection(&mut self, id: u32) -> Result<&mut Connection, String> {
        self.open
            .get_mut(&id)
            .ok_or_else(|| fail("closed", format!("connection {id} is not open")))
    }

    /// `net-start-tls`.
    pub(crate) async fn start_tls(
        &mut self,
        id: u32,
        server_name: &str,
        alpn: Vec<String>,
        timeout_ms: u32,
    ) -> Result<String, String> {
        let timeout = self.timeout(timeout_ms, self.policy.connect_timeout);
        let mut config = (*self.policy.tls_config()?).clone();
        config.alpn_protocols = alpn.into_iter().map(String::into_bytes).collect();
        let name = rustls::pki_types::ServerName::try_from(normalize_host(server_name))
            .map_err(|e| fail("tls", format!("server name {server_name:?}: {e}")))?;
        let connection = self.connection(id)?;
        // The certificate is checked for the name the guest asks for: it
        // must be the name the policy allowed, or a connection to an allowed
        // host could reach another site on the same address (domain
        // fronting).
        if normalize_host(server_name) != connection.host {
            return Err(fail(
                "policy",
                format!(
                    "TLS for {server_name:?} on a connection to {:?}: the server name must be the host connected to",
                    connection.host
                ),
            ));
        }
        let Some(Stream::Tcp(tcp)) = connection.stream.take() else {
            return Err(fail("tls", "TLS is already started on this connection"));
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                let protocol = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                connection.stream = Some(Stream::Tls(Box::new(tls)));
                Ok(protocol)
            }
            Ok(Err(e)) => {
                self.open.remove(&id);
                Err(fail("tls", e))
            }
            Err(_) => {
                self.open.remove(&id);
                Err(fail("timeout", "the TLS handshake"))
            }
        }
    }

    /// `net-send`.
    pub(crate) async fn send(
        &mut self,
        id: u32,
        data: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, String> {
        let timeout = self.timeout(timeout_ms, self.policy.io_timeout);
        let connection = self.connection(id)?;
        let written = match connection.stream.as_mut() {
            Some(Stream::Tcp(_)) if connection.tls_required => {
                return Err(fail(
                    "policy",
                    "this host is allowed over https only: start TLS first",
                ));
            }
            Some(Stream::Tcp(tcp)) => tokio::time::timeout(timeout, tcp.write(data)).await,
            Some(Stream::Tls(tls)) => {
                tokio::time::timeout(timeout, async {
                    let n = tls.write(data).await?;
                    tls.flush().await?;
                    Ok(n)
                })
                .await
            }
            None => return Err(fail("closed", "the connection is closed")),
        };
        match written {
            Ok(Ok(n)) => Ok(n as u32),
            Ok(Err(e)) => Err(fail("io", e)),
            Err(_) => Err(fail(
                "timeout",
                format!("sending took over {} ms", timeout.as_millis()),
            )),
        }
    }

    /// `net-recv`.
    pub(crate) async fn recv(
        &mut self,
        id: u32,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, String> {
        let timeout = self.timeout(timeout_ms, self.policy.io_timeout);
        let cap = self.policy.max_received_bytes;
        let connection = self.connection(id)?;
        if connection.received >= cap {
            return Err(fail(
                "limit",
                format!("a connection may receive at most {cap} bytes"),
            ));
        }
        let room = (cap - connection.received).min(u64::from(max_bytes.clamp(1, 1 << 20)));
        let mut buffer = vec![0; room as usize];
        let read = match connection.stream.as_mut() {
            Some(Stream::Tcp(tcp)) => tokio::time::timeout(timeout, tcp.read(&mut buffer)).await,
            Some(Stream::Tls(tls)) => tokio::time::timeout(timeout, tls.read(&mut buffer)).await,
            None => return Err(fail("closed", "the connection is closed")),
        };
        match read {
            Ok(Ok(n)) => {
                connection.received += n as u64;
                buffer.truncate(n);
                Ok(buffer)
            }
            // A peer that closes without TLS close_notify: the end.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Vec::new()),
            Ok(Err(e)) => Err(fail("io", e)),
            Err(_) => Err(fail(
                "timeout",
                format!("no data within {} ms", timeout.as_millis()),
            )),
        }
    }

    /// `net-readable`: whether a read would not wait (data, the end, or an
    /// error), waiting up to `timeout_ms` (0: just check; capped at the I/O
    /// timeout). For TLS this looks at the socket under it: data rustls has
    /// already decrypted is not seen (a false "not readable"), and a record
    /// without application data (a session ticket) looks readable (a read
    /// then waits). Clients use it to check whether an idle pooled
    /// connection was dropped, where either answer is safe.
    pub(crate) async fn readable(&mut self, id: u32, timeout_ms: u32) -> bool {
        let wait = Duration::from_millis(timeout_ms.into()).min(self.policy.io_timeout);
        let Ok(connection) = self.connection(id) else {
            return true;
        };
        let tcp = match connection.stream.as_ref() {
            Some(Stream::Tcp(tcp)) => tcp,
            Some(Stream::Tls(tls)) => tls.get_ref().0,
            None => return true,
        };
        let mut byte = [0u8; 1];
        // `timeout` polls the peek once before it looks at the clock, so a
        // zero wait is a check.
        tokio::time::timeout(wait, tcp.peek(&mut byte))
            .await
            .is_ok()
    }

    /// `net-close`.
    pub(crate) fn close(&mut self, id: u32) {
        self.open.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_classified_including_embedded_ipv4() {
        let public = [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "1.1.1.1",
        ];
        for ip in public {
            assert_eq!(classify(ip.parse().unwrap()), Range::Public, "{ip}");
        }
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::ffff:0:a00:1",
            "2002:c0a8:101::1",
            "::127.0.0.1",
        ];
        for ip in private {
            assert!(
                matches!(classify(ip.parse().unwrap()), Range::Private(_)),
                "{ip}"
            );
        }
        let forbidden = [
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "fd00:ec2::254",
            "::",
            "::ffff:169.254.169.254",
            "ff02::1",
            "168.63.129.16",
            "100.100.100.200",
            "64:ff9b:1::a00:1",
        ];
        for ip in forbidden {
            assert!(
                matches!(classify(ip.parse().unwrap()), Range::Forbidden(_)),
                "{ip}"
            );
        }
    }

    #[test]
    fn rules_parse_and_match_hosts_ports_and_schemes() {
        let rule = Rule::parse("https://API.example.com", false).unwrap();
        assert!(rule.matches("api.example.com", 443));
        assert!(!rule.matches("api.example.com", 80));
        let rule = Rule::parse("*.example.com:8443", false).unwrap();
        assert!(rule.matches("a.b.example.com", 8443));
        assert!(!rule.matches("example.com", 8443));
        assert!(!rule.matches("evilexample.com", 8443));
        let rule = Rule::parse("[::1]:8080", true).unwrap();
        assert!(rule.matches("::1", 8080));
        let rule = Rule::parse("example.org", false).unwrap();
        assert!(rule.matches("example.org", 80) && rule.matches("example.org", 443));
        assert!(!rule.matches("example.org", 22));
        for bad in ["ftp://x", "a*b.com", "host:99999", "", "[::1"] {
            assert!(Rule::parse(bad, false).is_err(), "{bad}");
        }
    }
}
