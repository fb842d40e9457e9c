//! The HTTP server of `--metrics-addr`: /metrics, /healthz and /livez.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use axum::{
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

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    // Map reads are syscalls: keep them off the runtime's worker threads.
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("rendering metrics: {e}\n"),
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
