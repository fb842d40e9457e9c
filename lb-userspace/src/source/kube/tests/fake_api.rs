//! A fake Kubernetes API server for the watchers: list and watch of Services, EndpointSlices and
//! Nodes over HTTP/1.1, from recorded JSON (`testdata/kube`).
//!
//! It keeps what the watch protocol needs: one resource version counter (etcd's revision), each
//! change recorded in a history that a watch from an older version replays, label and field
//! selectors (an object leaving a watch's selector is a DELETED to it, entering one an ADDED), and
//! compaction: a watch from a version older than the compaction answers 410 Gone, as a watch ERROR
//! event (what API servers do) or, when told, as the HTTP status of the watch request. Tests
//! can also cut every open watch connection mid-event, or make every request fail with a 500.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{
    model::Objects,
    source::{kube::LABEL_SELECTOR, Object},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Services,
    Slices,
    Nodes,
}

impl Res {
    pub const ALL: [Res; 3] = [Res::Services, Res::Slices, Res::Nodes];

    fn of_kind(kind: &str) -> Res {
        match kind {
            "Service" => Res::Services,
            "EndpointSlice" => Res::Slices,
            "Node" => Res::Nodes,
            _ => panic!("the fake API server has no {kind:?}"),
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Res::Services => "ServiceList",
            Res::Slices => "EndpointSliceList",
            Res::Nodes => "NodeList",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Slices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn fixture(self) -> &'static str {
        match self {
            Res::Services => "services.json",
            Res::Slices => "endpointslices.json",
            Res::Nodes => "nodes.json",
        }
    }
}

/// The path of a fixture in `testdata/kube`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/kube")
        .join(name)
}

/// The recorded watch events in a `.jsonl` fixture.
pub fn events(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

type Chunk = Result<Bytes, io::Error>;

/// `labelSelector` and `fieldSelector`, as far as the watchers use them.
#[derive(Clone, Debug, Default)]
struct Selector {
    /// (key, Some(value) for `key=value`, None for `key`), negated for `!key` / `key!=value`.
    labels: Vec<(bool, String, Option<String>)>,
    name: Option<String>,
}

impl Selector {
    fn parse(q: &HashMap<String, String>) -> Selector {
        let mut sel = Selector::default();
        for term in q
            .get("labelSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
        {
            let term = term.trim();
            let parsed = if let Some(key) = term.strip_prefix('!') {
                (true, key.to_string(), None)
            } else if let Some((k, v)) = term.split_once("!=") {
                (true, k.to_string(), Some(v.to_string()))
            } else if let Some((k, v)) = term.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                (false, k.to_string(), Some(v.to_string()))
            } else {
                (false, term.to_string(), None)
            };
            sel.labels.push(parsed);
        }
        for term in q
            .get("fieldSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
        {
            match term.split_once('=') {
                Some(("metadata.name", name)) => sel.name = Some(name.to_string()),
                _ => panic!("the fake API server does not know field selector {term:?}"),
            }
        }
        sel
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(name) = &self.name {
            if meta["name"].as_str() != Some(name) {
                return false;
            }
        }
        self.labels.iter().all(|(negated, key, value)| {
            let have = meta["labels"].get(key).and_then(Value::as_str);
            let ok = match value {
                None => have.is_some(),
                Some(v) => have == Some(v.as_str()),
            };
            ok != *negated
        })
    }

    /// What a watch with this selector sees of a change: kube-apiserver turns an object leaving
    /// the selector into a DELETED and one entering it into an ADDED.
    fn project(&self, change: &Change) -> Option<Value> {
        let before = change.old.as_ref().is_some_and(|o| self.matches(o));
        let after = self.matches(&change.new);
        let kind = match (change.kind, before, after) {
            ("DELETED", true, _) => "DELETED",
            (_, false, true) => "ADDED",
            (_, true, true) => "MODIFIED",
            (_, true, false) => "DELETED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": change.new}))
    }
}

struct Change {
    rv: u64,
    kind: &'static str,
    old: Option<Value>,
    new: Value,
}

struct Watch {
    selector: Selector,
    tx: mpsc::UnboundedSender<Chunk>,
}

/// One collection: its objects, history, open watches and what was asked of it.
#[derive(Default)]
pub struct Collection {
    objects: BTreeMap<String, Value>,
    history: Vec<Change>,
    watches: Vec<Watch>,
    /// Answer every request with a 500.
    pub fail: bool,
    /// Answer a watch from a compacted version with HTTP 410 instead of an ERROR event.
    pub gone_as_http: bool,
    /// List requests answered.
    pub lists: usize,
    /// The resourceVersion of each watch request answered.
    pub watch_versions: Vec<u64>,
    /// Requests answered with a 500.
    pub failures: usize,
    /// Every request's query parameters.
    pub queries: Vec<HashMap<String, String>>,
}

