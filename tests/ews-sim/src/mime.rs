//! Just enough MIME header reading to answer property requests (Subject, From,
//! InternetMessageId, DateTimeSent, HasAttachments). Never fails: broken input gives empty
//! or best-effort values, as Exchange does for the malformed mail it stores.

use base64::Engine as _;

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub subject: String,
    pub from_name: String,
    pub from_addr: String,
    pub to: String,
    pub message_id: String,
    /// Unix seconds of the Date header, if it parses.
    pub date: Option<i64>,
    pub has_attachments: bool,
}

pub fn summarize(mime: &[u8]) -> Summary {
    let head_end = find(mime, b"\r\n\r\n")
        .or_else(|| find(mime, b"\n\n"))
        .unwrap_or(mime.len());
    let head = &mime[..head_end];
    let mut s = Summary::default();
    for (name, value) in headers(head) {
        match name.to_ascii_lowercase().as_str() {
            "subject" if s.subject.is_empty() => s.subject = decode_words(&value),
            "from" if s.from_addr.is_empty() => {
                let (n, a) = split_address(&value);
                s.from_name = decode_words(&n);
                s.from_addr = a;
            }
            "to" if s.to.is_empty() => s.to = decode_words(&value),
            "message-id" if s.message_id.is_empty() => s.message_id = value.trim().to_owned(),
            "date" if s.date.is_none() => s.date = parse_date(&value),
            "x-ms-has-attach" => s.has_attachments |= value.trim().eq_ignore_ascii_case("yes"),
            _ => {}
        }
    }
    if !s.has_attachments {
        let body = &mime[head_end.min(mime.len())..];
        s.has_attachments = find_ci(body, b"content-disposition: attachment").is_some();
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Unfolded (name, value) pairs; values lossily decoded as UTF-8 (Latin-1 fallback per byte).
fn headers(head: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(text(line).trim());
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = text(&line[..colon]).trim().to_owned();
            let value = text(&line[colon + 1..]).trim().to_owned();
            out.push((name, value));
        }
    }
    out
}

fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => b.iter().map(|&c| char::from(c)).collect(),
    }
}

fn split_address(v: &str) -> (String, String) {
    if let (Some(l), Some(r)) = (v.rfind('<'), v.rfind('>'))
        && l < r
    {
        let name = v[..l].trim().trim_matches('"').to_owned();
        return (name, v[l + 1..r].trim().to_owned());
    }
    (String::new(), v.trim().to_owned())
}

/// Decodes RFC 2047 encoded-words (B and Q; UTF-8, US-ASCII and ISO-8859-1 exactly, other
/// charsets lossily). Whitespace between adjacent encoded-words is dropped.
pub fn decode_words(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, after) = rest.split_at(start);
        let Some(decoded) = decode_one(after) else {
            out.push_str(before);
            out.push_str("=?");
            rest = &after[2..];
            last_was_word = false;
            continue;
        };
        if !(last_was_word && before.trim().is_empty()) {
            out.push_str(before);
        }
        out.push_str(&decoded.0);
        rest = &after[decoded.1..];
        last_was_word = true;
    }
    out.push_str(rest);
    out
}

/// Decodes one encoded-word at the start of `s`: (text, bytes consumed).
fn decode_one(s: &str) -> Option<(String, usize)> {
    let inner = s.strip_prefix("=?")?;
    let q1 = inner.find('?')?;
    let charset = &inner[..q1];
    let rest = &inner[q1 + 1..];
    let q2 = rest.find('?')?;
    let enc = &rest[..q2];
    let rest2 = &rest[q2 + 1..];
    let end = rest2.find("?=")?;
    let payload = &rest2[..end];
    if payload.contains(' ') {
        return None;
    }
    let bytes = match enc {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(payload.trim_end_matches('='))
            })
            .ok()?,
        "Q" | "q" => {
            let mut v = Vec::new();
            let b = payload.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'_' => v.push(b' '),
                    b'=' => {
                        let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                        v.push(u8::from_str_radix(h, 16).ok()?);
                        i += 2;
                    }
                    c => v.push(c),
                }
                i += 1;
            }
            v
        }
        _ => return None,
    };
    let cs = charset.split('*').next().unwrap_or("").to_ascii_lowercase();
    let text = if cs == "iso-8859-1" || cs == "latin1" || cs == "windows-1252" {
        bytes.iter().map(|&c| char::from(c)).collect()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((text, 2 + q1 + 1 + q2 + 1 + end + 2))
}

/// Parses `[Day,] D Mon YYYY HH:MM[:SS] [+-]ZZZZ` (tolerant) into Unix seconds.
pub fn parse_date(v: &str) -> Option<i64> {
    let v = v.split('(').next().unwrap_or(v);
    let v = match v.find(',') {
        Some(i) => &v[i + 1..],
        None => v,
    };
    let mut it = v.split_whitespace();
    let d: i64 = it.next()?.parse().ok()?;
    let mon = it.next()?.to_ascii_lowercase();
    let m = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|x| mon.starts_with(x))? as i64
        + 1;
    let mut y: i64 = it.next()?.parse().ok()?;
    if y < 50 {
        y += 2000;
    } else if y < 100 {
        y += 1900;
    }
    let mut hms = it.next()?.split(':');
    let hh: i64 = hms.next()?.parse().ok()?;
    let mm: i64 = hms.next()?.parse().ok()?;
    let ss: i64 = hms.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let zone = it.next().unwrap_or("+0000");
    let off = if let Some(z) = zone.strip_prefix(['+', '-']) {
        let n: i64 = z.get(..4)?.parse().ok()?;
        let mins = n / 100 * 60 + n % 100;
        if zone.starts_with('-') { -mins } else { mins }
    } else {
        0
    };
    if !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - off * 60)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2024-06-03T14:22:05Z`
pub fn iso8601(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let s = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary() {
        let m = b"From: =?utf-8?B?U8O2cmVu?= <s@x.com>\r\nSubject: =?utf-8?Q?Gr=C3=BC=C3=9Fe?=\r\n =?utf-8?B?IGF1cw==?=\r\nDate: Mon, 3 Jun 2024 16:22:05 +0200\r\nMessage-ID: <a@b>\r\n\r\nbody";
        let s = summarize(m);
        assert_eq!(s.subject, "Grüße aus");
        assert_eq!(s.from_name, "Sören");
        assert_eq!(s.from_addr, "s@x.com");
        assert_eq!(s.message_id, "<a@b>");
        assert_eq!(s.date, Some(1_717_424_525));
        assert_eq!(iso8601(1_717_424_525), "2024-06-03T14:22:05Z");
        let broken = summarize(b"Subject: =?utf-8?B?$$$?=\r\nDate: Mon, 32 Foo\r\n\r\n");
        assert_eq!(broken.subject, "=?utf-8?B?$$$?=");
        assert_eq!(broken.date, None);
    }
}
