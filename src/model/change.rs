//! Changes of a primary-key table, as its changelog carries them.

use crate::error::{Error, ErrorKind, Result};

/// The changelog column of a primary-key table's log.
pub const CHANGE_TYPE_COLUMN: &str = "_change_type";

/// Fluss's change types, with Paimon's row-kind numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ChangeType {
    Insert = 0,
    UpdateBefore = 1,
    UpdateAfter = 2,
    Delete = 3,
}

impl ChangeType {
    pub fn from_i8(v: i8) -> Result<Self> {
        Ok(match v {
            0 => ChangeType::Insert,
            1 => ChangeType::UpdateBefore,
            2 => ChangeType::UpdateAfter,
            3 => ChangeType::Delete,
            other => return Err(Error::new(ErrorKind::CorruptMessage, format!("unknown change type {other}"))),
        })
    }

    /// Whether the row is the key's value after the change (+I, +U), not before it (-U, -D).
    pub fn is_addition(self) -> bool {
        matches!(self, ChangeType::Insert | ChangeType::UpdateAfter)
    }
}
