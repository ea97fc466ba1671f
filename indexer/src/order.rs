//! The search order: newest first (by `date`), ties by manifest id — a total order, so pages
//! of one query concatenate to the whole list however the index's segments are merged.
//!
//! Why not tantivy's `TopDocs` ordered by `(date, SortByString)`: to compare documents across
//! segments it turns every segment's top `k` manifest-id ordinals into strings, each a fresh
//! zstd context and a dictionary block read. That was more than half of a search's CPU (the
//! single-process bench: p50 ≈ 10 ms for 50 hits). Here each segment keeps its top `k` by
//! (date, ordinal) — within a segment ordinal order *is* string order — and strings are read
//! only to order documents of equal date from different segments.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentOrdinal, SegmentReader};

use crate::error::IndexError;

/// One candidate: the better, the smaller its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// `None` (no date) sorts after every date.
    date: Reverse<Option<i64>>,
    /// Manifest-id ordinal within the segment (`None`, no id, first).
    ord: Option<u64>,
    addr: DocAddress,
}

/// Collects the `k` first documents in search order.
#[derive(Debug, Clone, Copy)]
pub struct NewestFirst {
    k: usize,
    date_field: &'static str,
    id_field: &'static str,
}

impl NewestFirst {
    pub fn new(k: usize, date_field: &'static str, id_field: &'static str) -> NewestFirst {
        NewestFirst {
            k,
            date_field,
            id_field,
        }
    }
}

pub struct NewestFirstSegment {
    k: usize,
    segment: SegmentOrdinal,
    date: Column<i64>,
    ids: Option<StrColumn>,
    /// The best `k` so far; the worst on top, to be pushed out.
    top: BinaryHeap<Candidate>,
    /// Dates of one block of documents.
    dates: Vec<Option<i64>>,
}

impl Collector for NewestFirst {
    type Fruit = Vec<Candidate>;
    type Child = NewestFirstSegment;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<NewestFirstSegment> {
        let ff = reader.fast_fields();
        Ok(NewestFirstSegment {
            k: self.k,
            segment,
            date: ff.i64(self.date_field)?,
            ids: ff.str(self.id_field)?,
            top: BinaryHeap::with_capacity(self.k.min(4096) + 1),
            dates: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Candidate>>) -> tantivy::Result<Vec<Candidate>> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for NewestFirstSegment {
    type Fruit = Vec<Candidate>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let date = self.date.first(doc);
        self.offer(doc, date);
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        // Column reads by block are cheaper than one by one (most of a broad search).
        let mut dates = std::mem::take(&mut self.dates);
        dates.resize(docs.len(), None);
        self.date.first_vals(docs, &mut dates);
        for (&doc, &date) in docs.iter().zip(&dates) {
            self.offer(doc, date);
        }
        self.dates = dates;
    }

    fn harvest(self) -> Vec<Candidate> {
        self.top.into_sorted_vec()
    }
}

impl NewestFirstSegment {
    fn offer(&mut self, doc: DocId, date: Option<i64>) {
        if self.k == 0 {
            return;
        }
        let date = Reverse(date);
        let full = self.top.len() >= self.k;
        // Older than the worst kept: out without reading its id.
        if full && self.top.peek().is_some_and(|worst| date > worst.date) {
            return;
        }
        let c = Candidate {
            date,
            ord: self.ids.as_ref().and_then(|ids| ids.term_ords(doc).next()),
            addr: DocAddress::new(self.segment, doc),
        };
        if !full {
            self.top.push(c);
        } else if self.top.peek().is_some_and(|worst| c < *worst) {
            self.top.pop();
            self.top.push(c);
        }
    }
}

impl NewestFirst {
    /// Puts every segment's candidates (what this collector found) in search order and returns
    /// the addresses from `offset` to the `k`-th. Only runs of equal date drawn from more than
    /// one segment read their manifest ids.
    pub fn page(
        &self,
        searcher: &Searcher,
        all: Vec<Candidate>,
        offset: usize,
    ) -> Result<Vec<DocAddress>, IndexError> {
        page(searcher, self.id_field, all, offset, self.k)
    }
}

fn page(
    searcher: &Searcher,
    id_field: &str,
    mut all: Vec<Candidate>,
    offset: usize,
    k: usize,
) -> Result<Vec<DocAddress>, IndexError> {
    // By date; within one segment by ordinal; segments apart for now.
    all.sort_unstable_by(|a, b| {
        (a.date, a.addr.segment_ord, a.ord).cmp(&(b.date, b.addr.segment_ord, b.ord))
    });
    let end = k.min(all.len());
    let mut ids = Ids {
        searcher,
        field: id_field,
        columns: HashMap::new(),
    };
    let mut start = 0;
    while start < end {
        let date = all[start].date;
        let run = all[start..].iter().take_while(|c| c.date == date).count();
        let group = &mut all[start..start + run];
        let segment = group[0].addr.segment_ord;
        if group.iter().any(|c| c.addr.segment_ord != segment) {
            let mut keyed = Vec::with_capacity(group.len());
            for c in group.iter() {
                keyed.push((ids.of(c)?, c.clone()));
            }
            keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (slot, (_, c)) in group.iter_mut().zip(keyed) {
                *slot = c;
            }
        }
        start += run;
    }
    Ok(all
        .get(offset..end)
        .unwrap_or_default()
        .iter()
        .map(|c| c.addr)
        .collect())
}

/// Manifest ids of candidates, each segment's column opened once.
struct Ids<'a> {
    searcher: &'a Searcher,
    field: &'a str,
    columns: HashMap<SegmentOrdinal, Option<StrColumn>>,
}

impl Ids<'_> {
    /// `None` when the document has no id, which sorts first as within one segment.
    fn of(&mut self, c: &Candidate) -> Result<Option<String>, IndexError> {
        let Some(ord) = c.ord else {
            return Ok(None);
        };
        let seg = c.addr.segment_ord;
        let column = match self.columns.entry(seg) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(
                self.searcher
                    .segment_reader(seg)
                    .fast_fields()
                    .str(self.field)
                    .map_err(IndexError::tantivy("reading manifest ids"))?,
            ),
        };
        let Some(column) = column else {
            return Ok(None);
        };
        let mut id = String::new();
        column
            .ord_to_str(ord, &mut id)
            .map_err(|e| IndexError::Tantivy {
                what: "reading a manifest id".into(),
                source: e.into(),
            })?;
        Ok(Some(id))
    }
}
