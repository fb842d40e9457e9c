//! Placement decisions on a made-up host: which link is external, which are pods', which
//! addresses serve NodePorts, for flags given and for the defaults.
use std::collections::BTreeMap;

use clap::Parser;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};

use super::*;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

fn placement(flags: &[&str]) -> Placement {
    let args = Flags::try_parse_from(std::iter::once("lb-agent").chain(flags.iter().copied()))
        .expect("flags parse")
        .run;
    Placement::new(&args).expect("placement")
}

fn node(addrs: &[(&str, &str)]) -> Node {
    Node {
        status: Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// lo; eth0 (default route, 10.0.0.5, 2001:db8:1::5); eth1 (192.0.2.1, 2001:db8:2::1); veth,
/// cali and lxc pod links; tap0 on bridge cni0 (10.244.0.1, fd00:244::1); eth2 on bridge br0
/// (198.51.100.1); unrelated dummy0; flannel.1, a vxlan device (10.244.0.0); tunl0, Calico's
/// ipip device (10.244.0.64).
fn host() -> BTreeMap<u32, Link> {
    use LinkKind::{Bridge, L3Tunnel, Other, Tunnel};
    let links = [
        (1, "lo", "127.0.0.1", "", None, Other),
        (2, "eth0", "10.0.0.5", "2001:db8:1::5", None, Other),
        (3, "eth1", "192.0.2.1", "2001:db8:2::1", None, Other),
        (4, "veth1a2b", "", "", None, Other),
        (5, "cali123", "", "", None, Other),
        (6, "lxc9", "", "", None, Other),
        (7, "cni0", "10.244.0.1", "fd00:244::1", None, Bridge),
        (8, "tap0", "", "", Some(7), Other),
        (9, "br0", "198.51.100.1", "", None, Bridge),
        (10, "eth2", "", "", Some(9), Other),
        (11, "dummy0", "", "", None, Other),
        (12, "flannel.1", "10.244.0.0", "", None, Tunnel),
        (13, "tunl0", "10.244.0.64", "", None, L3Tunnel),
    ];
    links
        .into_iter()
        .map(|(index, name, addr, addr6, controller, kind)| {
            let link = Link {
                index,
                name: name.into(),
                addrs: addr.parse().into_iter().collect(),
                addrs6: addr6.parse().into_iter().collect(),
                controller,
                kind,
            };
            (index, link)
        })
        .collect()
}

/// An IPv4 default route via eth0 (ifindex 2).
const DEFAULT_ROUTE: DefaultRoutes = DefaultRoutes {
    v4: Some(2),
    v6: None,
};

/// One placement case: a name, the agent's flags, the Node object, what is expected.
struct Case<'a, N, W> {
    name: &'a str,
    flags: &'a [&'a str],
    node: N,
    want: W,
}

