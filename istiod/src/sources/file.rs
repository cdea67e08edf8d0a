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
    let mut loaded = Loaded::with_capacity(cache.files.values().map(|c| c.parsed.len()).sum());
    let mut seen = ParseCache {
        files: hashbrown::HashMap::with_capacity(files.len()),
    };
    for (file, stamp) in files {
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
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
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

/// The config files below `dir`, in path order (each directory's entries
/// sorted by name and walked depth first, which is the order of the whole
/// paths compared component by component), each with its [`Stamp`] taken
/// as it is found, before it is read.
///
/// A file's stamp comes from its directory entry (`statx` relative to the
/// directory, the name alone to look up); a symlink's, as in a mounted
/// ConfigMap, from the file it points to. At 1000 files, looking each
/// path up from the root and sorting whole paths component by component
/// were half of the folder read.
fn collect(dir: &Path, out: &mut Vec<(PathBuf, Option<Stamp>)>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| (e.file_name(), e)))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    for (name, entry) in entries {
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        // The directory entry's own type (no `stat`); a symlink (as in a
        // mounted ConfigMap), or an entry of unknown type, is followed.
        let file_type = entry.file_type();
        let follow = !matches!(&file_type, Ok(t) if !t.is_symlink());
        let is_dir = match file_type {
            Ok(t) if !follow => t.is_dir(),
            _ => path.is_dir(),
        };
        if is_dir {
            collect(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            let metadata = if follow {
                std::fs::metadata(&path)
            } else {
                entry.metadata()
            };
            out.push((path, metadata.ok().as_ref().map(Stamp::of)));
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
    fn files_are_read_in_path_order_and_a_configmap_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Component order: `a/z.yaml` before `a-b.yaml` (bytewise, the
        // other way round); hidden entries are skipped.
        std::fs::create_dir(root.join("a")).unwrap();
        std::fs::write(root.join("a/z.yaml"), service("z", 80)).unwrap();
        std::fs::write(root.join("a-b.yaml"), service("ab", 80)).unwrap();
        std::fs::write(root.join(".hidden.yaml"), service("hidden", 80)).unwrap();
        // A mounted ConfigMap: `m.yaml -> ..data/m.yaml`, `..data -> ..v1`.
        std::fs::create_dir(root.join("..v1")).unwrap();
        std::fs::write(root.join("..v1/m.yaml"), service("m", 80)).unwrap();
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/m.yaml", root.join("m.yaml")).unwrap();
        let mut cache = ParseCache::default();
        assert_eq!(
            ports(&load_dir(root, &mut cache).unwrap()),
            [("z".into(), 80), ("ab".into(), 80), ("m".into(), 80)]
        );
        // Settled, then the kubelet's swap: a new directory, `..data`
        // pointed at it; the link `m.yaml` itself is unchanged.
        std::thread::sleep(SETTLE + std::time::Duration::from_millis(100));
        load_dir(root, &mut cache).unwrap();
        std::fs::create_dir(root.join("..v2")).unwrap();
        std::fs::write(root.join("..v2/m.yaml"), service("m", 81)).unwrap();
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert_eq!(
            ports(&load_dir(root, &mut cache).unwrap()),
            [("z".into(), 80), ("ab".into(), 80), ("m".into(), 81)]
        );
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
