//! The Kubernetes API as a source (Kubernetes mode): reflectors on v1 Services and
//! discovery.k8s.io/v1 EndpointSlices in all namespaces, and on this node's Node object.
//!
//! - Services and EndpointSlices are selected as kube-proxy selects them: nothing labelled
//!   `service.kubernetes.io/service-proxy-name` (another proxy's) or
//!   `service.kubernetes.io/headless`.
//! - Nothing is published before the initial list of every watcher has completed, so a restarted
//!   agent never programs (and wipes the maps from) an empty or partial view. After that, every
//!   change publishes a whole [`Snapshot`]: a change after a quiet spell at once, the changes of
//!   a burst at most once per [`DEBOUNCE`].
//! - Watch disconnects resume from the last resource version; an expired one (410 Gone, as a watch
//!   ERROR event or as the HTTP status of the watch request) relists, and the relisted state
//!   replaces the store at once. While the API server is unreachable or failing, the watchers
//!   retry with kube-runtime's default backoff and the last snapshot stays: nothing is published
//!   that would wipe state.
use std::{
    fmt::Debug,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use ::kube::{
    api::Api,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, store::Writer, Store},
        watcher::{self, watcher, Event},
        WatchStreamExt,
    },
    Client, Config, Resource,
};
use anyhow::{Context as _, Result};
use futures::{stream::BoxStream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::de::DeserializeOwned;

use super::{Object, Sender, Snapshot};
use crate::model::Objects;

/// kube-proxy's selector for Services and EndpointSlices: not another proxy's, not headless.
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Snapshots are published at most this often: a burst of changes (a rollout) costs a copy of
/// the objects per interval, not per change, while a lone change goes out at once.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// While a watcher keeps failing, a warning at most this often (debug in between).
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// A client from `--kubeconfig PATH`, else inferred: `$KUBECONFIG` or `~/.kube/config`, then the
/// in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context(
            "no Kubernetes configuration: not in a cluster, no $KUBECONFIG or ~/.kube/config \
             (pass --kubeconfig, or --manifests for standalone mode)",
        )?,
    };
    tracing::info!(api_server = %config.cluster_url, "Kubernetes mode");
    Client::try_from(config).context("building the Kubernetes client")
}

/// Watch the API and publish snapshots on `tx` until the receivers are gone.
pub async fn run(client: Client, node_name: String, tx: Sender) {
    run_with(client, &node_name, tx, DEBOUNCE).await
}

pub(crate) async fn run_with(client: Client, node_name: &str, tx: Sender, debounce: Duration) {
    // Lists (the initial one, and relists after an expired watch) are served from the API
    // server's watch cache (resourceVersion=0), as client-go's reflectors ask: after an outage
    // every node's agent relists at once, and reading all of that from etcd is what takes a
    // control plane down. Unpaged: the watch cache answers a list at version 0 whole anyway
    // (client-go's pages of 500 are ignored there), and kube-rs sends no version with a limit.
    let config = watcher::Config {
        page_size: None,
        ..Default::default()
    }
    .any_semantic();
    let selected = config.clone().labels(LABEL_SELECTOR);
    let this_node = config.fields(&format!("metadata.name={node_name}"));
    let mut updates = futures::stream::select_all([
        watch(Api::<Service>::all(client.clone()), selected.clone())
            .map(|u| Update::Service(Box::new(u)))
            .boxed(),
        watch(Api::<EndpointSlice>::all(client.clone()), selected)
            .map(|u| Update::Slice(Box::new(u)))
            .boxed(),
        watch(Api::<Node>::all(client), this_node)
            .map(|u| Update::Node(Box::new(u)))
            .boxed(),
    ]);
    let mut stores = Stores::default();
    // When the pending changes are published; `None`: nothing pending.
    let mut due: Option<tokio::time::Instant> = None;
    let mut last_publish: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            update = updates.next() => {
                // The watchers retry forever: their streams do not end.
                let Some(update) = update else { return };
                if stores.apply(update) && due.is_none() {
                    let now = tokio::time::Instant::now();
                    due = Some(last_publish.map_or(now, |t| now.max(t + debounce)));
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                if due.is_some() =>
            {
                due = None;
                // The last initial list to complete marks a change, so this comes round again.
                if stores.ready() {
                    publish(&tx, stores.snapshot(), last_publish.is_none());
                    last_publish = Some(tokio::time::Instant::now());
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// Every event that reached a store was a change, so there is nothing to compare: at 50,000
/// services comparing whole snapshots took longer (0.13 s) than everything the agent then does
/// with one change. The first snapshot is logged: the agent waits for it, even for an empty
/// cluster.
fn publish(tx: &Sender, snap: Snapshot, first: bool) {
    if first {
        tracing::info!(
            services = snap.objects.services.len(),
            endpoint_slices = snap.objects.slices.len(),
            nodes = snap.objects.nodes.len(),
            "initial list complete"
        );
    }
    tx.send_replace(Arc::new(snap));
}

/// A self-healing watch with the default backoff between failed attempts.
///
/// kube-runtime's watcher relists after a 410 Gone watch event but retries an HTTP 410 on the
/// watch request with the same, expired, resource version forever: that case starts a new watcher,
/// which relists.
fn watch<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, watcher::Result<Event<K>>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let start = move || {
        watcher(api.clone(), config.clone())
            // Only the server needs them; they are most of an object's size.
            .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
            .boxed()
    };
    let first = start();
    futures::stream::unfold((first, start), |(mut inner, start)| async move {
        let item = inner.next().await?;
        if let Err(e) = &item {
            if http_gone(e) {
                inner = start();
            }
        }
        Some((item, (inner, start)))
    })
    .default_backoff()
    .boxed()
}

fn http_gone(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::WatchStartFailed(::kube::Error::Api(s))
            | watcher::Error::WatchFailed(::kube::Error::Api(s))
            | watcher::Error::InitialListFailed(::kube::Error::Api(s))
            if s.code == 410
    )
}

/// An event of one of the watchers (boxed: the kinds' sizes differ a lot).
enum Update {
    Service(Box<watcher::Result<Event<Service>>>),
    Slice(Box<watcher::Result<Event<EndpointSlice>>>),
    Node(Box<watcher::Result<Event<Node>>>),
}

/// The three kinds' reflector stores, and what they hold as [`Objects`]: kept up to date event
/// by event with the stores' own `Arc`s, so a publish copies a map of pointers instead of
/// rebuilding it from every object (at 50,000 services the rebuild alone took 0.3 s).
#[derive(Default)]
struct Stores {
    services: Reflected<Service>,
    slices: Reflected<EndpointSlice>,
    nodes: Reflected<Node>,
    objects: Objects,
}

impl Stores {
    /// `true` when the stores changed.
    fn apply(&mut self, update: Update) -> bool {
        let objects = &mut self.objects;
        match update {
            Update::Service(u) => self.services.apply(*u, objects),
            Update::Slice(u) => self.slices.apply(*u, objects),
            Update::Node(u) => self.nodes.apply(*u, objects),
        }
    }

    /// Every watcher has completed its initial list.
    fn ready(&self) -> bool {
        self.services.ready && self.slices.ready && self.nodes.ready
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            objects: self.objects.clone(),
            problems: Vec::new(),
        }
    }
}

/// How one kind's objects sit in [`Objects`].
trait Held: Resource<DynamicType = ()> + Clone + 'static {
    const KIND: &'static str;
    fn wrap(obj: Arc<Self>) -> Object;
    fn clear(objects: &mut Objects);
}

impl Held for Service {
    const KIND: &'static str = "Service";
    fn wrap(obj: Arc<Self>) -> Object {
        Object::Service(obj)
    }
    fn clear(objects: &mut Objects) {
        objects.services.clear();
    }
}

impl Held for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn wrap(obj: Arc<Self>) -> Object {
        Object::Slice(obj)
    }
    fn clear(objects: &mut Objects) {
        objects.slices.clear();
    }
}

