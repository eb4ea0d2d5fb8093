//! [`ByteLru`]: a map bounded in bytes, for every in-memory map whose keys a
//! client or an upstream chooses (tag lists, upstream tokens per scope).
//!
//! Entry counts do not bound memory when one entry may be a 4-byte scope or
//! an 8 MiB tag list, so each entry is weighed (its key plus what its value
//! says it takes) and the least recently used leave first once the budget is
//! reached. An entry heavier than the whole budget is not kept (and evicts
//! nothing). Callers hold it behind their own lock (never across an
//! `.await`).

use lru::LruCache;

/// A string-keyed map whose entries weigh at most `budget` bytes together.
pub struct ByteLru<V> {
    entries: LruCache<String, (V, usize)>,
    bytes: usize,
    budget: usize,
}

impl<V> ByteLru<V> {
    /// An empty map for at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        ByteLru {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// The entry for `key`, marked as used.
    pub fn get(&mut self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Keeps `value` for `key`, weighing `weight` bytes plus the key's;
    /// returns whether it was kept (not when heavier than the budget).
    pub fn put(&mut self, key: String, value: V, weight: usize) -> bool {
        let weight = weight.saturating_add(key.len());
        self.remove(&key);
        if weight > self.budget {
            return false;
        }
        while self.bytes + weight > self.budget {
            match self.entries.pop_lru() {
                Some((_, (_, w))) => self.bytes -= w,
                None => break,
            }
        }
        self.bytes += weight;
        self.entries.put(key, (value, weight));
        true
    }

    /// Drops the entry for `key`.
    pub fn remove(&mut self, key: &str) {
        if let Some((_, w)) = self.entries.pop(key) {
            self.bytes -= w;
        }
    }

    /// Bytes the entries weigh together.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_leave_first_once_the_budget_is_reached() {
        let mut m = ByteLru::new(30);
        assert!(m.put("a".into(), 1, 9));
        assert!(m.put("b".into(), 2, 9));
        assert!(m.put("c".into(), 3, 9));
        assert_eq!(m.bytes(), 30);
        assert_eq!(m.get("a"), Some(&1));
        // `b` is now the least recently used.
        assert!(m.put("d".into(), 4, 9));
        assert_eq!(m.get("b"), None);
        assert_eq!((m.len(), m.bytes()), (3, 30));
        // Replacing an entry does not count it twice.
        assert!(m.put("d".into(), 5, 9));
        assert_eq!((m.len(), m.bytes()), (3, 30));
        // Too heavy to keep: not kept, nothing evicted.
        assert!(!m.put("huge".into(), 6, 100));
        assert_eq!((m.len(), m.bytes()), (3, 30));
        m.remove("a");
        assert_eq!((m.len(), m.bytes()), (2, 20));
    }
}
