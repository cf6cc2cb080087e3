//! Heap-size estimates for the peer table's memory accounting (`Table::heap_bytes`), shared
//! by the table and its peer slab.

use std::collections::HashMap;

/// Heap bytes of a hash map, estimated from its capacity: hashbrown keeps at most 7/8 of its
/// buckets full and one control byte per bucket.
pub(crate) fn map_bytes<K, V, S>(m: &HashMap<K, V, S>) -> usize {
    m.capacity() * 8 / 7 * (size_of::<(K, V)>() + 1)
}
