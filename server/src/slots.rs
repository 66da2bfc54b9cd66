//! Slots counted by key (a client's address, a token): at most so many held at once per key,
//! each given back when its [`Slot`] is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// How many slots each key holds now.
pub(crate) struct Slots<K> {
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Self {
            held: Arc::default(),
        }
    }
}

/// One slot of a key; given back on drop.
pub(crate) struct Slot<K: Hash + Eq> {
    key: K,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// A slot of `key`, unless it holds `max` already.
    pub(crate) fn take(&self, key: &K, max: usize) -> Option<Slot<K>> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(key.clone()).or_default();
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Slot {
            key: key.clone(),
            held: Arc::clone(&self.held),
        })
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held.lock()
            && let Some(n) = held.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_slots_and_gets_them_back() {
        let slots: Slots<&str> = Slots::default();
        let a: Vec<_> = (0..2).filter_map(|_| slots.take(&"a", 2)).collect();
        assert_eq!(a.len(), 2);
        assert!(slots.take(&"a", 2).is_none());
        assert!(
            slots.take(&"b", 2).is_some(),
            "another key is not held back"
        );
        drop(a);
        assert!(slots.take(&"a", 2).is_some());
    }
}
