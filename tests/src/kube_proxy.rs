//! kube-proxy's datapaths as rulesets, for comparing lb with them in the lab: the `iptables-restore`
//! input of kube-proxy's iptables mode and the `nft -f` script of its nftables mode, generated the
//! way kube-proxy's `syncProxyRules` writes them (pkg/proxy/iptables/proxier.go and
//! pkg/proxy/nftables/proxier.go) for a node whose services all have ready endpoints.
//!
//! What is reproduced, because it is on the per-connection path: the jump rules from the netfilter
//! hooks, the filter-table chains, `KUBE-SERVICES` → `KUBE-SVC-*` → `KUBE-SEP-*` with
//! `statistic --probability 1/(n-i)` (nftables: the `service-ips` / `service-nodeports` verdict
//! maps, `numgen random mod n vmap` and endpoint chains), NodePorts through `KUBE-EXT-*` with the
//! masquerade mark 0x4000 and `MASQUERADE --random-fully`, ClusterIP masquerading of traffic from
//! outside the cluster CIDR (kube-proxy's default `--detect-local-mode=ClusterCIDR`), chain names
//! hashed as kube-proxy hashes them, and comments (dropped from the per-endpoint rules above 1,000
//! endpoints, kube-proxy's "large cluster mode"). What is not: services without endpoints
//! (their reject rules), traffic policies Local, session affinity, externalIPs and LoadBalancer
//! IPs, and the canary chains that only watch for flushes. Every service port is TCP.
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

/// kube-proxy's default `--iptables-masquerade-bit` 14.
pub const MASQ_MARK: &str = "0x4000";
/// Above this many endpoints in total kube-proxy leaves comments out of per-endpoint rules.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// One port of a Service with its ready endpoints, as kube-proxy's service and endpoint maps hold
/// it.
#[derive(Clone, Debug)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// `ns/name:port`, kube-proxy's ServicePortName.String() (`ns/name` for an unnamed port).
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// What kube-proxy knows of the node: its cluster CIDR (traffic from elsewhere to a ClusterIP is
/// masqueraded) and the service CIDR (nftables drops traffic to unallocated ClusterIPs in it).
#[derive(Clone, Debug)]
pub struct Node {
    pub cluster_cidr: String,
    pub service_cidr: String,
}

/// The probability kube-proxy gives the i-th of n endpoints' rule: 1/(n-i), as `%0.10f`.
pub fn probability(n: usize, i: usize) -> String {
    format!("{:.10}", 1.0 / (n - i) as f64)
}

// ---------------------------------------------------------------------------------------------
// iptables

/// `KUBE-SVC-<hash>`, `KUBE-EXT-<hash>` (portProtoHash: sha256 of name + protocol, base32, 16).
fn iptables_chain(prefix: &str, svc: &ServicePort) -> String {
    let hash = base32(&sha256(format!("{}tcp", svc.port_name_string()).as_bytes()));
    format!("{prefix}{}", &hash[..16])
}

/// `KUBE-SEP-<hash>` of one endpoint of `svc`.
fn iptables_endpoint_chain(svc: &ServicePort, ep: &SocketAddrV4) -> String {
    let hash = base32(&sha256(
        format!("{}tcp{ep}", svc.port_name_string()).as_bytes(),
    ));
    format!("KUBE-SEP-{}", &hash[..16])
}

/// The `iptables-restore` input kube-proxy's iptables mode gives `services` on a fresh node: the
/// jump rules it ensures in the built-in chains (each prepended, so listed here in the order they
/// end up in), then its filter and nat tables. `--random-fully` is used, as kube-proxy does when
/// iptables supports it.
pub fn iptables_restore(services: &[ServicePort], node: &Node) -> String {
    iptables_sync(services, node, Sync::Full)
}

/// The `iptables-restore --noflush` input of kube-proxy's partial sync (1.28+) after the
/// endpoints of the services `changed` picks changed. Every sync rewrites the top-level chains
/// (filter's, and nat's `KUBE-SERVICES` with one rule per service port, `KUBE-NODEPORTS`, ...);
/// only the changed services' `KUBE-SVC-*`/`KUBE-EXT-*`/`KUBE-SEP-*` chains are written, the
/// others' are left as they are. The jumps from the built-in chains are ensured on full syncs
/// only. A removed endpoint's chain is not deleted: with more than 1,000 endpoints kube-proxy
/// deletes stale chains (after an `iptables-save`) at most once per sync period.
pub fn iptables_partial(
    services: &[ServicePort],
    node: &Node,
    changed: &dyn Fn(&ServicePort) -> bool,
) -> String {
    iptables_sync(services, node, Sync::Partial(changed))
}

