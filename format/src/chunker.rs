//! Mail-aware content-defined chunking.
//!
//! Exchange keeps one sent message as many copies: the sender's Sent Items, every recipient's
//! Inbox, a journal report. Each copy has its own transport headers in front of the same body
//! and attachments. Plain CDC with large chunks sees one unique chunk per small message; so the
//! chunker first cuts at MIME structure — after each header block, before each part delimiter
//! (including the CRLF that RFC 2046 makes part of the delimiter) — and then runs FastCDC (2020)
//! inside the pieces. The body of every copy then starts a fresh chunk and dedupes. Structural
//! cuts closer than `min_segment` to the previous cut are skipped so tiny part headers do not
//! become chunks of their own. Memory stays bounded by `max_size` plus one push.

use std::collections::VecDeque;

use crate::error::{FormatError, Result};

/// Chunking parameters; stored in the repository config so every writer cuts the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    pub mail_aware: bool,
    pub min_segment: u32,
}

impl Default for ChunkerParams {
    /// 16/64/256 KiB: most mail is smaller than the minimum, so content-defined cuts only matter
    /// inside attachments, where 64 KiB keeps the index small (docs/format.md, "Chunking").
    fn default() -> Self {
        ChunkerParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
            mail_aware: true,
            min_segment: 256,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        let ok = self.min_size >= fastcdc::v2020::MINIMUM_MIN
            && self.min_size <= fastcdc::v2020::MINIMUM_MAX
            && self.avg_size >= fastcdc::v2020::AVERAGE_MIN
            && self.avg_size <= fastcdc::v2020::AVERAGE_MAX
            && self.max_size >= fastcdc::v2020::MAXIMUM_MIN
            && self.max_size <= fastcdc::v2020::MAXIMUM_MAX
            && self.min_size < self.avg_size
            && self.avg_size < self.max_size;
        if ok {
            Ok(())
        } else {
            Err(FormatError::Invalid(format!(
                "chunker sizes must satisfy FastCDC's limits and min < avg < max: {self:?}"
            )))
        }
    }
}

/// Header lines longer than this are scanned as fragments, so a hostile message without line
/// breaks cannot grow the buffer.
const MAX_LINE: usize = 64 * 1024;
/// Remembered MIME boundaries per item; more than this many are ignored (no cuts, no harm).
const MAX_BOUNDARIES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
}

/// Finds structural cut points in a MIME message, line by line, across pushes.
#[derive(Debug)]
struct MimeScanner {
    state: State,
    mid_line: bool,
    nested_message: bool,
    boundaries: Vec<Vec<u8>>,
}

impl MimeScanner {
    fn new() -> Self {
        MimeScanner {
            state: State::Header,
            mid_line: false,
            nested_message: false,
            boundaries: Vec::new(),
        }
    }

    /// Scans `data` (which starts at absolute offset `base`) from relative `pos`; pushes cut
    /// points; returns the relative position up to which scanning is complete.
    fn scan(
        &mut self,
        data: &[u8],
        base: u64,
        mut pos: usize,
        last: bool,
        cuts: &mut VecDeque<u64>,
    ) -> usize {
        let end = data.len();
        while pos < end {
            match self.state {
                State::Header => {
                    let (line_end, complete) = match memchr::memchr(b'\n', &data[pos..]) {
                        Some(i) => (pos + i + 1, true),
                        None if last || end - pos > MAX_LINE => (end, false),
                        None => return pos,
                    };
                    let line = &data[pos..line_end];
                    if !self.mid_line && (line == b"\n" || line == b"\r\n") {
                        cuts.push_back(base + line_end as u64);
                        if self.nested_message {
                            self.nested_message = false;
                        } else {
                            self.state = State::Body;
                        }
                    } else {
                        self.note_header_line(line);
                    }
                    self.mid_line = !complete;
                    pos = line_end;
                }
                State::Body => {
                    if self.boundaries.is_empty() {
                        return end;
                    }
                    let Some(i) = memchr::memmem::find(&data[pos..], b"\n--").map(|i| pos + i)
                    else {
                        // Keep the last two bytes: "\n-" may continue in the next push.
                        return if last {
                            end
                        } else {
                            pos.max(end.saturating_sub(2))
                        };
                    };
                    let ls = i + 1;
                    let line_end = match memchr::memchr(b'\n', &data[ls..]) {
                        Some(j) => ls + j + 1,
                        None if last || end - ls > 1024 => end,
                        None => return i,
                    };
                    let line = &data[ls..line_end];
                    match self.delimiter(line) {
                        Some(closing) => {
                            let cut = if i > 0 && data[i - 1] == b'\r' {
                                i - 1
                            } else {
                                i
                            };
                            cuts.push_back(base + cut as u64);
                            if !closing {
                                self.state = State::Header;
                                self.mid_line = false;
                            }
                            pos = line_end;
                        }
                        None => pos = ls,
                    }
                }
            }
        }
        pos
    }

