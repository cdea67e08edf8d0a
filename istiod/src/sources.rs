//! Config sources. Each turns the outside world into [`crds::Object`]s for
//! the one model: the folder source ([`file`]), the embedded example mesh
//! ([`embedded`]) and the Kubernetes API watchers ([`kube`]).

pub mod embedded;
pub mod file;
pub mod kube;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crds::Object;
use std::collections::HashSet;
use std::hash::BuildHasher as _;

use crds::document::{ParseError, parse_value, split_documents};

/// A document that was reported and skipped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: document {document}: {error}", file.display())]
pub struct SourceError {
    /// The file it came from.
    pub file: PathBuf,
    /// 0-based index of the document in the file.
    pub document: usize,
    /// What is wrong, naming kind, object and field.
    #[source]
    pub error: ParseError,
}

/// An object and the document it came from.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The file (one allocation shared by the file's documents).
    pub file: Arc<Path>,
    /// 0-based document index in the file.
    pub document: usize,
    /// The parsed object, namespace defaulted to `default` (shared with
    /// the source's own cache, if it keeps one).
    pub object: Arc<Object>,
}

/// What a [`Loaded`] was made of, for [`Loaded::same_as`].
#[derive(Debug, Default)]
pub struct LoadFingerprint {
    objects: Vec<Arc<Object>>,
    errors: Vec<SourceError>,
}

/// What a source read: the objects that parsed, and the documents that did
/// not (unsupported kinds are left out of both: they are not errors).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Objects in read order, at most one per kind, namespace and name.
    pub entries: Vec<Entry>,
    /// Broken or duplicate documents, each skipped.
    pub errors: Vec<SourceError>,
    /// Positions in `entries` by kind, namespace and name. The keys are the
    /// entries' own (nothing cloned: at 1000 services a map owning them
    /// allocated 14 000 strings on every load, and again for every rebuild).
    index: Index,
}

/// Positions in [`Loaded::entries`], hashed by [`key`].
#[derive(Clone, Debug, Default)]
struct Index {
    table: hashbrown::HashTable<usize>,
    // foldhash rather than SipHash: every object is hashed on every load.
    hasher: hashbrown::DefaultHashBuilder,
}

impl Index {
    /// The position of the entry with `key`, if any.
    fn get(&self, entries: &[Entry], key: Key<'_>) -> Option<usize> {
        self.table
            .find(self.hasher.hash_one(key), |i| {
                entries.get(*i).is_some_and(|e| self::key(&e.object) == key)
            })
            .copied()
    }

    /// Records that `entries[at]` has `key` (not already present).
    fn insert(&mut self, entries: &[Entry], key: Key<'_>, at: usize) {
        let hasher = &self.hasher;
        self.table.insert_unique(hasher.hash_one(key), at, |i| {
            entries
                .get(*i)
                .map_or(0, |e| hasher.hash_one(self::key(&e.object)))
        });
    }
}

impl Loaded {
    /// What this load was made of: each entry's object (held, so that
    /// [`Loaded::same_as`] compares by address safely) and the errors.
    pub fn fingerprint(&self) -> LoadFingerprint {
        LoadFingerprint {
            objects: self.entries.iter().map(|e| e.object.clone()).collect(),
            errors: self.errors.clone(),
        }
    }

    /// Whether this load is made of the very objects (the same allocations,
    /// as the sources share what did not change) and errors that `before`
    /// was. A source read after an event that changed nothing it reads (an
    /// editor's hidden temporary file, a file written with the same text)
    /// is.
    pub fn same_as(&self, before: &LoadFingerprint) -> bool {
        self.entries.len() == before.objects.len()
            && self
                .entries
                .iter()
                .zip(&before.objects)
                .all(|(e, o)| Arc::ptr_eq(&e.object, o))
            && self.errors == before.errors
    }

    /// Empty, with room for `objects` entries (a reload expects about as
    /// many as the load before: growing the index rehashes every key).
    pub fn with_capacity(objects: usize) -> Loaded {
        Loaded {
            entries: Vec::with_capacity(objects),
            errors: Vec::new(),
            index: Index {
                table: hashbrown::HashTable::with_capacity(objects),
                hasher: hashbrown::DefaultHashBuilder::default(),
            },
        }
    }

