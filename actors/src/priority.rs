//! Request priorities: `high`, `normal` (the default) and `low`. The batcher
//! serves higher levels first and keeps arrival order within a level; a
//! request that has waited `max_priority_wait_ms` counts as `high`, so low
//! priority work is never starved.
//!
//! Clients name a level (`"high"`, JSON body or `x-priority` header) or, in
//! the KServe v2 protocol, give Triton's integer (1 = high, 2 = normal,
//! 3 = low: a lower number is a higher priority).

use std::fmt;
use std::str::FromStr;

/// How urgent a request is. Ordered from most to least urgent, so
/// `High < Normal < Low`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// A priority value the client sent that is not one of the levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriorityError {
    #[error("priority must be \"high\", \"normal\" or \"low\", not {0:?}")]
    Name(String),
    #[error("priority must be an integer from 1 (high) to 3 (low), not {0}")]
    Level(String),
}

impl Priority {
    /// Every level, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// 0 for `high`, 1 for `normal`, 2 for `low`.
    pub fn rank(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Triton's convention: 1 = high, 2 = normal, 3 = low.
    pub fn from_level(level: i64) -> Result<Self, PriorityError> {
        match level {
            1 => Ok(Priority::High),
            2 => Ok(Priority::Normal),
            3 => Ok(Priority::Low),
            other => Err(PriorityError::Level(other.to_string())),
        }
    }
}

impl FromStr for Priority {
    type Err = PriorityError;

    /// `high`, `normal` or `low`, in any case, surrounding spaces ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(PriorityError::Name(text.to_string())),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_levels_parse() {
        assert_eq!("HIGH".parse(), Ok(Priority::High));
        assert_eq!(" low ".parse(), Ok(Priority::Low));
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority::from_level(1), Ok(Priority::High));
        assert_eq!(Priority::from_level(3), Ok(Priority::Low));
        assert!(Priority::from_level(0).is_err());
        assert!(Priority::from_level(4).is_err());
        assert!(Priority::High < Priority::Normal && Priority::Normal < Priority::Low);
    }
}
