//! Manifest files as a source: `--manifests PATH` (files or directories of `.yaml`, `.yml` and
//! `.json` files, multi-document YAML and `kind: List` allowed).
//!
//! The files are polled (metadata only, every 200 ms) rather than watched with inotify: polling
//! sees every way an editor or `kubectl` replaces a file (rename over, truncate and write, a
//! directory swapped by a ConfigMap mount) and still meets the 1 s contract. A file that fails
//! to parse keeps its last good objects; a bad document in a good file is skipped alone.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Object, Sender, Snapshot};
use crate::model::{ObjectRef, Objects, Problem};

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Default)]
struct FileState {
    /// The stamp of the version read.
    stamp: Option<Stamp>,
    /// The stamp at the last look (read or not).
    seen: Option<Stamp>,
    /// Some version parsed; `objects` are the last one that did.
    parsed: bool,
    objects: Vec<Object>,
    problems: Vec<Problem>,
}

impl FileState {
    fn read(&mut self, path: &Path) {
        match std::fs::read_to_string(path) {
            Ok(text) => match parse(&text, &path.display().to_string()) {
                Ok((objects, problems)) => {
                    self.objects = keep_unchanged(&self.objects, objects);
                    self.problems = problems;
                    self.parsed = true;
                }
                Err(problem) => self.problems = vec![problem],
            },
            Err(e) => self.problems = vec![file_problem(path, e.to_string())],
        }
    }
}

/// The parsed objects, each equal one replaced by its previous version: the model then sees it
/// unchanged (same `Arc`) and does not compute its service again.
fn keep_unchanged(old: &[Object], new: Vec<Object>) -> Vec<Object> {
    let old: HashMap<(&str, ObjectRef), &Object> =
        old.iter().map(|o| ((o.kind(), o.key()), o)).collect();
    new.into_iter()
        .map(|obj| match old.get(&(obj.kind(), obj.key())) {
            Some(prev) if **prev == obj => (*prev).clone(),
            _ => obj,
        })
        .collect()
}

pub struct Manifests {
    roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    /// Roots that are missing or unreadable, from the last look.
    listing_problems: Vec<Problem>,
    looked: bool,
}

