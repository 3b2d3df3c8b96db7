//! The store's errors as the hub sees them: a backend failure, or a reset not yet noticed.

use std::fmt;

use crate::store::StoreError;

/// An append or read that met a history this node has not noticed is new.
pub(super) fn reset_unseen() -> StoreError {
    backend("the history was reset; this node is catching up")
}

/// A Redis failure, or a reply the store cannot read, as the store's error.
pub(super) fn backend(error: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: {error}"))
}
