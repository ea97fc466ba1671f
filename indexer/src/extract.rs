//! MIME → document fields, with mail-parser 0.11.
//!
//! Never fails: a message that cannot be read completely yields what could be read, with
//! `parse_error` naming the problems. Work is bounded: at most [`MAX_PARSE_BYTES`] of an item
//! are parsed and at most [`MAX_BODY_BYTES`] of body text are kept for full text.

use std::borrow::Cow;
use std::sync::LazyLock;

use mail_parser::{
    Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};

use crate::journal;

/// Body text kept for full-text search per item.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of an item handed to the MIME parser; the rest (almost always attachment data) is
/// not looked at. Items larger than this get `truncated` set.
pub const MAX_PARSE_BYTES: usize = 32 * 1024 * 1024;
/// Attachments listed per item.
const MAX_ATTACHMENTS: usize = 256;
/// Addresses kept per address field.
const MAX_ADDRESSES: usize = 1000;

/// Parses the headers extraction reads, the rest as raw text. mail-parser's default fully
/// parses every registered header, and the `Received` trace fields alone (several per message,
/// each tokenized, never read here) were the biggest part of its cost.
static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .with_date_headers()
        .with_address_headers()
        .with_message_ids()
        .header_text(HeaderName::Subject)
        .ignore_header(HeaderName::Received)
        .default_header_raw()
});

/// A mailbox address: lower-cased SMTP address and display name.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Party {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub address: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AttachmentInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub content_type: String,
    /// Decoded size in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

/// What a journal report adds to the original message it wraps.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct JournalInfo {
    /// Sender and every listed recipient, lower-cased, sorted, unique.
    #[prost(string, repeated, tag = "1")]
    pub visible_to: Vec<String>,
    /// Byte range of the original message inside the stored report.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(uint64, tag = "3")]
    pub len: u64,
    /// Recipients the envelope lists as Bcc (not visible in the original's headers).
    #[prost(string, repeated, tag = "4")]
    pub bcc: Vec<String>,
}

/// The searchable content of one item version. Also kept (prost-encoded) in the index so that
/// a history change can re-add the version's documents without reading the repository.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extracted {
    #[prost(message, repeated, tag = "1")]
    pub from: Vec<Party>,
    #[prost(message, repeated, tag = "2")]
    pub to: Vec<Party>,
    #[prost(message, repeated, tag = "3")]
    pub cc: Vec<Party>,
    #[prost(message, repeated, tag = "4")]
    pub bcc: Vec<Party>,
    #[prost(string, tag = "5")]
    pub subject: String,
    /// From the Date header, if it could be read.
    #[prost(int64, optional, tag = "6")]
    pub date_unix_ms: Option<i64>,
    #[prost(string, tag = "7")]
    pub message_id: String,
    #[prost(string, repeated, tag = "8")]
    pub in_reply_to: Vec<String>,
    #[prost(string, repeated, tag = "9")]
    pub references: Vec<String>,
    #[prost(message, repeated, tag = "10")]
    pub attachments: Vec<AttachmentInfo>,
    /// `high`, `normal` or `low`.
    #[prost(string, tag = "11")]
    pub importance: String,
    /// text/plain parts and text extracted from HTML parts, at most [`MAX_BODY_BYTES`].
    #[prost(string, tag = "12")]
    pub body: String,
    /// Body text or the parsed prefix was cut.
    #[prost(bool, tag = "13")]
    pub truncated: bool,
    #[prost(string, optional, tag = "14")]
    pub parse_error: Option<String>,
    #[prost(message, optional, tag = "15")]
    pub journal: Option<JournalInfo>,
    /// The index stored this record without `body` (mail text stays encrypted in the
    /// repository, never in clear on the index's disk); it is extracted again from the
    /// repository when the item's documents are rewritten.
    #[prost(bool, tag = "16")]
    pub body_at_rest_omitted: bool,
}

impl Extracted {
    pub fn has_attachment(&self) -> bool {
        !self.attachments.is_empty()
    }
}

/// Extracts the fields of an item. Journal reports are unwrapped: the fields are the original
/// message's, and `journal` carries the envelope's recipients and the original's byte range.
pub fn extract(mime: &[u8]) -> Extracted {
    extract_item(mime, true)
}