impl Held for Node {
    const KIND: &'static str = "Node";
    fn wrap(obj: Arc<Self>) -> Object {
        Object::Node(obj)
    }
    fn clear(objects: &mut Objects) {
        objects.nodes.clear();
    }
}

/// One kind's reflector store, and what its watcher has been through.
struct Reflected<K: Held> {
    writer: Writer<K>,
    reader: Store<K>,
    /// The initial list has completed (a relist keeps the old state until it completes).
    ready: bool,
    failing: Option<Failing>,
}

struct Failing {
    since: Instant,
    errors: u64,
    warned: Instant,
}

impl<K: Held> Default for Reflected<K> {
    fn default() -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Reflected {
            writer,
            reader,
            ready: false,
            failing: None,
        }
    }
}

impl<K: Held> Reflected<K> {
    /// Apply one watcher event to the store and mirror it in `objects`; `true` when the store
    /// changed.
    fn apply(&mut self, update: watcher::Result<Event<K>>, objects: &mut Objects) -> bool {
        let kind = K::KIND;
        let event = match update {
            Ok(event) => event,
            Err(e) => {
                self.failed(&e, kind);
                return false;
            }
        };
        if let Some(f) = self.failing.take() {
            tracing::info!(
                kind,
                errors = f.errors,
                after_s = f.since.elapsed().as_secs(),
                "watching again"
            );
        }
        self.writer.apply_watcher_event(&event);
        match event {
            Event::Apply(obj) => {
                // The store's own Arc, so the object keeps its pointer until it changes.
                if let Some(stored) = self.reader.get(&reflector::ObjectRef::from_obj(&obj)) {
                    K::wrap(stored).insert_into(objects);
                }
                true
            }
            Event::Delete(obj) => {
                K::wrap(Arc::new(obj)).remove_from(objects);
                true
            }
            Event::InitDone => {
                // A (re)list replaced the whole store: this kind is read again, all of it.
                K::clear(objects);
                for obj in self.reader.state() {
                    K::wrap(obj).insert_into(objects);
                }
                self.ready = true;
                true
            }
            // A (re)list in progress: the store changes at InitDone, all at once.
            Event::Init | Event::InitApply(_) => false,
        }
    }

    fn failed(&mut self, e: &watcher::Error, kind: &str) {
        if http_gone(e) || matches!(e, watcher::Error::WatchError(s) if s.code == 410) {
            // Routine: the resource version expired while disconnected (or etcd compacted).
            tracing::info!(kind, "watch expired (410 Gone), relisting");
            return;
        }
        let now = Instant::now();
        match &mut self.failing {
            None => {
                tracing::warn!(kind, "watch failed, retrying with backoff: {e}");
                self.failing = Some(Failing {
                    since: now,
                    errors: 1,
                    warned: now,
                });
            }
            Some(f) => {
                f.errors += 1;
                if now.duration_since(f.warned) >= WARN_INTERVAL {
                    f.warned = now;
                    tracing::warn!(
                        kind,
                        errors = f.errors,
                        for_s = f.since.elapsed().as_secs(),
                        "watch still failing, retrying with backoff: {e}"
                    );
                } else {
                    tracing::debug!(kind, errors = f.errors, "watch failed again: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