/// Which sync of kube-proxy's iptables proxier to write.
#[derive(Clone, Copy)]
enum Sync<'a> {
    /// Onto a fresh node: the built-in chains with kube-proxy's jumps, and every service chain.
    Full,
    /// With `--noflush`: the service chains only of the services the predicate picks.
    Partial(&'a dyn Fn(&ServicePort) -> bool),
}

fn iptables_sync(services: &[ServicePort], node: &Node, sync: Sync) -> String {
    let mut out = String::new();
    iptables_filter(&mut out, sync);
    iptables_nat(&mut out, services, node, sync);
    out
}

fn iptables_filter(out: &mut String, sync: Sync) {
    out.push_str("*filter\n");
    if let Sync::Full = sync {
        out.push_str(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    }
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    if let Sync::Full = sync {
        iptables_filter_jumps(out);
    }
    out.push_str(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
    );
    // nf_conntrack_tcp_be_liberal is off by default, so kube-proxy drops INVALID packets.
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n",
    );
}

/// The jumps from the built-in filter chains, which kube-proxy ensures on full syncs.
fn iptables_filter_jumps(out: &mut String) {
    let new = "-m conntrack --ctstate NEW ";
    let lb_firewall = "-m comment --comment \"kubernetes load balancer firewall\"";
    let portals = "-m comment --comment \"kubernetes service portals\"";
    let external = "-m comment --comment \"kubernetes externally-visible service portals\"";
    let jumps = [
        ("INPUT", String::new(), "KUBE-FIREWALL"),
        (
            "INPUT",
            format!("{new}{lb_firewall} "),
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "INPUT",
            "-m comment --comment \"kubernetes health check service ports\" ".into(),
            "KUBE-NODEPORTS",
        ),
        (
            "INPUT",
            format!("{new}{external} "),
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "FORWARD",
            format!("{new}{lb_firewall} "),
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "FORWARD",
            "-m comment --comment \"kubernetes forwarding rules\" ".into(),
            "KUBE-FORWARD",
        ),
        ("FORWARD", format!("{new}{portals} "), "KUBE-SERVICES"),
        (
            "FORWARD",
            format!("{new}{external} "),
            "KUBE-EXTERNAL-SERVICES",
        ),
        ("OUTPUT", String::new(), "KUBE-FIREWALL"),
        (
            "OUTPUT",
            format!("{new}{lb_firewall} "),
            "KUBE-PROXY-FIREWALL",
        ),
        ("OUTPUT", format!("{new}{portals} "), "KUBE-SERVICES"),
    ];
    for (chain, args, target) in jumps {
        let _ = writeln!(out, "-A {chain} {args}-j {target}");
    }
}

fn iptables_nat(out: &mut String, services: &[ServicePort], node: &Node, sync: Sync) {
    let large = services.iter().map(|s| s.endpoints.len()).sum::<usize>() > LARGE_CLUSTER_ENDPOINTS;
    let mut chains = String::from("*nat\n");
    let mut rules = String::new();
    if let Sync::Full = sync {
        chains.push_str(
            ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n",
        );
        rules.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        );
    }
    chains.push_str(
        ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n",
    );
    let _ = write!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
    );
    for svc in services {
        let own_chains = match sync {
            Sync::Full => true,
            Sync::Partial(changed) => changed(svc),
        };
        iptables_service(&mut chains, &mut rules, svc, node, large, own_chains);
    }
    // kube-proxy: "this must be the last rule in this chain".
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n",
    );
    out.push_str(&chains);
    out.push_str(&rules);
}