    fn note_header_line(&mut self, line: &[u8]) {
        if contains_ci(line, b"message/rfc822") {
            self.nested_message = true;
        }
        if let Some(i) = find_ci(line, b"boundary=") {
            let rest = &line[i + 9..];
            let value: &[u8] = if let Some(q) = rest.strip_prefix(b"\"") {
                &q[..memchr::memchr(b'"', q).unwrap_or(q.len())]
            } else {
                let n = rest
                    .iter()
                    .position(|&b| b == b';' || b == b'\r' || b == b'\n' || b == b' ' || b == b'\t')
                    .unwrap_or(rest.len());
                &rest[..n]
            };
            if !value.is_empty() && value.len() <= 200 && self.boundaries.len() < MAX_BOUNDARIES {
                let mut b = b"--".to_vec();
                b.extend_from_slice(value);
                if !self.boundaries.contains(&b) {
                    self.boundaries.push(b);
                }
            }
        }
    }

    /// `Some(closing)` when `line` is a delimiter of a known boundary.
    fn delimiter(&self, line: &[u8]) -> Option<bool> {
        for b in &self.boundaries {
            if let Some(rest) = line.strip_prefix(b.as_slice()) {
                if rest.starts_with(b"--") {
                    return Some(true);
                }
                if rest
                    .iter()
                    .all(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
                {
                    return Some(false);
                }
            }
        }
        None
    }
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    find_ci(hay, needle).is_some()
}

/// A streaming chunker for one item: push bytes, receive chunks, then finish.
#[derive(Debug)]
pub struct Chunker {
    params: ChunkerParams,
    buf: Vec<u8>,
    /// Live data is `buf[head..]`; it starts at absolute offset `base`.
    head: usize,
    base: u64,
    /// Absolute offset up to which the MIME scan has looked.
    scanned: u64,
    cuts: VecDeque<u64>,
    scanner: Option<MimeScanner>,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        Chunker {
            params,
            buf: Vec::new(),
            head: 0,
            base: 0,
            scanned: 0,
            cuts: VecDeque::new(),
            scanner: params.mail_aware.then(MimeScanner::new),
        }
    }

    /// Feeds bytes; calls `out` with each chunk that is now final.
    pub fn push(&mut self, mut data: &[u8], out: &mut impl FnMut(&[u8])) {
        let step = self.params.max_size as usize;
        while !data.is_empty() {
            let n = data.len().min(step);
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.run(false, out);
        }
    }

    /// Emits the remaining chunks; the chunker is ready for the next item afterwards.
    pub fn finish(&mut self, out: &mut impl FnMut(&[u8])) {
        self.run(true, out);
        *self = Chunker::new(self.params);
    }

