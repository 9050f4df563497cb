//! tantivy adapter, the embedded default: an index in the data directory.
//!
//! Parts of words: each distinct word of a body is indexed by its suffixes, each cut to
//! `MAX_GRAM` characters (`hello` → `hello`, `ello`, `llo`, `lo`, `o`). A part of a word is
//! a prefix of one of its suffixes, so a query word of up to `MAX_GRAM` characters is one
//! prefix range of the term dictionary, and a longer one must match all its `MAX_GRAM`-
//! character windows, each a whole term. A word of L characters costs L terms where all its
//! substrings (the scheme before, whose indexes this query still answers) cost L(L+1)/2: 6
//! for a six-letter word instead of 21, where tantivy's indexing was a third of the server's
//! CPU under create-message load. Words count up to `MAX_WORD` characters (query words are cut
//! the same way) and a document up to `MAX_GRAMS` terms, so a 64 KiB body of random letters
//! costs bounded memory and index space.
//!
//! One indexing thread owns the `IndexWriter`. It commits at most every `COMMIT_EVERY`
//! (a tantivy commit costs milliseconds of fsyncs; per writer batch it dominated the write
//! path) or at once when someone flushes. Each commit records, as its payload, the highest
//! store id indexed; documents are fed in commit order, so everything up to that id is durable
//! and `catch_up` re-indexes the rest after a crash.

use super::{words, SearchDoc, SearchIndex};
use crate::blocking::Pool;
use crate::domain::PageRequest;
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, EmptyQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Type, FAST, INDEXED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, Token, TokenStream, Tokenizer};
use tantivy::{doc, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, Term};
use tokio::sync::oneshot;

const MAX_GRAM: usize = 12;
const MAX_WORD: usize = 32;
const MAX_GRAMS: usize = 20_000;
/// Batches of documents waiting for the indexing thread before `upsert` waits too.
const QUEUE: usize = 256;
const GRAMS: &str = "parley_grams";
const GRAMS_FIELD: &str = "grams";
/// One indexing thread with a 32 MiB arena: the indexer already works in the background and
/// commits every `COMMIT_EVERY`, so more threads would mostly cost memory (RSS is a target).
const WRITER_THREADS: usize = 1;
const WRITER_HEAP: usize = 32 * 1024 * 1024;
/// How stale search may be under continuous writes.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// Commit early when this many documents wait.
const MAX_PENDING: usize = 50_000;

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    chat: Field,
    number: Field,
    grams: Field,
}

enum Command {
    Docs(Vec<SearchDoc>),
    Flush(oneshot::Sender<Result<(), String>>),
    Clear(oneshot::Sender<Result<(), String>>),
    /// Commit what is pending and end the thread (releasing the index lock).
    Stop,
}

pub struct TantivyIndex {
    fields: Fields,
    reader: IndexReader,
    commands: mpsc::SyncSender<Command>,
    /// The payload of the last commit: every message up to this store id is indexed.
    durable_id: Arc<AtomicI64>,
    indexer: Option<std::thread::JoinHandle<()>>,
    /// Searches run on two threads per core: unbounded, 16 concurrent searches kept 16
    /// threads with their allocator caches (about 60 MB of RSS on the 1M-message fixture).
    /// Two per core kept 95% of the unbounded throughput there; one per core lost a third.
    searches: Pool,
}

impl Drop for TantivyIndex {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
    }
}

