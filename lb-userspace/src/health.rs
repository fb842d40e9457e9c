//! Health as load balancers and kubelet see it, kube-proxy compatible:
//! - [`ProxyHealth`]: whether the agent keeps the dataplane programmed (`/healthz`, and the
//!   `serviceProxyHealthy` field below), after kube-proxy's ProxyHealthServer;
//! - [`HealthServers`]: one HTTP server per healthCheckNodePort of a LoadBalancer service with
//!   externalTrafficPolicy=Local, answering 200 while the service has ready endpoints on this
//!   node (and the agent is healthy), 503 otherwise, with kube-proxy's JSON body and headers
//!   (pkg/proxy/healthcheck/service_health.go). Any path and method get the same answer.
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, Router};
use tokio::sync::oneshot;

use crate::model::HealthCheck;

/// When the dataplane was last programmed without errors; healthy while that is recent.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    last_updated: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
}

/// What [`ProxyHealth::status`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyStatus {
    /// The last successful sync was this long ago (less than the timeout).
    Healthy(Duration),
    /// No sync has been applied yet.
    NotSynced,
    /// The last successful sync was this long ago, more than the timeout.
    Stale(Duration),
}

impl ProxyHealth {
    /// Unhealthy until the first [`ProxyHealth::updated`], and when the last one is older than
    /// `timeout` (kube-proxy uses twice its sync period).
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            last_updated: Arc::new(Mutex::new(None)),
            timeout,
        }
    }

    /// The maps were just brought up to date.
    pub fn updated(&self) {
        *self.last_updated.lock().unwrap() = Some(Instant::now());
    }

    pub fn status(&self) -> ProxyStatus {
        match *self.last_updated.lock().unwrap() {
            None => ProxyStatus::NotSynced,
            Some(at) if at.elapsed() < self.timeout => ProxyStatus::Healthy(at.elapsed()),
            Some(at) => ProxyStatus::Stale(at.elapsed()),
        }
    }

    pub fn is_healthy(&self) -> bool {
        matches!(self.status(), ProxyStatus::Healthy(_))
    }
}

/// Whether the agent's control loop still turns (`/livez`). It turns on every change and at
/// least every resync; a loop wedged in a call that never returns stops turning, /livez fails,
/// and the kubelet restarts the agent (its pinned programs and maps forward meanwhile). Alive
/// before the first turn: the initial list may take long, and the startup probe bounds that.
#[derive(Clone, Debug)]
pub struct Liveness {
    last_turn: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
}

impl Liveness {
    pub fn new(timeout: Duration) -> Self {
        Liveness {
            last_turn: Arc::new(Mutex::new(None)),
            timeout,
        }
    }

    /// The loop begins a turn.
    pub fn turned(&self) {
        *self.last_turn.lock().unwrap() = Some(Instant::now());
    }

    /// How long the loop has not turned, when that is the timeout or longer.
    pub fn stalled(&self) -> Option<Duration> {
        let last = (*self.last_turn.lock().unwrap())?;
        let age = last.elapsed();
        (age >= self.timeout).then_some(age)
    }
}

/// The healthCheckNodePort servers, kept equal to the model's `health_checks` by [`Self::sync`].
pub struct HealthServers {
    proxy: ProxyHealth,
    bind: IpAddr,
    servers: BTreeMap<u16, Server>,
    /// The last bind error logged per port, so a port that stays taken is logged once.
    failed: BTreeMap<u16, String>,
}

struct Server {
    shared: Arc<Shared>,
    /// Dropping it stops the server: the listener is closed at once (the port is free), idle
    /// keep-alive connections are closed and requests in flight finish.
    _stop: oneshot::Sender<()>,
}

struct Shared {
    check: Mutex<HealthCheck>,
    proxy: ProxyHealth,
}

impl HealthServers {
    /// Servers listen on all addresses of both families, as kube-proxy's do by default (Go's
    /// `:port`): a load balancer may probe the node's IPv4 or its IPv6 address.
    pub fn new(proxy: ProxyHealth) -> Self {
        Self::bound_to(IpAddr::V6(Ipv6Addr::UNSPECIFIED), proxy)
    }