    fn run(&mut self, last: bool, out: &mut impl FnMut(&[u8])) {
        let live_end = self.base + (self.buf.len() - self.head) as u64;
        match &mut self.scanner {
            Some(sc) => {
                let rel = (self.scanned - self.base) as usize;
                let done = sc.scan(&self.buf[self.head..], self.base, rel, last, &mut self.cuts);
                self.scanned = self.base + done as u64;
            }
            None => self.scanned = live_end,
        }
        let (min, avg, max) = (
            self.params.min_size,
            self.params.avg_size,
            self.params.max_size,
        );
        loop {
            let live = &self.buf[self.head..];
            if live.is_empty() {
                break;
            }
            while let Some(&c) = self.cuts.front() {
                if c - self.base < u64::from(self.params.min_segment) {
                    self.cuts.pop_front();
                } else {
                    break;
                }
            }
            let seg_end = self.cuts.front().map(|&c| (c - self.base) as usize);
            let (limit, complete) = match seg_end {
                Some(e) => (e, true),
                None if last => (live.len(), true),
                None => ((self.scanned - self.base) as usize, false),
            };
            if !complete && limit < max as usize {
                break;
            }
            let window = if complete {
                &live[..limit]
            } else {
                &live[..max as usize]
            };
            let n = fastcdc::v2020::FastCDC::new(window, min, avg, max)
                .next()
                .map_or(window.len(), |c| c.length);
            out(&live[..n]);
            self.head += n;
            self.base += n as u64;
            if seg_end == Some(n) {
                self.cuts.pop_front();
            }
        }
        if self.head > 0 && (self.head >= self.buf.len() / 2 || self.head > 1 << 20) {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }
}

/// Chunks a whole item in memory (tests, benchmarks).
pub fn chunk_all(params: ChunkerParams, data: &[u8]) -> Vec<Vec<u8>> {
    let mut c = Chunker::new(params);
    let mut v = Vec::new();
    c.push(data, &mut |ch| v.push(ch.to_vec()));
    c.finish(&mut |ch| v.push(ch.to_vec()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
            mail_aware: true,
            min_segment: 64,
        }
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    fn message(headers: &str, body: &[u8]) -> Vec<u8> {
        let mut m = headers.replace('\n', "\r\n").into_bytes();
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(body);
        m
    }

    fn mime_body() -> Vec<u8> {
        let mut b = b"--XYZ\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        b.extend(
            std::iter::repeat_n(b"The quarterly report is attached. ".as_slice(), 40).flatten(),
        );
        b.extend_from_slice(b"\r\n--XYZ\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        b.extend_from_slice(&noise(20_000, 3));
        b.extend_from_slice(b"\r\n--XYZ--\r\n");
        b
    }

    #[test]
    fn copies_with_different_headers_share_body_chunks() {
        let body = mime_body();
        let a = message(
            "Received: from a\nFrom: x@y\nSubject: Report\nContent-Type: multipart/mixed; boundary=\"XYZ\"\n",
            &body,
        );
        let b = message(
            "Received: from mx2.example.org by mbx7 with smtp id 42\nX-MS-Exchange-Organization-AuthAs: Internal\nFrom: x@y\nSubject: Report\nContent-Type: multipart/mixed; boundary=\"XYZ\"\n",
            &body,
        );
        let ca = chunk_all(small(), &a);
        let cb = chunk_all(small(), &b);
        assert_eq!(ca.concat(), a);
        assert_eq!(cb.concat(), b);
        assert_ne!(ca[0], cb[0], "headers differ");
        let shared: usize = ca[1..]
            .iter()
            .filter(|c| cb.contains(c))
            .map(Vec::len)
            .sum();
        assert!(
            shared >= body.len() - 32,
            "only {shared} of {} body bytes shared",
            body.len()
        );
    }

    #[test]
    fn a_message_inside_a_journal_report_shares_its_body() {
        let body = mime_body();
        let original = message(
            "From: x@y\nSubject: Report\nContent-Type: multipart/mixed; boundary=\"XYZ\"\n",
            &body,
        );
        let mut jbody = b"--JJ\r\nContent-Type: text/plain\r\n\r\nSender: x@y\r\nTo: a@b\r\n\r\n--JJ\r\nContent-Type: message/rfc822\r\n\r\n".to_vec();
        jbody.extend_from_slice(&original);
        jbody.extend_from_slice(b"\r\n--JJ--\r\n");
        let journal = message(
            "X-MS-Journal-Report:\nContent-Type: multipart/mixed; boundary=\"JJ\"\n",
            &jbody,
        );
        let co = chunk_all(small(), &original);
        let cj = chunk_all(small(), &journal);
        assert_eq!(cj.concat(), journal);
        let shared: usize = co.iter().filter(|c| cj.contains(c)).map(Vec::len).sum();
        assert!(
            shared >= body.len() - 64,
            "only {shared} of {} body bytes shared",
            body.len()
        );
    }

    #[test]
    fn hostile_input_without_newlines_is_bounded() {
        let mut c = Chunker::new(small());
        let data = vec![b'a'; 1 << 20];
        let mut total = 0;
        let mut biggest = 0;
        c.push(&data, &mut |ch| {
            total += ch.len();
            biggest = biggest.max(ch.len());
        });
        c.finish(&mut |ch| total += ch.len());
        assert_eq!(total, data.len());
        assert!(biggest <= 4096);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn chunks_concatenate_to_the_input(data in proptest::collection::vec(any::<u8>(), 0..40_000), mail in any::<bool>(), split in 1usize..5000) {
            let p = ChunkerParams { mail_aware: mail, ..small() };
            let whole = chunk_all(p, &data);
            prop_assert_eq!(whole.concat(), data.clone());
            for c in &whole {
                prop_assert!(c.len() <= p.max_size as usize);
            }
            // Pushing in arbitrary pieces gives the same chunks.
            let mut c = Chunker::new(p);
            let mut pieces = Vec::new();
            for part in data.chunks(split) {
                c.push(part, &mut |ch| pieces.push(ch.to_vec()));
            }
            c.finish(&mut |ch| pieces.push(ch.to_vec()));
            prop_assert_eq!(pieces, whole);
        }

        /// What content-defined chunking guarantees: once a cut after the insertion
        /// falls at the same content position in both versions, every later cut does too,
        /// because a cut depends only on the bytes since the previous cut.
        #[test]
        fn cuts_stay_aligned_once_they_coincide_after_an_insertion(seed in any::<u64>(), at in 0usize..30_000, ins in proptest::collection::vec(any::<u8>(), 1..200)) {
            let p = ChunkerParams { mail_aware: false, ..small() };
            let data = noise(60_000, seed);
            let (a, b) = cuts_around_insertion(p, &data, at, &ins);
            if let Some(first) = a.iter().find(|c| b.contains(c)) {
                let after_a: Vec<_> = a.iter().filter(|c| *c >= first).collect();
                let after_b: Vec<_> = b.iter().filter(|c| *c >= first).collect();
                prop_assert_eq!(after_a, after_b, "cuts diverge again after re-aligning at {}", first);
            }
        }
    }

    /// Cut positions after the insertion point, in the original's coordinates, for the
    /// original and for the edited copy.
    fn cuts_around_insertion(
        p: ChunkerParams,
        data: &[u8],
        at: usize,
        ins: &[u8],
    ) -> (Vec<usize>, Vec<usize>) {
        let mut edited = data[..at].to_vec();
        edited.extend_from_slice(ins);
        edited.extend_from_slice(&data[at..]);
        let ends = |chunks: Vec<Vec<u8>>| {
            let mut pos = 0;
            chunks
                .into_iter()
                .map(|c| {
                    pos += c.len();
                    pos
                })
                .collect::<Vec<_>>()
        };
        let a = ends(chunk_all(p, data))
            .into_iter()
            .filter(|&e| e > at)
            .collect();
        let b = ends(chunk_all(p, &edited))
            .into_iter()
            .filter(|&e| e > at + ins.len())
            .map(|e| e - ins.len())
            .collect();
        (a, b)
    }

    /// How fast the cuts re-align is a matter of probability, not a bound, so it is measured
    /// over a fixed set of inputs (deterministic) rather than asserted per random case: a
    /// bound per case fails for an unlucky seed now and then.
    #[test]
    fn boundaries_resynchronise_soon_after_an_insertion() {
        let p = ChunkerParams {
            mail_aware: false,
            ..small()
        };
        let mut distances = Vec::new();
        for seed in 0..200u64 {
            let data = noise(60_000, seed);
            let at = (seed as usize * 7_919) % 30_000;
            let ins = noise(1 + (seed as usize % 199), !seed);
            let (a, b) = cuts_around_insertion(p, &data, at, &ins);
            let first = a.iter().find(|c| b.contains(c)).copied();
            distances.push(first.map_or(usize::MAX, |f| f - at));
        }
        distances.sort_unstable();
        let median = distances[distances.len() / 2];
        let p95 = distances[distances.len() * 95 / 100];
        assert!(
            distances.iter().all(|&d| d != usize::MAX),
            "some insertion never re-synchronised"
        );
        assert!(
            median <= 2 * p.max_size as usize,
            "median re-sync after {median} bytes"
        );
        assert!(
            p95 <= 4 * p.max_size as usize,
            "95th percentile re-sync after {p95} bytes"
        );
    }
}
