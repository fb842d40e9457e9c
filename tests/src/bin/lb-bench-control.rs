//! Control-plane cost: the agent's pipeline from a changed view of the cluster to written maps
//! (`model::desired` then `Reconciler::apply` on real pinned maps), for N ClusterIP services of
//! 10 endpoints each: from cold, and for one endpoint changed (p50/p99 over 100 changes).
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb::{
    dataplane::{cleanup, reconcile::Reconciler, Capacities, Dataplane, Options},
    model::{self, NodeContext, ObjectRef, Objects},
};

const ENDPOINTS: usize = 10;
const CHANGES: usize = 100;

fn main() -> Result<()> {
    let sizes: Vec<usize> = match std::env::args().nth(1) {
        Some(list) => list
            .split(',')
            .map(|n| n.parse().context("sizes: comma-separated numbers"))
            .collect::<Result<_>>()?,
        None => vec![1_000, 10_000, 50_000],
    };
    println!(
        "{:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "N", "cold ms", "model ms", "apply ms", "chg p50", "chg p99"
    );
    for n in sizes {
        let pin = PathBuf::from(format!("/sys/fs/bpf/lb-bench-ctl-{}", std::process::id()));
        let result = bench(&pin, n);
        cleanup(&pin).context("removing the bench's pins")?;
        let r = result?;
        println!(
            "{n:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.2} {:>10.2}",
            ms(r.cold_model + r.cold_apply),
            ms(r.cold_model),
            ms(r.cold_apply),
            ms(r.change_p50),
            ms(r.change_p99)
        );
    }
    Ok(())
}

struct Run {
    cold_model: Duration,
    cold_apply: Duration,
    change_p50: Duration,
    change_p99: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench(pin: &std::path::Path, n: usize) -> Result<Run> {
    let mut objects = cluster(n)?;
    let node = NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec![Ipv4Addr::new(192, 0, 2, 10)],
    };
    let mut dp = Dataplane::open(&Options {
        pin_path: pin.to_path_buf(),
        ..Default::default()
    })?;
    let caps = Capacities::read(dp.layout())?;
    let mut rec = Reconciler::adopt(&dp.maps, caps)?;
    let t = Instant::now();
    let desired = model::desired(&objects, &node);
    let cold_model = t.elapsed();
    let report = rec.apply(&mut dp.maps, &desired);
    let cold_apply = t.elapsed() - cold_model;
    anyhow::ensure!(
        report.errors.is_empty() && report.refused.is_empty(),
        "cold apply: {:?} {:?}",
        report.errors,
        report.refused
    );
    let mut changes = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        move_endpoint(&mut objects, i * 7919 % n, i)?;
        let t = Instant::now();
        let desired = model::desired(&objects, &node);
        let report = rec.apply(&mut dp.maps, &desired);
        changes.push(t.elapsed());
        anyhow::ensure!(report.writes() > 0, "change {i} wrote nothing");
    }
    changes.sort();
    Ok(Run {
        cold_model,
        cold_apply,
        change_p50: changes[CHANGES / 2],
        change_p99: changes[CHANGES * 99 / 100],
    })
}

/// Service `i`'s ClusterIP: 10.96.0.0/12 has room for a million.
fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

/// Endpoint `j` of service `i` (10.128.0.0/9 holds 8M), on node-a for j even.
fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS * 4 + j) as u32)
}

fn cluster(n: usize) -> Result<Objects> {
    let mut objects = Objects::default();
    for i in 0..n {
        let name = format!("svc-{i}");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "clusterIP": cluster_ip(i).to_string(),
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        }))?;
        objects.services.insert(ObjectRef::new("bench", &name), svc);
        let endpoints: Vec<(Ipv4Addr, usize)> =
            (0..ENDPOINTS).map(|j| (endpoint_ip(i, j), j)).collect();
        let slice = endpoint_slice(&name, &endpoints)?;
        objects
            .slices
            .insert(ObjectRef::new("bench", &format!("{name}-1")), slice);
    }
    Ok(objects)
}

fn endpoint_slice(service: &str, endpoints: &[(Ipv4Addr, usize)]) -> Result<EndpointSlice> {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, j)| {
            let node = if j % 2 == 0 { "node-a" } else { "node-b" };
            serde_json::json!({"addresses": [ip.to_string()], "nodeName": node})
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{service}-1"),
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": eps,
    }))?)
}

/// Replace endpoint 0 of service `i` with a new address (as a pod restarting elsewhere).
fn move_endpoint(objects: &mut Objects, i: usize, round: usize) -> Result<()> {
    let name = format!("svc-{i}");
    let mut endpoints: Vec<(Ipv4Addr, usize)> =
        (0..ENDPOINTS).map(|j| (endpoint_ip(i, j), j)).collect();
    endpoints[0].0 = endpoint_ip(i, ENDPOINTS + 1 + round % (3 * ENDPOINTS - 1));
    let slice = endpoint_slice(&name, &endpoints)?;
    objects
        .slices
        .insert(ObjectRef::new("bench", &format!("{name}-1")), slice);
    Ok(())
}
