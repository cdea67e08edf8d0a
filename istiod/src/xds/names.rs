//! Per-connection sets of resource names, shared where they can be.
//!
//! Each connection knows, per type, what the proxy subscribed to and what
//! it has (name -> version). At 1000 services that is ~1400 names for
//! clusters and as many for endpoints, and thousands of proxies with the
//! same config hold the same lists: kept as one map per connection they
//! were ~250 KiB per proxy. A [`NameMap`] is a sorted list shared with the
//! generated config (an `Arc`) plus this connection's own differences.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Names and versions, sorted by name, without duplicates.
pub(crate) type Versions = [(Arc<str>, u64)];

/// Name order, with a shortcut for the same (interned) `Arc`.
pub(crate) fn name_cmp(a: &Arc<str>, b: &Arc<str>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        std::cmp::Ordering::Equal
    } else {
        (**a).cmp(&**b)
    }
}

/// `name` as an `Arc` shared with `list` when it is there.
pub(crate) fn intern(list: &Versions, name: &str) -> Arc<str> {
    match list.binary_search_by(|(n, _)| (**n).cmp(name)) {
        Ok(i) => list[i].0.clone(),
        Err(_) => Arc::from(name),
    }
}

/// `name` in sorted `list`.
pub(crate) fn lookup(list: &Versions, name: &str) -> Option<u64> {
    list.binary_search_by(|(n, _)| (**n).cmp(name))
        .ok()
        .map(|i| list[i].1)
}

/// Differences on top of the shared list at which [`NameMap::compact`]
/// tries to share again, or takes a list of its own.
const MAX_OVERLAY: usize = 32;

/// A map from resource name to version: a shared sorted base with this
/// connection's insertions and removals on top.
#[derive(Clone, Debug, Default)]
pub(crate) struct NameMap {
    base: Arc<Versions>,
    /// `Some(version)`: inserted or replaced; `None`: removed from `base`.
    overlay: BTreeMap<Arc<str>, Option<u64>>,
}

impl NameMap {
    /// Exactly `base` (shared, not copied).
    pub(crate) fn shared(base: Arc<Versions>) -> NameMap {
        NameMap {
            base,
            overlay: BTreeMap::new(),
        }
    }

    /// A map of its own, from entries in any order (the last of equal names wins).
    pub(crate) fn own(entries: impl IntoIterator<Item = (Arc<str>, u64)>) -> NameMap {
        let sorted: BTreeMap<Arc<str>, u64> = entries.into_iter().collect();
        NameMap::shared(sorted.into_iter().collect())
    }

