//! Manifest files as a source: `--manifests PATH` (files or directories of `.yaml`, `.yml` and
//! `.json` files, multi-document YAML and `kind: List` allowed).
//!
//! The files are polled (metadata only, every 200 ms) rather than watched with inotify: polling
//! sees every way an editor or `kubectl` replaces a file (rename over, truncate and write, a
//! directory swapped by a ConfigMap mount) and still meets the 1 s contract. A file that fails
//! to parse keeps its last good objects; a bad document in a good file is skipped alone.
//!
//! Only a listing says a file is gone. A root that cannot be listed (missing for a moment while
//! a directory is swapped by rename, a dangling symlink, an error part-way through the listing)
//! keeps every file it had, and so does a listed file whose metadata cannot be read: publishing
//! what is left would remove working services and the backends of established flows.
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
    /// Roots that could not be listed, from the last look.
    unlisted: Vec<Problem>,
    /// Listed files whose metadata could not be read, from the last look.
    unreadable: Vec<Problem>,
    looked: bool,
}

/// What one look at the roots found.
#[derive(Default)]
struct Look {
    /// Every manifest file by path, with its stamp; `None` when its version cannot be known now
    /// (its root could not be listed, or its metadata not read): it stays as it was.
    files: BTreeMap<PathBuf, Option<Stamp>>,
    unlisted: Vec<Problem>,
    unreadable: Vec<Problem>,
}

impl Manifests {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Manifests {
            roots,
            files: BTreeMap::new(),
            unlisted: Vec::new(),
            unreadable: Vec::new(),
            looked: false,
        }
    }

    /// Look at the files again; `true` when anything changed. A changed file is read once its
    /// stamp has held for one poll, so a file being written in place (`cat >`, an editor that
    /// truncates) is not read half-written; the first look reads everything at once.
    pub fn refresh(&mut self) -> bool {
        let first = !self.looked;
        self.looked = true;
        let Look {
            files,
            unlisted,
            unreadable,
        } = self.look();
        let mut changed = unlisted != self.unlisted || unreadable != self.unreadable;
        self.unlisted = unlisted;
        self.unreadable = unreadable;
        let before = self.files.len();
        self.files.retain(|path, _| files.contains_key(path));
        changed |= before != self.files.len();
        for (path, stamp) in files {
            let Some(stamp) = stamp else {
                continue;
            };
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

    /// Whether the files can be trusted to describe everything: every root can be listed and
    /// every file parses (or parsed before). Until then the agent must not program from them: a
    /// missing mount or a broken file after a restart would otherwise wipe working services.
    pub fn complete(&self) -> Result<(), String> {
        if let Some(p) = self.unlisted.first() {
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
        snap.problems
            .extend(self.unlisted.iter().chain(&self.unreadable).cloned());
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

    /// The manifest files the roots hold now, with their stamps.
    fn look(&self) -> Look {
        let mut look = Look::default();
        for root in &self.roots {
            // A failed or partial listing says nothing about what is gone: the root keeps every
            // file it had.
            if let Err(e) = look_at(root, &mut look) {
                look.unlisted
                    .push(file_problem(root, format!("cannot be listed: {e}")));
                let had = self.files.keys().filter(|path| in_root(path, root));
                for path in had {
                    look.files.entry(path.clone()).or_insert(None);
                }
            }
        }
        look
    }

    /// Which roots keep their last good objects and why; `None` when every root is listed.
    fn unlisted_warning(&self) -> Option<String> {
        let roots: Vec<String> = self
            .unlisted
            .iter()
            .map(|p| {
                format!(
                    "{} {}; keeping its last good objects until it can be listed again",
                    p.object, p.message
                )
            })
            .collect();
        (!roots.is_empty()).then(|| roots.join("; "))
    }

    /// Poll forever, publishing a snapshot whenever the files change; the first one only once
    /// the files are [complete](Manifests::complete), saying every few seconds what is missing.
    pub async fn run(mut self, tx: Sender) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = false;
        let (mut incomplete, mut unlisted) = (Complaint::default(), Complaint::default());
        loop {
            tick.tick().await;
            let changed = self.refresh();
            if !published {
                match self.complete() {
                    Ok(()) => {
                        tx.send_replace(Arc::new(self.snapshot()));
                        published = true;
                    }
                    Err(why) => incomplete
                        .warn(|| format!("not programming until the manifests are whole: {why}")),
                }
                continue;
            }
            match self.unlisted_warning() {
                Some(why) => unlisted.warn(|| why),
                None => unlisted.clear("every manifest root can be listed again"),
            }
            if changed {
                super::publish_if_changed(&tx, self.snapshot());
            }
        }
    }
}

const COMPLAIN_EVERY: Duration = Duration::from_secs(5);

/// A warning repeated every [`COMPLAIN_EVERY`] while its cause lasts, so a problem that
/// persists is never only a line scrolled away long ago.
#[derive(Default)]
struct Complaint {
    last: Option<std::time::Instant>,
}

impl Complaint {
    fn warn(&mut self, message: impl FnOnce() -> String) {
        if self.last.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
            tracing::warn!("{}", message());
            self.last = Some(std::time::Instant::now());
        }
    }

    /// The cause is gone: say so once, and warn at once when it comes back.
    fn clear(&mut self, message: &str) {
        if self.last.take().is_some() {
            tracing::info!("{message}");
        }
    }
}

/// Add the manifest files of `root` (a file, or a directory of them) to `look`; `Err` when the
/// root cannot be listed whole.
fn look_at(root: &Path, look: &mut Look) -> std::io::Result<()> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        look.files.insert(root.to_path_buf(), Some(stamp(&meta)));
        return Ok(());
    }
    // Collected first: an error part-way must not pass for the end of the directory.
    let entries = std::fs::read_dir(root)?.collect::<std::io::Result<Vec<_>>>()?;
    for path in entries
        .iter()
        .map(|e| e.path())
        .filter(|p| named_like_manifest(p))
    {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                look.files.insert(path, Some(stamp(&meta)));
            }
            // A directory named like a manifest.
            Ok(_) => {}
            // Listed, so not deleted as far as we know (a dangling symlink, or deleted since
            // the listing, which the next one will tell).
            Err(e) => {
                let message = format!("{e}; its last version stays");
                look.unreadable.push(file_problem(&path, message));
                // Another root may hold the file and know its version.
                look.files.entry(path).or_insert(None);
            }
        }
    }
    Ok(())
}

