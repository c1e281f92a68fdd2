//! Which part of a search text the trigram indexes should look up.
//!
//! A search for `task 4242` asks the trigram indexes for the rows holding every trigram of the
//! text, `tas`, `ask` and `sk ` included. When nearly every task contains "task", those
//! trigrams' posting lists hold nearly every row, and intersecting them costs milliseconds per
//! column (2-3.5 ms each over 100,000 tasks, docs/PERFORMANCE.md section 12), while `4242`
//! alone is looked up in a tenth of a millisecond. PostgreSQL keeps no statistics on trigrams,
//! so the repository keeps its own: a sample of the tasks' texts ([`TrigramSample`]), taken in
//! the background now and then. When a search text has a word made only of trigrams this sample
//! finds rare, and another part made of trigrams most tasks contain, the indexes look up that
//! rare word alone (a `LIKE '%word%'`), and each row they find is checked against the whole
//! text. Any row containing the text contains the word, so the answer is the same; the sample
//! only decides how it is found.
//!
//! A text of several words none of which is rare, each in one task in ten say (`review alpha`),
//! costs the indexes all of its trigrams' posting lists too, about 10,000 entries each over
//! 100,000 tasks, to find the few hundred tasks holding them all. Then the indexes look up one
//! trigram of each of two or three of its words, the rarest, in the order they come in the text
//! (`LIKE '%rev%alp%'`), when the sample says few tasks hold them all: a fraction of the posting
//! lists for about the same rows, each again checked against the whole text. A row containing
//! the text contains those trigrams in that order, so again the answer is the same. A sample
//! that misjudges how rare the words are together can make such a search slower than the whole
//! text's lookup (the rows found are each read from the table), never wrong.
//!
//! The sample also keeps the sampled texts themselves, to count the tasks holding a whole text.
//! A text many tasks hold (`budget`, in one task in ten) is found fastest by walking the list in
//! order, testing each task's texts on the list's index, until a page is full: a thousand tasks
//! passed for a page of 100. The planner finds that walk too, but plans it afresh for each search
//! (a search's statement is planned with its pattern, see `repository.rs`), and planning and
//! parsing cost about a third of such a search. When the sample says enough tasks hold the text
//! ([`TrigramSample::walks`]), the search runs a prepared statement instead, whose plan is that
//! walk whatever the text, planned once per connection. The answer is the same either way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How often the sample is taken again (on the first search after this long).
const RESAMPLE_EVERY: Duration = Duration::from_secs(600);
/// How soon to try again after a sample could not be taken.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// A text is worth looking up by one of its words only when some of its trigrams are in at
/// least this share of the sampled tasks (their posting lists are what costs)...
const COMMON: f64 = 0.2;
/// ...and that word's rarest trigram is in at most this share of them, and none of its
/// trigrams are common.
const RARE: f64 = 0.02;
/// A text is looked up by a few of its trigrams only when its own trigrams' posting lists add
/// up to at least this many times the sampled tasks (a fifth of the table to read)...
const COSTLY: f64 = 0.2;
/// ...and the trigrams chosen cost at most this share of that...
const SAVES: f64 = 0.5;
/// ...and at most this many of them (one per word) bring the estimated share of tasks holding
/// them all down to `RARE`.
const KEYS_MAX: usize = 3;
/// Every row holding the trigrams is fetched (rather than leaving the planner free to walk the
/// list in order instead) only when the sample puts them at most at this many: a walk costs
/// about as much wherever the matches are spread evenly, whatever the table's size, while
/// fetching them all costs what they number (about 2.5 us a row; a walk about 0.3 us a row
/// passed, docs/PERFORMANCE.md section 15).
const FETCH_MAX: f64 = 2000.0;