impl Collection {
    pub fn open_watches(&self) -> usize {
        self.watches.iter().filter(|w| !w.tx.is_closed()).count()
    }
}

pub struct Server {
    /// The latest resource version (all collections share the counter, as in etcd).
    pub rv: u64,
    /// Watches from before this version get 410 Gone.
    pub compacted: u64,
    pub collections: BTreeMap<Res, Collection>,
}

impl Server {
    pub fn get(&self, res: Res) -> &Collection {
        &self.collections[&res]
    }

    fn apply(&mut self, event: &Value, record: bool) {
        let kind = event["type"].as_str().expect("event type");
        let kind = match kind {
            "ADDED" => "ADDED",
            "MODIFIED" => "MODIFIED",
            "DELETED" => "DELETED",
            _ => panic!("not a change: {kind}"),
        };
        let mut obj = event["object"].clone();
        let res = Res::of_kind(obj["kind"].as_str().expect("object kind"));
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = key(&obj);
        let coll = self.collections.get_mut(&res).unwrap();
        let old = if kind == "DELETED" {
            coll.objects.remove(&key)
        } else {
            coll.objects.insert(key, obj.clone())
        };
        if !record {
            return;
        }
        let change = Change {
            rv: self.rv,
            kind,
            old,
            new: obj,
        };
        coll.watches.retain(|w| match w.selector.project(&change) {
            Some(ev) => w.tx.send(Ok(line(&ev))).is_ok(),
            None => !w.tx.is_closed(),
        });
        coll.history.push(change);
    }
}

fn key(obj: &Value) -> String {
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("");
    format!("{ns}/{}", meta["name"].as_str().expect("metadata.name"))
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_string(v).unwrap();
    s.push('\n');
    Bytes::from(s)
}

type Shared = Arc<Mutex<Server>>;