#[test]
fn external_interface_choice() {
    let internal_eth1 = node(&[("Hostname", "n1"), ("InternalIP", "192.0.2.1")]);
    let external_only_local = node(&[
        ("InternalIP", "203.0.113.9"),
        ("ExternalIP", "198.51.100.1"),
    ]);
    let elsewhere = node(&[("InternalIP", "203.0.113.9")]);
    // node: (Node object, default route); want: (external links, how).
    type ExternalCase<'a> = Case<'a, (Option<&'a Node>, DefaultRoutes), (&'a [&'a str], &'a str)>;
    // An IPv6-only node's default route leaves by eth1 (ifindex 3); a dual-stack one's IPv6
    // default route by another link than its IPv4 one.
    let v6_only = DefaultRoutes {
        v4: None,
        v6: Some(3),
    };
    let dual = DefaultRoutes {
        v4: Some(2),
        v6: Some(3),
    };
    let cases: [ExternalCase; 8] = [
        Case {
            name: "flag wins over the Node",
            flags: &["--ext-iface", "eth0", "--ext-iface", "dummy0"],
            node: (Some(&internal_eth1), DEFAULT_ROUTE),
            want: (&["dummy0", "eth0"], "--ext-iface"),
        },
        Case {
            name: "InternalIP's link",
            flags: &[],
            node: (Some(&internal_eth1), DEFAULT_ROUTE),
            want: (&["eth1"], "holds the Node's InternalIP 192.0.2.1"),
        },
        Case {
            name: "ExternalIP's link when no InternalIP is here",
            flags: &[],
            node: (Some(&external_only_local), DEFAULT_ROUTE),
            want: (&["br0"], "holds the Node's ExternalIP 198.51.100.1"),
        },
        Case {
            name: "default route without a Node",
            flags: &[],
            node: (None, DEFAULT_ROUTE),
            want: (&["eth0"], "carries the IPv4 default route"),
        },
        Case {
            name: "default route when the Node's addresses are elsewhere",
            flags: &[],
            node: (Some(&elsewhere), DEFAULT_ROUTE),
            want: (&["eth0"], "carries the IPv4 default route"),
        },
        Case {
            name: "an IPv6-only node's default route",
            flags: &[],
            node: (None, v6_only),
            want: (&["eth1"], "carries the IPv6 default route"),
        },
        Case {
            name: "IPv4's default route first on a dual-stack node",
            flags: &[],
            node: (Some(&elsewhere), dual),
            want: (&["eth0"], "carries the IPv4 default route"),
        },
        Case {
            name: "nothing to go by",
            flags: &[],
            node: (Some(&elsewhere), DefaultRoutes::default()),
            want: (&[], "none found"),
        },
    ];
    let links = host();
    for Case {
        name,
        flags,
        node: (node, route),
        want: (want, how),
    } in cases
    {
        let got = placement(flags).external(node, &links, route);
        let names: Vec<&str> = got.names.iter().map(String::as_str).collect();
        assert_eq!(names, want, "{name}");
        assert!(got.how.starts_with(how), "{name}: {:?}", got.how);
    }
}

#[test]
fn roles_of_links() {
    let links = host();
    let by_name = |n: &str| links.values().find(|l| l.name == n).expect("link").clone();
    let ext = |names: &[&str]| External {
        names: names.iter().map(|n| n.to_string()).collect(),
        how: String::new(),
    };
    use Role::{External as X, Pod as P, Tunnel as T};
    // node: the external links chosen; want: roles by link name.
    type RoleCase<'a> = Case<'a, &'a [&'a str], &'a [(&'a str, Option<Role>)]>;
    let cases: [RoleCase; 6] = [
        Case {
            name: "defaults",
            flags: &[],
            node: &["eth1"],
            want: &[
                ("eth1", Some(X)),
                ("eth0", None),
                ("lo", None),
                ("veth1a2b", Some(P)),
                ("cali123", Some(P)),
                ("lxc9", Some(P)),
                ("tap0", Some(P)),
                ("cni0", None),
                ("eth2", Some(P)),
                ("dummy0", None),
                ("flannel.1", Some(T)),
                ("tunl0", None),
            ],
        },
        Case {
            name: "a port of the external bridge faces outside",
            flags: &[],
            node: &["br0"],
            want: &[("br0", Some(X)), ("eth2", None), ("tap0", Some(P))],
        },
        Case {
            name: "a tunnel matching a --pod-iface glob stays a tunnel",
            flags: &["--pod-iface", "flannel*"],
            node: &["eth1"],
            want: &[("flannel.1", Some(T)), ("eth1", Some(X))],
        },
        Case {
            name: "a tunnel named external",
            flags: &[],
            node: &["flannel.1"],
            want: &[("flannel.1", Some(X)), ("eth1", None)],
        },
        Case {
            name: "a tunnel without Ethernet header gets nothing, named or matched",
            flags: &["--pod-iface", "tunl*"],
            node: &["tunl0"],
            want: &[("tunl0", None)],
        },
        Case {
            name: "an explicit list is complete; external wins over a matching glob",
            flags: &["--pod-iface", "veth*", "--pod-iface", "dummy?"],
            node: &["veth1a2b"],
            want: &[
                ("veth1a2b", Some(X)),
                ("dummy0", Some(P)),
                ("cali123", None),
                ("tap0", None),
            ],
        },
    ];
    for Case {
        name,
        flags,
        node: ext_names,
        want,
    } in cases
    {
        let p = placement(flags);
        let ext = ext(ext_names);
        for (link, role) in want {
            assert_eq!(
                p.role(&by_name(link), &links, &ext),
                *role,
                "{name}: {link}"
            );
        }
    }
}

