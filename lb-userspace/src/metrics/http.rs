//! The HTTP server of `--metrics-addr`: /metrics, /healthz and /livez.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use super::Metrics;
use crate::health::ProxyStatus;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve /metrics, /healthz and /livez on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on --metrics-addr {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /livez");
    serve_on(listener, metrics).await
}

/// [`serve`], trying again every 5 s while the address cannot be bound (as kube-proxy does):
/// metrics are never a reason to stop programming the dataplane.
pub async fn serve_retrying(addr: SocketAddr, metrics: Metrics) {
    let mut logged = None;
    loop {
        if let Err(e) = serve(addr, metrics.clone()).await {
            let msg = format!("{e:#}");
            if logged.as_ref() != Some(&msg) {
                tracing::error!("metrics server: {msg}; retrying every 5 s");
                logged = Some(msg);
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Metrics) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(metrics);
    axum::serve(listener, app).await?;
    Ok(())
}

/// How long a rendered exposition answers later scrapes.
const SCRAPE_CACHE: Duration = Duration::from_secs(1);

impl Metrics {
    /// The exposition for a scrape. Scrapes take turns (one rendering, one reading of the
    /// kernel's counters, at a time, whatever the number of scrapers) and those within
    /// [`SCRAPE_CACHE`] of a rendering share it.
    async fn scrape(&self) -> Result<Bytes, tokio::task::JoinError> {
        let mut last = self.inner.scrape.lock().await;
        if let Some((at, text)) = &*last {
            if at.elapsed() < SCRAPE_CACHE {
                return Ok(text.clone());
            }
        }
        let metrics = self.clone();
        // Map reads are syscalls: keep them off the runtime's worker threads.
        // Shared, not copied, by every response that answers with it.
        let text = Bytes::from(tokio::task::spawn_blocking(move || metrics.render()).await?);
        *last = Some((Instant::now(), text.clone()));
        Ok(text)
    }
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    match metrics.scrape().await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            Bytes::from(format!("rendering metrics: {e}\n")),
        ),
    }
}

async fn livez(State(metrics): State<Metrics>) -> impl IntoResponse {
    livez_reply(metrics.liveness().stalled())
}

pub fn livez_reply(stalled: Option<Duration>) -> (StatusCode, String) {
    match stalled {
        None => (StatusCode::OK, "ok".into()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the control loop has not turned for {:.0} s\n",
                age.as_secs_f64()
            ),
        ),
    }
}

async fn healthz(State(metrics): State<Metrics>) -> impl IntoResponse {
    healthz_reply(metrics.proxy_health().status())
}

pub fn healthz_reply(status: ProxyStatus) -> (StatusCode, String) {
    match status {
        ProxyStatus::Healthy(_) => (StatusCode::OK, "ok".into()),
        ProxyStatus::NotSynced => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no sync applied yet\n".into(),
        ),
        ProxyStatus::Stale(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the last successful sync was {:.1} s ago\n",
                age.as_secs_f64()
            ),
        ),
    }
}