/// Costs in the planner's terms, per row, of walking the list (a task's texts tested on the
/// list's index) and of fetching a row the trigram indexes found (read from the table, tested):
/// about 0.3 us and 2.5 us (docs/PERFORMANCE.md sections 15 and 19).
const WALK_ROW_COST: f64 = 0.3;
const FETCH_ROW_COST: f64 = 2.5;
/// A search walks the list only when at least this many sampled tasks hold its text: fewer say
/// too little about its share to bet a walk on (a walk that finds no match passes every task).
const WALK_MIN_SAMPLED: u32 = 20;
/// At most this many bytes of sampled texts are kept for [`TrigramSample::walks`] to count in
/// (a few hundred kB for the usual 2,000 short tasks; the rest of a sample of long texts is
/// left out, which only makes fewer searches walk).
const TEXTS_MAX_BYTES: usize = 1 << 20;

type Trigram = [char; 3];

/// What the trigram indexes should look up instead of a search's whole text: a `LIKE` pattern,
/// a rare word of the text (`%4242%`) or one trigram of each of a few of its words (`%rev%alp%`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The planner chooses how: by the pattern, or by walking the list in order.
    Pattern(String),
    /// Every row holding the pattern is fetched, and the page sorted out of them: few rows, by
    /// the sample, which the planner cannot know.
    FetchAll(String),
}

impl Probe {
    pub(crate) fn into_pattern(self) -> String {
        match self {
            Self::Pattern(p) | Self::FetchAll(p) => p,
        }
    }
}

/// How many of the sampled tasks contain each trigram of their words, title and description
/// together, lower-cased.
#[derive(Debug, Default)]
pub(crate) struct TrigramSample {
    rows: u32,
    rows_with: HashMap<Trigram, u32>,
    /// How many tasks the table holds, by the planner's estimate when the sample was taken.
    table_rows: f64,
    /// The sampled tasks' texts as the server lower-cased them, each text after a NUL (which
    /// neither a task's text nor a search text can hold, so no match spans two texts).
    texts: String,
    /// Where each task's texts start in `texts`, in order (the tasks that fit in
    /// [`TEXTS_MAX_BYTES`]).
    starts: Vec<usize>,
}

