//! Exchange envelope journal reports.
//!
//! A report (header `X-MS-Journal-Report`) is a `multipart/mixed` message whose first text part
//! is the *envelope*: `Sender:`, `Subject:`, `Message-Id:`, then one line per recipient
//! (`To:`, `Cc:`, `Bcc:`, `Recipient:`), optionally followed by `, Expanded: <list>` (the
//! recipient got it through a distribution list) or `, Forwarded: <address>` (it was forwarded
//! to the recipient from that mailbox). The original message is attached, unchanged, as
//! `message/rfc822`.
//!
//! The indexed item is the original message; it is visible to the sender, every recipient and
//! every mailbox it was forwarded from. Distribution-list addresses (`Expanded:`) are not
//! users and are not added.

use mail_parser::{Message, MimeHeaders, PartType};

/// The envelope of a report and where its original message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrapped {
    pub sender: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// Recipients with no type (`Recipient:`) and `Forwarded:` origins.
    pub other: Vec<String>,
    pub subject: String,
    pub message_id: String,
    /// Sender and every listed recipient, lower-cased, sorted, unique.
    pub visible_to: Vec<String>,
    /// Byte range of the original message in the report.
    pub offset: u64,
    pub len: u64,
    /// What did not look like a well-formed report.
    pub problems: Vec<String>,
}

pub fn is_journal_report(msg: &Message<'_>) -> bool {
    msg.headers()
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case("X-MS-Journal-Report"))
}

/// Unwraps a report; `None` if it carries no attached message (then it is indexed as itself).
pub fn unwrap(msg: &Message<'_>, raw: &[u8]) -> Option<Unwrapped> {
    let embedded = msg
        .parts
        .iter()
        .find(|p| matches!(p.body, PartType::Message(_)) || is_rfc822(p))?;
    let boundary = msg
        .root_part()
        .content_type()
        .and_then(|ct| ct.attribute("boundary"))
        .map(str::to_owned);
    let (offset, len) = original_range(
        raw,
        embedded.offset_body as usize,
        embedded.offset_end as usize,
        boundary.as_deref(),
    );
    let mut out = Unwrapped {
        sender: String::new(),
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        other: Vec::new(),
        subject: String::new(),
        message_id: String::new(),
        visible_to: Vec::new(),
        offset: offset as u64,
        len: len as u64,
        problems: Vec::new(),
    };
    let envelope = msg.parts.iter().find_map(|p| match &p.body {
        PartType::Text(t) if looks_like_envelope(t) => Some(t.as_ref()),
        _ => None,
    });
    match envelope {
        Some(text) => parse_envelope(text, &mut out),
        None => out
            .problems
            .push("journal report without an envelope part".to_owned()),
    }
    let mut all: Vec<String> = std::iter::once(out.sender.clone())
        .chain(out.to.iter().cloned())
        .chain(out.cc.iter().cloned())
        .chain(out.bcc.iter().cloned())
        .chain(out.other.iter().cloned())
        .filter(|a| !a.is_empty())
        .collect();
    all.sort();
    all.dedup();
    out.visible_to = all;
    Some(out)
}

fn is_rfc822(p: &mail_parser::MessagePart<'_>) -> bool {
    p.is_content_type("message", "rfc822")
}

/// The range of the attached message: the part's body up to, not including, the line break
/// that belongs to the next boundary delimiter (RFC 2046 §5.1.1).
fn original_range(raw: &[u8], start: usize, end: usize, boundary: Option<&str>) -> (usize, usize) {
    // The report's own delimiter cannot occur inside the original (RFC 2046), so the first
    // one after the part's body start ends it. mail-parser's part end is only a fallback: it
    // stops where the embedded message's own parse stopped.
    if let Some(b) = boundary {
        let start = start.min(raw.len());
        let delim = format!("\n--{b}");
        if let Some(p) = memchr::memmem::find(&raw[start..], delim.as_bytes()) {
            let body = &raw[start..start + p];
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            return (start, body.len());
        }
    }
    let end = end.min(raw.len());
    let start = start.min(end);
    let body = &raw[start..end];
    // mail-parser ends a part where the delimiter starts; drop a trailing delimiter and the
    // CRLF in front of it if the parser included them.
    match last_delimiter_line(body) {
        Some(pos) => {
            let trimmed = &body[..pos];
            let trimmed = trimmed
                .strip_suffix(b"\r\n")
                .or_else(|| trimmed.strip_suffix(b"\n"))
                .unwrap_or(trimmed);
            (start, trimmed.len())
        }
        None => (start, body.len()),
    }
}