pub struct FakeApi {
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    /// Serve the recorded lists in `testdata/kube` on a free port of 127.0.0.1.
    pub async fn start() -> FakeApi {
        let mut server = Server {
            rv: 0,
            compacted: 0,
            collections: BTreeMap::new(),
        };
        for res in Res::ALL {
            let text = std::fs::read_to_string(fixture(res.fixture())).unwrap();
            let list: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(list["kind"], res.list_kind());
            let rv: u64 = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            server.rv = server.rv.max(rv);
            let coll = server.collections.entry(res).or_default();
            for item in list["items"].as_array().unwrap() {
                coll.objects.insert(key(item), item.clone());
            }
        }
        let shared = Arc::new(Mutex::new(server));
        let app = Router::new()
            .route(
                "/api/v1/services",
                get(|s: State<Shared>, q: RawQuery| async move {
                    handle(&s, Res::Services, parse_query(q.0))
                }),
            )
            .route(
                "/apis/discovery.k8s.io/v1/endpointslices",
                get(|s: State<Shared>, q: RawQuery| async move {
                    handle(&s, Res::Slices, parse_query(q.0))
                }),
            )
            .route(
                "/api/v1/nodes",
                get(|s: State<Shared>, q: RawQuery| async move {
                    handle(&s, Res::Nodes, parse_query(q.0))
                }),
            )
            .fallback(|uri: axum::http::Uri| async move {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("no route {uri}"),
                )
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApi { url, shared, task }
    }

    /// Look at (or change) the server's state.
    pub fn with<T>(&self, f: impl FnOnce(&mut Server) -> T) -> T {
        f(&mut self.shared.lock().unwrap())
    }

    /// A change, as watch event JSON (`{"type": "MODIFIED", "object": {...}}`): stored, recorded
    /// in the history and sent to the open watches that select it.
    pub fn change(&self, event: &Value) {
        self.with(|s| s.apply(event, true));
    }

    /// Changes that no watch will see: made, then the history compacted past them. Open watches
    /// get a 410 Gone ERROR event and are closed (with `gone_as_http`, just closed: their
    /// reconnection gets the HTTP 410).
    pub fn expire(&self, events: &[Value]) {
        self.with(|s| {
            for ev in events {
                s.apply(ev, false);
            }
            s.compacted = s.rv;
            let compacted = s.compacted;
            for coll in s.collections.values_mut() {
                coll.history.clear();
                for w in coll.watches.drain(..) {
                    if !coll.gone_as_http {
                        let _ = w.tx.send(Ok(line(&gone(0, compacted))));
                    }
                }
            }
        });
    }

    /// Cut every open watch connection in the middle of an event: half a line, then the
    /// connection is aborted (no final chunk).
    pub fn cut_watches(&self) {
        self.with(|s| {
            for coll in s.collections.values_mut() {
                for w in coll.watches.drain(..) {
                    let _ =
                        w.tx.send(Ok(Bytes::from_static(b"{\"type\":\"MODIFIED\",\"obj")));
                    let _ =
                        w.tx.send(Err(io::Error::other("fake API server: connection cut")));
                }
            }
        });
    }

    /// Every request fails with a 500 (`true`) or is served again (`false`).
    pub fn fail(&self, fail: bool) {
        self.with(|s| s.collections.values_mut().for_each(|c| c.fail = fail));
    }

    /// What the agent's source should publish for `node`: the selected objects as typed, without
    /// managedFields.
    pub fn expected(&self, node: &str) -> Objects {
        let q = |k: &str, v: String| HashMap::from([(k.to_string(), v)]);
        let selected = Selector::parse(&q("labelSelector", LABEL_SELECTOR.to_string()));
        let this_node = Selector::parse(&q("fieldSelector", format!("metadata.name={node}")));
        self.with(|s| {
            let mut objects = Objects::default();
            for (res, coll) in &s.collections {
                let sel = if *res == Res::Nodes {
                    &this_node
                } else {
                    &selected
                };
                for obj in coll.objects.values().filter(|o| sel.matches(o)) {
                    let mut obj = obj.clone();
                    if let Some(meta) = obj["metadata"].as_object_mut() {
                        meta.remove("managedFields");
                    }
                    let typed = match res {
                        Res::Services => {
                            Object::Service(Arc::new(serde_json::from_value(obj).unwrap()))
                        }
                        Res::Slices => {
                            Object::Slice(Arc::new(serde_json::from_value(obj).unwrap()))
                        }
                        Res::Nodes => Object::Node(Arc::new(serde_json::from_value(obj).unwrap())),
                    };
                    typed.insert_into(&mut objects);
                }
            }
            objects
        })
    }
}

fn handle(shared: &Shared, res: Res, q: HashMap<String, String>) -> Response {
    let mut guard = shared.lock().unwrap();
    let server = &mut *guard;
    let (rv, compacted) = (server.rv, server.compacted);
    let coll = server.collections.get_mut(&res).unwrap();
    coll.queries.push(q.clone());
    if coll.fail {
        coll.failures += 1;
        let msg = "fake API server: failing as told";
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", msg);
    }
    let selector = Selector::parse(&q);
    if !matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        coll.lists += 1;
        let items: Vec<&Value> = coll
            .objects
            .values()
            .filter(|o| selector.matches(o))
            .collect();
        let list = json!({
            "kind": res.list_kind(),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            list.to_string(),
        )
            .into_response();
    }
    let from = match q.get("resourceVersion").map(|v| v.parse::<u64>()) {
        Some(Ok(v)) if v > 0 => v,
        // Unset or "0": from now.
        None | Some(Ok(_)) => rv,
        Some(Err(_)) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "bad resourceVersion");
        }
    };
    coll.watch_versions.push(from);
    if from < compacted {
        if coll.gone_as_http {
            let msg = format!("too old resource version: {from} ({compacted})");
            return status(StatusCode::GONE, "Expired", &msg);
        }
        let body = line(&gone(from, compacted));
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    for change in coll.history.iter().filter(|c| c.rv > from) {
        if let Some(ev) = selector.project(change) {
            let _ = tx.send(Ok(line(&ev)));
        }
    }
    coll.watches.push(Watch { selector, tx });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((chunk, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded`, as the client sends its query.
fn parse_query(raw: Option<String>) -> HashMap<String, String> {
    let decode = |s: &str| {
        let mut out = Vec::new();
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                    out.push(u8::from_str_radix(&hex, 16).expect("bad percent-encoding"));
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out).unwrap()
    };
    let raw = raw.unwrap_or_default();
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = status_json(code.as_u16(), reason, message).to_string();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The watch event kube-apiserver sends for a watch from a compacted version.
fn gone(from: u64, compacted: u64) -> Value {
    let msg = format!("too old resource version: {from} ({compacted})");
    json!({"type": "ERROR", "object": status_json(410, "Expired", &msg)})
}
