//! Set, backend and stats ids: stable while their owner stays, not reused at once.
use std::collections::HashSet;
use std::ops::Range;

/// Where the next id search starts: ids are not reused right away, so a stale reference (a
/// conntrack entry, an affinity entry) rarely meets a new owner of its id.
pub(super) struct Cursors {
    pub(super) set: u32,
    pub(super) backend: u32,
}

/// The first free id of `range` after the cursor (wrapping), marked used. Set and backend ids
/// come from their family's range (`lb_common::ids`), which never holds 0, so a zeroed entry
/// never names one; stats ids from `0..capacity`.
pub(super) fn alloc(cursor: &mut u32, range: Range<u32>, used: &mut HashSet<u32>) -> u32 {
    let mut id = (*cursor).clamp(range.start, range.end - 1);
    for _ in range.clone() {
        id = if id + 1 >= range.end {
            range.start
        } else {
            id + 1
        };
        if used.insert(id) {
            *cursor = id;
            return id;
        }
    }
    // Unreachable while the capacity checks hold: there are fewer entries than ids.
    *cursor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_after_the_cursor_within_the_range_and_wrap() {
        let mut used: HashSet<u32> = [11].into();
        let mut cursor = 0;
        assert_eq!(alloc(&mut cursor, 10..13, &mut used), 12);
        assert_eq!(alloc(&mut cursor, 10..13, &mut used), 10);
        assert_eq!(cursor, 10);
        let mut stats = 0;
        assert_eq!(alloc(&mut stats, 0..4, &mut HashSet::new()), 1);
    }
}
