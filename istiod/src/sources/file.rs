//! The folder source (`--config-dir`): every `*.yaml`, `*.yml` and `*.json`
//! below a directory, multi-document as `kubectl apply -f` takes them,
//! re-read on every change the watcher reports (only changed files are
//! parsed again, see [`ParseCache`]).

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crds::{Object, ParseError};

use super::Loaded;

/// Reads every config file below `dir`, in path order, parsing only the
/// files whose text differs from `cache` (which is updated).
///
/// # Errors
/// Only an unreadable `dir` itself; unreadable files and bad documents are
/// reported in [`Loaded::errors`] and skipped.
pub fn load_dir(dir: &Path, cache: &mut ParseCache) -> std::io::Result<Loaded> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut loaded = Loaded::default();
    let mut seen = ParseCache::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let parsed = match cache.files.remove(&file) {
                    Some((old, parsed)) if old == text => parsed,
                    _ => super::parse_text(&text),
                };
                for (document, result) in &parsed {
                    loaded.add_validated(&file, *document, result.clone());
                }
                seen.files.insert(file, (text, parsed));
            }
            Err(e) => loaded.errors.push(super::SourceError {
                file: file.clone(),
                document: 0,
                error: crds::ParseError::Syntax(format!("cannot read file: {e}")),
            }),
        }
    }
    // Files gone since the last load are forgotten.
    *cache = seen;
    Ok(loaded)
}

/// A file's documents: index in the file, and the object or why not.
type Parsed = Vec<(usize, Result<std::sync::Arc<Object>, ParseError>)>;

/// Each file's text and its parsed, validated documents, from the last
/// load: a file whose text has not changed is not parsed again (at 1000
/// services, parsing every file took most of the time from an edit to
/// the new snapshot).
#[derive(Debug, Default)]
pub struct ParseCache {
    files: std::collections::HashMap<PathBuf, (String, Parsed)>,
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Watches `dir` recursively; every change sends a unit on `tx` (a full
/// channel means a rescan is already pending, so extra events are dropped).
/// Keep the returned watcher alive for as long as events are wanted.
///
/// # Errors
/// When inotify cannot watch the directory.
pub fn watch(dir: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: {port}}}]\n"
        )
    }

    fn ports(loaded: &Loaded) -> Vec<(String, i32)> {
        loaded
            .objects()
            .filter_map(|o| match o {
                Object::Service(s) => Some((
                    s.metadata.name.clone().unwrap_or_default(),
                    s.spec.as_ref()?.ports.as_ref()?.first()?.port,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_cache_follows_edits_additions_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a", 80)).unwrap();
        std::fs::write(dir.path().join("b.yaml"), service("b", 80)).unwrap();
        let mut cache = ParseCache::default();
        let first = load_dir(dir.path(), &mut cache).unwrap();
        assert_eq!(ports(&first), [("a".into(), 80), ("b".into(), 80)]);
        // b unchanged: its object is the cached one, not parsed again.
        std::fs::write(dir.path().join("a.yaml"), service("a", 8080)).unwrap();
        std::fs::write(dir.path().join("c.yaml"), "kind: [broken").unwrap();
        let second = load_dir(dir.path(), &mut cache).unwrap();
        assert_eq!(ports(&second), [("a".into(), 8080), ("b".into(), 80)]);
        assert!(std::sync::Arc::ptr_eq(
            &first.entries[1].object,
            &second.entries[1].object
        ));
        assert_eq!(second.errors.len(), 1, "{:?}", second.errors);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let third = load_dir(dir.path(), &mut cache).unwrap();
        assert_eq!(ports(&third), [("b".into(), 80)]);
        assert_eq!(cache.files.len(), 2, "a.yaml is forgotten");
    }
}
