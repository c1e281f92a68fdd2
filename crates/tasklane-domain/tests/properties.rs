//! Property-based tests of the domain's parsing and validation (issue 6, hostile input): for
//! arbitrary text (any Unicode, NUL, whitespace only, lengths near every bound and far past
//! them) each constructor or parser returns, never panics, and either validates or returns its
//! typed error; a value it accepts holds the type's invariants, and each refusal is the right one.
//!
//! 256 cases a property (proptest's default; `PROPTEST_CASES` overrides it), fewer for the
//! properties that build strings of up to a few MiB.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::HashMap;
use tasklane_domain::{
    Cursor, CursorError, Description, Limit, LimitError, ListQuery, SearchText, SearchTextError,
    Status, StatusError, TaskId, TextError, Title, DESCRIPTION_MAX_CHARS, LIMIT_MAX,
    SEARCH_MAX_CHARS, TITLE_MAX_CHARS,
};

// ---------------------------------------------------------------------------------------------
// Strategies

/// Characters that `str::trim` removes (Unicode White_Space), and a few look-alikes it keeps.
const SPACES: &[char] = &[
    ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
    '\u{2003}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];
const NOT_SPACES: &[char] = &['\u{200b}', '\u{feff}', '\u{180e}', '\u{2060}'];

/// Characters of 1, 2, 3 and 4 UTF-8 bytes, and the ones the parsers treat specially.
const PICKS: &str = "aZ09éß€中🦀\u{10ffff}\0%_\\.;=-+ \t\n\u{a0}\u{200b}\u{feff}\u{301}";

fn pick() -> impl Strategy<Value = char> {
    select(PICKS.chars().collect::<Vec<_>>())
}

fn chars_to_string(v: Vec<char>) -> String {
    v.into_iter().collect()
}

/// Short arbitrary text: any Unicode scalar values (NUL and controls included).
fn any_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..64).prop_map(chars_to_string)
}

/// Text of any length up to `max_len` characters, from several distributions.
fn text_up_to(max_len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..max_len.min(400)).prop_map(chars_to_string),
        2 => prop::collection::vec(pick(), 0..max_len.min(400)).prop_map(chars_to_string),
        1 => prop::collection::vec(select(SPACES), 0..300).prop_map(chars_to_string),
        1 => (prop::collection::vec(select(SPACES), 0..5), select(NOT_SPACES))
            .prop_map(|(mut v, c)| { v.push(c); chars_to_string(v) }),
        1 => (any_text(), any_text()).prop_map(|(a, b)| format!("{a}\0{b}")),
        1 => prop::collection::vec(any::<char>(), 0..max_len).prop_map(chars_to_string),
    ]
}

/// Text built from one character repeated, at lengths around `bound`.
fn around(bound: usize) -> impl Strategy<Value = String> {
    (pick(), bound.saturating_sub(3)..=bound + 3).prop_map(|(c, n)| c.to_string().repeat(n))
}

/// Everything the text constructors are given: all of the above, around each bound.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => text_up_to(12_000),
        1 => around(TITLE_MAX_CHARS),
        1 => around(SEARCH_MAX_CHARS),
        1 => around(DESCRIPTION_MAX_CHARS),
    ]
}

/// Strings of up to 4 Mi characters (up to 16 MiB): far past every bound.
fn huge_text() -> impl Strategy<Value = String> {
    (pick(), 0usize..(4 << 20)).prop_map(|(c, n)| c.to_string().repeat(n))
}

/// What a path segment or a query-string value could hold: digits (in and out of range, with
/// leading zeros), signs, spaces, non-ASCII digits, and arbitrary text.
fn numberish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,25}",
        "0{0,10}[0-9]{1,4}",
        "[-+ ]?[0-9]{1,20}[ .e]?[0-9]{0,3}",
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[٠-٩０-９]{1,5}",
        any_text(),
    ]
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        any::<i64>(),
        // 1970 to 2100, where real tasks are.
        0i64..4_102_444_800_000_000,
        Just(0i64),
    ]
    .prop_filter_map(
        "outside chrono's range",
        DateTime::<Utc>::from_timestamp_micros,
    )
}