impl TantivyIndex {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut schema = Schema::builder();
        let key = schema.add_text_field("key", STRING);
        let chat = schema.add_i64_field("chat", INDEXED);
        let number = schema.add_i64_field("number", FAST);
        let grams_options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(GRAMS)
                .set_index_option(IndexRecordOption::Basic),
        );
        let grams = schema.add_text_field(GRAMS_FIELD, grams_options);
        let schema = schema.build();

        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Searches read a few posting lists and term-dictionary blocks each: without read-ahead
        // (random access), the 1M-message fixture kept 45 MB of the index resident after a
        // search run instead of 83 MB, at the same search rate.
        let directory = tantivy::directory::MmapDirectory::open_with_madvice(
            dir,
            tantivy::directory::Advice::Random,
        )?;
        let index = Index::open_or_create(directory, schema)
            .context("opening the search index (run `parley reindex` if its schema changed)")?;
        index
            .tokenizers()
            .register(GRAMS, TextAnalyzer::from(GramTokenizer));
        let writer = index
            .writer_with_num_threads(WRITER_THREADS, WRITER_HEAP)
            .context("locking the search index (is another parley using this data directory?)")?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let committed = index
            .load_metas()?
            .payload
            .and_then(|p| p.parse::<i64>().ok())
            .unwrap_or(0);
        let durable_id = Arc::new(AtomicI64::new(committed));
        let fields = Fields {
            key,
            chat,
            number,
            grams,
        };
        let (commands, inbox) = mpsc::sync_channel(QUEUE);
        let indexer = Indexer {
            fields,
            writer,
            reader: reader.clone(),
            durable_id: durable_id.clone(),
            high_id: committed,
        };
        let indexer = std::thread::Builder::new()
            .name("tantivy-indexer".into())
            .spawn(move || indexer.run(inbox))?;
        Ok(Self {
            fields,
            reader,
            commands,
            durable_id,
            indexer: Some(indexer),
            searches: Pool::per_core("search", 2)?,
        })
    }

    async fn enqueue(&self, command: Command) -> Result<()> {
        let stopped = || anyhow!("the search indexer stopped");
        match self.commands.try_send(command) {
            Ok(()) => Ok(()),
            // Backpressure: wait for room, off the async workers.
            Err(mpsc::TrySendError::Full(command)) => {
                let commands = self.commands.clone();
                tokio::task::spawn_blocking(move || commands.send(command))
                    .await?
                    .map_err(|_| stopped())
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }

    async fn ask(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(command(reply)).await?;
        answer
            .await
            .map_err(|_| anyhow!("the search indexer stopped"))?
            .map_err(|e| anyhow!("search index commit failed: {e}"))
    }
}

struct Indexer {
    fields: Fields,
    writer: IndexWriter,
    reader: IndexReader,
    durable_id: Arc<AtomicI64>,
    /// The highest store id added so far (committed or not).
    high_id: i64,
}

impl Indexer {
    fn run(mut self, inbox: mpsc::Receiver<Command>) {
        let mut pending = 0usize;
        let mut waiters = Vec::new();
        let mut last_commit = Instant::now();
        loop {
            let wait = if pending > 0 {
                COMMIT_EVERY.saturating_sub(last_commit.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            match inbox.recv_timeout(wait) {
                Ok(Command::Docs(docs)) => {
                    for d in docs {
                        if let Err(e) = self.add(d) {
                            tracing::error!(error = %e, "could not index a message");
                        }
                        pending += 1;
                    }
                }
                Ok(Command::Flush(reply)) => waiters.push(reply),
                Ok(Command::Clear(reply)) => {
                    if let Err(e) = self.writer.delete_all_documents() {
                        let _ = reply.send(Err(e.to_string()));
                        continue;
                    }
                    self.high_id = 0;
                    pending += 1;
                    waiters.push(reply);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if pending > 0 {
                        let _ = self.commit();
                    }
                    return;
                }
            }
            let due =
                pending > 0 && (last_commit.elapsed() >= COMMIT_EVERY || pending >= MAX_PENDING);
            if due || !waiters.is_empty() {
                let result = if pending > 0 { self.commit() } else { Ok(()) };
                if result.is_ok() {
                    pending = 0;
                }
                last_commit = Instant::now();
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }

    fn add(&mut self, d: SearchDoc) -> tantivy::Result<()> {
        let f = self.fields;
        let key = doc_key(d.chat_id, d.number);
        // A store id above every id this index has received is a row stored since, so no
        // version of it can be in the index (messages are never deleted and stored again, and
        // `catch_up` rebuilds an index that is ahead of its store): it needs no delete, which
        // tantivy would look up in every segment at the next commit (under create-message
        // load, 3 µs of the segment updater's CPU per message).
        if d.id <= self.high_id {
            self.writer.delete_term(Term::from_field_text(f.key, &key));
        }
        self.writer.add_document(doc!(
            f.key => key,
            f.chat => d.chat_id,
            f.number => d.number,
            f.grams => d.body,
        ))?;
        self.high_id = self.high_id.max(d.id);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        let mut prepared = self.writer.prepare_commit().map_err(|e| e.to_string())?;
        prepared.set_payload(&self.high_id.to_string());
        prepared.commit().map_err(|e| e.to_string())?;
        self.durable_id.store(self.high_id, Ordering::SeqCst);
        self.reader.reload().map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn doc_key(chat_id: i64, number: i64) -> String {
    format!("{chat_id}:{number}")
}

/// The tokenizer of the grams field: every suffix, cut to `MAX_GRAM` characters, of every
/// distinct word (lowercased, cut at `MAX_WORD` characters), the first `MAX_GRAMS` distinct
/// grams of a text at most. Emitted straight into tantivy's reused token: building a set of
/// gram strings and a space-separated text for a whitespace tokenizer to split again took
/// over half of the indexing thread's time (perf, create-message load). Repeated grams of
/// different words are emitted again (tantivy records a term once per document) until a text
/// has emitted `MAX_GRAMS` in all; only such long texts pay for a set of distinct grams.
#[derive(Clone, Default)]
struct GramTokenizer;

impl Tokenizer for GramTokenizer {
    type TokenStream<'a> = GramStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> GramStream<'a> {
        GramStream {
            words: Box::new(words(text)),
            done: HashSet::new(),
            current: String::new(),
            word: Vec::new(),
            ranges: GramRanges::new(0),
            last: (0, 0),
            emitted: 0,
            distinct: None,
            token: Token::default(),
        }
    }
}

struct GramStream<'a> {
    words: Box<dyn Iterator<Item = String> + 'a>,
    /// Words already cut into grams (a repeated word adds nothing).
    done: HashSet<String>,
    /// The word being cut, its characters, its grams still to come, and its last gram
    /// (`word[last.0..last.1]`).
    current: String,
    word: Vec<char>,
    ranges: GramRanges,
    last: (usize, usize),
    /// Grams emitted, repeats included.
    emitted: usize,
    /// Once `MAX_GRAMS` were emitted: the distinct grams so far; from then on only new grams
    /// are emitted, while fewer than `MAX_GRAMS` are distinct.
    distinct: Option<HashSet<String>>,
    token: Token,
}

/// The terms of a word of `len` characters, as `(start, end)` char ranges: each suffix, cut
/// to `MAX_GRAM` characters, by start.
struct GramRanges {
    len: usize,
    start: usize,
}

impl GramRanges {
    fn new(len: usize) -> Self {
        Self { len, start: 0 }
    }
}

impl Iterator for GramRanges {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.start == self.len {
            return None;
        }
        let range = (self.start, self.len.min(self.start + MAX_GRAM));
        self.start += 1;
        Some(range)
    }
}

impl GramStream<'_> {
    /// The distinct grams emitted so far: those of the words done and of the current word
    /// up to its last gram.
    fn distinct_so_far(&self) -> HashSet<String> {
        let mut grams = HashSet::new();
        for word in &self.done {
            let chars: Vec<char> = word.chars().take(MAX_WORD).collect();
            grams.extend(GramRanges::new(chars.len()).map(|(s, e)| chars[s..e].iter().collect()));
        }
        let current = GramRanges::new(self.word.len())
            .take_while(|&range| range <= self.last)
            .map(|(s, e)| self.word[s..e].iter().collect());
        grams.extend(current);
        grams
    }
}

impl TokenStream for GramStream<'_> {
    fn advance(&mut self) -> bool {
        if self.emitted == MAX_GRAMS && self.distinct.is_none() {
            self.distinct = Some(self.distinct_so_far());
        }
        loop {
            let Some((start, end)) = self.ranges.next() else {
                let next = self
                    .words
                    .by_ref()
                    .find(|w| !self.done.contains(w) && *w != self.current);
                let Some(next) = next else {
                    return false;
                };
                let finished = std::mem::replace(&mut self.current, next);
                if !finished.is_empty() {
                    self.done.insert(finished);
                }
                self.word.clear();
                self.word.extend(self.current.chars().take(MAX_WORD));
                self.ranges = GramRanges::new(self.word.len());
                self.last = (0, 0);
                continue;
            };
            self.last = (start, end);
            self.token.text.clear();
            self.token.text.extend(&self.word[start..end]);
            if let Some(distinct) = &mut self.distinct {
                if distinct.len() >= MAX_GRAMS {
                    return false;
                }
                if !distinct.insert(self.token.text.clone()) {
                    continue;
                }
            }
            self.token.position = self.emitted;
            self.emitted += 1;
            return true;
        }
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// What a query word must match: a prefix of some term when it fits in one (`MAX_GRAM`
/// characters), else each of its `MAX_GRAM`-character windows as a whole term.
#[derive(Debug, PartialEq)]
enum Match {
    Prefix(String),
    Terms(Vec<String>),
}

fn match_of(word: &str) -> Match {
    let chars: Vec<char> = word.chars().take(MAX_WORD).collect();
    if chars.len() <= MAX_GRAM {
        return Match::Prefix(word.to_owned());
    }
    Match::Terms(
        chars
            .windows(MAX_GRAM)
            .map(|w| w.iter().collect())
            .collect(),
    )
}

/// A prefix expands to at most this many terms (the union of their postings, which skips to
/// the chat's documents); beyond, a range query, which decodes every posting of every term
/// of the range into a bitset. Ranges alone: search p99 on the 1M-message fixture 9.7–10.5 ms
/// where whole-term lookups had 8.1–8.8.
const EXPAND_AT_MOST: usize = 32;

fn term_query(grams: Field, term: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(grams, term),
        IndexRecordOption::Basic,
    ))
}

/// Documents with a term that starts with `prefix`: the terms from `prefix` up to `prefix`
/// followed by byte 0xFF, which no UTF-8 text holds.
fn prefix_clause(
    searcher: &Searcher,
    grams: Field,
    prefix: &str,
) -> tantivy::Result<Box<dyn Query>> {
    let mut past = prefix.as_bytes().to_vec();
    past.push(0xFF);
    let mut terms = BTreeSet::new();
    for segment in searcher.segment_readers() {
        let index = segment.inverted_index(grams)?;
        let mut range = index
            .terms()
            .range()
            .ge(prefix.as_bytes())
            .lt(&past)
            .into_stream()?;
        while range.advance() {
            terms.insert(String::from_utf8_lossy(range.key()).into_owned());
            if terms.len() > EXPAND_AT_MOST {
                return Ok(Box::new(RangeQuery::new_term_bounds(
                    GRAMS_FIELD.to_owned(),
                    Type::Str,
                    &Bound::Included(Term::from_field_text(grams, prefix)),
                    &Bound::Excluded(Term::from_field_bytes(grams, &past)),
                )));
            }
        }
    }
    let mut terms: Vec<Box<dyn Query>> = terms.iter().map(|t| term_query(grams, t)).collect();
    Ok(match terms.len() {
        0 => Box::new(EmptyQuery),
        1 => terms.remove(0),
        _ => Box::new(BooleanQuery::new(
            terms.into_iter().map(|t| (Occur::Should, t)).collect(),
        )),
    })
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    async fn upsert(&self, docs: Vec<SearchDoc>) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        self.enqueue(Command::Docs(docs)).await
    }

    async fn flush(&self) -> Result<()> {
        self.ask(Command::Flush).await
    }

    async fn search(&self, chat_id: i64, query: &str, page: PageRequest) -> Result<Vec<i64>> {
        let matches: Vec<Match> = words(query).map(|word| match_of(&word)).collect();
        if matches.is_empty() {
            return Ok(Vec::new());
        }
        let f = self.fields;
        let searcher = self.reader.searcher();
        let collector = TopDocs::with_limit(page.limit as usize)
            .and_offset(page.offset as usize)
            .order_by_fast_field::<i64>("number", Order::Desc);
        let hits = self
            .searches
            .run(move || -> tantivy::Result<_> {
                let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_i64(f.chat, chat_id),
                        IndexRecordOption::Basic,
                    )),
                )];
                for m in matches {
                    match m {
                        Match::Prefix(prefix) => {
                            clauses
                                .push((Occur::Must, prefix_clause(&searcher, f.grams, &prefix)?));
                        }
                        Match::Terms(terms) => {
                            clauses.extend(
                                terms.iter().map(|t| (Occur::Must, term_query(f.grams, t))),
                            );
                        }
                    }
                }
                searcher.search(&BooleanQuery::new(clauses), &collector)
            })
            .await??;
        Ok(hits.into_iter().map(|(number, _)| number).collect())
    }

    async fn clear(&self) -> Result<()> {
        self.ask(Command::Clear).await
    }

    async fn indexed_up_to(&self) -> Result<Option<i64>> {
        Ok(Some(self.durable_id.load(Ordering::SeqCst)))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grams the tokenizer emits for a text, in order.
    fn grams_of(text: &str) -> Vec<String> {
        let mut tokenizer = GramTokenizer;
        let mut stream = tokenizer.token_stream(text);
        let mut grams = Vec::new();
        while stream.advance() {
            grams.push(stream.token().text.clone());
        }
        grams
    }

    #[test]
    fn every_suffix_of_every_distinct_word_once() {
        assert_eq!(
            grams_of("Abc, abc! b"),
            vec!["abc", "bc", "c", "b"],
            "\"abc\" once (lowercased), then \"b\" as a word of its own"
        );
        assert_eq!(grams_of(" ,; "), Vec::<String>::new());
        assert_eq!(
            grams_of("abcdefghijklmn")[..3],
            ["abcdefghijkl", "bcdefghijklm", "cdefghijklmn"],
            "suffixes cut to MAX_GRAM characters"
        );
        let long: String = "x".repeat(40);
        let grams = grams_of(&long);
        assert!(grams.iter().all(|g| g.len() <= MAX_GRAM));
        // Words are cut at MAX_WORD characters: one suffix per start.
        assert_eq!(grams.len(), MAX_WORD);
    }

    #[test]
    fn every_part_of_a_word_starts_a_gram() {
        let grams = grams_of("Hello, hello World");
        for part in ["h", "hel", "ell", "hello", "orl", "world", "d"] {
            assert!(grams.iter().any(|g| g.starts_with(part)), "{part}");
        }
        assert!(!grams.iter().any(|g| g.contains(' ')));
    }

    #[test]
    fn a_huge_random_word_costs_bounded_grams() {
        let body: String = (0..65_536)
            .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
            .collect();
        assert_eq!(
            grams_of(&body).len(),
            MAX_WORD,
            "one word counts up to MAX_WORD characters"
        );
        // A 64 KiB body of distinct words stops at MAX_GRAMS distinct grams.
        let words: Vec<String> = (0..10_000).map(|i| format!("w{i:05}")).collect();
        let grams = grams_of(&words.join(" "));
        let distinct: HashSet<&String> = grams.iter().collect();
        assert_eq!(distinct.len(), MAX_GRAMS);
        assert!(grams.iter().all(|g| g.chars().count() <= MAX_GRAM));
    }

    /// The first `MAX_GRAMS` distinct grams of a text, in order: what the tokenizer must cover.
    fn first_distinct_grams(text: &str) -> HashSet<String> {
        let mut grams = HashSet::new();
        for word in words(text) {
            let chars: Vec<char> = word.chars().take(MAX_WORD).collect();
            for (s, e) in GramRanges::new(chars.len()) {
                if grams.len() == MAX_GRAMS {
                    return grams;
                }
                grams.insert(chars[s..e].iter().collect());
            }
        }
        grams
    }

    #[test]
    fn a_long_text_covers_its_first_distinct_grams_however_many_repeat() {
        // Six-letter words share most short suffixes: 6 grams each, fewer new ones.
        let word = |i: usize| -> String {
            (0..6)
                .map(|k| (b'a' + ((i / 26usize.pow(k)) % 26) as u8) as char)
                .collect()
        };
        for count in [3, 1_000, 5_000] {
            let text: Vec<String> = (0..count).map(word).collect();
            let text = format!("{} {}", text.join(" "), text[..count / 2].join(" "));
            let emitted: HashSet<String> = grams_of(&text).into_iter().collect();
            assert_eq!(emitted, first_distinct_grams(&text), "{count} words");
            if count == 1_000 {
                assert!(
                    (0..count).all(|i| emitted.contains(&word(i))),
                    "every word is found"
                );
            }
        }
    }

    #[test]
    fn long_query_words_need_every_window() {
        assert_eq!(match_of("short"), Match::Prefix("short".into()));
        let Match::Terms(windows) = match_of("abcdefghijklmn") else {
            panic!("a word over MAX_GRAM characters is matched by its windows");
        };
        assert_eq!(windows.len(), 3);
    }

    #[tokio::test]
    async fn a_query_word_finds_the_words_it_is_part_of_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let index = TantivyIndex::open(dir.path()).unwrap();
        let bodies = ["abc", "abd", "ab", "b", "xaby", "är", "abcdefghijklmnop"];
        let docs = bodies.iter().zip(1..).map(|(body, number)| SearchDoc {
            id: number,
            chat_id: 1,
            number,
            body: body.to_string(),
        });
        index.upsert(docs.collect()).await.unwrap();
        index.flush().await.unwrap();
        let found = |q: &'static str| {
            let index = &index;
            async move { index.search(1, q, PageRequest::first(10)).await.unwrap() }
        };
        assert_eq!(found("ab").await, vec![7, 5, 3, 2, 1]);
        assert_eq!(found("abc").await, vec![7, 1]);
        assert_eq!(found("b").await, vec![7, 5, 4, 3, 2, 1]);
        assert_eq!(found("by").await, vec![5]);
        assert_eq!(found("bz").await, Vec::<i64>::new());
        assert_eq!(found("Ä").await, vec![6], "a multi-byte prefix");
        assert_eq!(found("cdefghijklmnop").await, vec![7], "by its windows");
        assert_eq!(found("cdefghijklmnoq").await, Vec::<i64>::new());
    }

    #[tokio::test]
    async fn a_prefix_of_many_terms_finds_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let index = TantivyIndex::open(dir.path()).unwrap();
        let many = EXPAND_AT_MOST as i64 * 2;
        let docs = (1..=many).map(|number| SearchDoc {
            id: number,
            chat_id: 1,
            number,
            body: format!("zz{number} other"),
        });
        index.upsert(docs.collect()).await.unwrap();
        index.flush().await.unwrap();
        let page = PageRequest::first(100);
        let all: Vec<i64> = (1..=many).rev().collect();
        assert_eq!(index.search(1, "zz", page).await.unwrap(), all, "a range");
        assert_eq!(index.search(1, "zz1", page).await.unwrap().len(), 11);
        assert_eq!(index.search(1, "zz other", page).await.unwrap(), all);
    }

    #[tokio::test]
    async fn commits_record_how_far_the_index_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let index = TantivyIndex::open(dir.path()).unwrap();
        assert_eq!(index.indexed_up_to().await.unwrap(), Some(0));
        let doc = |id, number| SearchDoc {
            id,
            chat_id: 1,
            number,
            body: "hello".into(),
        };
        index.upsert(vec![doc(7, 1), doc(9, 2)]).await.unwrap();
        index.flush().await.unwrap();
        assert_eq!(index.indexed_up_to().await.unwrap(), Some(9));
        let page = PageRequest::first(10);
        assert_eq!(index.search(1, "ell", page).await.unwrap(), vec![2, 1]);
        drop(index);
        let reopened = TantivyIndex::open(dir.path()).unwrap();
        assert_eq!(reopened.indexed_up_to().await.unwrap(), Some(9));
    }

    #[tokio::test]
    async fn an_index_ahead_of_its_store_is_rebuilt_from_it() {
        use crate::store::{suite, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = suite::sqlite_store(dir.path()).await;
        let (user, _, chat) = suite::chats(&store, 1).await;
        let stored = store
            .insert_messages(&[suite::new_message(chat[0], 1, user.id, "hello there")])
            .await
            .unwrap();
        // The index also holds message 2, which the store (restored, say) does not.
        let index = TantivyIndex::open(&dir.path().join("search")).unwrap();
        let doc = |id, number, body: &str| SearchDoc {
            id,
            chat_id: chat[0],
            number,
            body: body.into(),
        };
        index
            .upsert(vec![
                doc(stored[0].id, 1, "hello there"),
                doc(stored[0].id + 1, 2, "hello ghost"),
            ])
            .await
            .unwrap();
        index.flush().await.unwrap();
        assert_eq!(crate::search::catch_up(&index, &store).await.unwrap(), 1);
        let page = PageRequest::first(10);
        assert_eq!(index.search(chat[0], "hello", page).await.unwrap(), vec![1]);
        assert!(index
            .search(chat[0], "ghost", page)
            .await
            .unwrap()
            .is_empty());
        // Number 2 stored again: the index has its new body only.
        store
            .insert_messages(&[suite::new_message(chat[0], 2, user.id, "hello again")])
            .await
            .unwrap();
        assert_eq!(crate::search::catch_up(&index, &store).await.unwrap(), 1);
        assert_eq!(
            index.search(chat[0], "hello", page).await.unwrap(),
            vec![2, 1]
        );
        assert!(index
            .search(chat[0], "ghost", page)
            .await
            .unwrap()
            .is_empty());
    }
}