impl Manifests {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Manifests {
            roots,
            files: BTreeMap::new(),
            listing_problems: Vec::new(),
            looked: false,
        }
    }

    /// Look at the files again; `true` when anything changed. A changed file is read once its
    /// stamp has held for one poll, so a file being written in place (`cat >`, an editor that
    /// truncates) is not read half-written; the first look reads everything at once.
    pub fn refresh(&mut self) -> bool {
        let first = !self.looked;
        self.looked = true;
        self.listing_problems.clear();
        let present = self.list();
        let before = self.files.len();
        self.files.retain(|path, _| present.contains_key(path));
        let mut changed = before != self.files.len();
        for (path, stamp) in present {
            let state = self.files.entry(path.clone()).or_default();
            let settled = first || state.seen == Some(stamp);
            state.seen = Some(stamp);
            if state.stamp == Some(stamp) || !settled {
                continue;
            }
            state.stamp = Some(stamp);
            changed = true;
            state.read(&path);
        }
        changed
    }

    /// Whether the files can be trusted to describe everything: every root exists and every
    /// file parses (or parsed before). Until then the agent must not program from them: a
    /// missing mount or a broken file after a restart would otherwise wipe working services.
    pub fn complete(&self) -> Result<(), String> {
        if let Some(p) = self.listing_problems.first() {
            return Err(p.to_string());
        }
        match self.files.iter().find(|(_, f)| !f.parsed) {
            Some((path, f)) => Err(f
                .problems
                .first()
                .map_or(format!("{} not read yet", path.display()), |p| {
                    p.to_string()
                })),
            None => Ok(()),
        }
    }

    /// Every object of every file (a later file wins a name clash) and every problem.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.problems.extend(self.listing_problems.iter().cloned());
        for (path, state) in &self.files {
            snap.problems.extend(state.problems.iter().cloned());
            for obj in &state.objects {
                let kind = obj.kind();
                let key = obj.key();
                if obj.clone().insert_into(&mut snap.objects) {
                    snap.problems.push(Problem {
                        object: format!("{kind} {key}"),
                        field: "metadata.name".into(),
                        message: format!("defined again in {}, which wins", path.display()),
                    });
                }
            }
        }
        snap
    }

    /// The manifest files now present, with their stamps.
    fn list(&mut self) -> BTreeMap<PathBuf, Stamp> {
        let problems = &mut self.listing_problems;
        let mut out = BTreeMap::new();
        for root in &self.roots {
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => match std::fs::read_dir(root) {
                    Ok(dir) => {
                        for entry in dir.flatten() {
                            let path = entry.path();
                            if is_manifest(&path) {
                                if let Ok(m) = std::fs::metadata(&path) {
                                    out.insert(path, stamp(&m));
                                }
                            }
                        }
                    }
                    Err(e) => problems.push(file_problem(root, e.to_string())),
                },
                Ok(m) => {
                    out.insert(root.clone(), stamp(&m));
                }
                Err(e) => problems.push(file_problem(root, e.to_string())),
            }
        }
        out
    }

    /// Poll forever, publishing a snapshot whenever the files change; the first one only once
    /// the files are [complete](Manifests::complete), saying every few seconds what is missing.
    pub async fn run(mut self, tx: Sender) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = false;
        let mut last_complaint: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            let changed = self.refresh();
            if !published {
                match self.complete() {
                    Ok(()) => {
                        tx.send_replace(Arc::new(self.snapshot()));
                        published = true;
                    }
                    Err(why) => {
                        if last_complaint.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
                            tracing::warn!("not programming until the manifests are whole: {why}");
                            last_complaint = Some(std::time::Instant::now());
                        }
                    }
                }
                continue;
            }
            if changed {
                super::publish_if_changed(&tx, self.snapshot());
            }
        }
    }
}

const COMPLAIN_EVERY: Duration = Duration::from_secs(5);

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json")) && path.is_file()
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    }
}

fn file_problem(path: &Path, message: String) -> Problem {
    Problem {
        object: format!("file {}", path.display()),
        field: String::new(),
        message,
    }
}

/// serde-saphyr's default budget (1,024 documents, 250,000 nodes) guards against hostile YAML;
/// a manifest file is the administrator's and may hold a whole cluster (50,000 services), so the
/// counts scale with the file's size instead, while the alias-expansion guards stay as they are.
fn options(text: &str) -> serde_saphyr::Options {
    let n = text.len();
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: n / 3 + 1,
            max_nodes: n + 1,
            max_events: 4 * n + 16,
        },
    }
}

/// Parse one file: `Err` when the file as a whole is unreadable (its last good version stays);
/// otherwise its objects and the problems of the documents that were skipped.
pub fn parse(text: &str, origin: &str) -> Result<(Vec<Object>, Vec<Problem>), Problem> {
    let docs: Documents =
        serde_saphyr::from_str_multiple_with_options::<Value, _>(text, options(text)).map_err(
            |e| Problem {
                object: format!("file {origin}"),
                field: String::new(),
                message: format!("not valid YAML or JSON: {e}"),
            },
        )?;
    let mut objects = Vec::with_capacity(docs.0.len());
    let mut problems = Vec::new();
    for (i, doc) in docs.0.into_iter().enumerate() {
        match doc {
            Parsed::Object(obj) => objects.push(obj),
            Parsed::Other(doc) => document(
                doc,
                &format!("{origin} document {}", i + 1),
                &mut objects,
                &mut problems,
            ),
        }
    }
    Ok((objects, problems))
}

/// A file's documents, each converted as the parser yields it: a file holding a whole cluster
/// then never has all its documents as `Value` trees at once (at 50,000 services those took
/// more memory than the objects, and the agent's peak RSS kept it).
#[derive(Default)]
struct Documents(Vec<Parsed>);