/// One service port's chains and rules, in syncProxyRules' order: its rules in the top-level
/// chains always, its own chains (`KUBE-SVC-*`, ...) when `own_chains`.
fn iptables_service(
    chains: &mut String,
    rules: &mut String,
    svc: &ServicePort,
    node: &Node,
    large: bool,
    own_chains: bool,
) {
    let name = svc.port_name_string();
    let svc_chain = iptables_chain("KUBE-SVC-", svc);
    let ext_chain = iptables_chain("KUBE-EXT-", svc);
    let (ip, port) = (svc.cluster_ip, svc.port);
    let capture =
        format!("-m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip} --dport {port}");
    let _ = writeln!(rules, "-A KUBE-SERVICES {capture} -j {svc_chain}");
    if let Some(np) = svc.node_port {
        let _ = writeln!(
            rules,
            "-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp --dport {np} -j {ext_chain}"
        );
    }
    if !own_chains {
        return;
    }
    let _ = writeln!(
        rules,
        "-A {svc_chain} {capture} ! -s {} -j KUBE-MARK-MASQ",
        node.cluster_cidr
    );
    if svc.node_port.is_some() {
        let _ = writeln!(chains, ":{ext_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external \
             destinations\" -j KUBE-MARK-MASQ\n-A {ext_chain} -j {svc_chain}"
        );
    }
    let _ = writeln!(chains, ":{svc_chain} - [0:0]");
    let n = svc.endpoints.len();
    for (i, ep) in svc.endpoints.iter().enumerate() {
        let comment = if large {
            String::new()
        } else {
            format!(" -m comment --comment \"{name} -> {ep}\"")
        };
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {}",
                probability(n, i)
            )
        } else {
            String::new()
        };
        let sep = iptables_endpoint_chain(svc, ep);
        let _ = writeln!(rules, "-A {svc_chain}{comment}{statistic} -j {sep}");
    }
    for ep in &svc.endpoints {
        let sep = iptables_endpoint_chain(svc, ep);
        let comment = if large {
            String::new()
        } else {
            format!(" -m comment --comment {name}")
        };
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ\n\
             -A {sep}{comment} -m tcp -p tcp -j DNAT --to-destination {ep}",
            ep.ip()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// nftables

/// kube-proxy's hashAndTruncate: 8 base32 characters of the name's sha256, `-`, the name (never
/// long enough here to be truncated).
fn nft_name_base(name: &str) -> String {
    format!("{}-{name}", &base32(&sha256(name.as_bytes()))[..8])
}

/// `PREFIX-HASH-ns/name/tcp/port` (service-, external-).
fn nft_chain(prefix: &str, svc: &ServicePort) -> String {
    let base = format!("{}/{}/tcp/{}", svc.namespace, svc.name, svc.port_name);
    format!("{prefix}{}", nft_name_base(&base))
}

/// `endpoint-HASH-ns/name/tcp/port__ip/port`.
fn nft_endpoint_chain(svc: &ServicePort, ep: &SocketAddrV4) -> String {
    let base = format!(
        "{}/{}/tcp/{}__{}/{}",
        svc.namespace,
        svc.name,
        svc.port_name,
        ep.ip(),
        ep.port()
    );
    format!("endpoint-{}", nft_name_base(&base))
}

/// kube-proxy's base chains: name, type, hook, priority (dstnat = -100, srcnat = 100; filter
/// chains run 10 before DNAT so they see the service address).
const NFT_BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// kube-proxy's jumps from base chains: (target, from, condition).
const NFT_JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new ",
    ),
];

/// The `nft -f` script of kube-proxy's nftables mode for `services` (one transaction, the way
/// knftables writes it: `table ip kube-proxy`, base chains, verdict maps, per-service chains).
pub fn nft_script(services: &[ServicePort], node: &Node) -> String {
    nft_batches(services, node, services.len().max(1)).concat()
}

/// The same ruleset as [`nft_script`] in several `nft -f` transactions: the table and its fixed
/// chains, then `per_batch` services each. One transaction of thousands of services takes the
/// kernel minutes (every anonymous `numgen ... vmap` set is looked up by walking the whole
/// transaction, quadratic in its size); the ruleset that results is the same.
pub fn nft_batches(services: &[ServicePort], node: &Node, per_batch: usize) -> Vec<String> {
    let mut setup = String::new();
    nft_setup(&mut setup, node);
    let batches = services.chunks(per_batch).map(|chunk| {
        let mut out = String::new();
        for svc in chunk {
            nft_service(&mut out, svc, node, NftWrite::New);
        }
        out
    });
    std::iter::once(setup).chain(batches).collect()
}

