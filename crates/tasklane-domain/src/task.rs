//! The task and its value types; each constructor owns its validation, so a value is valid by
//! construction.

use chrono::{DateTime, Utc};
use std::fmt;
use std::str::FromStr;

/// The longest title, in Unicode scalar values (what PostgreSQL's `char_length` counts).
pub const TITLE_MAX_CHARS: usize = 255;
/// The longest description, in Unicode scalar values.
pub const DESCRIPTION_MAX_CHARS: usize = 10_000;

/// Why a text field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be blank")]
    Blank,
    #[error("must be at most {max} characters (got {got})")]
    TooLong { max: usize, got: usize },
    #[error("must not contain the NUL character")]
    Nul,
}

/// A task's identifier: a positive 64-bit integer assigned by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(i64);

impl TaskId {
    /// Accepts only positive ids; zero and negatives name no task.
    pub fn new(raw: i64) -> Option<Self> {
        (raw > 0).then_some(Self(raw))
    }

    /// Parses an id from a URL path segment: ASCII digits only (no sign, no spaces), in range.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<i64>().ok().and_then(Self::new)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn check_text(s: &str, max: usize) -> Result<(), TextError> {
    if s.contains('\0') {
        return Err(TextError::Nul);
    }
    let got = s.chars().count();
    if got > max {
        return Err(TextError::TooLong { max, got });
    }
    Ok(())
}

/// A task title: 1 to 255 characters, not only whitespace, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Title(String);

impl Title {
    pub fn new(s: impl Into<String>) -> Result<Self, TextError> {
        let s = s.into();
        check_text(&s, TITLE_MAX_CHARS)?;
        if s.trim().is_empty() {
            return Err(TextError::Blank);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A task description: up to 10,000 characters, possibly empty, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Description(String);

impl Description {
    pub fn new(s: impl Into<String>) -> Result<Self, TextError> {
        let s = s.into();
        check_text(&s, DESCRIPTION_MAX_CHARS)?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Status {
    #[default]
    Todo,
    InProgress,
    Done,
}

/// An unknown status string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of todo, in_progress, done")]
pub struct StatusError;

impl Status {
    pub const ALL: [Status; 3] = [Status::Todo, Status::InProgress, Status::Done];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Todo => "todo",
            Status::InProgress => "in_progress",
            Status::Done => "done",
        }
    }
}

impl FromStr for Status {
    type Err = StatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "todo" => Ok(Status::Todo),
            "in_progress" => Ok(Status::InProgress),
            "done" => Ok(Status::Done),
            _ => Err(StatusError),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's version: 1 when created, one more on every change. Drives ETags and `If-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(i64);

impl Version {
    pub fn new(raw: i64) -> Self {
        Self(raw)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub title: Title,
    pub description: Description,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: Version,
}

/// What it takes to create a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub title: Title,
    pub description: Description,
    pub status: Status,
}

/// A change to a task: fields that are `None` keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskPatch {
    pub title: Option<Title>,
    pub description: Option<Description>,
    pub status: Option<Status>,
}

/// The condition a write is made under (HTTP `If-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No condition: last writer wins.
    None,
    /// The task must exist (`If-Match: *`).
    Exists,
    /// The task must still be at this version.
    Version(Version),
    /// A condition that can never hold (an `If-Match` naming no version of this task).
    Never,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_parses_only_positive_decimal_in_range() {
        assert_eq!(TaskId::parse("1").map(TaskId::get), Some(1));
        assert_eq!(
            TaskId::parse("9223372036854775807").map(TaskId::get),
            Some(i64::MAX)
        );
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1.0",
            "abc",
            "9223372036854775808",
            "١",
        ] {
            assert_eq!(TaskId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn title_counts_scalar_values_not_bytes() {
        assert!(Title::new("é".repeat(255)).is_ok());
        assert_eq!(
            Title::new("é".repeat(256)),
            Err(TextError::TooLong { max: 255, got: 256 })
        );
        assert!(Title::new("🦀".repeat(255)).is_ok());
    }

    #[test]
    fn title_refuses_blank_and_nul() {
        assert_eq!(Title::new(""), Err(TextError::Blank));
        assert_eq!(Title::new(" \t\n"), Err(TextError::Blank));
        assert_eq!(Title::new("a\0b"), Err(TextError::Nul));
    }

    #[test]
    fn description_may_be_empty_but_bounded() {
        assert!(Description::new("").is_ok());
        assert!(Description::new("x".repeat(10_000)).is_ok());
        assert!(matches!(
            Description::new("x".repeat(10_001)),
            Err(TextError::TooLong { .. })
        ));
        assert_eq!(Description::new("\0"), Err(TextError::Nul));
    }

    #[test]
    fn status_round_trips() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert!("DONE".parse::<Status>().is_err());
        assert!("".parse::<Status>().is_err());
    }
}
