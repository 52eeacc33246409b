//! The one accept loop of every HTTP server weir runs (metrics and health, the xDS admin API, the
//! validating webhook): a cap on open connections (over it a new connection is closed at once), a
//! header-read timeout that also bounds how long a keep-alive connection may sit idle, an optional
//! TLS-handshake timeout, and metrics when a limit is hit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Limits of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's headers must arrive within this; an idle keep-alive connection is closed after it.
    pub header_read_timeout: Duration,
    /// Reading a request body (the webhook's) must finish within this.
    pub body_timeout: Duration,
    /// TLS handshake (the webhook) must finish within this.
    pub tls_handshake_timeout: Duration,
    /// Open connections; a connection over the cap is closed at accept.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(5),
            max_connections: 512,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    server: &'static str,
    limit: &'static str,
}

/// `weir_http_limit_hits_total{server,limit}`: connections closed because a limit was hit
/// (`max_connections`, `header_timeout`, `tls_handshake_timeout`, `body_timeout`).
#[derive(Clone, Default)]
pub struct HttpMetrics {
    hits: Family<LimitLabels, Counter>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("weir_http");
        r.register(
            "limit_hits",
            "HTTP connections or requests cut because a limit was hit, by server and limit",
            m.hits.clone(),
        );
        m
    }

    pub fn hit(&self, server: &'static str, limit: &'static str) {
        self.hits.get_or_create(&LimitLabels { server, limit }).inc();
    }

    pub fn get(&self, server: &'static str, limit: &'static str) -> u64 {
        self.hits.get_or_create(&LimitLabels { server, limit }).get()
    }
}

/// One server's identity and limits, shared by its connections.
#[derive(Clone)]
pub struct HttpServer {
    pub name: &'static str,
    pub limits: HttpLimits,
    pub metrics: HttpMetrics,
}

impl HttpServer {
    /// Serves one connection's HTTP/1.1 with the header-read timeout.
    pub async fn serve_connection<I, S, B>(&self, io: I, service: S, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let result = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .serve_connection(TokioIo::new(io), service)
            .await;
        if let Err(e) = result {
            if e.is_timeout() {
                self.metrics.hit(self.name, "header_timeout");
            }
            tracing::debug!(server = self.name, %peer, error = %e, "HTTP connection ended");
        }
    }

    /// The accept loop: `connection(stream, peer)` serves one connection; at most `max_connections`
    /// run at once. Ends when `shutdown` resolves, dropping open connections after a short grace.
    pub async fn accept_loop<F, Fut>(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
        connection: F,
    ) -> std::io::Result<()>
    where
        F: Fn(Self, TcpStream, SocketAddr) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            self.metrics.hit(self.name, "max_connections");
                            tracing::debug!(server = self.name, %peer, "connection cap reached; closing this one");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let fut = connection(self.clone(), stream, peer);
                        connections.spawn(async move {
                            fut.await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(server = self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut shutdown => break,
            }
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), async { while connections.join_next().await.is_some() {} })
                .await;
        connections.abort_all();
        Ok(())
    }
}

/// Binds `addr` and serves `router` with the limits until `shutdown`. Binding errors are returned at
/// once so that a port clash is a startup error.
pub async fn serve_router(
    server: HttpServer,
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(server = server.name, addr = %listener.local_addr()?, "HTTP server listening");
    Ok(serve_listener(server, listener, router, shutdown))
}

/// [`serve_router`] on a bound listener.
pub fn serve_listener(
    server: HttpServer,
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(server.accept_loop(listener, shutdown, move |server, stream, peer| {
        let service = TowerToHyperService::new(router.clone());
        async move { server.serve_connection(stream, service, peer).await }
    }))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr) -> Option<String> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    }

    async fn start(limits: HttpLimits) -> (SocketAddr, HttpMetrics, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = HttpMetrics::default();
        let server = HttpServer { name: "test", limits, metrics: metrics.clone() };
        let router = Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        serve_listener(server, listener, router, async move {
            let _ = stopped.await;
        });
        (addr, metrics, stop)
    }

    #[tokio::test]
    async fn stalled_headers_are_cut_and_others_still_answered() {
        let limits = HttpLimits { header_read_timeout: Duration::from_millis(300), ..HttpLimits::default() };
        let (addr, metrics, _stop) = start(limits).await;
        let mut stalled = Vec::new();
        for _ in 0..50 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            stalled.push(s);
        }
        let answer = tokio::time::timeout(Duration::from_secs(2), get(addr)).await.unwrap().unwrap();
        assert!(answer.ends_with("ok"), "{answer}");
        for s in &mut stalled {
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await.expect("closed").ok();
        }
        assert_eq!(metrics.get("test", "header_timeout"), 50);
        // An idle keep-alive connection is closed by the same timeout.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut buf)).await.expect("idle closed").ok();
        assert!(String::from_utf8_lossy(&buf).contains("200 OK"));
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_accept() {
        let limits =
            HttpLimits { max_connections: 5, header_read_timeout: Duration::from_secs(30), ..HttpLimits::default() };
        let (addr, metrics, _stop) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The sixth is closed without an answer, and counted.
        let answer = get(addr).await.unwrap_or_default();
        assert!(answer.is_empty(), "{answer}");
        assert_eq!(metrics.get("test", "max_connections"), 1);
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(get(addr).await.unwrap().ends_with("ok"));
    }
}