/// Position of a trailing `--boundary` line at the very end of `body`, if any.
fn last_delimiter_line(body: &[u8]) -> Option<usize> {
    let line_start = match memchr::memrchr(b'\n', body.strip_suffix(b"\n").unwrap_or(body)) {
        Some(p) => p + 1,
        None => return None,
    };
    body[line_start..]
        .starts_with(b"--")
        .then_some(line_start)
        .filter(|_| {
            let line = &body[line_start..];
            !line.contains(&b':') && line.len() < 200
        })
}

fn looks_like_envelope(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().to_ascii_lowercase().starts_with("sender:"))
}

fn parse_envelope(text: &str, out: &mut Unwrapped) {
    for line in text.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        match key.as_str() {
            "sender" => out.sender = addr(value),
            "subject" => out.subject = value.to_owned(),
            "message-id" => out.message_id = value.to_owned(),
            "on-behalf-of" => {
                let a = addr(value);
                if !a.is_empty() {
                    out.other.push(a);
                }
            }
            "to" | "cc" | "bcc" | "recipient" => {
                let (recipient, extra) = recipient_line(value);
                if recipient.is_empty() {
                    out.problems
                        .push(format!("envelope line without address: {line:?}"));
                    continue;
                }
                match key.as_str() {
                    "to" => out.to.push(recipient),
                    "cc" => out.cc.push(recipient),
                    "bcc" => out.bcc.push(recipient),
                    _ => out.other.push(recipient),
                }
                out.other.extend(extra);
            }
            _ => {}
        }
    }
    if out.sender.is_empty() {
        out.problems
            .push("journal envelope names no sender".to_owned());
    }
}

/// `addr[, Expanded: list][, Forwarded: origin]` → (addr, [origin]).
fn recipient_line(value: &str) -> (String, Vec<String>) {
    let mut pieces = value.split(',');
    let recipient = addr(pieces.next().unwrap_or_default());
    let mut extra = Vec::new();
    for p in pieces {
        if let Some((k, v)) = p.split_once(':')
            && k.trim().eq_ignore_ascii_case("forwarded")
        {
            let a = addr(v);
            if !a.is_empty() {
                extra.push(a);
            }
        }
    }
    (recipient, extra)
}

