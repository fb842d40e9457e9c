//! The Kubernetes source against a fake API server (`fake_api`) serving recorded JSON: the
//! initial lists, watch events, cut connections, 410 Gone relists and an outage.
//!
//! Every wait has a deadline and waits for something observable (a published snapshot, or the
//! fake server having answered particular requests), never for a fixed time.
mod fake_api;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ::kube::{Client, Config};
use serde_json::Value;

use super::{run, LABEL_SELECTOR};
use crate::source::{Receiver, Snapshot};
use fake_api::{events, FakeApi, Res, Server};

const NODE: &str = "node-a";
const DEADLINE: Duration = Duration::from_secs(60);

/// The source under test, stopped on drop.
struct Source {
    rx: Receiver,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(api: &FakeApi) -> Source {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "lb=debug,kube=info".into()),
        )
        .try_init();
    let client = Client::try_from(Config::new(api.url.parse().unwrap())).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(run(client, NODE.to_string(), tx));
    Source { rx, task }
}

impl Source {
    /// The first snapshot published.
    async fn first(&mut self) -> Arc<Snapshot> {
        tokio::time::timeout(DEADLINE, self.rx.changed())
            .await
            .expect("no snapshot was published in time")
            .expect("the source stopped");
        self.rx.borrow_and_update().clone()
    }

    /// Wait until the published snapshot holds what the fake server holds now.
    async fn until_in_sync(&mut self, api: &FakeApi, what: &str) -> Arc<Snapshot> {
        let want = api.expected(NODE);
        let waited = tokio::time::timeout(DEADLINE, self.rx.wait_for(|s| s.objects == want)).await;
        let got = waited
            .ok()
            .map(|snap| snap.expect("the source stopped").clone());
        if let Some(snap) = got {
            return snap;
        }
        panic!(
            "{what}: the snapshot never matched the server\nlast published: {:?}\nserver: {:?}",
            names(&self.rx.borrow()),
            names(&Snapshot {
                objects: api.expected(NODE),
                problems: vec![]
            }),
        )
    }
}