/// [`extract`], unwrapping a journal report only when `unwrap_journal` (the item lives in a
/// journal mailbox): anyone can send a message with an `X-MS-Journal-Report` header, and an
/// unwrapped report makes its item visible to everyone its envelope lists.
pub fn extract_item(mime: &[u8], unwrap_journal: bool) -> Extracted {
    let (input, truncated) = if mime.len() > MAX_PARSE_BYTES {
        (&mime[..MAX_PARSE_BYTES], true)
    } else {
        (mime, false)
    };
    let Some(msg) = PARSER.parse(input) else {
        return Extracted {
            truncated,
            parse_error: Some("not a MIME message: no header could be parsed".into()),
            ..Default::default()
        };
    };
    if unwrap_journal
        && journal::is_journal_report(&msg)
        && let Some(j) = journal::unwrap(&msg, input)
    {
        let start = j.offset as usize;
        let original = &input[start..start + j.len as usize];
        let mut e = extract_message(original, false);
        let mut problems: Vec<String> = e.parse_error.take().into_iter().collect();
        problems.extend(j.problems);
        e.parse_error = (!problems.is_empty()).then(|| problems.join("; "));
        let known: std::collections::HashSet<String> =
            e.bcc.iter().map(|p| p.address.clone()).collect();
        for b in &j.bcc {
            if !known.contains(b) {
                e.bcc.push(Party {
                    name: String::new(),
                    address: b.clone(),
                });
            }
        }
        e.truncated |= truncated;
        e.journal = Some(JournalInfo {
            visible_to: j.visible_to,
            offset: j.offset,
            len: j.len,
            bcc: j.bcc,
        });
        return e;
    }
    let mut e = fields_of(&msg, input);
    e.truncated |= truncated;
    e
}

fn extract_message(mime: &[u8], _journal: bool) -> Extracted {
    match PARSER.parse(mime) {
        Some(m) => fields_of(&m, mime),
        None => Extracted {
            parse_error: Some("embedded message: no header could be parsed".into()),
            ..Default::default()
        },
    }
}

fn fields_of(msg: &Message<'_>, raw: &[u8]) -> Extracted {
    let mut problems = Vec::new();
    let mut e = Extracted {
        from: parties(msg.from()),
        to: parties(msg.to()),
        cc: parties(msg.cc()),
        bcc: parties(msg.bcc()),
        subject: msg.subject().unwrap_or_default().trim().to_owned(),
        message_id: msg.message_id().unwrap_or_default().to_owned(),
        in_reply_to: id_list(msg.in_reply_to()),
        references: id_list(msg.references()),
        importance: importance(msg),
        ..Default::default()
    };
    if e.from.is_empty()
        && let Some(s) = msg.sender()
    {
        e.from = parties(Some(s));
    }
    match msg.date() {
        Some(d) if d.is_valid() => e.date_unix_ms = Some(d.to_timestamp().saturating_mul(1000)),
        Some(_) => problems.push("Date header is not a valid date".to_owned()),
        None => {
            if header_present(msg, "Date") {
                problems.push("Date header is not a valid date".to_owned());
            }
        }
    }
    if msg.headers().is_empty() {
        problems.push("no header fields".to_owned());
    } else if !header_present(msg, "From")
        && !header_present(msg, "Sender")
        && !header_present(msg, "Date")
    {
        problems.push("no From and no Date header".to_owned());
    }
    check_structure(msg, raw, &mut problems);
    e.body = body_text(msg, &mut e.truncated);
    for part in msg.attachments() {
        if e.attachments.len() >= MAX_ATTACHMENTS {
            break;
        }
        let content_type = part
            .content_type()
            .map(|ct| match &ct.c_subtype {
                Some(s) => format!("{}/{}", ct.c_type, s),
                None => ct.c_type.to_string(),
            })
            .unwrap_or_default()
            .to_ascii_lowercase();
        let name = match (part.attachment_name(), &part.body) {
            (Some(n), _) => n.to_owned(),
            (None, PartType::Message(m)) => m.subject().unwrap_or_default().to_owned(),
            (None, _) => String::new(),
        };
        // Unnamed parts that are not marked as attachments (inline logos, the iCalendar or
        // vCard body of a calendar item or contact) are not attachments to a user.
        let disposition_attachment = part
            .content_disposition()
            .is_some_and(|d| d.c_type.eq_ignore_ascii_case("attachment"));
        if name.is_empty() && !disposition_attachment && !matches!(part.body, PartType::Message(_))
        {
            continue;
        }
        e.attachments.push(AttachmentInfo {
            name,
            content_type,
            size: part.contents().len() as u64,
        });
    }
    if !problems.is_empty() {
        problems.dedup();
        e.parse_error = Some(problems.join("; "));
    }
    e
}

fn header_present(msg: &Message<'_>, name: &str) -> bool {
    msg.headers()
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case(name))
}