/// `Name <a@b>` or `a@b` → `a@b`, lower-cased.
fn addr(s: &str) -> String {
    let s = s.trim();
    let inner = match (s.rfind('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    let inner = inner.trim();
    if inner.contains('@') {
        inner.to_lowercase()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    const ORIGINAL: &str = "From: Alice <alice@contoso.com>\r\nTo: Bob <bob@contoso.com>\r\nCc: carol@contoso.com\r\nSubject: Merger plans\r\nDate: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@contoso.com>\r\nContent-Type: text/plain\r\n\r\nConfidential merger details.\r\n";

    /// The format Exchange 2013+ writes (Microsoft's "Journal report" documentation).
    fn exchange_report() -> Vec<u8> {
        let mut r = String::new();
        r.push_str("From: Microsoft Exchange <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.com>\r\n");
        r.push_str("To: journal@contoso.com\r\nSubject: Merger plans\r\nX-MS-Journal-Report:\r\n");
        r.push_str(
            "Content-Type: multipart/mixed; boundary=\"_002_JR_\"\r\nMIME-Version: 1.0\r\n\r\n",
        );
        r.push_str("--_002_JR_\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\n");
        r.push_str("Sender: alice@contoso.com\r\nSubject: Merger plans\r\nMessage-Id: <m1@contoso.com>\r\n");
        r.push_str("To: bob@contoso.com\r\nCc: carol@contoso.com\r\nBcc: Dave@Contoso.com\r\n");
        r.push_str("To: erin@contoso.com, Expanded: board@contoso.com\r\n");
        r.push_str("To: frank@contoso.com, Forwarded: bob@contoso.com\r\n");
        r.push_str("Recipient: gina@fabrikam.com\r\n");
        r.push_str("\r\n--_002_JR_\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n");
        r.push_str(ORIGINAL);
        r.push_str("\r\n--_002_JR_--\r\n");
        r.into_bytes()
    }

    #[test]
    fn exchange_report_is_unwrapped() {
        let raw = exchange_report();
        let msg = MessageParser::default().parse(&raw).expect("parses");
        assert!(is_journal_report(&msg));
        let u = unwrap(&msg, &raw).expect("unwrapped");
        assert_eq!(u.sender, "alice@contoso.com");
        assert_eq!(u.bcc, ["dave@contoso.com"]);
        assert_eq!(
            u.visible_to,
            [
                "alice@contoso.com",
                "bob@contoso.com",
                "carol@contoso.com",
                "dave@contoso.com",
                "erin@contoso.com",
                "frank@contoso.com",
                "gina@fabrikam.com"
            ]
        );
        let bytes = &raw[u.offset as usize..(u.offset + u.len) as usize];
        assert_eq!(bytes, ORIGINAL.as_bytes());
        assert!(u.problems.is_empty(), "{:?}", u.problems);

        let e = crate::extract::extract(&raw);
        assert_eq!(e.subject, "Merger plans");
        assert_eq!(e.from[0].address, "alice@contoso.com");
        assert!(e.body.contains("Confidential merger details."));
        assert!(e.bcc.iter().any(|p| p.address == "dave@contoso.com"));
        let j = e.journal.expect("journal info");
        assert_eq!((j.offset, j.len), (u.offset, u.len));
    }

    #[test]
    fn mailgen_reports_are_unwrapped_exactly() {
        let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
            seed: 3,
            messages: 40,
            ..Default::default()
        });
        let mut reports = 0;
        for item in corpus
            .items
            .iter()
            .filter(|i| i.mailbox.starts_with("journal@"))
        {
            let msg = MessageParser::default().parse(&item.mime).expect("parses");
            let u = unwrap(&msg, &item.mime).expect("report");
            reports += 1;
            let original = &item.mime[u.offset as usize..(u.offset + u.len) as usize];
            // The original is a copy of what was sent: the envelope lists its sender, and
            // an independently parsed original agrees on subject and message id.
            let om = MessageParser::default()
                .parse(original)
                .expect("original parses");
            assert_eq!(
                format!("<{}>", om.message_id().unwrap_or_default()),
                u.message_id
            );
            let from = om
                .from()
                .and_then(|f| f.first())
                .and_then(|a| a.address())
                .unwrap_or_default()
                .to_lowercase();
            assert_eq!(from, u.sender);
            // Expected visibility from the envelope text with plain string logic.
            let text = String::from_utf8_lossy(&item.mime);
            let start = text.find("\r\nSender: ").expect("envelope") + 2;
            let env = &text[start..];
            let env = &env[..env.find("\r\n--").expect("end of envelope")];
            let mut expected: Vec<String> = env
                .lines()
                .filter_map(|l| {
                    ["Sender: ", "To: ", "Cc: ", "Bcc: "]
                        .iter()
                        .find_map(|k| l.strip_prefix(k))
                })
                .map(|v| {
                    v.split(',')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_lowercase()
                })
                .filter(|v| v.contains('@'))
                .collect();
            expected.sort();
            expected.dedup();
            assert_eq!(u.visible_to, expected);
            // The range ends exactly where the closing delimiter's line break starts.
            let after = &item.mime[(u.offset + u.len) as usize..];
            assert!(
                after.starts_with(b"\r\n--"),
                "{:?}",
                &after[..after.len().min(20)]
            );
        }
        assert!(reports >= 40, "{reports} reports");
    }
}
