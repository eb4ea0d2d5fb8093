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
//!
//! [`SharedFlights`] is the same map for work whose result is small and
//! cloned to every caller (manifests, tag revalidations): the flight is the
//! work's shared result, the work runs in a detached task, and its entry is
//! removed by a drop guard the task owns, so however the task ends —
//! result, error, panic, abort — the next caller starts afresh instead of
//! joining a dead flight (issue 12). One registration mechanism serves
//! both: join or start under one lock, and an entry removed only by the
//! flight that registered it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

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

    /// Every flight in progress, now.
    pub fn values(&self) -> Vec<Arc<V>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a caller of a failed flight gets when the work ended without a
/// result (it panicked or was aborted).
pub type Lost<E> = fn() -> E;

type SharedResult<T, E> = Shared<BoxFuture<'static, Result<T, Arc<E>>>>;

/// Detached work shared by every concurrent caller with the same key: the
/// same [`Flights`] map, holding each flight's shared result.
pub struct SharedFlights<K, T, E> {
    flights: Arc<Flights<K, SharedResult<T, E>>>,
    lost: Lost<E>,
}

impl<K, T, E> SharedFlights<K, T, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// No flights; a flight whose work ends without a result fails with `lost()`.
    pub fn new(lost: Lost<E>) -> Self {
        Self {
            flights: Arc::new(Flights::default()),
            lost,
        }
    }

    /// Joins the flight for `key`, or runs `work` as a new one in a detached
    /// task (it completes even if every caller goes away). Returns the
    /// shared result and whether this caller started the flight.
    pub fn run(
        &self,
        key: K,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> (
        impl Future<Output = Result<T, Arc<E>>> + Send + 'static,
        bool,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lost = self.lost;
        let (flight, leader) = self.flights.join_or_start(&key, || {
            Arc::new(
                async move { rx.await.unwrap_or_else(|_| Err(Arc::new(lost()))) }
                    .boxed()
                    .shared(),
            )
        });
        if !leader {
            return ((*flight).clone(), false);
        }
        let guard = Remove {
            flights: self.flights.clone(),
            key,
            flight: flight.clone(),
        };
        // Spawned outside the map's lock: a task dropped at once (runtime
        // shutting down) drops its guard, which takes the lock.
        tokio::spawn(async move {
            let result = work.await.map_err(Arc::new);
            // Out of the map before the result is out: a caller that comes
            // after the result starts afresh.
            drop(guard);
            let _ = tx.send(result);
        });
        ((*flight).clone(), true)
    }

    /// Number of flights in progress.
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }
}

/// Ends a shared flight's entry when its task ends, however it ends.
struct Remove<K: Eq + Hash + Clone, V> {
    flights: Arc<Flights<K, V>>,
    key: K,
    flight: Arc<V>,
}

impl<K: Eq + Hash + Clone, V> Drop for Remove<K, V> {
    fn drop(&mut self) {
        self.flights.finish(&self.key, &self.flight);
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

    fn shared() -> SharedFlights<&'static str, u32, String> {
        SharedFlights::new(|| "the work ended without a result".to_owned())
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = shared();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (a, leader_a) = flights.run("k", async move {
            let _ = gate_rx.await;
            Ok(7)
        });
        let (b, leader_b) = flights.run("k", async { Ok(8) });
        assert!(leader_a && !leader_b);
        gate_tx.send(()).unwrap();
        assert_eq!(a.await.unwrap(), 7);
        assert_eq!(b.await.unwrap(), 7);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_flight_is_removed_and_the_next_call_runs_afresh() {
        let flights = shared();
        let (first, _) = flights.run("k", async {
            if true {
                panic!("hostile input");
            }
            Ok(1)
        });
        let err = first.await.unwrap_err();
        assert_eq!(*err, "the work ended without a result");
        assert!(flights.is_empty(), "a dead flight stayed in the map");
        let (second, leader) = flights.run("k", async { Ok(2) });
        assert!(leader);
        assert_eq!(second.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_failed_flight_is_removed_and_the_next_call_runs_afresh() {
        let flights = shared();
        let (first, _) = flights.run("k", async { Err("upstream down".to_owned()) });
        assert_eq!(*first.await.unwrap_err(), "upstream down");
        assert!(flights.is_empty());
        let (second, leader) = flights.run("k", async { Ok(3) });
        assert!(leader);
        assert_eq!(second.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_aborted_runtime_leaves_no_entry() {
        let flights = Arc::new(shared());
        let f = flights.clone();
        // A runtime that is dropped while the work is pending cancels the task.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let (_flight, leader) = f.run("k", futures::future::pending());
                assert!(leader);
                tokio::task::yield_now().await;
            });
        })
        .join()
        .unwrap();
        assert!(flights.is_empty(), "a cancelled flight stayed in the map");
    }
}