fn task_id() -> impl Strategy<Value = TaskId> {
    prop_oneof![1i64..=1_000, 1i64..=i64::MAX, Just(i64::MAX)]
        .prop_filter_map("not positive", TaskId::new)
}

fn cursor() -> impl Strategy<Value = Cursor> {
    (timestamp(), task_id()).prop_map(|(created_at, id)| Cursor { created_at, id })
}

fn status() -> impl Strategy<Value = Status> {
    select(Status::ALL.to_vec())
}

/// Queries drawn from small pools, so that equal queries and near-misses (the same search text
/// with a different limit, a search text that spells another query's key...) come up often.
fn list_query() -> impl Strategy<Value = ListQuery> {
    let search = prop_oneof![
        Just(String::new()),
        "[;=slcq0-9a-z_%]{1,6}",
        Just("x;q=y".to_owned()),
        Just(";l=100;c=;q=".to_owned()),
        any_text(),
    ]
    .prop_filter_map("search text refused", |s| SearchText::new(&s).ok());
    let limit = prop_oneof![1u32..=3, Just(100u32), Just(LIMIT_MAX)]
        .prop_filter_map("out of range", |n| Limit::new(n).ok());
    let cursor = prop_oneof![
        Just(None),
        (0i64..3, 1i64..3).prop_map(|(micros, id)| {
            Some(Cursor {
                created_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default(),
                id: TaskId::new(id)?,
            })
        }),
        cursor().prop_map(Some),
    ];
    (prop::option::of(status()), search, limit, cursor).prop_map(
        |(status, search, limit, cursor)| ListQuery {
            status,
            search,
            limit,
            cursor,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Oracles: the rules written out independently of the code under test.

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn check_title(s: &str) -> Result<(), TestCaseError> {
    match Title::new(s) {
        Ok(t) => {
            prop_assert_eq!(t.as_str(), s);
            prop_assert!((1..=TITLE_MAX_CHARS).contains(&chars(s)));
            prop_assert!(!s.trim().is_empty(), "a blank title was accepted");
            prop_assert!(!s.contains('\0'), "a title with NUL was accepted");
        }
        Err(TextError::Nul) => prop_assert!(s.contains('\0')),
        Err(TextError::TooLong { max, got }) => {
            prop_assert_eq!(max, TITLE_MAX_CHARS);
            prop_assert_eq!(got, chars(s));
            prop_assert!(got > max);
        }
        Err(TextError::Blank) => prop_assert!(s.trim().is_empty()),
    }
    Ok(())
}

fn check_description(s: &str) -> Result<(), TestCaseError> {
    match Description::new(s) {
        Ok(d) => {
            prop_assert_eq!(d.as_str(), s);
            prop_assert!(chars(s) <= DESCRIPTION_MAX_CHARS);
            prop_assert!(!s.contains('\0'), "a description with NUL was accepted");
        }
        Err(TextError::Nul) => prop_assert!(s.contains('\0')),
        Err(TextError::TooLong { max, got }) => {
            prop_assert_eq!(max, DESCRIPTION_MAX_CHARS);
            prop_assert_eq!(got, chars(s));
            prop_assert!(got > max);
        }
        Err(TextError::Blank) => prop_assert!(false, "a description is never blank: {:?}", s),
    }
    Ok(())
}

fn check_search(s: &str) -> Result<(), TestCaseError> {
    match SearchText::new(s) {
        Ok(None) => prop_assert!(s.is_empty()),
        Ok(Some(q)) => {
            prop_assert_eq!(q.as_str(), s);
            prop_assert!(!s.is_empty());
            prop_assert!(chars(s) <= SEARCH_MAX_CHARS);
            prop_assert!(!s.contains('\0'));
            prop_assert_eq!(unescape_like(&q.like_pattern())?, s);
        }
        Err(SearchTextError) => prop_assert!(s.contains('\0') || chars(s) > SEARCH_MAX_CHARS),
    }
    Ok(())
}

/// Undoes `like_pattern`: the pattern must be `%…%`, with every `%`, `_` and `\` of the text
/// escaped by `\` (so none of them acts as a wildcard), and nothing else escaped.
fn unescape_like(p: &str) -> Result<String, TestCaseError> {
    let inner = p
        .strip_prefix('%')
        .and_then(|p| p.strip_suffix('%'))
        .ok_or_else(|| TestCaseError::fail(format!("not %…%: {p:?}")))?;
    let mut out = String::with_capacity(inner.len());
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some(e @ ('%' | '_' | '\\')) => out.push(e),
                other => {
                    return Err(TestCaseError::fail(format!(
                        "`\\` escapes {other:?} in {p:?}"
                    )))
                }
            },
            '%' | '_' => {
                return Err(TestCaseError::fail(format!(
                    "unescaped wildcard {c:?} in {p:?}"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The id a path segment names: ASCII digits only, 1 to `i64::MAX`.
fn expected_id(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 19 {
        return None;
    }
    let n: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (1..=i64::MAX as u128).contains(&n).then_some(n as i64)
}

fn check_cursor_decode(s: &str) -> Result<(), TestCaseError> {
    // Any refusal is the one typed error, `CursorError`; what it accepts must hold up.
    let decoded: Result<Cursor, CursorError> = Cursor::decode(s);
    if let Ok(c) = decoded {
        prop_assert!(c.id.get() > 0);
        // What it accepted, it would have issued: encoding gives back the same cursor.
        prop_assert_eq!(Cursor::decode(&c.encode()), Ok(c));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn title_validates_or_says_why(s in hostile_text()) {
        check_title(&s)?;
    }

    #[test]
    fn description_validates_or_says_why(s in hostile_text()) {
        check_description(&s)?;
    }

    #[test]
    fn search_text_validates_or_says_why_and_its_like_pattern_is_literal(s in hostile_text()) {
        check_search(&s)?;
    }

    #[test]
    fn like_pattern_escapes_every_wildcard(
        v in prop::collection::vec(select(&['%', '_', '\\', 'a', 'é', '🦀', ' '][..]), 1..=SEARCH_MAX_CHARS)
    ) {
        check_search(&chars_to_string(v))?;
    }

    #[test]
    fn status_parses_exactly_its_three_names(
        s in prop_oneof![
            select(&["todo", "in_progress", "done", "TODO", "Done", "in-progress", "inprogress",
                     " todo", "todo ", "todo\0", "done\n", "\u{feff}done", "ｄｏｎｅ", ""][..])
                .prop_map(str::to_owned),
            hostile_text(),
        ]
    ) {
        match s.parse::<Status>() {
            Ok(st) => {
                prop_assert_eq!(st.as_str(), s.as_str());
                prop_assert_eq!(st.to_string().parse::<Status>(), Ok(st));
            }
            Err(StatusError) => {
                prop_assert!(!Status::ALL.iter().any(|st| st.as_str() == s));
            }
        }
    }

    #[test]
    fn task_id_parses_only_positive_decimal_in_range(s in numberish()) {
        let parsed = TaskId::parse(&s);
        prop_assert_eq!(parsed.map(TaskId::get), expected_id(&s));
        if let Some(id) = parsed {
            prop_assert!(id.get() > 0);
            prop_assert_eq!(TaskId::parse(&id.to_string()), Some(id));
        }
    }

    #[test]
    fn task_id_display_round_trips(n in any::<i64>()) {
        let id = TaskId::new(n);
        prop_assert_eq!(id.is_some(), n > 0);
        if let Some(id) = id {
            prop_assert_eq!(id.get(), n);
            prop_assert_eq!(id.to_string(), n.to_string());
            prop_assert_eq!(TaskId::parse(&id.to_string()), Some(id));
        } else {
            prop_assert_eq!(TaskId::parse(&n.to_string()), None);
        }
    }

    #[test]
    fn limit_parses_only_1_to_500(s in numberish()) {
        match Limit::parse(&s) {
            Ok(l) => {
                prop_assert!((1..=LIMIT_MAX).contains(&l.get()));
                prop_assert!(s.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(expected_id(&s), Some(i64::from(l.get())));
            }
            Err(LimitError) => {
                // Refusing a value in range is allowed only for a non-canonical spelling
                // (leading zeros past six digits).
                if let Some(n) = expected_id(&s) {
                    if (1..=i64::from(LIMIT_MAX)).contains(&n) {
                        prop_assert!(s.len() > 6 && s.starts_with('0'), "{:?} was refused", s);
                    }
                }
            }
        }
    }

    #[test]
    fn limit_accepts_every_canonical_value_in_range(n in any::<u32>()) {
        let in_range = (1..=LIMIT_MAX).contains(&n);
        prop_assert_eq!(Limit::new(n).is_ok(), in_range);
        prop_assert_eq!(Limit::parse(&n.to_string()).map(Limit::get).ok(), in_range.then_some(n));
    }

    #[test]
    fn cursor_round_trips(c in cursor()) {
        let text = c.encode();
        prop_assert!(text.len() <= 100, "an issued cursor is too long to decode: {}", text);
        prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(Cursor::decode(&text), Ok(c));
    }

    #[test]
    fn cursor_decode_never_panics_on_text(s in hostile_text()) {
        check_cursor_decode(&s)?;
    }

    #[test]
    fn cursor_decode_never_panics_on_encoded_bytes(b in prop::collection::vec(any::<u8>(), 0..80)) {
        check_cursor_decode(&URL_SAFE_NO_PAD.encode(b))?;
    }

    /// Forgeries that get past base64 and the tag: the fields are what is left to check.
    #[test]
    fn cursor_decode_checks_its_fields(
        micros in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), numberish()],
        id in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), numberish()],
        tag in select(&["c1", "c1", "c0", "C1", ""][..]),
        extra in prop::option::of(any_text()),
    ) {
        let mut raw = format!("{tag}.{micros}.{id}");
        if let Some(extra) = &extra {
            raw.push('.');
            raw.push_str(extra);
        }
        let text = URL_SAFE_NO_PAD.encode(&raw);
        let decoded = Cursor::decode(&text);
        let expected_ok = tag == "c1"
            && extra.is_none()
            && text.len() <= 100
            && !micros.contains('.')
            && !id.contains('.')
            && micros.parse::<i64>().ok().and_then(DateTime::<Utc>::from_timestamp_micros).is_some()
            && expected_id(&id).is_some();
        prop_assert_eq!(decoded.is_ok(), expected_ok, "{:?}", raw);
        check_cursor_decode(&text)?;
    }

    /// Equal queries share a key and different ones never do, over a batch drawn from small
    /// pools so that collisions would have every chance to show.
    #[test]
    fn cache_key_is_injective(queries in prop::collection::vec(list_query(), 2..16)) {
        let mut seen: HashMap<String, &ListQuery> = HashMap::new();
        for q in &queries {
            let key = q.cache_key();
            if let Some(other) = seen.get(&key) {
                prop_assert_eq!(*other, q, "two queries share the key {:?}", key);
            }
            seen.insert(key, q);
        }
        for a in &queries {
            for b in &queries {
                prop_assert_eq!(a == b, a.cache_key() == b.cache_key());
            }
        }
    }
}

proptest! {
    // Strings of up to 16 MiB: fewer cases, each a few milliseconds.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn huge_text_is_refused_or_accepted_without_panic(s in huge_text()) {
        check_title(&s)?;
        check_description(&s)?;
        check_search(&s)?;
        check_cursor_decode(&s)?;
        prop_assert!(s.parse::<Status>().is_err() || Status::ALL.iter().any(|st| st.as_str() == s));
        prop_assert_eq!(TaskId::parse(&s).map(TaskId::get), expected_id(&s));
        prop_assert!(Limit::parse(&s).map_or(true, |l| (1..=LIMIT_MAX).contains(&l.get())));
    }
}