    /// The objects, in read order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.entries.iter().map(|e| &*e.object)
    }

    /// The objects, in read order, as shared with the source (for
    /// [`translator::model::Snapshot::rebuild`]).
    pub fn shared_objects(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.entries.iter().map(|e| &e.object)
    }

    /// Parses one file's text (multi-document YAML or JSON) into `self`. A
    /// second object with the same kind, namespace and name is reported and
    /// ignored, as a cluster could only hold one of them.
    pub fn add_text(&mut self, file: PathBuf, text: &str) {
        let file: Arc<Path> = file.into();
        for (document, result) in parse_text(text) {
            self.add_validated(&file, document, result);
        }
    }

    /// Adds one parsed document, already through [`validated`] (as read
    /// from `file`, document `document`): a valid, unique object joins
    /// [`Loaded::entries`]; a parse error, a failed semantic check
    /// ([`crds::validate`]) or a duplicate joins [`Loaded::errors`]; an
    /// unsupported kind is dropped.
    pub fn add_validated(
        &mut self,
        file: &Arc<Path>,
        document: usize,
        result: Result<Arc<Object>, ParseError>,
    ) {
        let result = result.and_then(|o| self.unique(&o).map(|()| o));
        match result {
            Ok(object) => {
                self.entries.push(Entry {
                    file: file.clone(),
                    document,
                    object,
                });
                let at = self.entries.len() - 1;
                self.index
                    .insert(&self.entries, key(&self.entries[at].object), at);
            }
            Err(e) if e.is_unsupported_kind() => {}
            Err(error) => self.errors.push(SourceError {
                file: file.to_path_buf(),
                document,
                error,
            }),
        }
    }

    fn unique(&self, object: &Object) -> Result<(), ParseError> {
        let k = key(object);
        match self
            .index
            .get(&self.entries, k)
            .and_then(|i| self.entries.get(i))
        {
            None => Ok(()),
            Some(first) => Err(ParseError::InvalidField {
                kind: k.0.to_owned(),
                name: format!("{}/{}", k.1, k.2),
                field: "metadata.name".into(),
                reason: format!(
                    "already defined in {} document {}; this one is ignored",
                    first.file.display(),
                    first.document
                ),
            }),
        }
    }

    /// Drops VirtualServices without hosts that no VirtualService delegates
    /// to: without hosts a VirtualService can only be a delegate, and one
    /// nobody delegates to can never apply. Each is reported.
    pub fn drop_orphan_delegates(&mut self) {
        let mut delegated = HashSet::new();
        for object in self.objects() {
            if let Object::VirtualService(vs) = object {
                let ns = vs.metadata.namespace.clone().unwrap_or_default();
                for d in vs.spec.http.iter().filter_map(|h| h.delegate.as_ref()) {
                    delegated.insert((
                        d.namespace.clone().unwrap_or_else(|| ns.clone()),
                        d.name.clone(),
                    ));
                }
            }
        }
        let mut errors = Vec::new();
        self.entries.retain(|e| {
            let Object::VirtualService(vs) = &*e.object else {
                return true;
            };
            let (_, ns, name) = key(&e.object);
            let (ns, name) = (ns.to_owned(), name.to_owned());
            if !vs.spec.hosts.is_empty() || delegated.contains(&(ns.clone(), name.clone())) {
                return true;
            }
            errors.push(SourceError {
                file: e.file.to_path_buf(),
                document: e.document,
                error: ParseError::InvalidField {
                    kind: "VirtualService".into(),
                    name: format!("{ns}/{name}"),
                    field: "spec.hosts".into(),
                    reason:
                        "at least one host is required (no VirtualService delegates to this one)"
                            .into(),
                },
            });
            false
        });
        if !errors.is_empty() {
            self.errors.extend(errors);
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        let mut index = Index {
            hasher: self.index.hasher.clone(),
            ..Default::default()
        };
        for (i, e) in self.entries.iter().enumerate() {
            index.insert(&self.entries, key(&e.object), i);
        }
        self.index = index;
    }
}