/// mail-parser is lenient; these checks find what it silently repaired.
fn check_structure(msg: &Message<'_>, raw: &[u8], problems: &mut Vec<String>) {
    // Raw 8-bit bytes that are not UTF-8 in the top-level header block.
    let head_end = msg.root_part().offset_body as usize;
    if let Some(head) = raw.get(..head_end.min(raw.len()))
        && std::str::from_utf8(head).is_err()
    {
        problems.push("header contains raw 8-bit bytes that are not UTF-8".to_owned());
    }
    for (i, part) in msg.parts.iter().enumerate() {
        if part.is_encoding_problem {
            problems.push(format!("part {i}: content could not be decoded"));
        }
        if part
            .content_transfer_encoding()
            .is_some_and(|c| c.eq_ignore_ascii_case("quoted-printable"))
        {
            let body = raw
                .get(part.offset_body as usize..part.offset_end as usize)
                .unwrap_or(&[]);
            if !valid_quoted_printable(body) {
                problems.push(format!("part {i}: invalid quoted-printable"));
            }
        }
        let Some(ct) = part.content_type() else {
            continue;
        };
        if !ct.c_type.eq_ignore_ascii_case("multipart") {
            continue;
        }
        match ct.attribute("boundary") {
            None => problems.push(format!("part {i}: multipart without a boundary parameter")),
            Some(b) => {
                let open = format!("--{b}");
                let close = format!("--{b}--");
                let body = raw
                    .get(part.offset_body as usize..part.offset_end as usize)
                    .unwrap_or(&[]);
                if memchr::memmem::find(body, open.as_bytes()).is_none() {
                    problems.push(format!("part {i}: boundary {b:?} never occurs"));
                } else if memchr::memmem::find(body, close.as_bytes()).is_none() {
                    problems.push(format!("part {i}: multipart {b:?} is not terminated"));
                }
            }
        }
    }
    if std::str::from_utf8(raw).is_err() && !problems.iter().any(|p| p.contains("8-bit")) {
        // Invalid UTF-8 inside a part declared as UTF-8 text.
        for part in &msg.parts {
            let declared_utf8 = part
                .content_type()
                .and_then(|ct| ct.attribute("charset"))
                .is_some_and(|c| c.eq_ignore_ascii_case("utf-8"));
            if declared_utf8 && matches!(part.body, PartType::Text(_)) {
                let bytes = raw
                    .get(part.offset_body as usize..part.offset_end as usize)
                    .unwrap_or(&[]);
                let plain = part.content_transfer_encoding().is_none();
                if plain && std::str::from_utf8(bytes).is_err() {
                    problems.push("text declared UTF-8 contains invalid UTF-8".to_owned());
                    break;
                }
            }
        }
    }
}

/// Every `=` starts a soft line break or two hex digits.
fn valid_quoted_printable(body: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'=', &body[i..]) {
        let at = i + p;
        let rest = &body[at + 1..];
        let ok = rest.is_empty()
            || rest.starts_with(b"\r\n")
            || rest.starts_with(b"\n")
            || (rest.len() >= 2 && rest[0].is_ascii_hexdigit() && rest[1].is_ascii_hexdigit());
        if !ok {
            // Trailing whitespace before a soft line break is allowed too.
            let ws = rest
                .iter()
                .take_while(|b| **b == b' ' || **b == b'\t')
                .count();
            let after = &rest[ws..];
            if !(after.starts_with(b"\r\n") || after.starts_with(b"\n") || after.is_empty()) {
                return false;
            }
        }
        i = at + 1;
    }
    true
}

fn body_text(msg: &Message<'_>, truncated: &mut bool) -> String {
    let mut out = String::new();
    let mut push = |s: &str, out: &mut String| {
        if out.len() >= MAX_BODY_BYTES {
            *truncated = true;
            return;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let room = MAX_BODY_BYTES - out.len();
        if s.len() > room {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&s[..cut]);
            *truncated = true;
        } else {
            out.push_str(s);
        }
    };
    let mut any = false;
    for part in msg.text_bodies() {
        any = true;
        match &part.body {
            PartType::Text(t) => push(t, &mut out),
            PartType::Html(h) => push(&html_text(h), &mut out),
            _ => {}
        }
    }
    if !any {
        for part in msg.html_bodies() {
            if let PartType::Html(h) = &part.body {
                push(&html_text(h), &mut out);
            }
        }
    }
    out
}

