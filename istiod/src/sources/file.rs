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
/// files whose text differs from `cache` (which is updated). A file whose
/// [`Stamp`] is unchanged since it was read, and was last changed well
/// before that read, is not read again.
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
        let stamp = Stamp::of(&file);
        let cached = cache.files.remove(&file);
        let entry = match cached {
            Some(entry) if stamp.is_some() && entry.stamp == stamp && entry.settled() => Ok(entry),
            cached => {
                let read_at = std::time::SystemTime::now();
                std::fs::read_to_string(&file).map(|text| {
                    let digest = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
                    let (parsed, path) = match cached {
                        Some(old) if old.digest == digest => (old.parsed, old.path),
                        _ => (super::parse_text(&text), file.as_path().into()),
                    };
                    Cached {
                        digest,
                        parsed,
                        path,
                        stamp,
                        read_at,
                    }
                })
            }
        };
        match entry {
            Ok(entry) => {
                for (document, result) in &entry.parsed {
                    loaded.add_validated(&entry.path, *document, result.clone());
                }
                seen.files.insert(file, entry);
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

/// Each file's text digest and its parsed, validated documents, from the
/// last load: a file whose text has not changed is not parsed again (at 1000
/// services, parsing every file took most of the time from an edit to
/// the new snapshot; reading them all, ~15 ms, the most of what was left).
#[derive(Debug, Default)]
pub struct ParseCache {
    // foldhash rather than SipHash: every file is looked up on every load.
    files: hashbrown::HashMap<PathBuf, Cached>,
}

#[derive(Debug)]
struct Cached {
    /// XXH3-128 of the file's text, which is not kept (at 1000 services
    /// the texts were ~1 MiB; files are the operator's, not an adversary's,
    /// so a 128-bit non-cryptographic digest stands for the text).
    digest: u128,
    parsed: Parsed,
    /// The path, as the entries of its documents share it.
    path: std::sync::Arc<Path>,
    /// The file's metadata before it was read (`None`: not available).
    stamp: Option<Stamp>,
    read_at: std::time::SystemTime,
}

/// How long before a read a file must have last changed for its
/// [`Stamp`] to stand for its text. The kernel stamps files from a coarse
/// clock, so a write just after a read can leave size and times as they
/// were ("racy git"); such a file is read every time until it has settled.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

impl Cached {
    fn settled(&self) -> bool {
        self.stamp
            .as_ref()
            .and_then(Stamp::changed)
            .and_then(|t| t.checked_add(SETTLE))
            .is_some_and(|t| t < self.read_at)
    }
}

/// What `stat` says of a file that any write changes: device and inode
/// (a file replaced by rename is a new inode), size, and the modification
/// and status-change times (seconds and nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The later of the two times (`None` before 1970 or out of range).
    fn changed(&self) -> Option<std::time::SystemTime> {
        let at = |(secs, nanos): (i64, i64)| {
            let secs = u64::try_from(secs).ok()?;
            let nanos = u32::try_from(nanos).ok()?;
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
        };
        Some(at(self.mtime)?.max(at(self.ctime)?))
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // The directory entry's own type (no `stat`); a symlink (as in a
        // mounted ConfigMap) is followed.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => path.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => path.is_dir(),
        };
        if is_dir {
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

    #[test]
    fn a_settled_file_is_not_read_again_and_a_fresh_one_always_is() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, service("a", 80)).unwrap();
        let mut cache = ParseCache::default();
        load_dir(dir.path(), &mut cache).unwrap();
        // Same size, same second: only the text tells them apart.
        std::fs::write(&a, service("a", 81)).unwrap();
        assert_eq!(
            ports(&load_dir(dir.path(), &mut cache).unwrap()),
            [("a".into(), 81)]
        );
        std::thread::sleep(SETTLE + std::time::Duration::from_millis(100));
        load_dir(dir.path(), &mut cache).unwrap();
        let read_at = cache.files[&a].read_at;
        assert!(cache.files[&a].settled());
        load_dir(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.files[&a].read_at, read_at, "not read again");
        std::fs::write(&a, service("a", 82)).unwrap();
        assert_eq!(
            ports(&load_dir(dir.path(), &mut cache).unwrap()),
            [("a".into(), 82)]
        );
        assert!(cache.files[&a].read_at > read_at);
    }
}