/// Every document of a file's text (multi-document YAML or JSON), by
/// index, parsed and through [`validated`].
pub fn parse_text(text: &str) -> Vec<(usize, Result<Arc<Object>, ParseError>)> {
    let mut out = Vec::new();
    for (document, value) in split_documents(text) {
        let results = match value {
            Ok(v) => parse_value(v, "default"),
            Err(e) => vec![Err(e)],
        };
        out.extend(
            results
                .into_iter()
                .map(|r| (document, validated(r).map(Arc::new))),
        );
    }
    out
}

/// A parsed object after istiod's semantic checks ([`crds::validate`]).
pub fn validated(result: Result<Object, ParseError>) -> Result<Object, ParseError> {
    result.and_then(|o| crds::validate::validate(&o).map(|()| o))
}

/// An object's identity: kind, namespace, name.
type Key<'a> = (&'static str, &'a str, &'a str);

fn key(o: &Object) -> Key<'_> {
    let m = o.metadata();
    (
        o.kind(),
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";

    #[test]
    fn a_duplicate_is_reported_with_both_places() {
        let mut l = Loaded::default();
        l.add_text("a.yaml".into(), VS);
        l.add_text("b.yaml".into(), &format!("---\n{VS}---\n{VS}"));
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.errors.len(), 2);
        let msg = l.errors[0].to_string();
        assert!(msg.starts_with("b.yaml: document 0:"), "{msg}");
        assert!(
            msg.contains("already defined in a.yaml document 0"),
            "{msg}"
        );
    }

    #[test]
    fn orphan_delegates_are_reported_with_their_file() {
        let mut l = Loaded::default();
        let delegate = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: part}\nspec:\n  http:\n  - route:\n    - destination: {host: reviews}\n";
        l.add_text("d.yaml".into(), delegate);
        l.add_text("a.yaml".into(), VS);
        l.drop_orphan_delegates();
        assert_eq!(l.entries.len(), 1);
        assert!(l.errors[0].to_string().starts_with("d.yaml: document 0:"));
        // The index follows the entries that moved: a second copy of the
        // remaining object is still found and named with its first place.
        l.add_text("b.yaml".into(), VS);
        assert_eq!(l.entries.len(), 1);
        let msg = l.errors[1].to_string();
        assert!(
            msg.contains("already defined in a.yaml document 0"),
            "{msg}"
        );
        // Once something delegates to it, it stays.
        let mut l = Loaded::default();
        l.add_text("d.yaml".into(), delegate);
        l.add_text(
            "root.yaml".into(),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root}\nspec:\n  hosts: [reviews]\n  http:\n  - delegate: {name: part}\n",
        );
        l.drop_orphan_delegates();
        assert_eq!(l.entries.len(), 2, "{:?}", l.errors);
    }

    #[test]
    fn no_prefix_of_any_istio_sample_panics() {
        // Every truncation of every sample: malformed YAML, missing fields,
        // half-written values. Each must be a value (objects or errors).
        // The translator then turns whatever parsed into Envoy resources.
        let platform = include_str!("../../examples/bookinfo/platform.yaml");
        let proxies = [
            "sidecar~127.0.1.1~productpage-v1.default~default.svc.cluster.local",
            "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
        ]
        .map(|id| {
            translator::model::Proxy::from_node_id(
                id,
                None,
                [("istio".into(), "ingressgateway".into())].into(),
            )
            .unwrap()
        });
        let dir = crds::istio_testdata().join("samples/bookinfo/networking");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
                let mut l = Loaded::default();
                l.add_text("platform.yaml".into(), platform);
                l.add_text(path.clone(), &text[..cut]);
                l.drop_orphan_delegates();
                let snap = translator::model::Snapshot::build(1, l.objects(), Default::default());
                for proxy in &proxies {
                    let _ = translator::generate(&snap, proxy);
                }
            }
        }
    }
}
