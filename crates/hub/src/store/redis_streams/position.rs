//! Where a node is in Redis's history, shared by the store's appends and reads and its
//! follower (see "Reset" in the parent module's docs).

use std::sync::{Mutex, PoisonError};

/// Where a node is in Redis's history: which history it follows (its epoch, see "Reset" in the
/// module docs), what it adds to that history's seqs to make its own (which keep rising across
/// resets), and the last seq it saw given, by its appends or its follower.
#[derive(Debug, Clone)]
pub(super) struct Position {
    pub(super) epoch: String,
    pub(super) offset: u64,
    pub(super) seen: u64,
}

impl Position {
    pub(super) fn current(shared: &Mutex<Position>) -> Position {
        shared.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Redis's last seq given is at least this, unless it lost writes: the node saw it given.
    pub(super) fn floor(&self) -> u64 {
        self.seen - self.offset
    }

    /// The node saw `seq` (its numbering) given in history `epoch`.
    pub(super) fn saw(shared: &Mutex<Position>, epoch: &str, seq: u64) {
        let mut position = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if position.epoch == epoch {
            position.seen = position.seen.max(seq);
        }
    }
}
