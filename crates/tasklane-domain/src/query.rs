//! How a list of tasks is asked for (filters, page size, keyset cursor) and what comes back.

use crate::task::{Status, Task, TaskId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};

/// Page size bounds.
pub const LIMIT_DEFAULT: u32 = 100;
pub const LIMIT_MAX: u32 = 500;
/// The longest search text, in characters.
pub const SEARCH_MAX_CHARS: usize = 255;

/// A page size in `1..=500`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer from 1 to {LIMIT_MAX}")]
pub struct LimitError;

impl Limit {
    pub fn new(n: u32) -> Result<Self, LimitError> {
        if (1..=LIMIT_MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(LimitError)
        }
    }

    /// Parses a query-string value: ASCII digits only.
    pub fn parse(s: &str) -> Result<Self, LimitError> {
        if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LimitError);
        }
        s.parse::<u32>().map_err(|_| LimitError).and_then(Self::new)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self(LIMIT_DEFAULT)
    }
}

/// Case-insensitive substring search text: non-empty, at most 255 characters, no NUL. Matched
/// literally: `%`, `_` and `\` have no special meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchText(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be at most {SEARCH_MAX_CHARS} characters and contain no NUL")]
pub struct SearchTextError;

impl SearchText {
    /// `Ok(None)` for an empty search, which filters nothing.
    pub fn new(s: &str) -> Result<Option<Self>, SearchTextError> {
        if s.contains('\0') || s.chars().count() > SEARCH_MAX_CHARS {
            return Err(SearchTextError);
        }
        Ok((!s.is_empty()).then(|| Self(s.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text as a SQL `LIKE` pattern matching it anywhere, with `\` as the escape character.
    pub fn like_pattern(&self) -> String {
        let mut p = String::with_capacity(self.0.len() + 2);
        p.push('%');
        for c in self.0.chars() {
            if matches!(c, '%' | '_' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push('%');
        p
    }
}

/// Where the next page starts: the sort key of the last task of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: TaskId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a cursor this server issued")]
pub struct CursorError;

const CURSOR_TAG: &str = "c1";

impl Cursor {
    pub fn after(task: &Task) -> Self {
        Self {
            created_at: task.created_at,
            id: task.id,
        }
    }

    /// The opaque text form handed to clients (URL-safe).
    pub fn encode(&self) -> String {
        let raw = format!(
            "{CURSOR_TAG}.{}.{}",
            self.created_at.timestamp_micros(),
            self.id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(s: &str) -> Result<Self, CursorError> {
        if s.len() > 100 {
            return Err(CursorError);
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| CursorError)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CursorError)?;
        let mut parts = text.split('.');
        let (Some(CURSOR_TAG), Some(micros), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError);
        };
        let micros: i64 = micros.parse().map_err(|_| CursorError)?;
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or(CursorError)?;
        let id = TaskId::parse(id).ok_or(CursorError)?;
        Ok(Self { created_at, id })
    }
}

/// A request for one page of the task list, newest first (`created_at DESC, id DESC`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub search: Option<SearchText>,
    pub limit: Limit,
    pub cursor: Option<Cursor>,
}

impl ListQuery {
    /// A stable, unambiguous text naming this query, for cache keys. The search text comes last
    /// so that no choice of it can imitate another query's key.
    pub fn cache_key(&self) -> String {
        format!(
            "list:s={};l={};c={};q={}",
            self.status.map_or("", |s| s.as_str()),
            self.limit.get(),
            self.cursor.map(|c| c.encode()).unwrap_or_default(),
            self.search.as_ref().map_or("", |q| q.as_str()),
        )
    }
}

/// One page of tasks, and where the next one starts if there is more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub next: Option<Cursor>,
}

impl Page {
    /// Builds a page from up to `limit + 1` rows fetched in list order: the extra row, if present,
    /// only proves that another page exists.
    pub fn from_rows(mut rows: Vec<Task>, limit: Limit) -> Self {
        let limit = limit.get() as usize;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(Cursor::after)
        } else {
            None
        };
        Self { tasks: rows, next }
    }
}

/// How many tasks there are in each status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusCounts {
    pub todo: u64,
    pub in_progress: u64,
    pub done: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.todo + self.in_progress + self.done
    }

    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Todo => self.todo,
            Status::InProgress => self.in_progress,
            Status::Done => self.done,
        }
    }

    pub fn set(&mut self, status: Status, n: u64) {
        match status {
            Status::Todo => self.todo = n,
            Status::InProgress => self.in_progress = n,
            Status::Done => self.done = n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_bounds() {
        assert_eq!(Limit::parse("1").map(Limit::get), Ok(1));
        assert_eq!(Limit::parse("500").map(Limit::get), Ok(500));
        for bad in ["0", "501", "-1", "", "abc", "100000", "1e2", " 5"] {
            assert_eq!(Limit::parse(bad), Err(LimitError), "{bad:?}");
        }
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456)
                .unwrap_or_default(),
            id: TaskId::new(42).unwrap_or_else(|| unreachable!()),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "x", "YWJj", "c1.1.2", &"A".repeat(200)] {
            assert_eq!(Cursor::decode(bad), Err(CursorError), "{bad:?}");
        }
        let forged = URL_SAFE_NO_PAD.encode("c1.5.-3");
        assert_eq!(Cursor::decode(&forged), Err(CursorError));
    }

    #[test]
    fn like_pattern_escapes_wildcards() {
        let q = SearchText::new("50%_off\\").ok().flatten();
        assert_eq!(
            q.map(|q| q.like_pattern()),
            Some("%50\\%\\_off\\\\%".to_owned())
        );
        assert_eq!(SearchText::new(""), Ok(None));
        assert_eq!(SearchText::new("a\0"), Err(SearchTextError));
    }

    #[test]
    fn cache_keys_differ_for_different_queries() {
        let a = ListQuery {
            search: SearchText::new("x;q=y").ok().flatten(),
            ..Default::default()
        };
        let b = ListQuery {
            search: SearchText::new("x").ok().flatten(),
            ..Default::default()
        };
        assert_ne!(a.cache_key(), b.cache_key());
        assert_ne!(
            ListQuery::default().cache_key(),
            ListQuery {
                status: Some(Status::Done),
                ..Default::default()
            }
            .cache_key()
        );
    }
}
