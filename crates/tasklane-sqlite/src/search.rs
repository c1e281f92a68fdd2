//! The text search: a case-insensitive, Unicode-aware substring test registered as an SQL
//! function, because SQLite's own `LIKE` folds ASCII letters only (`'É' LIKE 'é'` is false).
//!
//! It must find exactly what PostgreSQL's `title ILIKE '%' || escaped || '%'` finds, since the
//! adapters promise identical behaviour. Under a libc locale such as `C.UTF-8`, PostgreSQL's
//! `ILIKE` lowercases the text and the pattern with `lower()`, which maps each character on its
//! own (`towlower`): the simple Unicode lowercase mapping, with no context and no expansion. So
//! `'İ'` becomes `'i'` (not `"i̇"`), `'Σ'` becomes `'σ'` even at the end of a word (no final
//! `'ς'`), and `'ß'` does not match `"SS"`. Rust's `str::to_lowercase` differs on exactly those
//! points, so this folds character by character instead. The escaped `%`, `_` and `\` of the
//! PostgreSQL pattern are plain characters here: the search text is never a pattern.

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// The SQL name: `tasklane_icontains(haystack, needle)` is 1 when the lowercase form of
/// `haystack` contains that of `needle`, 0 when not, NULL when either is NULL.
pub(crate) const FUNCTION: &str = "tasklane_icontains";

/// Registers [`FUNCTION`] on the connection. Deterministic, so SQLite may evaluate it once per
/// row and value; innocuous, since it has no side effects.
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        FUNCTION,
        2,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_INNOCUOUS,
        icontains,
    )
}

fn icontains(ctx: &Context<'_>) -> rusqlite::Result<Option<bool>> {
    if matches!(ctx.get_raw(1), ValueRef::Null) {
        return Ok(None);
    }
    // The needle is the same for every row of a statement: fold it once and keep it with the
    // statement (SQLite drops it when the argument changes).
    let needle = ctx.get_or_create_aux(1, |v| -> Result<String, rusqlite::Error> {
        Ok(fold(text(v)?))
    })?;
    match ctx.get_raw(0) {
        ValueRef::Null => Ok(None),
        v => Ok(Some(contains_folded(text(v)?, &needle))),
    }
}

fn text(v: ValueRef<'_>) -> rusqlite::Result<&str> {
    v.as_str().map_err(rusqlite::Error::from)
}

/// The simple lowercase mapping of one character, as `towlower` does it: the first character of
/// the full mapping, which differs from the simple one only for U+0130 (`'İ'`, fully `"i̇"`).
fn lower(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// The text with every character lowercased on its own.
pub(crate) fn fold(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars().map(lower).collect()
}

/// Whether `haystack`, folded, contains `needle_folded`. Because the folding maps characters
/// one to one, a substring of the folded text is the folding of a substring of the text.
pub(crate) fn contains_folded(haystack: &str, needle_folded: &str) -> bool {
    if needle_folded.is_empty() {
        return true;
    }
    fold(haystack).contains(needle_folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finds(haystack: &str, needle: &str) -> bool {
        contains_folded(haystack, &fold(needle))
    }

    #[test]
    fn folds_case_per_character_like_postgresql_under_c_utf8() {
        assert!(finds("ÉCOLE primaire", "école"));
        assert!(finds("near the école", "ÉCOLE"));
        assert!(finds("İstanbul", "istanbul"), "İ lowercases to i alone");
        assert!(finds("ΟΔΟΣ", "οδοσ"), "no final-sigma rule");
        assert!(!finds("ΟΔΟΣ", "οδος"));
        assert!(finds("ǅemal", "ǆ"), "title case lowercases too");
        assert!(finds("K", "k"), "KELVIN SIGN lowercases to k");
        assert!(finds("Straße", "STRAẞE"));
        assert!(!finds("Straße", "STRASSE"), "no folding beyond case");
        assert!(finds("🦀 Rust", "🦀 rust"));
    }

    #[test]
    fn wildcards_are_plain_characters() {
        assert!(finds("100% done", "0%"));
        assert!(!finds("1000 done", "0%"));
        assert!(finds("snake_case", "e_c"));
        assert!(!finds("snakeXcase", "e_c"));
        assert!(finds("C:\\temp", "\\t"));
        assert!(!finds("C:temp", "\\t"));
        assert!(finds("anything", ""));
    }

    #[test]
    fn the_sql_function_filters_rows() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        register(&conn)?;
        let found: Vec<String> = conn
            .prepare(
                "SELECT column1 FROM (VALUES ('ÉCOLE'), ('école'), ('ecole'), (NULL)) \
                 WHERE tasklane_icontains(column1, ?1) ORDER BY column1",
            )?
            .query_map(["ÉcOlE"], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        assert_eq!(found, ["ÉCOLE", "école"]);
        let null: Option<bool> =
            conn.query_row("SELECT tasklane_icontains('a', NULL)", [], |r| r.get(0))?;
        assert_eq!(null, None);
        Ok(())
    }
}