impl TrigramSample {
    /// Counts the trigrams of sampled tasks' (already lower-cased) texts, each once per task.
    pub(crate) fn from_texts<'a>(tasks: impl IntoIterator<Item = [&'a str; 2]>) -> Self {
        let mut sample = Self::default();
        let mut seen = HashSet::new();
        for texts in tasks {
            sample.rows += 1;
            seen.clear();
            if sample.texts.len() + texts.iter().map(|t| t.len() + 1).sum::<usize>()
                <= TEXTS_MAX_BYTES
            {
                sample.starts.push(sample.texts.len());
                for text in texts {
                    sample.texts.push('\0');
                    sample.texts.push_str(text);
                }
            }
            for text in texts {
                for word in words(text) {
                    seen.extend(trigrams(word));
                }
            }
            for trigram in &seen {
                *sample.rows_with.entry(*trigram).or_default() += 1;
            }
        }
        sample
    }

    /// Notes the number of tasks in the table (the planner's estimate; -1 if it has none).
    pub(crate) fn of_a_table_of(mut self, rows: f64) -> Self {
        self.table_rows = rows.max(f64::from(self.rows));
        self
    }

    /// How many tasks were sampled.
    pub(crate) fn rows(&self) -> u32 {
        self.rows
    }

    /// The `LIKE` pattern to look up in the indexes instead of the whole text, if one is worth
    /// it: a rare word of the text (`%4242%`), or else one trigram of each of a few of its words
    /// (`%rev%alp%`). Made of substrings of `text` as written, letters and digits only (so it
    /// needs no escaping), to be lower-cased by the server as the text is.
    pub(crate) fn probe(&self, text: &str) -> Option<Probe> {
        if self.rows == 0 {
            return None;
        }
        if let Some(word) = self.rare_word(text) {
            return Some(Probe::Pattern(format!("%{word}%")));
        }
        let (pattern, together) = self.key_trigrams(text)?;
        Some(if together * self.table_rows <= FETCH_MAX {
            Probe::FetchAll(pattern)
        } else {
            Probe::Pattern(pattern)
        })
    }

    /// Whether a search for `text` (no status filter) should walk the list in order with a
    /// statement planned once: when the share of the sampled tasks holding the whole text makes
    /// the walk to `fetch` matches cost less than fetching every match from the table would:
    /// `fetch / share` tasks passed against `share * table_rows` rows read, at their costs.
    /// That share is known from the texts themselves, words in any order or across texts
    /// ruled out, not estimated from trigrams. The text is lower-cased here as the server
    /// lower-cases it for ASCII and most other letters; where the two differ the share is only
    /// estimated lower (fewer walks), never a result changed.
    pub(crate) fn walks(&self, text: &str, fetch: u32) -> bool {
        let sampled = u32::try_from(self.starts.len()).unwrap_or(u32::MAX);
        if sampled < WALK_MIN_SAMPLED || text.is_empty() {
            return false;
        }
        // The fewest holders whose share makes the walk the cheaper: share^2 >= fetch * walk
        // cost / (fetch cost * table rows), and at least `WALK_MIN_SAMPLED` of them.
        let needed_share =
            (f64::from(fetch) * WALK_ROW_COST / (FETCH_ROW_COST * self.table_rows.max(1.0))).sqrt();
        let needed = ((needed_share * f64::from(sampled)).ceil() as u32).max(WALK_MIN_SAMPLED);
        if needed > sampled {
            return false;
        }
        self.holding(&text.to_lowercase(), needed) >= needed
    }

    /// How many of the tasks in `texts` hold `needle` (lower-cased), counting up to `enough`.
    fn holding(&self, needle: &str, enough: u32) -> u32 {
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        let haystack = self.texts.as_bytes();
        let (mut count, mut from) = (0, 0);
        while count < enough {
            let Some(at) = haystack.get(from..).and_then(|rest| finder.find(rest)) else {
                break;
            };
            count += 1;
            // On to the next task's texts: a task counts once.
            let task = self.starts.partition_point(|&start| start <= from + at);
            match self.starts.get(task) {
                Some(&next) => from = next,
                None => break,
            }
        }
        count
    }

    /// The share of the sampled tasks holding `trigram`.
    fn share(&self, trigram: &Trigram) -> f64 {
        f64::from(self.rows_with.get(trigram).copied().unwrap_or(0)) / f64::from(self.rows)
    }

    /// The word of `text` to look up in the indexes instead of the whole text, if there is one
    /// worth it, as written in `text`.
    fn rare_word<'t>(&self, text: &'t str) -> Option<&'t str> {
        let share = |t: &Trigram| self.share(t);
        let mut most_common = 0.0_f64;
        let mut best: Option<(f64, &str)> = None;
        for word in words(text) {
            let (mut rarest, mut commonest) = (f64::INFINITY, f64::NEG_INFINITY);
            for trigram in trigrams(&word.to_lowercase()) {
                let share = share(&trigram);
                rarest = rarest.min(share);
                commonest = commonest.max(share);
            }
            if rarest.is_infinite() {
                // Under three characters: no trigram of its own to look up.
                continue;
            }
            most_common = most_common.max(commonest);
            if commonest < COMMON && best.is_none_or(|(b, _)| rarest < b) {
                best = Some((rarest, word));
            }
        }
        match best {
            Some((rarest, word)) if most_common >= COMMON && rarest <= RARE => Some(word),
            _ => None,
        }
    }

    /// The pattern of the rarest trigrams of a few words of `text`, in the text's order, if
    /// looking them up costs the indexes much less than the whole text and the sample says few
    /// tasks hold them all (the words taken as independent); and that share.
    fn key_trigrams(&self, text: &str) -> Option<(String, f64)> {
        // Each distinct word's rarest trigram made of ASCII letters and digits (whose
        // lower-casing is the same, one character for one, on every server): its share, and
        // where it is in `text`.
        let mut keys: Vec<(f64, usize, &str)> = Vec::new();
        let mut seen = HashSet::new();
        let mut whole = 0.0;
        for word in words(text) {
            let folded = word.to_lowercase();
            if !seen.insert(folded.clone()) {
                continue;
            }
            whole += trigrams(&folded).map(|t| self.share(&t)).sum::<f64>();
            let offset = word.as_ptr() as usize - text.as_ptr() as usize;
            let rarest = word
                .char_indices()
                .zip(word.chars().skip(2))
                .filter_map(|((at, _), _)| {
                    let key = word.get(at..at + 3)?;
                    let [a, b, c] = <[u8; 3]>::try_from(key.as_bytes()).ok()?;
                    if !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return None;
                    }
                    let trigram = [a, b, c].map(|b| char::from(b.to_ascii_lowercase()));
                    Some((self.share(&trigram), offset + at, key))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            keys.extend(rarest);
        }
        if whole < COSTLY {
            return None;
        }
        keys.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut together, mut cost, mut chosen) = (1.0, 0.0, 0);
        for (share, _, _) in &keys {
            if together <= RARE || chosen == KEYS_MAX {
                break;
            }
            together *= share;
            cost += share;
            chosen += 1;
        }
        if together > RARE || cost > SAVES * whole {
            return None;
        }
        let mut chosen = keys[..chosen].to_vec();
        chosen.sort_by_key(|&(_, at, _)| at);
        let mut pattern = String::from("%");
        for (_, _, key) in chosen {
            pattern.push_str(key);
            pattern.push('%');
        }
        Some((pattern, together))
    }
}