enum Parsed {
    /// A well-formed object of a kind lb reads.
    Object(Object),
    /// Anything else, for [`document`] to take apart or explain (it knows the file's name).
    Other(Value),
}

impl Extend<Value> for Documents {
    fn extend<I: IntoIterator<Item = Value>>(&mut self, docs: I) {
        for doc in docs {
            let parsed = match typed_object(&doc) {
                Some(Ok(obj)) if has_name(&obj) => Parsed::Object(obj),
                _ => Parsed::Other(doc),
            };
            self.0.push(parsed);
        }
    }
}

fn document(doc: Value, origin: &str, objects: &mut Vec<Object>, problems: &mut Vec<Problem>) {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let label = object_label(&doc, kind, origin);
    let parsed = match (api_version, kind) {
        _ if doc.is_null() => return,
        ("v1", "List") => {
            let items = doc.get("items").and_then(Value::as_array).cloned();
            for (i, item) in items.into_iter().flatten().enumerate() {
                document(item, &format!("{origin} item {i}"), objects, problems);
            }
            return;
        }
        _ => match typed_object(&doc) {
            Some(parsed) => parsed,
            None => {
                problems.extend(unsupported(api_version, kind, label));
                return;
            }
        },
    };
    match parsed {
        Ok(obj) if has_name(&obj) => objects.push(obj),
        Ok(_) => problems.push(Problem {
            object: label,
            field: "metadata.name".into(),
            message: "missing".into(),
        }),
        Err((field, message)) => problems.push(Problem {
            object: label,
            field,
            message,
        }),
    }
}

/// The object a document holds, if it is of a kind (and apiVersion) lb reads.
fn typed_object(doc: &Value) -> Option<Result<Object, (String, String)>> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let parsed = match (api_version, kind) {
        ("v1", "Service") => typed(doc).map(|s| Object::Service(Arc::new(s))),
        ("discovery.k8s.io/v1", "EndpointSlice") => typed(doc).map(|s| Object::Slice(Arc::new(s))),
        ("v1", "Node") => typed(doc).map(|n| Object::Node(Arc::new(n))),
        _ => return None,
    };
    Some(parsed)
}

/// Why a document of another kind or apiVersion is skipped, if it is worth saying.
fn unsupported(api_version: &str, kind: &str, label: String) -> Option<Problem> {
    match kind {
        "" => Some(Problem {
            object: label,
            field: "kind".into(),
            message: "missing".into(),
        }),
        "Service" | "Node" | "EndpointSlice" => {
            let want = if kind == "EndpointSlice" {
                "discovery.k8s.io/v1"
            } else {
                "v1"
            };
            Some(Problem {
                object: label,
                field: "apiVersion".into(),
                message: format!("{api_version:?} is not supported; use {want}"),
            })
        }
        // Deployments and the like may share the files: not lb's business.
        _ => None,
    }
}

/// `Service ns/name (file.yaml document 2)`, with whatever of the name is there.
fn object_label(doc: &Value, kind: &str, origin: &str) -> String {
    let meta = |f: &str| {
        doc.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
    };
    match (meta("namespace"), meta("name")) {
        (_, None) => format!("{kind} ({origin})"),
        (ns, Some(name)) if kind != "Node" => {
            format!("{kind} {}/{name} ({origin})", ns.unwrap_or("default"))
        }
        (_, Some(name)) => format!("{kind} {name} ({origin})"),
    }
}

fn has_name(obj: &Object) -> bool {
    obj.meta().name.as_deref().is_some_and(|n| !n.is_empty())
}

/// Deserialize with the path of the first bad field.
fn typed<T: DeserializeOwned>(doc: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        (field, e.into_inner().to_string())
    })
}

