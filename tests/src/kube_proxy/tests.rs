use super::*;

fn svc(name: &str, ip: &str, node_port: Option<u16>, endpoints: &[&str]) -> ServicePort {
    ServicePort {
        namespace: "ns1".into(),
        name: name.into(),
        port_name: "p80".into(),
        cluster_ip: ip.parse().unwrap(),
        port: 80,
        node_port,
        endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

fn node() -> Node {
    Node {
        cluster_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
    }
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The chain names kube-proxy's own tests expect for ns1/svc1:p80 and endpoint 10.180.0.1:80.
#[test]
fn chain_names_hash_like_kube_proxy() {
    let s = svc("svc1", "10.20.30.41", Some(3001), &["10.180.0.1:80"]);
    let ep = s.endpoints[0];
    assert_eq!(iptables_chain("KUBE-SVC-", &s), "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(iptables_chain("KUBE-EXT-", &s), "KUBE-EXT-XPGD46QRK7WJZT7O");
    assert_eq!(
        iptables_endpoint_chain(&s, &ep),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
    assert_eq!(
        nft_chain("service-", &s),
        "service-ULMVA6XW-ns1/svc1/tcp/p80"
    );
    assert_eq!(
        nft_endpoint_chain(&s, &ep),
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
}

#[test]
fn base32_matches_rfc4648_vectors() {
    assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    assert_eq!(base32(b"f"), "MY");
}

#[test]
fn probabilities_are_one_over_the_endpoints_left() {
    let p: Vec<String> = (0..4).map(|i| probability(5, i)).collect();
    assert_eq!(
        p,
        [
            "0.2000000000",
            "0.2500000000",
            "0.3333333333",
            "0.5000000000"
        ]
    );
}

#[test]
fn iptables_service_chains_balance_with_statistic() {
    let eps = ["10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080"];
    let text = iptables_restore(
        &[
            svc("a", "10.96.0.10", Some(30080), &eps),
            svc("b", "10.96.0.11", None, &eps[..1]),
        ],
        &node(),
    );
    let services = lines_starting(&text, "-A KUBE-SERVICES ");
    assert_eq!(
        services.len(),
        3,
        "two ClusterIPs and the NodePort tail:\n{text}"
    );
    assert!(services[0].contains("-d 10.96.0.10 --dport 80 -j KUBE-SVC-"));
    assert!(services[1].contains("\"ns1/b:p80 cluster IP\""));
    assert!(services[2].ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));

    let a = iptables_chain("KUBE-SVC-", &svc("a", "10.96.0.10", None, &[]));
    let to_endpoints: Vec<&str> = lines_starting(&text, &format!("-A {a} "))
        .into_iter()
        .filter(|l| l.contains("-j KUBE-SEP-"))
        .collect();
    assert_eq!(to_endpoints.len(), 3);
    assert!(to_endpoints[0].contains("--probability 0.3333333333"));
    assert!(to_endpoints[1].contains("--probability 0.5000000000"));
    assert!(
        !to_endpoints[2].contains("statistic"),
        "the last rule always matches"
    );
    assert!(text.contains("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));

    let nodeports = lines_starting(&text, "-A KUBE-NODEPORTS ");
    assert_eq!(nodeports.len(), 1);
    let ext = iptables_chain("KUBE-EXT-", &svc("a", "10.96.0.10", None, &[]));
    assert!(nodeports[0].ends_with(&format!("--dport 30080 -j {ext}")));
    let ext_rules = lines_starting(&text, &format!("-A {ext} "));
    assert!(
        ext_rules[0].ends_with("-j KUBE-MARK-MASQ"),
        "NodePort traffic is masqueraded"
    );
    assert!(ext_rules[1].ends_with(&format!("-j {a}")));
    assert!(text.contains("-j DNAT --to-destination 10.244.1.7:8080"));
    assert!(text.contains("-j MASQUERADE --random-fully"));
    assert!(text.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"));
}

/// Every chain a rule jumps to is declared in the same table, and each table is committed.
#[test]
fn iptables_targets_are_declared() {
    let eps = ["10.244.1.5:8080", "10.244.1.6:8080"];
    let text = iptables_restore(&[svc("a", "10.96.0.10", Some(30080), &eps)], &node());
    for table in text.split("COMMIT\n").filter(|t| !t.is_empty()) {
        for target in table
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "-j" && w[1].starts_with("KUBE-"))
            .map(|w| w[1])
        {
            assert!(
                table.contains(&format!("\n:{target} - [0:0]\n")),
                "{target} is not declared in\n{table}"
            );
        }
    }
    assert_eq!(text.matches("COMMIT\n").count(), 2);
}

#[test]
fn iptables_large_clusters_drop_endpoint_comments() {
    let eps: Vec<String> = (0..5).map(|i| format!("10.244.1.{i}:8080")).collect();
    let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
    let many: Vec<ServicePort> = (0..201)
        .map(|i| {
            svc(
                &format!("s{i}"),
                &format!("10.96.{}.{}", i / 250, i % 250),
                None,
                &eps,
            )
        })
        .collect();
    let text = iptables_restore(&many, &node());
    let sep = lines_starting(&text, "-A KUBE-SEP-");
    assert_eq!(sep.len(), 201 * 5 * 2);
    assert!(
        sep.iter().all(|l| !l.contains("--comment")),
        "1,005 endpoints: large cluster mode"
    );
    let small = iptables_restore(&many[..1], &node());
    assert!(lines_starting(&small, "-A KUBE-SEP-")
        .iter()
        .all(|l| l.contains("--comment ns1/s0:p80")));
}

#[test]
fn nft_services_dispatch_through_maps_and_numgen() {
    let eps = ["10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080"];
    let text = nft_script(&[svc("a", "10.96.0.10", Some(30080), &eps)], &node());
    let s = svc("a", "10.96.0.10", None, &[]);
    let service = nft_chain("service-", &s);
    let external = nft_chain("external-", &s);
    assert!(text.contains(&format!(
        "add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto {service} }}"
    )));
    assert!(text.contains(&format!(
        "add element ip kube-proxy service-nodeports {{ tcp . 30080 : goto {external} }}"
    )));
    let numgen = lines_starting(&text, &format!("add rule ip kube-proxy {service} numgen"));
    assert_eq!(numgen.len(), 1);
    assert!(numgen[0].contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
    assert_eq!(numgen[0].matches("goto endpoint-").count(), 3);
    assert!(text.contains("meta l4proto tcp dnat to 10.244.1.6:8080"));
    assert!(text.contains("masquerade fully-random"));
    assert!(text.contains("type nat hook prerouting priority -100"));
}

/// nft resolves chain names as it reads: every chain is added before a rule or element names it.
#[test]
fn nft_chains_are_added_before_use() {
    let eps = ["10.244.1.5:8080", "10.244.1.6:8080"];
    let text = nft_script(
        &[
            svc("a", "10.96.0.10", Some(30080), &eps),
            svc("b", "10.96.0.11", None, &eps),
        ],
        &node(),
    );
    let mut added: Vec<&str> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("add chain ") {
            added.push(words[4]);
        }
        for w in words
            .windows(2)
            .filter(|w| w[0] == "goto" || w[0] == "jump")
        {
            assert!(
                added.contains(&w[1]),
                "{} used before it is added: {line}",
                w[1]
            );
        }
    }
}

#[test]
fn nft_batches_make_up_the_script() {
    let eps = ["10.244.1.5:8080"];
    let services: Vec<ServicePort> = (0..5)
        .map(|i| svc(&format!("s{i}"), &format!("10.96.0.{}", 10 + i), None, &eps))
        .collect();
    let batches = nft_batches(&services, &node(), 2);
    assert_eq!(batches.len(), 4, "the table, then 2 + 2 + 1 services");
    assert!(batches[0].starts_with("add table ip kube-proxy"));
    assert!(batches[1].contains("ns1/s1/") && !batches[1].contains("ns1/s2/"));
    assert_eq!(batches.concat(), nft_script(&services, &node()));
}

/// A partial sync rewrites every service's rule in KUBE-SERVICES but declares and fills only the
/// changed service's own chains, and leaves the built-in chains alone (restored with --noflush).
#[test]
fn iptables_partial_sync_writes_only_the_changed_chains() {
    let eps = ["10.244.1.5:8080", "10.244.1.6:8080"];
    let services = [
        svc("a", "10.96.0.10", Some(30080), &eps),
        svc("b", "10.96.0.11", Some(30081), &eps),
    ];
    let text = iptables_partial(&services, &node(), &|s| s.name == "b");
    assert_eq!(lines_starting(&text, "-A KUBE-SERVICES ").len(), 3);
    assert_eq!(lines_starting(&text, "-A KUBE-NODEPORTS ").len(), 2);
    let declared: Vec<&str> = lines_starting(&text, ":KUBE-")
        .into_iter()
        .filter(|l| l.starts_with(":KUBE-SVC-") || l.starts_with(":KUBE-SEP-"))
        .collect();
    assert_eq!(declared.len(), 3, "b's service chain and its two endpoints");
    let b = &services[1];
    assert!(text.contains(&format!(":{} - [0:0]", iptables_chain("KUBE-SVC-", b))));
    assert!(text.contains(&format!(":{} - [0:0]", iptables_chain("KUBE-EXT-", b))));
    let a_svc = iptables_chain("KUBE-SVC-", &services[0]);
    assert!(lines_starting(&text, &format!("-A {a_svc} ")).is_empty());
    for builtin in ["PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "FORWARD"] {
        assert!(
            !text.contains(&format!(":{builtin} ")),
            "{builtin} declared"
        );
        assert!(
            !text.contains(&format!("-A {builtin} ")),
            "{builtin} touched"
        );
    }
    // What the full restore has beyond the built-in chains and jumps is the unchanged chains.
    let everything = iptables_partial(&services, &node(), &|_| true);
    let full = iptables_restore(&services, &node());
    assert!(everything.lines().all(|l| full.contains(l)));
}

/// An endpoint change in nftables mode re-creates (add + flush) the service's chains, writes
/// their rules, flushes the removed endpoint's chain and writes no map element.
#[test]
fn nft_endpoint_change_rewrites_the_service_chains_only() {
    let s = svc(
        "a",
        "10.96.0.10",
        None,
        &["10.244.1.5:8080", "10.244.1.7:8080"],
    );
    let removed: SocketAddrV4 = "10.244.1.6:8080".parse().unwrap();
    let text = nft_endpoints_changed(&s, &[removed], &node());
    let service = nft_chain("service-", &s);
    let chains: Vec<&str> = lines_starting(&text, "add chain ");
    assert_eq!(chains.len(), 3, "two endpoints and the service:\n{text}");
    for chain in chains {
        let name = chain.split_whitespace().nth(4).unwrap();
        assert!(text.contains(&format!("flush chain ip kube-proxy {name}\n")));
    }
    assert!(text.contains(&format!(
        "add rule ip kube-proxy {service} numgen random mod 2 vmap"
    )));
    assert!(text.contains("dnat to 10.244.1.7:8080"));
    let stale = nft_endpoint_chain(&s, &removed);
    assert!(text.ends_with(&format!("flush chain ip kube-proxy {stale}\n")));
    assert!(!text.contains("add element"), "no map element changes");
}