    pub fn bound_to(bind: IpAddr, proxy: ProxyHealth) -> Self {
        HealthServers {
            proxy,
            bind,
            servers: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Open a server for each new port, update the counts of existing ones and close the ports
    /// no longer wanted. A port that cannot be bound is logged with its service and tried again
    /// on the next sync. Must run inside a tokio runtime.
    pub fn sync(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        self.servers.retain(|port, server| {
            let keep = checks.contains_key(port);
            if !keep {
                let service = &server.shared.check.lock().unwrap().service;
                tracing::info!(%service, port, "health check server closed");
            }
            keep
        });
        self.failed.retain(|port, _| checks.contains_key(port));
        for (port, check) in checks {
            if let Some(server) = self.servers.get(port) {
                *server.shared.check.lock().unwrap() = check.clone();
                continue;
            }
            match self.open(*port, check) {
                Ok(server) => {
                    tracing::info!(service = %check.service, port, "health check server listening");
                    self.failed.remove(port);
                    self.servers.insert(*port, server);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.failed.get(port) != Some(&msg) {
                        tracing::error!(
                            service = %check.service,
                            port,
                            "health check port not opened (retried on the next sync): {msg}"
                        );
                        self.failed.insert(*port, msg);
                    }
                }
            }
        }
    }

    /// The ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    fn open(&self, port: u16, check: &HealthCheck) -> std::io::Result<Server> {
        // Bound here, synchronously, so a taken port is known (and logged) in this sync.
        let std_listener = listen(SocketAddr::new(self.bind, port))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let shared = Arc::new(Shared {
            check: Mutex::new(check.clone()),
            proxy: self.proxy.clone(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = check.service.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(%service, port, "health check server failed: {e}");
            }
        });
        Ok(Server {
            shared,
            _stop: stop,
        })
    }
}

async fn handle(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let check = shared.check.lock().unwrap().clone();
    reply(&check, shared.proxy.is_healthy())
}

/// kube-proxy's answer: 200 when the service has local endpoints and the proxy is healthy,
/// else 503; the endpoint count also as a load-balancing weight header.
pub fn reply(
    check: &HealthCheck,
    proxy_healthy: bool,
) -> (StatusCode, [(&'static str, String); 3], String) {
    let count = check.local_endpoints;
    let status = if count != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let headers = [
        ("content-type", "application/json".to_string()),
        ("x-content-type-options", "nosniff".to_string()),
        ("x-load-balancing-endpoint-weight", count.to_string()),
    ];
    (status, headers, body(check, proxy_healthy))
}

/// The JSON body, byte for byte as kube-proxy writes it (tab-indented, no final newline).
pub fn body(check: &HealthCheck, proxy_healthy: bool) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\
         \"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&check.service.namespace),
        quote(&check.service.name),
        check.local_endpoints,
        proxy_healthy
    )
}

/// A listener on `addr`. `[::]` takes IPv4 too, whatever `net.ipv6.bindv6only` says; on a node
/// without IPv6 (`ipv6.disable=1`) it falls back to 0.0.0.0.
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) {
        Err(e)
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                && addr.ip() == Ipv6Addr::UNSPECIFIED =>
        {
            return listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())));
        }
        socket => socket?,
    };
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // As std's bind: a port whose old connections linger in TIME_WAIT can be opened again.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
    };

    use super::*;
    use crate::model::ObjectRef;

    fn check(local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            service: ObjectRef::new("shop", "web"),
            local_endpoints,
        }
    }

    fn healthy() -> ProxyHealth {
        let p = ProxyHealth::new(Duration::from_secs(20));
        p.updated();
        p
    }

    #[test]
    fn body_is_kube_proxys() {
        let want = "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}";
        assert_eq!(body(&check(2), true), want);
        let v: serde_json::Value = serde_json::from_str(&body(&check(0), false)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "service": {"namespace": "shop", "name": "web"},
                "localEndpoints": 0,
                "serviceProxyHealthy": false,
            })
        );
    }

    #[test]
    fn status_follows_local_endpoints_and_proxy_health() {
        assert_eq!(reply(&check(1), true).0, StatusCode::OK);
        assert_eq!(reply(&check(3), true).0, StatusCode::OK);
        assert_eq!(reply(&check(0), true).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply(&check(1), false).0, StatusCode::SERVICE_UNAVAILABLE);
        let (_, headers, _) = reply(&check(3), true);
        let get = |name: &str| headers.iter().find(|h| h.0 == name).map(|h| h.1.as_str());
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("x-content-type-options"), Some("nosniff"));
        assert_eq!(get("x-load-balancing-endpoint-weight"), Some("3"));
    }

    #[test]
    fn proxy_health_needs_a_recent_sync() {
        let p = ProxyHealth::new(Duration::from_secs(20));
        assert_eq!(p.status(), ProxyStatus::NotSynced);
        p.updated();
        assert!(p.is_healthy());
        let zero = ProxyHealth::new(Duration::ZERO);
        zero.updated();
        assert!(matches!(zero.status(), ProxyStatus::Stale(_)));
    }

    #[test]
    fn liveness_needs_a_recent_turn_of_the_loop() {
        let never = Liveness::new(Duration::ZERO);
        assert_eq!(never.stalled(), None, "alive before the first turn");
        never.turned();
        assert!(never.stalled().is_some(), "no turn within a zero timeout");
        let long = Liveness::new(Duration::from_secs(3600));
        long.turned();
        assert_eq!(long.stalled(), None);
    }

    /// One HTTP/1.0 GET on a fresh connection: (status, headers and body), or None when the
    /// connection is refused.
    fn get(port: u16) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /anything HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((status, out))
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Polls `f` on a blocking thread (so the servers keep running) until it returns Some.
    async fn until<T: Send + 'static>(
        what: &'static str,
        f: impl Fn() -> Option<T> + Send + 'static,
    ) -> T {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(v) = f() {
                    return v;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_open_update_and_close() {
        let mut servers = HealthServers::bound_to(Ipv4Addr::LOCALHOST.into(), healthy());
        let port = free_port();
        let mut checks = BTreeMap::from([(port, check(1))]);
        servers.sync(&checks);
        assert_eq!(servers.ports(), vec![port]);
        let (status, text) = until("200", move || get(port)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"localEndpoints\": 1"), "{text}");
        assert!(
            text.to_lowercase()
                .contains("x-content-type-options: nosniff"),
            "{text}"
        );

        checks.insert(port, check(0));
        servers.sync(&checks);
        let (status, text) = until("503", move || get(port).filter(|r| r.0 == 503)).await;
        assert!(text.contains("\"localEndpoints\": 0"), "{text}");
        assert_eq!(status, 503);

        servers.sync(&BTreeMap::new());
        assert!(servers.ports().is_empty());
        until("the port closed", move || {
            TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_port_is_retried_on_the_next_sync() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut servers = HealthServers::bound_to(Ipv4Addr::LOCALHOST.into(), healthy());
        let checks = BTreeMap::from([(port, check(2))]);
        servers.sync(&checks);
        assert!(servers.ports().is_empty(), "the port is taken");
        drop(taken);
        servers.sync(&checks);
        assert_eq!(servers.ports(), vec![port]);
        let (status, _) = until("200", move || get(port)).await;
        assert_eq!(status, 200);
    }
}