    /// Whether this is exactly `list`, shared (the same allocation, nothing on top).
    pub(crate) fn is_exactly(&self, list: &Arc<Versions>) -> bool {
        Arc::ptr_eq(&self.base, list) && self.overlay.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<u64> {
        match self.overlay.get(name) {
            Some(v) => *v,
            None => lookup(&self.base, name),
        }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(crate) fn insert(&mut self, name: Arc<str>, version: u64) {
        if lookup(&self.base, &name) == Some(version) {
            self.overlay.remove(&name);
        } else {
            self.overlay.insert(name, Some(version));
        }
    }

    pub(crate) fn remove(&mut self, name: &str) {
        if lookup(&self.base, name).is_some() {
            self.overlay.insert(Arc::from(name), None);
        } else {
            self.overlay.remove(name);
        }
    }

    /// Every name, sorted.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        let mut base = self
            .base
            .iter()
            .filter(|(n, _)| !self.overlay.contains_key(n))
            .map(|(n, v)| (n, *v))
            .peekable();
        let mut over = self
            .overlay
            .iter()
            .filter_map(|(n, v)| Some((n, (*v)?)))
            .peekable();
        std::iter::from_fn(move || match (base.peek(), over.peek()) {
            (Some(b), Some(o)) if b.0 < o.0 => base.next(),
            (Some(_), Some(_)) | (None, Some(_)) => over.next(),
            (Some(_), None) => base.next(),
            (None, None) => None,
        })
    }

    /// Whether this map has exactly the names of `other` (versions aside).
    pub(crate) fn same_names(&self, other: &Versions) -> bool {
        if self.overlay.is_empty()
            && std::ptr::addr_eq(Arc::as_ptr(&self.base), other)
            && self.base.len() == other.len()
        {
            return true;
        }
        let mut mine = self.entries();
        let mut theirs = other.iter();
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                (Some((a, _)), Some((b, _))) if a == b => {}
                _ => return false,
            }
        }
    }

    /// The `items` (sorted by `name`, unique) whose names this map has, in
    /// one merge pass (no lookup per item).
    pub(crate) fn filter_sorted<'a, T>(
        &self,
        items: &'a [T],
        name: impl Fn(&T) -> &Arc<str>,
    ) -> Vec<&'a T> {
        let mut mine = self.entries().peekable();
        let mut out = Vec::new();
        for item in items {
            let n = name(item);
            while mine
                .next_if(|(m, _)| name_cmp(m, n) == std::cmp::Ordering::Less)
                .is_some()
            {}
            if mine
                .next_if(|(m, _)| name_cmp(m, n) == std::cmp::Ordering::Equal)
                .is_some()
            {
                out.push(item);
            }
        }
        out
    }

    /// For `items` (sorted by `name`, unique): the version this map has of
    /// each (None: not here), and the names here that are not among
    /// `items`; one merge pass.
    pub(crate) fn diff_sorted<T>(
        &self,
        items: &[&T],
        name: impl Fn(&T) -> &Arc<str>,
    ) -> (Vec<Option<u64>>, Vec<Arc<str>>) {
        let mut mine = self.entries().peekable();
        let mut versions = Vec::with_capacity(items.len());
        let mut gone = Vec::new();
        for item in items {
            let n = name(item);
            while let Some((m, _)) =
                mine.next_if(|(m, _)| name_cmp(m, n) == std::cmp::Ordering::Less)
            {
                gone.push(m.clone());
            }
            versions.push(
                mine.next_if(|(m, _)| name_cmp(m, n) == std::cmp::Ordering::Equal)
                    .map(|(_, v)| v),
            );
        }
        gone.extend(mine.map(|(m, _)| m.clone()));
        (versions, gone)
    }

    /// Whether both maps have the same names (versions aside).
    pub(crate) fn same_keys(&self, other: &NameMap) -> bool {
        self.entries()
            .map(|(n, _)| n)
            .eq(other.entries().map(|(n, _)| n))
    }

    /// Whether this map has exactly the names and versions of `other`.
    pub(crate) fn same_as(&self, other: &Versions) -> bool {
        self.entries()
            .map(|(n, v)| (&**n, v))
            .eq(other.iter().map(|(n, v)| (&**n, *v)))
    }

    /// Keeps the overlay small: once it has grown, shares `candidate`
    /// when the names (and, with `versions`, the versions) are the same,
    /// else takes a list of its own.
    pub(crate) fn compact(&mut self, candidate: &Arc<Versions>, versions: bool) {
        if self.overlay.len() <= MAX_OVERLAY {
            return;
        }
        let same = if versions {
            self.same_as(candidate)
        } else {
            self.same_names(candidate)
        };
        *self = if same {
            NameMap::shared(candidate.clone())
        } else {
            NameMap::shared(self.entries().map(|(n, v)| (n.clone(), v)).collect())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, u64)]) -> Arc<Versions> {
        entries.iter().map(|(n, v)| (Arc::from(*n), *v)).collect()
    }

    #[test]
    fn the_overlay_wins_and_iteration_stays_sorted() {
        let base = list(&[("a", 1), ("c", 3), ("e", 5)]);
        let mut m = NameMap::shared(base.clone());
        assert!(m.same_as(&base) && m.same_names(&base));
        m.insert(Arc::from("b"), 2);
        m.insert(Arc::from("c"), 30);
        m.remove("e");
        m.remove("z");
        let got: Vec<(String, u64)> = m.entries().map(|(n, v)| (n.to_string(), v)).collect();
        assert_eq!(
            got,
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 30)]
        );
        assert_eq!(m.get("c"), Some(30));
        assert_eq!(m.get("e"), None);
        assert!(!m.is_exactly(&base), "changes on top");
        assert!(NameMap::shared(base.clone()).is_exactly(&base));
        assert!(!NameMap::shared(list(&[("a", 1), ("c", 3), ("e", 5)])).is_exactly(&base));
        assert!(!m.same_names(&base));
        // Putting back what the base has leaves no difference.
        m.insert(Arc::from("c"), 3);
        m.insert(Arc::from("e"), 5);
        m.remove("b");
        assert!(m.same_as(&base));
    }

    #[test]
    fn merge_passes_agree_with_lookups() {
        let mut m = NameMap::shared(list(&[("a", 1), ("c", 3), ("e", 5), ("g", 7)]));
        m.remove("g");
        m.insert(Arc::from("d"), 4);
        let items = list(&[("b", 0), ("c", 0), ("d", 0), ("e", 9), ("h", 0)]);
        let picked: Vec<&str> = m
            .filter_sorted(&items, |e| &e.0)
            .iter()
            .map(|e| &*e.0)
            .collect();
        assert_eq!(picked, ["c", "d", "e"]);
        let refs: Vec<&(Arc<str>, u64)> = items.iter().collect();
        let (versions, gone) = m.diff_sorted(&refs, |e| &e.0);
        assert_eq!(versions, [None, Some(3), Some(4), Some(5), None]);
        assert_eq!(gone.iter().map(|g| &**g).collect::<Vec<_>>(), ["a"]);
        for (item, v) in items.iter().zip(&versions) {
            assert_eq!(m.get(&item.0), *v);
        }
    }

    #[test]
    fn compacting_shares_an_equal_list_and_copies_otherwise() {
        let names: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        let full: Arc<Versions> = names.iter().map(|n| (Arc::from(n.as_str()), 7)).collect();
        let mut m = NameMap::default();
        for n in &names {
            m.insert(Arc::from(n.as_str()), 7);
        }
        m.compact(&full, true);
        assert!(Arc::ptr_eq(&m.base, &full) && m.overlay.is_empty());
        let mut partial = NameMap::default();
        for n in names.iter().take(50) {
            partial.insert(Arc::from(n.as_str()), 7);
        }
        partial.compact(&full, true);
        assert!(partial.overlay.is_empty());
        assert_eq!(partial.entries().count(), 50);
        assert_eq!(partial.get("n049"), Some(7));
        assert_eq!(partial.get("n050"), None);
    }
}
