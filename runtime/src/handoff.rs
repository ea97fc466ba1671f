//! Item bytes handed from the aggregator to an indexer running in the same process.
//!
//! In the distributed install the indexer reads every stored item back from the repository:
//! it is another process, often on another host. In the single-process mode that read is pure
//! waste — decrypting and decompressing bytes this process held a moment before — and it was
//! about a tenth of a backup's CPU. The aggregator puts what it wrote here (keyed by manifest
//! id); the indexer takes it when the `ItemStored` event arrives and falls back to the
//! repository when it is not there (evicted, redelivered, or written by another process).
//!
//! A manifest id is a keyed hash over the item's chunk ids and metadata, so an entry can never
//! be stale: whatever is found under an id is exactly what the repository holds under it.
//! Entries are put before the batch is durable; the indexer only asks once the event says it
//! is, and an entry whose batch never became durable just ages out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use mailvault_format::{BlobId, ItemManifest};

/// A bounded map manifest id → (manifest, item bytes); the oldest entries go first when the
/// byte budget is exceeded.
#[derive(Debug)]
pub struct Handoff {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    items: HashMap<BlobId, (ItemManifest, Bytes)>,
    /// Insertion order; ids already taken are skipped when evicting.
    order: VecDeque<BlobId>,
    bytes: usize,
}

impl Handoff {
    /// Holds at most `budget` bytes of item bodies.
    pub fn new(budget: usize) -> Self {
        Handoff {
            budget,
            state: Mutex::default(),
        }
    }

    /// Offers an item the aggregator just wrote. `body` shares the delivery's buffer.
    pub fn put(&self, id: BlobId, manifest: ItemManifest, body: Bytes) {
        if body.len() > self.budget {
            return;
        }
        let mut st = self.lock();
        let len = body.len();
        if let Some((_, old)) = st.items.insert(id, (manifest, body)) {
            st.bytes -= old.len();
        } else {
            st.order.push_back(id);
        }
        st.bytes += len;
        while st.bytes > self.budget {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            if let Some((_, b)) = st.items.remove(&old) {
                st.bytes -= b.len();
            }
        }
        // Taken ids stay in `order` until evicted; keep it from growing without bound when
        // everything is taken long before the budget fills.
        if st.order.len() > 2 * st.items.len() + 1024 {
            let State { items, order, .. } = &mut *st;
            order.retain(|i| items.contains_key(i));
        }
    }

    /// The item under `id`, if it is still here (each entry is handed out once).
    pub fn take(&self, id: &BlobId) -> Option<(ItemManifest, Bytes)> {
        let mut st = self.lock();
        let got = st.items.remove(id)?;
        st.bytes -= got.1.len();
        Some(got)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic, so a poisoned lock is
        // still safe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    fn manifest(item: &str) -> ItemManifest {
        ItemManifest {
            item_id: item.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_item_is_handed_out_once() {
        let h = Handoff::new(1024);
        h.put(id(1), manifest("a"), Bytes::from_static(b"hello"));
        let (m, b) = h.take(&id(1)).expect("present");
        assert_eq!(m.item_id, "a");
        assert_eq!(&b[..], b"hello");
        assert!(h.take(&id(1)).is_none());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn the_oldest_go_first_when_over_budget() {
        let h = Handoff::new(10);
        h.put(id(1), manifest("a"), Bytes::from_static(b"1234"));
        h.put(id(2), manifest("b"), Bytes::from_static(b"5678"));
        h.put(id(3), manifest("c"), Bytes::from_static(b"9012"));
        assert!(h.take(&id(1)).is_none(), "evicted");
        assert!(h.take(&id(2)).is_some());
        assert!(h.take(&id(3)).is_some());
        // Larger than the whole budget: not kept at all.
        h.put(id(4), manifest("d"), Bytes::from(vec![0u8; 11]));
        assert!(h.take(&id(4)).is_none());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn taken_ids_do_not_pile_up() {
        let h = Handoff::new(1 << 20);
        for n in 0..5000u32 {
            let mut raw = [0u8; 32];
            raw[..4].copy_from_slice(&n.to_le_bytes());
            h.put(BlobId(raw), manifest("x"), Bytes::from_static(b"x"));
            assert!(h.take(&BlobId(raw)).is_some());
        }
        let st = h.lock();
        assert!(st.order.len() <= 1025, "{}", st.order.len());
    }
}
