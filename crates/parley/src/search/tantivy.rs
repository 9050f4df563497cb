//! tantivy adapter, the embedded default: an index in the data directory.
//!
//! Parts of words: each distinct word of a body is indexed with all its substrings up to
//! `MAX_GRAM` characters (a word n-gram filter per word, which tantivy's whole-text
//! `NgramTokenizer` is not), so a query word is one term lookup. A longer query word must
//! match all its `MAX_GRAM`-grams.

use super::{words, SearchDoc, SearchIndex};
use crate::domain::PageRequest;
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};
use tantivy::{doc, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Term};

const MAX_GRAM: usize = 12;
const GRAMS: &str = "parley_grams";
const WRITER_HEAP: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    chat: Field,
    number: Field,
    grams: Field,
}

pub struct TantivyIndex {
    fields: Fields,
    writer: Arc<Mutex<IndexWriter>>,
    reader: IndexReader,
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
        let grams = schema.add_text_field("grams", grams_options);
        let schema = schema.build();

        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, schema)
            .context("opening the search index (run `parley reindex` if its schema changed)")?;
        index
            .tokenizers()
            .register(GRAMS, TextAnalyzer::from(WhitespaceTokenizer::default()));
        let writer = index.writer(WRITER_HEAP)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            fields: Fields {
                key,
                chat,
                number,
                grams,
            },
            writer: Arc::new(Mutex::new(writer)),
            reader,
        })
    }
}

fn doc_key(chat_id: i64, number: i64) -> String {
    format!("{chat_id}:{number}")
}

/// Every substring of up to MAX_GRAM characters of every distinct word, space-separated.
fn grams_of(body: &str) -> String {
    let mut grams = BTreeSet::new();
    for word in words(body) {
        let chars: Vec<char> = word.chars().collect();
        for start in 0..chars.len() {
            for end in start + 1..=chars.len().min(start + MAX_GRAM) {
                grams.insert(chars[start..end].iter().collect::<String>());
            }
        }
    }
    grams.into_iter().collect::<Vec<_>>().join(" ")
}

/// The terms a query word must all match.
fn terms_of(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    if chars.len() <= MAX_GRAM {
        return vec![word.to_owned()];
    }
    chars
        .windows(MAX_GRAM)
        .map(|w| w.iter().collect())
        .collect()
}

#[async_trait]
impl SearchIndex for TantivyIndex {
    async fn upsert(&self, docs: Vec<SearchDoc>) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let writer = self.writer.clone();
        let f = self.fields;
        // Indexing and commit block (CPU and fsync): keep them off the async workers.
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut writer = writer.lock().unwrap();
            for d in docs {
                let key = doc_key(d.chat_id, d.number);
                writer.delete_term(Term::from_field_text(f.key, &key));
                writer.add_document(doc!(
                    f.key => key,
                    f.chat => d.chat_id,
                    f.number => d.number,
                    f.grams => grams_of(&d.body),
                ))?;
            }
            writer.commit()?;
            Ok(())
        })
        .await??;
        self.reader.reload()?;
        Ok(())
    }

    async fn search(&self, chat_id: i64, query: &str, page: PageRequest) -> Result<Vec<i64>> {
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_i64(f.chat, chat_id),
                IndexRecordOption::Basic,
            )),
        )];
        let mut any_word = false;
        for word in words(query) {
            any_word = true;
            for term in terms_of(&word) {
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(f.grams, &term),
                        IndexRecordOption::Basic,
                    )),
                ));
            }
        }
        if !any_word {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let collector = TopDocs::with_limit(page.limit as usize)
            .and_offset(page.offset as usize)
            .order_by_fast_field::<i64>("number", Order::Desc);
        let hits = tokio::task::spawn_blocking(move || {
            searcher.search(&BooleanQuery::new(clauses), &collector)
        })
        .await??;
        Ok(hits.into_iter().map(|(number, _)| number).collect())
    }

    async fn clear(&self) -> Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut writer = writer.lock().unwrap();
            writer.delete_all_documents()?;
            writer.commit()?;
            Ok(())
        })
        .await??;
        self.reader.reload()?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grams_cover_parts_of_words() {
        let grams = grams_of("Hello, hello World");
        let set: Vec<&str> = grams.split(' ').collect();
        for part in ["h", "hel", "ell", "hello", "orl", "world"] {
            assert!(set.contains(&part), "{part}");
        }
        assert!(!set.contains(&"hello world"));
    }

    #[test]
    fn long_query_words_need_every_window() {
        assert_eq!(terms_of("short"), vec!["short"]);
        assert_eq!(terms_of("abcdefghijklmn").len(), 3);
    }
}