/// Wait until the fake server has seen what `done` says.
async fn until_server(api: &FakeApi, what: &str, done: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !api.with(|s| done(s)) {
        assert!(
            Instant::now() < deadline,
            "the fake API server never saw {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Services, slices and nodes by name.
fn names(snap: &Snapshot) -> [Vec<String>; 3] {
    let o = &snap.objects;
    [
        o.services.keys().map(|k| k.to_string()).collect(),
        o.slices.keys().map(|k| k.to_string()).collect(),
        o.nodes.keys().cloned().collect(),
    ]
}

fn changes() -> Vec<Value> {
    events("changes.jsonl")
}

const AFTER_CHANGES: [&[&str]; 3] = [
    &["default/api", "default/db", "default/web"],
    &["default/api-5d2hn", "default/web-7xk2p"],
    &["node-a"],
];

/// Every list asked the API server's watch cache (resourceVersion 0, not older than it), as
/// client-go's reflectors do, not etcd: after an outage every node relists at once.
fn assert_lists_from_watch_cache(c: &fake_api::Collection) {
    for q in c.queries.iter().filter(|q| !q.contains_key("watch")) {
        let rv = q.get("resourceVersion").map(String::as_str);
        let rv_match = q.get("resourceVersionMatch").map(String::as_str);
        assert_eq!((rv, rv_match), (Some("0"), Some("NotOlderThan")), "{q:?}");
    }
}

#[tokio::test]
async fn kube_initial_lists_make_one_complete_snapshot() {
    let api = FakeApi::start().await;
    let mut source = start(&api);
    let snap = source.first().await;
    // Not another proxy's (mesh-only), not headless slices (db-r7v2n), only this node.
    assert_eq!(
        names(&snap),
        [
            &[
                "default/db",
                "default/shop",
                "default/web",
                "kube-system/kube-dns"
            ][..],
            &[
                "default/shop-q8r5t",
                "default/web-7xk2p",
                "kube-system/kube-dns-m4w9z"
            ],
            &["node-a"],
        ]
    );
    assert_eq!(snap.objects, api.expected(NODE));
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    let web = &snap.objects.services[&crate::model::ObjectRef::new("default", "web")];
    assert_eq!(
        web.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("10.96.0.100")
    );
    assert_eq!(
        web.metadata.managed_fields, None,
        "managedFields are dropped"
    );

    api.with(|s| {
        for res in Res::ALL {
            let c = s.get(res);
            assert_eq!(c.lists, 1, "{res:?}");
            assert_lists_from_watch_cache(c);
            for q in &c.queries {
                if res == Res::Nodes {
                    assert_eq!(q["fieldSelector"], "metadata.name=node-a", "{q:?}");
                } else {
                    assert_eq!(q["labelSelector"], LABEL_SELECTOR, "{q:?}");
                }
            }
        }
    });
}

#[tokio::test]
async fn kube_nothing_is_published_before_every_initial_list_completed() {
    let api = FakeApi::start().await;
    api.with(|s| s.collections.get_mut(&Res::Nodes).unwrap().fail = true);
    let mut source = start(&api);
    until_server(
        &api,
        "Services and EndpointSlices listed and watched while the Node list failed twice",
        |s| {
            !s.get(Res::Services).watch_versions.is_empty()
                && !s.get(Res::Slices).watch_versions.is_empty()
                && s.get(Res::Nodes).failures >= 2
        },
    )
    .await;
    assert!(
        !source.rx.has_changed().unwrap(),
        "published a partial view: {:?}",
        names(&source.rx.borrow())
    );
    api.with(|s| s.collections.get_mut(&Res::Nodes).unwrap().fail = false);
    let snap = source.first().await;
    assert_eq!(snap.objects, api.expected(NODE));
    assert_eq!(snap.objects.nodes.len(), 1);
}

#[tokio::test]
async fn kube_watch_events_update_the_snapshot() {
    let api = FakeApi::start().await;
    let mut source = start(&api);
    source.first().await;
    let changes = changes();
    // ADDED (Service and slice api), MODIFIED (web's slice; shop and its slice leave the
    // selector: DELETED to the watch), DELETED (kube-dns), Nodes (node-b is not this node).
    for (what, range) in [
        ("ADDED", 0..2),
        ("MODIFIED", 2..5),
        ("DELETED", 5..7),
        ("Node MODIFIED", 7..9),
    ] {
        for ev in &changes[range] {
            api.change(ev);
        }
        source.until_in_sync(&api, what).await;
    }
    let snap = source.rx.borrow().clone();
    assert_eq!(names(&snap), AFTER_CHANGES);
    let web = &snap.objects.slices[&crate::model::ObjectRef::new("default", "web-7xk2p")];
    let terminating: Vec<_> = web
        .endpoints
        .iter()
        .flatten()
        .map(|e| e.conditions.as_ref().unwrap().terminating.unwrap_or(false))
        .collect();
    assert_eq!(terminating, [false, true, false]);
    let zone = snap.objects.nodes["node-a"]
        .metadata
        .labels
        .as_ref()
        .unwrap()["topology.kubernetes.io/zone"]
        .clone();
    assert_eq!(zone, "zone-c");
    // All through the watches, no relist.
    api.with(|s| Res::ALL.map(|r| assert_eq!(s.get(r).lists, 1, "{r:?}")));
}

#[tokio::test]
async fn kube_a_cut_watch_resumes_where_it_left_off() {
    let api = FakeApi::start().await;
    let mut source = start(&api);
    source.first().await;
    until_server(&api, "a watch per kind", |s| {
        Res::ALL.iter().all(|r| s.get(*r).open_watches() == 1)
    })
    .await;
    let changes = changes();
    // Cut mid-event, and a change the cut watch never sent: the watcher cannot reconnect in
    // between (this test's runtime has one thread), so the change reaches it as a replay.
    api.cut_watches();
    api.change(&changes[0]);
    until_server(&api, "every watch resumed", |s| {
        Res::ALL
            .iter()
            .all(|r| s.get(*r).watch_versions.len() == 2 && s.get(*r).open_watches() == 1)
    })
    .await;
    for ev in &changes[1..] {
        api.change(ev);
    }
    let snap = source.until_in_sync(&api, "after the cut").await;
    assert_eq!(names(&snap), AFTER_CHANGES);
    api.with(|s| {
        for r in Res::ALL {
            let c = s.get(r);
            assert_eq!(c.lists, 1, "{r:?} relisted instead of resuming");
            // Resumed from the version it had, not from scratch.
            assert_eq!(c.watch_versions[1], c.watch_versions[0], "{r:?}");
        }
    });
}

/// Changes made while the watches were away and then compacted: the watchers get 410 Gone
/// and relist, and the snapshot is the relisted state.
async fn expired_watches_relist(gone_as_http: bool) {
    let api = FakeApi::start().await;
    api.with(|s| {
        s.collections
            .values_mut()
            .for_each(|c| c.gone_as_http = gone_as_http)
    });
    let mut source = start(&api);
    let before = source.first().await;
    api.expire(&changes());
    let snap = source.until_in_sync(&api, "after the relist").await;
    assert_eq!(names(&snap), AFTER_CHANGES);
    assert_ne!(snap.objects, before.objects);
    api.with(|s| {
        for r in Res::ALL {
            assert_eq!(s.get(r).lists, 2, "{r:?}");
            assert_lists_from_watch_cache(s.get(r));
        }
    });
    // Watching again from the relisted version: later changes arrive.
    until_server(&api, "watches from the relisted version", |s| {
        Res::ALL.iter().all(|r| s.get(*r).open_watches() == 1)
    })
    .await;
    let mut ev = changes()[2].clone();
    ev["object"]["endpoints"].as_array_mut().unwrap().pop();
    api.change(&ev);
    source
        .until_in_sync(&api, "a change after the relist")
        .await;
}

#[tokio::test]
async fn kube_410_gone_watch_event_relists() {
    expired_watches_relist(false).await;
}

#[tokio::test]
async fn kube_http_410_on_watch_relists() {
    expired_watches_relist(true).await;
}

#[tokio::test]
async fn kube_api_outage_keeps_the_last_snapshot() {
    let api = FakeApi::start().await;
    let mut source = start(&api);
    let before = source.first().await;
    api.fail(true);
    api.cut_watches();
    until_server(&api, "every watcher retrying against the 500s", |s| {
        Res::ALL.iter().all(|r| s.get(*r).failures >= 2)
    })
    .await;
    assert!(
        !source.rx.has_changed().unwrap(),
        "published during the outage: {:?}",
        names(&source.rx.borrow())
    );
    assert_eq!(**source.rx.borrow(), *before);
    // What happened meanwhile is compacted away by the time the API answers again: relist.
    api.expire(&changes());
    api.fail(false);
    let snap = source.until_in_sync(&api, "after the outage").await;
    assert_eq!(names(&snap), AFTER_CHANGES);
    api.with(|s| Res::ALL.map(|r| assert_eq!(s.get(r).lists, 2, "{r:?}")));
}
