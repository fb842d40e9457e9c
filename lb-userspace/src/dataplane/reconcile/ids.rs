//! Set, backend and stats ids: stable while their owner stays, not reused at once.
use std::collections::HashSet;

/// Where the next id search starts: ids are not reused right away, so a stale reference (a
/// conntrack entry, an affinity entry) rarely meets a new owner of its id.
#[derive(Default)]
pub(super) struct Cursors {
    pub(super) set: u32,
    pub(super) backend: u32,
    pub(super) stats: u32,
}

/// Set and backend ids: any u32 would do; this keeps them readable.
pub(super) const ID_LIMIT: u32 = 1 << 30;

/// The first free id after the cursor (wrapping below `limit`), marked used. Set and backend ids
/// never get 0 because it is marked used from the start (a zeroed entry then never names one).
pub(super) fn alloc(cursor: &mut u32, limit: u32, used: &mut HashSet<u32>) -> u32 {
    let mut id = *cursor;
    for _ in 0..limit {
        id = if id + 1 >= limit { 0 } else { id + 1 };
        if used.insert(id) {
            *cursor = id;
            return id;
        }
    }
    // Unreachable while the capacity checks hold: there are fewer entries than ids.
    *cursor
}