fn html_text(html: &str) -> String {
    // Bound the converter's work too: HTML beyond 4× the text cap is not looked at.
    let limit = MAX_BODY_BYTES * 4;
    let html = if html.len() > limit {
        let mut cut = limit;
        while !html.is_char_boundary(cut) {
            cut -= 1;
        }
        &html[..cut]
    } else {
        html
    };
    mail_parser::decoders::html::html_to_text(html)
}

fn parties(a: Option<&Address<'_>>) -> Vec<Party> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .take(MAX_ADDRESSES)
        .filter_map(|addr| {
            let address = addr.address().unwrap_or_default().trim().to_lowercase();
            let name = addr.name().unwrap_or_default().trim().to_owned();
            (!address.is_empty() || !name.is_empty()).then_some(Party { name, address })
        })
        .collect()
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn importance(msg: &Message<'_>) -> String {
    let raw = |name: &str| {
        msg.headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .and_then(|h| match h.value() {
                HeaderValue::Text(t) => Some(t.trim().to_ascii_lowercase()),
                _ => None,
            })
    };
    if let Some(i) = raw("Importance") {
        if i.starts_with("high") {
            return "high".into();
        }
        if i.starts_with("low") {
            return "low".into();
        }
    }
    if let Some(p) = raw("X-Priority") {
        match p.chars().next() {
            Some('1' | '2') => return "high".into(),
            Some('4' | '5') => return "low".into(),
            _ => {}
        }
    }
    "normal".into()
}

/// The search terms of an address field: the full address, its local part and domain, every
/// alphanumeric piece of them, and the words of the display name; all lower-case.
/// Borrowed where the term is a piece of the party as parsed: a document copies every term
/// anyway, and allocating each one first was 3 % of a backup's CPU.
pub fn address_terms(parties: &[Party]) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    for p in parties {
        let a = p.address.as_str();
        if !a.is_empty() {
            out.push(Cow::Borrowed(a));
            if let Some((local, domain)) = a.split_once('@') {
                out.push(Cow::Borrowed(local));
                out.push(Cow::Borrowed(domain));
            }
            out.extend(
                a.split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(Cow::Borrowed),
            );
        }
        if p.name.chars().any(|c| c.to_lowercase().ne([c])) {
            // Lower-cased as a whole, as before: lower-casing can change where words split.
            let lower = p.name.to_lowercase();
            out.extend(
                lower
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(|w| Cow::Owned(w.to_owned())),
            );
        } else {
            out.extend(
                p.name
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(Cow::Borrowed),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    #[test]
    fn multipart_with_attachments_and_encoded_headers() {
        let m = crlf(
            "From: =?utf-8?B?SsO8cmdlbiBNw7xsbGVy?= <Juergen.Mueller@Contoso.com>\n\
To: Alice <alice@contoso.com>, bob@fabrikam.com\n\
Cc: carol@contoso.com\n\
Subject: =?iso-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=\n\
Date: Tue, 02 Jan 2024 10:00:00 +0100\n\
Message-ID: <abc@contoso.com>\n\
In-Reply-To: <parent@contoso.com>\n\
Importance: High\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"b1\"\n\
\n\
--b1\n\
Content-Type: text/plain; charset=utf-8\n\
\n\
Quarterly numbers attached.\n\
--b1\n\
Content-Type: application/pdf; name=\"=?utf-8?Q?Bericht_M=C3=A4rz.pdf?=\"\n\
Content-Disposition: attachment; filename=\"=?utf-8?Q?Bericht_M=C3=A4rz.pdf?=\"\n\
Content-Transfer-Encoding: base64\n\
\n\
JVBERi0xLjcK\n\
--b1--\n",
        );
        let e = extract(&m);
        assert_eq!(e.parse_error, None);
        assert_eq!(e.from[0].address, "juergen.mueller@contoso.com");
        assert_eq!(e.from[0].name, "Jürgen Müller");
        assert_eq!(e.subject, "Grüße aus Köln");
        let to: Vec<_> = e.to.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(to, ["alice@contoso.com", "bob@fabrikam.com"]);
        assert_eq!(e.cc[0].address, "carol@contoso.com");
        assert_eq!(e.date_unix_ms, Some(1_704_186_000_000));
        assert_eq!(e.message_id, "abc@contoso.com");
        assert_eq!(e.in_reply_to, ["parent@contoso.com"]);
        assert_eq!(e.importance, "high");
        assert!(e.body.contains("Quarterly numbers attached."));
        assert_eq!(e.attachments.len(), 1);
        assert_eq!(e.attachments[0].name, "Bericht März.pdf");
        assert_eq!(e.attachments[0].content_type, "application/pdf");
        assert_eq!(e.attachments[0].size, 9);
        let terms = address_terms(&e.from);
        for t in [
            "juergen.mueller@contoso.com",
            "juergen",
            "mueller",
            "contoso.com",
            "jürgen",
        ] {
            assert!(terms.iter().any(|x| x == t), "{t} in {terms:?}");
        }
    }

    #[test]
    fn html_only_body_is_text() {
        let m = crlf(
            "From: a@contoso.com\nSubject: html\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n\
Content-Type: text/html; charset=utf-8\n\n\
<html><body><p>Hello <b>budget</b> team</p><script>x</script></body></html>\n",
        );
        let e = extract(&m);
        assert!(e.body.contains("Hello budget team"), "{:?}", e.body);
        assert!(!e.body.contains("<b>"));
        assert_eq!(e.parse_error, None);
    }

    #[test]
    fn malformed_mime_is_indexed_with_parse_error() {
        let broken = crlf(
            "From: a@contoso.com\nSubject: broken boundary\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n\
MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"declared-one\"\n\n\
--other\nContent-Type: text/plain\n\nText without a matching boundary.\n",
        );
        let e = extract(&broken);
        assert_eq!(e.subject, "broken boundary");
        assert!(
            e.parse_error
                .as_deref()
                .is_some_and(|p| p.contains("declared-one"))
        );

        let bad_date =
            crlf("From: a@contoso.com\nSubject: s\nDate: Mon, 32 Foo 2024 25:61:00\n\nx\n");
        let e = extract(&bad_date);
        assert_eq!(e.date_unix_ms, None);
        assert!(e.parse_error.as_deref().is_some_and(|p| p.contains("Date")));

        let mut raw8 = b"From: J\xfcrgen <j@contoso.com>\r\nSubject: Gr\xfc\xdfe\r\n".to_vec();
        raw8.extend_from_slice(b"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\n\r\nbody words\r\n");
        let e = extract(&raw8);
        assert_eq!(e.from[0].address, "j@contoso.com");
        assert!(e.body.contains("body words"));
        assert!(
            e.parse_error
                .as_deref()
                .is_some_and(|p| p.contains("8-bit"))
        );

        let e = extract(b"");
        assert!(e.parse_error.is_some());
    }

    #[test]
    fn every_generated_malformed_message_keeps_its_readable_fields() {
        let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
            seed: 5,
            messages: 10,
            malformed: 7,
            ..Default::default()
        });
        let mut flagged = Vec::new();
        for item in &corpus.items {
            let e = extract(&item.mime);
            if e.parse_error.is_some() {
                flagged.push(e.subject.clone());
            }
            if e.subject == "bare LF" {
                assert!(e.body.contains("line two"), "{:?}", e.body);
            }
        }
        flagged.sort();
        // Seven malformed kinds: bare LF with a long header line is tolerated, the other six
        // are flagged (with whatever subject could be read), and nothing else in the corpus.
        assert_eq!(
            flagged,
            [
                "=?iso-8859-1?Q?bad=ZZqp?=",
                "=?utf-8?B?invalid$$base64?=",
                "Gr\u{fffd}\u{fffd}e aus K\u{fffd}ln",
                "broken boundary",
                "missing headers",
                "multipart without boundary",
            ]
        );
    }

    #[test]
    fn huge_body_is_capped() {
        let mut m = crlf("From: a@contoso.com\nSubject: big\nContent-Type: text/plain\n\n");
        m.extend(std::iter::repeat_n(b'a', MAX_BODY_BYTES + 1000));
        let e = extract(&m);
        assert!(e.body.len() <= MAX_BODY_BYTES);
        assert!(e.truncated);
    }

    #[test]
    fn address_terms_of_lower_and_mixed_case_names() {
        let party = |name: &str, address: &str| Party {
            name: name.into(),
            address: address.into(),
        };
        let parties = [
            party("bob smith", "bob.smith@fabrikam.com"),
            party("Jürgen MÜLLER-Lüdenscheidt", "j.mueller@contoso.com"),
            party("", "bob.smith@fabrikam.com"),
        ];
        let terms = address_terms(&parties);
        let terms: Vec<&str> = terms.iter().map(|t| t.as_ref()).collect();
        assert_eq!(
            terms,
            [
                "bob",
                "bob.smith",
                "bob.smith@fabrikam.com",
                "com",
                "contoso",
                "contoso.com",
                "fabrikam",
                "fabrikam.com",
                "j",
                "j.mueller",
                "j.mueller@contoso.com",
                "jürgen",
                "lüdenscheidt",
                "mueller",
                "müller",
                "smith",
            ]
        );
    }
}
