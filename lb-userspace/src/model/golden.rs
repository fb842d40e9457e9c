//! Golden tests in the style of Cilium's pkg/loadbalancer tests: each directory under
//! `testdata/model/` holds `input.yaml` (Services, EndpointSlices, Nodes) and `expected.txt`, a
//! dump of the desired maps for node `node-a` with NodePort address 192.0.2.10, then, when the
//! IPv6 model has anything to say, a dump of the IPv6 ones with NodePort address 2001:db8::10.
//! Beside them, `maps.txt` shows the kernel maps once that is programmed (written by
//! dataplane::reconcile's tests, on the in-memory maps). `LB_UPDATE_GOLDEN=1 cargo test -p
//! lb-userspace golden reconcile` rewrites the expectations (review the diff before committing).
use std::{
    fmt::Write as _,
    net::{Ipv6Addr, SocketAddr},
    path::Path,
};

use super::{desired, Desired, Family, NodeContext};
use crate::source::manifests::parse;

fn socket<A: Family>(ip: A, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn dump<A: Family>(d: &Desired<A>) -> String {
    let mut out = String::new();
    for (key, fe) in &d.frontends {
        let _ = writeln!(
            out,
            "frontend {}/{} {:?} {} -> {}:{}/{} {:?}",
            socket(key.ip, key.port),
            key.proto.as_str(),
            key.scope,
            fe.kind.as_str(),
            fe.set.service,
            fe.set.port_name,
            fe.set.proto.as_str(),
            fe.set.policy,
        );
        if let Some(ranges) = &fe.source_ranges {
            let ranges: Vec<String> = ranges
                .iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect();
            out.pop();
            let _ = writeln!(out, " ranges={}", ranges.join(","));
        }
    }
    for (key, set) in &d.sets {
        let _ = writeln!(
            out,
            "set {}:{}/{} {:?} verdict={:?} affinity={:?} ext_local={} int_local={}",
            key.service,
            key.port_name,
            key.proto.as_str(),
            key.policy,
            set.verdict,
            set.affinity_timeout,
            set.external_local,
            set.internal_local,
        );
        for b in &set.backends {
            let _ = writeln!(
                out,
                "  backend {}{}{}",
                socket(b.ip, b.port),
                if b.local { " local" } else { "" },
                if b.terminating { " terminating" } else { "" },
            );
        }
    }
    let in_sets: std::collections::BTreeSet<_> = d
        .sets
        .values()
        .flat_map(|s| s.backends.iter().map(|b| (b.ip, b.port)))
        .collect();
    for (key, b) in d.retained.iter().filter(|(k, _)| !in_sets.contains(k)) {
        let _ = writeln!(
            out,
            "kept {} (established connections only){}",
            socket(key.0, key.1),
            if b.terminating { " terminating" } else { "" }
        );
    }
    for (port, hc) in &d.health_checks {
        let _ = writeln!(
            out,
            "healthcheck {port} {} localEndpoints={}",
            hc.service, hc.local_endpoints
        );
    }
    let mut problems = d.problems.clone();
    problems.sort();
    for p in problems {
        let _ = writeln!(out, "problem {p}");
    }
    out
}

fn run_case(dir: &Path) -> Result<(), String> {
    let input = std::fs::read_to_string(dir.join("input.yaml")).map_err(|e| e.to_string())?;
    let (objects, mut problems) = parse(&input, "input.yaml").map_err(|p| p.to_string())?;
    let mut store = crate::model::Objects::default();
    for obj in objects {
        obj.insert_into(&mut store);
    }
    let node: NodeContext = NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec!["192.0.2.10".parse().unwrap()],
    };
    let mut d = desired(&store, &node);
    d.problems.append(&mut problems);
    let mut got = dump(&d);
    let node6: NodeContext<Ipv6Addr> = NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec!["2001:db8::10".parse().unwrap()],
    };
    let ipv6 = dump(&desired(&store, &node6));
    if !ipv6.is_empty() {
        got += "--- IPv6\n";
        got += &ipv6;
    }
    let expected_path = dir.join("expected.txt");
    if std::env::var_os("LB_UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &got).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&expected_path).map_err(|e| e.to_string())?;
    if got != expected {
        return Err(format!("--- expected\n{expected}--- got\n{got}"));
    }
    Ok(())
}

/// The entries of `testdata/<sub>`, sorted (the model goldens here, the reconciler's scripts).
pub(crate) fn testdata(sub: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(sub);
    let mut entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "nothing in {}", root.display());
    entries
}

#[test]
fn golden() {
    let cases = testdata("model");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_string_lossy().to_string();
            run_case(dir).err().map(|e| format!("case {name}:\n{e}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