/// The latest sample, and when to take the next one. A search never waits for a sample: it
/// uses the one there is (none at first: then every search looks up its whole text).
#[derive(Debug)]
pub(crate) struct Samples {
    current: RwLock<Arc<TrigramSample>>,
    /// When the next sample is due; `None` while one is being taken.
    next_at: Mutex<Option<Instant>>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            current: RwLock::new(Arc::default()),
            next_at: Mutex::new(Some(Instant::now())),
        }
    }
}

impl Samples {
    pub(crate) fn current(&self) -> Arc<TrigramSample> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The right to take the next sample, if one is due and nobody is taking it.
    pub(crate) fn claim(self: &Arc<Self>) -> Option<Resampling> {
        let mut next_at = self.next_at.lock().unwrap_or_else(PoisonError::into_inner);
        match *next_at {
            Some(at) if Instant::now() >= at => {
                *next_at = None;
                Some(Resampling::new(self))
            }
            _ => None,
        }
    }

    /// The right to take a sample now, due or not.
    pub(crate) fn force(self: &Arc<Self>) -> Resampling {
        *self.next_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Resampling::new(self)
    }
}

/// Taking a sample. Dropped without [`Resampling::done`] (the query failed, or its task was
/// cancelled), it lets the next search try again after [`RETRY_AFTER`].
pub(crate) struct Resampling {
    samples: Arc<Samples>,
    next: Duration,
}

impl Resampling {
    /// Until [`Resampling::done`], a failure: the next try is due after [`RETRY_AFTER`].
    fn new(samples: &Arc<Samples>) -> Self {
        Self {
            samples: samples.clone(),
            next: RETRY_AFTER,
        }
    }

    pub(crate) fn done(mut self, sample: TrigramSample) {
        *self
            .samples
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(sample);
        self.next = RESAMPLE_EVERY;
    }
}

impl Drop for Resampling {
    fn drop(&mut self) {
        *self
            .samples
            .next_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + self.next);
    }
}

