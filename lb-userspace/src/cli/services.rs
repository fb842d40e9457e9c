//! `lbctl services`: one row per frontend (address, port, protocol) with the backend set it
//! leads to, and the set of traffic from pods when that differs. The JSON is
//! `dataplane::view::ServiceView` plus what an empty set answers: the contract README's "lbctl"
//! section spells out.
use std::net::SocketAddr;

use anyhow::Result;
use lb_common::VERDICT_DROP;
use serde::Serialize;

use super::{port_label, table::Builder, units};
use crate::dataplane::{view, Maps};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    #[serde(flatten)]
    pub view: view::ServiceView,
    /// What a new connection gets while `backends` is empty: "reject" (no endpoints at all) or
    /// "drop" (endpoints exist, none usable here under a Local policy).
    pub when_empty: &'static str,
}

/// Every frontend, sorted by service, port name and frontend.
pub fn rows(maps: &Maps) -> Result<Vec<ServiceRow>> {
    Ok(view::services(maps)?
        .into_iter()
        .map(|v| {
            let verdict = maps.services.get(&v.service_id, 0).map(|s| s.verdict);
            ServiceRow {
                when_empty: if verdict.ok() == Some(VERDICT_DROP) {
                    "drop"
                } else {
                    "reject"
                },
                view: v,
            }
        })
        .collect())
}

pub fn table(rows: &[ServiceRow]) -> String {
    let mut t = Builder::new(&["SERVICE", "FRONTEND", "KIND", "POLICY", "BACKENDS"]);
    for r in rows {
        let v = &r.view;
        let mut policy = Vec::new();
        if v.external_traffic_local {
            policy.push("eTP=Local".to_string());
        }
        if v.internal_traffic_local {
            policy.push("iTP=Local".to_string());
        }
        if let Some(secs) = v.session_affinity_timeout {
            policy.push(format!("affinity={}", units::duration(secs.into())));
        }
        if !v.source_ranges.is_empty() {
            policy.push(format!("from={}", v.source_ranges.join(",")));
        }
        let mut backends = if v.backends.is_empty() {
            format!("(none: {})", r.when_empty)
        } else {
            backend_lines(&v.backends)
        };
        if let Some(pods) = &v.pod_backends {
            backends = format!("{backends}\nfrom pods:\n{}", backend_lines(pods));
        }
        t.row(vec![
            port_label(&v.service, &v.port_name),
            format!(
                "{}/{}",
                SocketAddr::new(v.frontend.ip, v.frontend.port),
                v.frontend.protocol
            ),
            v.frontend.kind.to_string(),
            if policy.is_empty() {
                "-".into()
            } else {
                policy.join(" ")
            },
            backends,
        ]);
    }
    t.render()
}

fn backend_lines(backends: &[view::BackendView]) -> String {
    backends
        .iter()
        .map(|b| {
            let mut flags = Vec::new();
            if b.local {
                flags.push("local");
            }
            if b.terminating {
                flags.push("terminating");
            }
            let addr = SocketAddr::new(b.ip, b.port);
            if flags.is_empty() {
                addr.to_string()
            } else {
                format!("{addr} ({})", flags.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
