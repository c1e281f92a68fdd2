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
//! only decides how it is found, and a poor sample only makes a search as slow as without it.

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

type Trigram = [char; 3];

/// How many of the sampled tasks contain each trigram of their words, title and description
/// together, lower-cased.
#[derive(Debug, Default)]
pub(crate) struct TrigramSample {
    rows: u32,
    rows_with: HashMap<Trigram, u32>,
}

impl TrigramSample {
    /// Counts the trigrams of sampled tasks' (already lower-cased) texts, each once per task.
    pub(crate) fn from_texts<'a>(tasks: impl IntoIterator<Item = [&'a str; 2]>) -> Self {
        let mut sample = Self::default();
        let mut seen = HashSet::new();
        for texts in tasks {
            sample.rows += 1;
            seen.clear();
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

    /// How many tasks were sampled.
    pub(crate) fn rows(&self) -> u32 {
        self.rows
    }

    /// The word of `text` to look up in the indexes instead of the whole text, if there is one
    /// worth it, as written in `text` (a substring of it, made only of letters and digits, so it
    /// needs no escaping in a `LIKE` pattern).
    pub(crate) fn probe<'t>(&self, text: &'t str) -> Option<&'t str> {
        if self.rows == 0 {
            return None;
        }
        let share = |t: &Trigram| {
            f64::from(self.rows_with.get(t).copied().unwrap_or(0)) / f64::from(self.rows)
        };
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
        assert_eq!(sample.probe("Task 4242"), Some("4242"));
        assert_eq!(sample.probe("4242, task!"), Some("4242"));
        // The rarest of two candidates ("777" is in no sampled task; "review" in one in ten,
        // too many to be rare).
        assert_eq!(sample.probe("task review 777"), Some("777"));
    }

    #[test]
    fn no_probe_without_both_a_common_part_and_a_rare_word() {
        let sample = sample();
        // Nothing common: the whole text is as cheap to look up.
        assert_eq!(sample.probe("review 4242"), None);
        // Nothing rare enough.
        assert_eq!(sample.probe("task review"), None);
        // One word holding both common and rare trigrams: no part of it to look up alone.
        assert_eq!(sample.probe("task4242"), None);
        // Words under three characters have no trigrams of their own.
        assert_eq!(sample.probe("task 42"), None);
        assert_eq!(TrigramSample::default().probe("task 4242"), None);
    }

    #[test]
    fn a_task_counts_once_per_trigram_and_case_does_not_matter() {
        let sample = TrigramSample::from_texts([["task task", "task"], ["other", ""]]);
        assert_eq!(sample.rows_with.get(&['t', 'a', 's']), Some(&1));
        assert_eq!(
            sample.probe("TASK other"),
            None,
            "other is in half the tasks"
        );
        let sample = TrigramSample::from_texts((0..10).map(|_| ["task", ""]));
        assert_eq!(
            sample.probe("TASK Zebra"),
            Some("Zebra"),
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
