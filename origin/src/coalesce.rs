//! In-flight work keyed by what it produces, so that concurrent requests for
//! the same thing share one upstream fetch.
//!
//! [`Flights`] is a map from key to the shared state of the one task doing the
//! work. The first caller becomes the leader and starts the task; later
//! callers get the same `Arc` and follow its progress. The leader removes the
//! entry only after the result is durable (committed to the store), so a
//! caller either joins the flight or finds the result in the store; the
//! leader re-checks the store before going upstream to close the remaining
//! window. A plain `std::sync::Mutex` is enough: it is never held across an
//! `.await` (mini-redis `db.rs` makes the same choice).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Concurrent work in progress, by key.
pub struct Flights<K, V> {
    map: Mutex<HashMap<K, Arc<V>>>,
}

impl<K: Eq + Hash + Clone, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Flights<K, V> {
    /// Joins the flight for `key`, or starts one with `start` (called under
    /// the lock, so it must not block). Returns the flight and whether this
    /// caller is its leader.
    pub fn join_or_start(&self, key: &K, start: impl FnOnce() -> Arc<V>) -> (Arc<V>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(key) {
            return (existing.clone(), false);
        }
        let flight = start();
        map.insert(key.clone(), flight.clone());
        (flight, true)
    }

    /// The flight for `key`, if one is running.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Ends `flight`'s entry (only if it is still the one registered).
    pub fn finish(&self, key: &K, flight: &Arc<V>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, flight))
        {
            map.remove(key);
        }
    }

    /// Number of flights in progress.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_callers_join_the_first_flight() {
        let flights: Flights<&str, u32> = Flights::default();
        let (a, leader_a) = flights.join_or_start(&"k", || Arc::new(1));
        let (b, leader_b) = flights.join_or_start(&"k", || Arc::new(2));
        assert!(leader_a && !leader_b);
        assert!(Arc::ptr_eq(&a, &b));
        flights.finish(&"k", &a);
        assert!(flights.is_empty());
        let (c, leader_c) = flights.join_or_start(&"k", || Arc::new(3));
        assert!(leader_c);
        assert_eq!(*c, 3);
    }

    #[test]
    fn finishing_a_replaced_flight_keeps_the_new_one() {
        let flights: Flights<&str, u32> = Flights::default();
        let (old, _) = flights.join_or_start(&"k", || Arc::new(1));
        flights.finish(&"k", &old);
        let (new, _) = flights.join_or_start(&"k", || Arc::new(2));
        flights.finish(&"k", &old);
        assert!(Arc::ptr_eq(&flights.get(&"k").unwrap(), &new));
    }
}