/// Objects of manifest text, for tests and tools: every document must parse.
pub fn objects_of(text: &str) -> Result<Objects, Vec<Problem>> {
    let (objs, problems) = parse(text, "<text>").map_err(|p| vec![p])?;
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut objects = Objects::default();
    for obj in objs {
        obj.insert_into(&mut objects);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    fn names(objs: &[Object]) -> Vec<String> {
        objs.iter()
            .map(|o| format!("{} {}", o.kind(), o.key()))
            .collect()
    }

    #[test]
    fn documents_lists_json_and_foreign_kinds() {
        let yaml = format!(
            "{SVC}---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app}}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {{name: n1}}\n"
        );
        let (objs, problems) = parse(&yaml, "f.yaml").unwrap();
        assert_eq!(names(&objs), ["Service default/web", "Node /n1"]);
        assert!(problems.is_empty(), "{problems:?}");
        let json = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"s","namespace":"ns"},"addressType":"IPv4","endpoints":[]}"#;
        let (objs, _) = parse(json, "f.json").unwrap();
        assert_eq!(names(&objs), ["EndpointSlice ns/s"]);
    }

    /// A whole cluster in one file: more documents and nodes than serde-saphyr's default budget.
    #[test]
    fn large_files_parse() {
        let yaml: String = (0..20_000)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                     spec: {{ports: [{{port: 80, name: a}}, {{port: 81, name: b}}]}}\n"
                )
            })
            .collect();
        let (objs, problems) = parse(&yaml, "f.yaml").unwrap();
        assert_eq!(objs.len(), 20_000);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_bad_document_is_reported_with_object_and_field_and_skipped_alone() {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: x}}\n\
             spec: {{ports: [{{port: eighty}}]}}\n---\n{SVC}---\nkind: Service\nmetadata: {{}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{namespace: x}}\n"
        );
        let (objs, problems) = parse(&yaml, "f.yaml").unwrap();
        assert_eq!(names(&objs), ["Service default/web"]);
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0]
                .starts_with("Service x/bad (f.yaml document 1): spec.ports[0].port: invalid type"),
            "{shown:?}"
        );
        let version = "Service (f.yaml document 3): apiVersion: \"\" is not supported; use v1";
        assert_eq!(shown[1], version);
        assert_eq!(
            shown[2],
            "Service (f.yaml document 4): metadata.name: missing"
        );
    }

    #[test]
    fn unparsable_text_fails_the_whole_file() {
        let err = parse("kind: Service\n  metadata: [unclosed\n", "broken.yaml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("file broken.yaml: : not valid YAML or JSON"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_stops_parsing_keeps_its_last_good_objects() {
        let dir = std::env::temp_dir().join(format!("lb-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yaml");
        std::fs::write(&file, SVC).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let mut m = Manifests::new(vec![dir.clone()]);
        assert!(m.refresh());
        assert_eq!(m.snapshot().objects.services.len(), 1);
        assert!(!m.refresh(), "unchanged files are not re-read");
        std::fs::write(&file, "{{{ broken").unwrap();
        assert!(
            !m.refresh(),
            "a changed file waits one look for its writer to finish"
        );
        assert!(m.refresh());
        let snap = m.snapshot();
        assert_eq!(snap.objects.services.len(), 1, "last good version kept");
        assert_eq!(snap.problems.len(), 1);
        std::fs::remove_file(&file).unwrap();
        assert!(m.refresh());
        assert!(
            m.snapshot().objects.services.is_empty(),
            "a deleted file's objects go"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn incomplete_manifests_are_not_trusted() {
        let dir = std::env::temp_dir().join(format!("lb-manifests-c-{}", std::process::id()));
        let mut m = Manifests::new(vec![dir.clone()]);
        m.refresh();
        let why = m.complete().unwrap_err();
        assert!(why.contains("No such file"), "a missing root: {why}");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "{{{ broken").unwrap();
        m.refresh();
        assert!(m.complete().unwrap_err().contains("not read yet"));
        m.refresh();
        assert!(m.complete().unwrap_err().contains("not valid YAML"));
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        m.refresh();
        m.refresh();
        assert_eq!(m.complete(), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
