//! lb on nodes whose pods reach each other over a VXLAN overlay (flannel's VXLAN backend), the
//! lan between the nodes dropping pod-sourced packets as a cloud network does: pod traffic
//! between nodes goes through the tunnel, and so must every reply lb's translations cause. Both
//! nodes run the INVALID-dropping firewall, as kube-proxy's own rule does.
use lb_tests::{
    cluster_lab::{ready, spread, web_service, Cluster, PodNetwork, ASK},
    lab::require_privileged,
};

const A: &str = "node-a";
const B: &str = "node-b";

#[test]
fn services_work_across_a_vxlan_overlay() {
    if !require_privileged("lab_overlay") {
        return;
    }
    let web = web_service(
        "10.96.0.20",
        30090,
        &(ready("10.244.1.5", A) + &ready("10.244.2.5", B)),
    );
    let c = Cluster::start_on(
        "overlay",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("web.yaml", &web)],
        &[],
        PodNetwork::Vxlan,
    )
    .expect("cluster lab");
    c.drop_invalid_in_forward();
    // The overlay carries pod traffic, and only it: pod to pod across nodes works, a pod-sourced
    // packet on the lan does not get through.
    let b1 = "10.244.2.5:8080".parse().unwrap();
    let reply = c.pod("a2").ns.request(b1, false, ASK);
    assert_eq!(
        reply.expect("a2 → b1 over the overlay").name,
        "b1",
        "pod to pod across the overlay"
    );
    let spoofed = c.pod("a2").ns.exec("ping", ["-c1", "-W1", "192.0.2.20"]);
    assert!(
        spoofed.is_err(),
        "a pod-sourced packet crossed the lan: the lab is kinder than a cloud network"
    );
    let vip = "10.96.0.20:80".parse().unwrap();
    let dns = "10.96.0.20:53".parse().unwrap();
    // Pod → ClusterIP, to the pod beside it and to the one across the overlay, both ways.
    spread(&c.pod("a2").ns, vip, false, &["a1", "b1"]);
    spread(&c.pod("a2").ns, dns, true, &["a1", "b1"]);
    spread(&c.pod("b2").ns, vip, false, &["a1", "b1"]);
    // Outside → NodePort: the local backend, and the one behind the tunnel (SNATed: its reply
    // must come back through the tunnel too).
    let nodeport = "192.0.2.10:30090".parse().unwrap();
    spread(&c.client, nodeport, false, &["a1", "b1"]);

    // lbctl shows the tunnel, found by its kind (the agents name only eth0 and h*).
    let interfaces = c
        .node(A)
        .lbctl_json(&["interfaces"])
        .expect("lbctl interfaces");
    let vx0 = interfaces
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == "vx0")
        .unwrap_or_else(|| panic!("vx0 not attached: {interfaces}"));
    assert_eq!(vx0["role"], "tunnel", "{vx0}");
    assert_eq!(vx0["xdp_mode"], serde_json::Value::Null, "{vx0}");
}
