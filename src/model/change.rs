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

    /// Fluss's change-type byte (the changelog vector of a log batch): 0 +A, 1 +I, 2 -U, 3 +U, 4 -D. An append
    /// (+A) reads as an insert.
    pub fn from_fluss(v: u8) -> Result<Self> {
        Ok(match v {
            0 | 1 => ChangeType::Insert,
            2 => ChangeType::UpdateBefore,
            3 => ChangeType::UpdateAfter,
            4 => ChangeType::Delete,
            other => return Err(Error::new(ErrorKind::CorruptMessage, format!("unknown Fluss change type {other}"))),
        })
    }

    pub fn to_fluss(self) -> u8 {
        match self {
            ChangeType::Insert => 1,
            ChangeType::UpdateBefore => 2,
            ChangeType::UpdateAfter => 3,
            ChangeType::Delete => 4,
        }
    }

    /// Whether the row is the key's value after the change (+I, +U), not before it (-U, -D).
    pub fn is_addition(self) -> bool {
        matches!(self, ChangeType::Insert | ChangeType::UpdateAfter)
    }
}