#[test]
fn nodeport_addresses() {
    let links = host();
    let ext = External {
        names: ["eth1".to_string()].into(),
        how: String::new(),
    };
    // InternalIP on eth0 (not external, both families), ExternalIP held by no link.
    let n = node(&[
        ("InternalIP", "10.0.0.5"),
        ("InternalIP", "2001:db8:1::5"),
        ("ExternalIP", "203.0.113.9"),
    ]);
    // want: both families' addresses, IPv4 first.
    let cases: [Case<Option<&Node>, &[&str]>; 8] = [
        Case {
            name: "external interfaces without a Node",
            flags: &[],
            node: None,
            want: &["192.0.2.1", "2001:db8:2::1"],
        },
        Case {
            name: "and the Node's addresses held here",
            flags: &[],
            node: Some(&n),
            want: &["10.0.0.5", "192.0.2.1", "2001:db8:1::5", "2001:db8:2::1"],
        },
        Case {
            name: "--nodeport-addresses picks among all local addresses",
            flags: &[
                "--nodeport-addresses",
                "10.0.0.0/8",
                "--nodeport-addresses",
                "198.51.100.0/24",
            ],
            node: Some(&n),
            want: &[
                "10.0.0.5",
                "10.244.0.0",
                "10.244.0.1",
                "10.244.0.64",
                "198.51.100.1",
                "2001:db8:1::5",
                "2001:db8:2::1",
            ],
        },
        Case {
            name: "a CIDR matching nothing serves nothing in its family",
            flags: &["--nodeport-addresses", "203.0.113.0/24"],
            node: Some(&n),
            want: &["2001:db8:1::5", "2001:db8:2::1"],
        },
        Case {
            name: "each family picks by its own CIDRs",
            flags: &[
                "--nodeport-addresses",
                "::/0",
                "--nodeport-addresses",
                "198.51.100.0/24",
            ],
            node: Some(&n),
            want: &[
                "198.51.100.1",
                "2001:db8:1::5",
                "2001:db8:2::1",
                "fd00:244::1",
            ],
        },
        Case {
            name: "IPv6 CIDRs only: IPv4 gets its default (kube-proxy's per-family rule)",
            flags: &["--nodeport-addresses", "2001:db8:2::/64"],
            node: Some(&n),
            want: &["10.0.0.5", "192.0.2.1", "2001:db8:2::1"],
        },
        Case {
            name: "IPv4 CIDRs only: IPv6 gets its default",
            flags: &["--nodeport-addresses", "10.244.0.0/24"],
            node: Some(&n),
            want: &[
                "10.244.0.0",
                "10.244.0.1",
                "10.244.0.64",
                "2001:db8:1::5",
                "2001:db8:2::1",
            ],
        },
        Case {
            name: "an IPv6 CIDR matching nothing serves no IPv6 NodePort",
            flags: &["--nodeport-addresses", "2001:db8:ff::/64"],
            node: None,
            want: &["192.0.2.1"],
        },
    ];
    for Case {
        name,
        flags,
        node,
        want,
    } in cases
    {
        let p = placement(flags);
        let v4: Vec<std::net::Ipv4Addr> = p.nodeport_addrs(node, &links, &ext);
        let v6: Vec<std::net::Ipv6Addr> = p.nodeport_addrs(node, &links, &ext);
        let got: Vec<String> = v4
            .iter()
            .map(ToString::to_string)
            .chain(v6.iter().map(ToString::to_string))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn bad_glob_names_the_flag() {
    let args = Flags::try_parse_from(["lb-agent", "--pod-iface", "veth[*"])
        .expect("parses")
        .run;
    let err = Placement::new(&args).err().expect("rejected");
    assert!(
        format!("{err:#}").contains("--pod-iface \"veth[*\""),
        "{err:#}"
    );
}
