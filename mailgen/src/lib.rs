//! Seeded generator of realistic Exchange mail.
//!
//! Everything is a pure function of [`GenConfig`] (in particular its `seed`): the same config
//! gives the same bytes on every machine and every run (the PRNG is ChaCha8, whose output
//! stream is fixed by its specification, not by the `rand` version).
//!
//! What is generated, per mailbox locale: threads of mail (RE:/FW: with `In-Reply-To`,
//! `References`, `Thread-Index`), `multipart/alternative` text + Outlook-style HTML in
//! quoted-printable or base64, `multipart/mixed` with base64 attachments (PDF-, Office- and
//! image-like binary, CSV and logs), RFC 2047 encoded headers, CRLF line endings, Exchange
//! transport headers that differ per delivered copy in front of byte-identical bodies,
//! distribution lists and Bcc, calendar items (iCalendar), contacts (vCard), tasks (VTODO),
//! sticky notes, envelope journal reports, deliberately malformed messages and optionally one
//! huge item. Folder names are the localized display names Exchange gives the well-known
//! folders (see [`well_known_folder_name`]).

mod encode;
mod generator;
mod locale;

use std::io;
use std::path::Path;

pub use locale::{
    LOCALES, WELL_KNOWN, distinguished_for_name, well_known_folder_name, well_known_folders,
};

/// What to generate. `messages` counts distinct messages sent; every message becomes several
/// items (the sender's Sent Items copy, one copy per recipient mailbox, a journal report).
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    pub domain: String,
    /// Number of user mailboxes (the journal mailbox comes on top when `journal` is set).
    pub users: usize,
    /// Number of distinct mail messages (sends); items are more because of fan-out.
    pub messages: usize,
    /// Upper bound of To + Cc + Bcc recipients of one message (at least 1).
    pub max_recipients: usize,
    /// Add a journal mailbox (`journal@domain`) holding an envelope journal report for every
    /// message.
    pub journal: bool,
    /// Attach files to some messages.
    pub attachments: bool,
    /// Calendar items, contacts, tasks and notes in every user mailbox.
    pub non_mail_items: bool,
    /// Give mailboxes different locales (en-US, de-DE, zh-CN, fr-FR, ja-JP, es-ES, round
    /// robin); otherwise every mailbox is en-US.
    pub localized: bool,
    /// Number of deliberately malformed messages (broken boundaries, bad encodings, missing
    /// headers, raw 8-bit headers, bare LF), placed in user inboxes.
    pub malformed: usize,
    /// If set, one extra message with a single attachment of about this many (raw) bytes.
    pub huge_item_bytes: Option<usize>,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            domain: "contoso.com".to_owned(),
            users: 8,
            messages: 200,
            max_recipients: 6,
            journal: true,
            attachments: true,
            non_mail_items: true,
            localized: true,
            malformed: 3,
            huge_item_bytes: None,
        }
    }
}

/// A mailbox of the generated organisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub address: String,
    pub display_name: String,
    /// `en-US`, `de-DE`, `zh-CN`, `fr-FR`, `ja-JP` or `es-ES`.
    pub locale: String,
}

/// One item in one mailbox folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedItem {
    /// SMTP address of the mailbox holding the item.
    pub mailbox: String,
    /// Folder path of localized display names from the top of the mailbox's information
    /// store, e.g. `["Posteingang", "Projekte", "Q1"]`. The first element is always a
    /// well-known folder.
    pub folder_path: Vec<String>,
    /// Distinguished folder id of `folder_path[0]` (`inbox`, `sentitems`, `deleteditems`,
    /// `junkemail`, `calendar`, `contacts`, `tasks`, `notes`, …).
    pub distinguished: Option<String>,
    /// `IPM.Note`, `IPM.Appointment`, `IPM.Contact`, `IPM.Task`, `IPM.StickyNote`
    /// (journal reports are `IPM.Note` too, as in Exchange).
    pub item_class: String,
    pub is_read: bool,
    /// The MIME content as EWS `MimeContent` would return it (CRLF line endings).
    pub mime: Vec<u8>,
}

/// A generated organisation: its mailboxes and every item in them, in generation order.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    pub mailboxes: Vec<Mailbox>,
    pub items: Vec<GeneratedItem>,
}

impl Corpus {
    /// Total MIME bytes of all items.
    pub fn total_bytes(&self) -> usize {
        self.items.iter().map(|i| i.mime.len()).sum()
    }
}

/// Generates an organisation's mailboxes and items; deterministic in `cfg`.
pub fn generate(cfg: &GenConfig) -> Corpus {
    generator::generate(cfg)
}

/// One message sent to `recipients` mailboxes: the sender's Sent Items copy, one Inbox copy
/// per recipient (each with its own transport headers — `Received`,
/// `X-MS-Exchange-Organization-*`, `Return-Path` — in front of byte-identical body and
/// attachments), and (if `journal`) one envelope journal report in the journal mailbox that
/// wraps the original as a `message/rfc822` attachment. With `attachment_bytes > 0` the
/// message carries one binary attachment of exactly that many raw bytes.
///
/// Items come in that order: Sent Items copy, the `recipients` Inbox copies, the report.
pub fn fanout(
    seed: u64,
    recipients: usize,
    attachment_bytes: usize,
    journal: bool,
) -> Vec<GeneratedItem> {
    generator::fanout(seed, recipients, attachment_bytes, journal)
}

/// Writes a corpus as `<local-part>/<folder>[/<sub>…]/<n>.` — one message per file, numbered
/// from 1 per folder in generation order — the layout of the shared development corpus.
pub fn write_maildir(corpus: &Corpus, dir: &Path) -> io::Result<()> {
    use std::collections::HashMap;
    let mut counters: HashMap<std::path::PathBuf, usize> = HashMap::new();
    for item in &corpus.items {
        let local = item.mailbox.split('@').next().unwrap_or(&item.mailbox);
        let mut folder = dir.join(sanitize(local));
        for part in &item.folder_path {
            folder.push(sanitize(part));
        }
        let n = counters.entry(folder.clone()).or_insert(0);
        if *n == 0 {
            std::fs::create_dir_all(&folder)?;
        }
        *n += 1;
        std::fs::write(folder.join(format!("{n}.")), &item.mime)?;
    }
    Ok(())
}

/// File-system safe folder name: path separators and NUL replaced; `.`/`..` avoided.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        format!("_{s}")
    } else {
        s
    }
}

/// Splits a MIME message at the first empty line: `(header block, body)`. The header block
/// includes its final line break; `None` when there is no empty line.
pub fn split_header_body(mime: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = memfind(mime, b"\r\n\r\n").map(|i| (i + 2, i + 4));
    let lf = memfind(mime, b"\n\n").map(|i| (i + 1, i + 2));
    let (h, b) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (a, b) => a.or(b)?,
    };
    Some((&mime[..h], &mime[b..]))
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests;