/// setupNFTables: the table, base chains, jump rules, masquerading and the dispatch maps.
fn nft_setup(out: &mut String, node: &Node) {
    let t = "ip kube-proxy";
    let _ = writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (name, kind, hook, prio) in NFT_BASE_CHAINS {
        let _ = writeln!(
            out,
            "add chain {t} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
        );
    }
    let mut created: Vec<&str> = Vec::new();
    for (target, from, cond) in NFT_JUMPS {
        if !created.contains(&target) {
            let _ = writeln!(out, "add chain {t} {target}");
            created.push(target);
        }
        let _ = writeln!(out, "add rule {t} {from} {cond}jump {target}");
    }
    let dispatch = "ip daddr . meta l4proto . th dport vmap";
    let svc_map = "type ipv4_addr . inet_proto . inet_service : verdict";
    let np_map = "type inet_proto . inet_service : verdict";
    let _ = write!(
        out,
        "add chain {t} mark-for-masquerade
add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}
add rule {t} masquerading mark and {MASQ_MARK} == 0 return
add rule {t} masquerading mark set mark xor {MASQ_MARK}
add rule {t} masquerading masquerade fully-random
add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}
add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"
add rule {t} cluster-ips-check ip daddr {{ {cidr} }} drop comment \"Drop traffic to unallocated ClusterIPs\"
add map {t} no-endpoint-services {{ {svc_map} ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}
add map {t} no-endpoint-nodeports {{ {np_map} ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}
add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}
add rule {t} reject-chain reject
add rule {t} service-endpoints-check {dispatch} @no-endpoint-services
add rule {t} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
add map {t} firewall-ips {{ {svc_map} ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}
add rule {t} firewall-check {dispatch} @firewall-ips
add map {t} service-ips {{ {svc_map} ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}
add map {t} service-nodeports {{ {np_map} ; comment \"NodePort traffic\" ; }}
add rule {t} services {dispatch} @service-ips
add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
",
        cidr = node.service_cidr
    );
}

/// The `nft -f` transaction of kube-proxy's nftables mode after the endpoints of `svc` changed
/// (a partial sync): the service's chains added and flushed, their rules written again, and the
/// chains of the `removed` endpoints flushed. No map element is written: kube-proxy writes only
/// elements that differ from the ones it wrote before, and an endpoint change alters none.
/// The stale chains are deleted by a later sync (at least a second later, for kernels before
/// 6.2), not here.
pub fn nft_endpoints_changed(svc: &ServicePort, removed: &[SocketAddrV4], node: &Node) -> String {
    let mut out = String::new();
    nft_service(&mut out, svc, node, NftWrite::Changed);
    for ep in removed {
        let _ = writeln!(
            out,
            "flush chain ip kube-proxy {}",
            nft_endpoint_chain(svc, ep)
        );
    }
    out
}

/// How a service's objects go into a transaction.
#[derive(Clone, Copy, PartialEq)]
enum NftWrite {
    /// New: chains added, map elements added.
    New,
    /// Already there: chains added and flushed (kube-proxy's ensureChain), elements unchanged.
    Changed,
}

/// One service port: its chains (endpoints first, as kube-proxy ensures them), map elements and
/// rules.
fn nft_service(out: &mut String, svc: &ServicePort, node: &Node, write: NftWrite) {
    let t = "ip kube-proxy";
    let svc_chain = nft_chain("service-", svc);
    let ext_chain = nft_chain("external-", svc);
    let endpoints: Vec<String> = svc
        .endpoints
        .iter()
        .map(|ep| nft_endpoint_chain(svc, ep))
        .collect();
    let ext = svc.node_port.map(|_| &ext_chain);
    for chain in endpoints.iter().chain([&svc_chain]).chain(ext) {
        let _ = writeln!(out, "add chain {t} {chain}");
        if write == NftWrite::Changed {
            let _ = writeln!(out, "flush chain {t} {chain}");
        }
    }
    let (ip, port) = (svc.cluster_ip, svc.port);
    if write == NftWrite::New {
        let _ = writeln!(out, "add element {t} cluster-ips {{ {ip} }}");
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {ip} . tcp . {port} : goto {svc_chain} }}"
        );
    }
    if let Some(np) = svc.node_port {
        if write == NftWrite::New {
            let _ = writeln!(
                out,
                "add element {t} service-nodeports {{ tcp . {np} : goto {ext_chain} }}"
            );
        }
        let _ = writeln!(
            out,
            "add rule {t} {ext_chain} jump mark-for-masquerade\n\
             add rule {t} {ext_chain} goto {svc_chain}"
        );
    }
    let _ = writeln!(
        out,
        "add rule {t} {svc_chain} ip daddr {ip} tcp dport {port} ip saddr != {} jump mark-for-masquerade",
        node.cluster_cidr
    );
    let vmap: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, chain)| format!("{i} : goto {chain}"))
        .collect();
    let _ = writeln!(
        out,
        "add rule {t} {svc_chain} numgen random mod {} vmap {{ {} }}",
        endpoints.len(),
        vmap.join(" , ")
    );
    for (ep, chain) in svc.endpoints.iter().zip(&endpoints) {
        let _ = writeln!(
            out,
            "add rule {t} {chain} ip saddr {} jump mark-for-masquerade\n\
             add rule {t} {chain} meta l4proto tcp dnat to {ep}",
            ep.ip()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// hashing, as kube-proxy names chains

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// RFC 4648 base32 (Go's base32.StdEncoding), without the padding kube-proxy cuts off anyway.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests;