/// Whether `path` is `root` itself (a file root) or a file listed in it.
fn in_root(path: &Path, root: &Path) -> bool {
    path == root || path.parent() == Some(root)
}

/// Whether a directory entry is named like a manifest (hidden ones are editors' temporary
/// files and a ConfigMap mount's `..data`).
fn named_like_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json"))
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
    use k8s_openapi::api::core::v1::Service;

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

    /// A directory under the system's temporary one, removed on drop (also when a test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let name = format!("lb-manifests-{name}-{}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            // Left by a killed earlier run with the same pid.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Service `default/NAME` on cluster IP `ip`.
    fn svc(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n")
    }

    /// A new directory `dir` holding `files` (name, text).
    fn dir_with(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    /// `ns/name clusterIP` of every service in the snapshot.
    fn services(m: &Manifests) -> Vec<String> {
        let snap = m.snapshot();
        let ip = |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        snap.objects
            .services
            .iter()
            .map(|(key, s)| format!("{key} {}", ip(s).unwrap_or_default()))
            .collect()
    }

    /// The snapshot's problems, shown.
    fn problems(m: &Manifests) -> Vec<String> {
        m.snapshot()
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    /// A problem names `path` and says `what`.
    fn reported(m: &Manifests, path: &Path, what: &str) -> bool {
        let path = path.display().to_string();
        problems(m)
            .iter()
            .any(|p| p.contains(&path) && p.contains(what))
    }

    #[test]
    fn a_root_renamed_away_keeps_its_objects_until_it_is_back() {
        let tmp = TempDir::new("swap");
        let (conf, old, new) = (tmp.join("conf"), tmp.join("conf.old"), tmp.join("conf.new"));
        let api = svc("api", "10.96.0.2");
        dir_with(
            &conf,
            &[("web.yaml", &svc("web", "10.96.0.1")), ("api.yaml", &api)],
        );
        let mut m = Manifests::new(vec![conf.clone()]);
        m.refresh();
        let both = ["default/api 10.96.0.2", "default/web 10.96.0.1"];
        assert_eq!(services(&m), both);

        std::fs::rename(&conf, &old).unwrap();
        assert!(m.refresh(), "the missing root is news");
        assert_eq!(services(&m), both, "a missing root keeps its objects");
        assert!(
            reported(&m, &conf, "cannot be listed"),
            "{:?}",
            problems(&m)
        );
        assert!(!m.refresh(), "nothing new while it stays missing");
        std::fs::rename(&old, &conf).unwrap();
        assert!(m.refresh());
        assert_eq!(services(&m), both);
        assert_eq!(problems(&m), Vec::<String>::new());

        // `mv conf conf.old; mv conf.new conf`, web changed in the new one.
        dir_with(
            &new,
            &[("web.yaml", &svc("web", "10.96.0.9")), ("api.yaml", &api)],
        );
        let api_before = m.snapshot().objects.services.values().next().cloned();
        std::fs::rename(&conf, &old).unwrap();
        m.refresh();
        std::fs::rename(&new, &conf).unwrap();
        m.refresh();
        assert_eq!(services(&m), both, "new files wait one look to settle");
        m.refresh();
        assert_eq!(
            services(&m),
            ["default/api 10.96.0.2", "default/web 10.96.0.9"]
        );
        let api_after = m.snapshot().objects.services.values().next().cloned();
        assert!(
            Arc::ptr_eq(&api_before.unwrap(), &api_after.unwrap()),
            "an unchanged object read from the new directory stays the same to the model"
        );

        // A file gone from a root that is listed: a real deletion.
        std::fs::remove_file(conf.join("api.yaml")).unwrap();
        assert!(m.refresh());
        assert_eq!(services(&m), ["default/web 10.96.0.9"]);
    }

    #[test]
    fn a_root_that_cannot_be_listed_keeps_its_objects() {
        let tmp = TempDir::new("links");
        let (real, conf) = (tmp.join("real"), tmp.join("conf"));
        dir_with(&real, &[("web.yaml", SVC)]);
        std::os::unix::fs::symlink(&real, &conf).unwrap();
        let mut m = Manifests::new(vec![conf.clone()]);
        m.refresh();
        let web = ["default/web 10.96.0.1"];
        assert_eq!(services(&m), web);
        // Root can read any directory whatever its mode: a dangling symlink and a symlink loop
        // are what a test can make unlistable.
        let repoint = |target: &Path| {
            std::fs::remove_file(&conf).unwrap();
            std::os::unix::fs::symlink(target, &conf).unwrap();
        };
        let unlistable = [
            (tmp.join("missing"), "No such file"),
            (conf.clone(), "Too many levels of symbolic links"),
        ];
        for (target, error) in unlistable {
            repoint(&target);
            assert!(m.refresh(), "{} is news", target.display());
            assert_eq!(services(&m), web, "pointing to {}", target.display());
            assert!(reported(&m, &conf, error), "{:?}", problems(&m));
        }
        repoint(&real);
        assert!(m.refresh());
        assert_eq!(services(&m), web);
        assert_eq!(problems(&m), Vec::<String>::new());
    }

    #[test]
    fn a_file_root_renamed_away_keeps_its_objects() {
        let tmp = TempDir::new("file-root");
        let (file, aside) = (tmp.join("web.yaml"), tmp.join("web.yaml.old"));
        std::fs::write(&file, SVC).unwrap();
        let mut m = Manifests::new(vec![file.clone()]);
        m.refresh();
        std::fs::rename(&file, &aside).unwrap();
        m.refresh();
        assert_eq!(services(&m), ["default/web 10.96.0.1"]);
        assert!(reported(&m, &file, "No such file"), "{:?}", problems(&m));
    }

    #[test]
    fn a_listed_file_without_metadata_keeps_its_last_version() {
        let tmp = TempDir::new("half");
        let (conf, target) = (tmp.join("conf"), tmp.join("web.yaml"));
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(&target, SVC).unwrap();
        std::os::unix::fs::symlink(&target, conf.join("web.yaml")).unwrap();
        let mut m = Manifests::new(vec![conf.clone()]);
        m.refresh();
        // Listed, but its metadata fails: as when it is deleted between listing and stat.
        std::fs::remove_file(&target).unwrap();
        assert!(m.refresh());
        assert_eq!(services(&m), ["default/web 10.96.0.1"]);
        assert!(reported(&m, &conf.join("web.yaml"), "No such file"));
        assert_eq!(m.complete(), Ok(()));
        std::fs::remove_file(conf.join("web.yaml")).unwrap();
        assert!(m.refresh());
        assert_eq!(
            services(&m),
            Vec::<String>::new(),
            "the listing says it is gone"
        );

        // One never read does not hold up the first snapshot: there is nothing to wait for.
        std::os::unix::fs::symlink(tmp.join("missing"), conf.join("new.yaml")).unwrap();
        let mut fresh = Manifests::new(vec![conf.clone()]);
        fresh.refresh();
        assert_eq!(fresh.complete(), Ok(()));
    }

    #[test]
    fn a_file_that_stops_parsing_keeps_its_last_good_objects() {
        let tmp = TempDir::new("parse");
        let dir = tmp.join("conf");
        dir_with(&dir, &[("web.yaml", SVC), ("notes.txt", "not a manifest")]);
        let file = dir.join("web.yaml");
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
    }

    #[test]
    fn incomplete_manifests_are_not_trusted() {
        let tmp = TempDir::new("complete");
        let dir = tmp.join("conf");
        let mut m = Manifests::new(vec![dir.clone()]);
        m.refresh();
        let why = m.complete().unwrap_err();
        assert!(why.contains("No such file"), "a missing root: {why}");
        dir_with(&dir, &[("a.yaml", "{{{ broken")]);
        m.refresh();
        assert!(m.complete().unwrap_err().contains("not read yet"));
        m.refresh();
        assert!(m.complete().unwrap_err().contains("not valid YAML"));
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        m.refresh();
        m.refresh();
        assert_eq!(m.complete(), Ok(()));
    }
}