/// The runs of letters and digits of `text`, as pg_trgm splits texts into words.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The trigrams inside one word (pg_trgm also pads words with blanks at their ends; a `LIKE`
/// pattern's word bounded by `%` gets no padding, so these are what a probe looks up).
fn trigrams(word: &str) -> impl Iterator<Item = Trigram> + '_ {
    let chars: Vec<char> = word.chars().collect();
    (0..chars.len().saturating_sub(2)).map(move |i| [chars[i], chars[i + 1], chars[i + 2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TrigramSample {
        fn pattern(&self, text: &str) -> Option<String> {
            self.probe(text).map(Probe::into_pattern)
        }
    }

    /// 100 tasks like the benchmark's: every one says "task", one in ten "review".
    fn sample() -> TrigramSample {
        let texts: Vec<(String, String)> = (1..=100)
            .map(|n| {
                let word = if n % 10 == 0 { "review" } else { "budget" };
                (
                    format!("task {n}: {word}"),
                    format!("bench task number {n}"),
                )
            })
            .collect();
        TrigramSample::from_texts(texts.iter().map(|(t, d)| [t.as_str(), d.as_str()]))
    }

    #[test]
    fn a_rare_word_beside_a_common_one_is_the_probe() {
        let sample = sample();
        assert_eq!(sample.rows(), 100);
        assert_eq!(sample.pattern("Task 4242").as_deref(), Some("%4242%"));
        assert_eq!(sample.pattern("4242, task!").as_deref(), Some("%4242%"));
        // The rarest of two candidates ("777" is in no sampled task; "review" in one in ten,
        // too many to be rare).
        assert_eq!(sample.pattern("task review 777").as_deref(), Some("%777%"));
    }

    #[test]
    fn no_probe_unless_it_is_rare_and_saves_looking_up_common_trigrams() {
        let sample = sample();
        // Nothing rare enough.
        assert_eq!(sample.pattern("task review"), None);
        assert_eq!(sample.pattern("review"), None);
        // One word holding both common and rare trigrams: not a word to look up alone, but
        // its first rarest trigram is.
        assert_eq!(sample.pattern("task4242").as_deref(), Some("%sk4%"));
        // A rare word without a common one: its rarest trigram, if the rest costs enough.
        assert_eq!(sample.pattern("review 4242").as_deref(), Some("%424%"));
        assert_eq!(sample.pattern("4242"), None, "cheap to look up whole");
        // Words under three characters have no trigrams of their own.
        assert_eq!(sample.pattern("task 42"), None);
        assert_eq!(TrigramSample::default().pattern("task 4242"), None);
    }

    /// 1,300 tasks whose titles pair one of 10 words with one of 13, like the benchmark's:
    /// "review" in one task in ten, "alpha" in one in thirteen, both in one in 130.
    fn pairs() -> TrigramSample {
        const A: [&str; 10] = [
            "review", "budget", "deploy", "invoice", "meeting", "design", "hiring", "backup",
            "release", "audit",
        ];
        const B: [&str; 13] = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
            "juliet", "kilo", "lima", "mike",
        ];
        let titles: Vec<String> = (0..1300)
            .map(|n| format!("task {n}: {} {}", A[n % 10], B[n / 10 % 13]))
            .collect();
        TrigramSample::from_texts(titles.iter().map(|t| [t.as_str(), ""]))
    }

    #[test]
    fn words_rare_only_together_are_looked_up_by_a_trigram_of_each_in_their_order() {
        let sample = pairs();
        assert_eq!(sample.pattern("Review Alpha").as_deref(), Some("%Rev%Alp%"));
        assert_eq!(
            sample.pattern("alpha, review").as_deref(),
            Some("%alp%rev%")
        );
        assert_eq!(
            sample.pattern("review alpha review").as_deref(),
            Some("%rev%alp%"),
            "a word once"
        );
        // The two rarest of three words are enough; the third is left to the check.
        assert_eq!(
            sample.pattern("review bravo echo").as_deref(),
            Some("%bra%ech%")
        );
        // One common word alone, or with another that is in every task: not rare enough.
        assert_eq!(sample.pattern("budget"), None);
        assert_eq!(sample.pattern("budget task"), None);
        // Trigrams with other than ASCII letters and digits are never keys.
        let accented = TrigramSample::from_texts(
            (0..100).map(|n| [if n % 10 == 0 { "résumé mike" } else { "kilo" }, ""]),
        );
        assert_eq!(
            accented.pattern("RÉSUMÉ mike").as_deref(),
            Some("%SUM%mik%")
        );
    }

    #[test]
    fn the_rows_holding_the_trigrams_are_fetched_whole_only_when_few() {
        // One task in 130 holds both words: 769 of 100,000 tasks, 7,692 of 1,000,000.
        let fetched = Probe::FetchAll("%rev%alp%".to_owned());
        assert_eq!(
            pairs().of_a_table_of(100_000.0).probe("review alpha"),
            Some(fetched)
        );
        let walked = Probe::Pattern("%rev%alp%".to_owned());
        assert_eq!(
            pairs().of_a_table_of(1_000_000.0).probe("review alpha"),
            Some(walked)
        );
        // Before the table was first analyzed the planner says -1: the sample's own size.
        assert_eq!(pairs().of_a_table_of(-1.0).table_rows, 1300.0);
        // A rare word is left to the planner.
        assert_eq!(
            sample().of_a_table_of(100.0).probe("task 4242"),
            Some(Probe::Pattern("%4242%".to_owned()))
        );
    }

    #[test]
    fn a_text_walks_the_list_when_enough_sampled_tasks_hold_it_whole() {
        let sample = pairs().of_a_table_of(100_000.0);
        // "budget" is in one task in ten (130 sampled tasks): a page of 100 is found within
        // about a thousand tasks of the list, where its 10,000 matches would each be read.
        assert!(sample.walks("budget", 101));
        assert!(sample.walks("BUDGET", 101));
        assert!(sample.walks("Task", 101));
        // One in 130: 10 sampled tasks, too few to bet a walk on (13,000 tasks passed for a
        // page of 100, against 769 rows read).
        assert!(!sample.walks("budget alpha", 11));
        // Words in another order, or in no sampled task at all.
        assert!(!sample.walks("alpha budget", 11));
        assert!(!sample.walks("zebra", 11));
        // The larger the table, the rarer a text may be and still walk: the walk costs what
        // the page needs, reading every match what the table holds. One task in twenty: a walk
        // on 100,000 tasks, not on 1,000.
        let twentieth = || {
            TrigramSample::from_texts(
                (0..1000).map(|n| [if n % 20 == 0 { "budget" } else { "other" }, ""]),
            )
        };
        assert!(twentieth().of_a_table_of(100_000.0).walks("budget", 101));
        assert!(!twentieth().of_a_table_of(1_000.0).walks("budget", 101));
        assert!(
            twentieth().of_a_table_of(1_000.0).walks("budget", 2),
            "a smaller page"
        );
        // A sample of too few tasks never walks.
        let few = TrigramSample::from_texts((0..19).map(|_| ["budget", ""])).of_a_table_of(1e6);
        assert!(!few.walks("budget", 2));
        assert!(!TrigramSample::default().walks("budget", 2));
    }

    #[test]
    fn a_walk_counts_whole_texts_and_each_task_once() {
        // The words on either side of a title's end and a description's start are not a match.
        let sample = TrigramSample::from_texts((0..100).map(|_| ["a review", "alpha"]))
            .of_a_table_of(100_000.0);
        assert!(!sample.walks("review alpha", 2));
        assert!(sample.walks("REVIEW", 2) && sample.walks("alpha", 2));
        let sample = TrigramSample::from_texts((0..30).map(|n| {
            if n < 20 {
                ["budget budget", "budget"]
            } else {
                ["other", ""]
            }
        }));
        assert_eq!(sample.holding("budget", 100), 20);
        assert_eq!(sample.holding("budget", 5), 5, "counts up to what it needs");
        assert_eq!(sample.holding("other", 100), 10);
        // Texts beyond the bytes kept are counted for trigrams, not kept for walks.
        let long = "x".repeat(TEXTS_MAX_BYTES / 2);
        let sample = TrigramSample::from_texts((0..3).map(|_| [long.as_str(), ""]));
        assert_eq!((sample.rows(), sample.starts.len()), (3, 1));
    }

    #[test]
    fn a_task_counts_once_per_trigram_and_case_does_not_matter() {
        let sample = TrigramSample::from_texts([["task task", "task"], ["other", ""]]);
        assert_eq!(sample.rows_with.get(&['t', 'a', 's']), Some(&1));
        assert_eq!(
            sample.pattern("TASK other"),
            None,
            "other is in half the tasks"
        );
        let sample = TrigramSample::from_texts((0..10).map(|_| ["task", ""]));
        assert_eq!(
            sample.pattern("TASK Zebra").as_deref(),
            Some("%Zebra%"),
            "as written in the text"
        );
    }

    #[test]
    fn words_split_like_pg_trgm() {
        assert_eq!(
            words("snake_case, 50% über-fast").collect::<Vec<_>>(),
            vec!["snake", "case", "50", "über", "fast"]
        );
        assert_eq!(trigrams("über").count(), 2);
        assert_eq!(trigrams("ab").count(), 0);
    }
}
