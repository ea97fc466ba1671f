//! MIME encoders used by the generator: quoted-printable, wrapped base64, RFC 2047
//! encoded-words, header folding and RFC 5322 dates. All output uses CRLF line endings, as
//! Exchange's MIME does.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Base64 with 76-character lines, each ended by CRLF.
pub(crate) fn base64_wrapped(data: &[u8], out: &mut Vec<u8>) {
    // 57 input bytes give exactly 76 output characters.
    let mut buf = String::with_capacity(80);
    for chunk in data.chunks(57) {
        buf.clear();
        STANDARD.encode_string(chunk, &mut buf);
        out.extend_from_slice(buf.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

pub(crate) fn base64_plain(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Quoted-printable (RFC 2045 §6.7): CRLF in the input are hard line breaks, lines are cut
/// with soft breaks at 76 characters, trailing white space is encoded.
pub(crate) fn quoted_printable(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut col = 0usize;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal = match b {
                b'=' => false,
                b' ' | b'\t' => !last,
                33..=126 => true,
                _ => false,
            };
            let width = if literal { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            col += width;
        }
        if lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Encodes a header text as RFC 2047 `B` encoded-words in UTF-8 when it is not plain ASCII,
/// splitting at character boundaries so that no encoded-word exceeds 75 characters. Words are
/// joined with a folding CRLF + space.
pub(crate) fn encode_words(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut words = Vec::new();
    let mut start = 0;
    let mut len = 0;
    for (i, c) in text.char_indices() {
        if len + c.len_utf8() > 45 {
            words.push(&text[start..i]);
            start = i;
            len = 0;
        }
        len += c.len_utf8();
    }
    words.push(&text[start..]);
    words
        .iter()
        .map(|w| format!("=?utf-8?B?{}?=", STANDARD.encode(w.as_bytes())))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// RFC 2047 `Q` encoding (used by some clients for Subject); kept for variety.
pub(crate) fn encode_words_q(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut out = String::from("=?utf-8?Q?");
    let mut word_len = 10;
    for c in text.chars() {
        let mut buf = [0u8; 4];
        let mut enc = String::new();
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            match b {
                b' ' => enc.push('_'),
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b',' | b'-' | b'!' => {
                    enc.push(char::from(b))
                }
                _ => enc.push_str(&format!("={b:02X}")),
            }
        }
        if word_len + enc.len() > 73 {
            out.push_str("?=\r\n =?utf-8?Q?");
            word_len = 10;
        }
        word_len += enc.len();
        out.push_str(&enc);
    }
    out.push_str("?=");
    out
}

/// An address as it appears in a header: `Display Name <local@domain>`, the display name
/// quoted when needed and encoded when not ASCII.
pub(crate) fn address(display: &str, addr: &str) -> String {
    if display.is_empty() {
        return addr.to_owned();
    }
    if !display.is_ascii() {
        return format!("{} <{addr}>", encode_words(display));
    }
    if display.chars().any(|c| ",.;:<>@\"()[]\\".contains(c)) {
        format!("\"{}\" <{addr}>", display.replace('"', "\\\""))
    } else {
        format!("{display} <{addr}>")
    }
}

/// Writes `Name: a,\r\n\tb,\r\n\tc\r\n` — Exchange folds address lists with CRLF + TAB.
pub(crate) fn address_header(out: &mut Vec<u8>, name: &str, addrs: &[String]) {
    if addrs.is_empty() {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(addrs.join(",\r\n\t").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `Mon, 3 Jun 2024 14:22:05 +0200` for a UTC timestamp shown in a zone `offset_min` east.
pub(crate) fn rfc5322_date(unix: i64, offset_min: i32) -> String {
    let local = unix + i64::from(offset_min) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let dow = DAYS[days.rem_euclid(7) as usize];
    let sign = if offset_min < 0 { '-' } else { '+' };
    let off = offset_min.unsigned_abs();
    format!(
        "{dow}, {d} {} {y} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        off / 60,
        off % 60
    )
}

/// `20240603T142205Z` (iCalendar UTC date-time).
pub(crate) fn ical_utc(unix: i64) -> String {
    let (y, m, d) = civil(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `20240603T142205` (iCalendar local date-time, used with TZID).
pub(crate) fn ical_local(unix: i64, offset_min: i32) -> String {
    let mut s = ical_utc(unix + i64::from(offset_min) * 60);
    s.pop();
    s
}

/// Folds an iCalendar/vCard content line at 75 octets (RFC 5545 §3.1), at UTF-8 boundaries.
pub(crate) fn fold_content_line(line: &str, out: &mut String) {
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0, 0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_717_424_525, 120),
            "Mon, 3 Jun 2024 16:22:05 +0200"
        );
        assert_eq!(ical_utc(1_717_424_525), "20240603T142205Z");
    }

    #[test]
    fn qp_lines_are_short_and_crlf() {
        let text = "Grüße aus München — ".repeat(20) + "\r\nzweite Zeile = gut \r\n";
        let mut out = Vec::new();
        quoted_printable(text.as_bytes(), &mut out);
        let s = String::from_utf8(out).expect("qp output is ascii");
        for line in s.split("\r\n") {
            assert!(line.len() <= 76, "{line}");
            assert!(!line.contains('\n'));
        }
        assert!(s.contains("=3D"));
        assert!(s.contains("gut=20"));
    }

    #[test]
    fn encoded_words_are_bounded() {
        let s = encode_words("关于第三季度预算的会议安排以及后续跟进事项的说明");
        for w in s.split("\r\n ") {
            assert!(w.len() <= 75 && w.starts_with("=?utf-8?B?") && w.ends_with("?="));
        }
        assert_eq!(encode_words("plain"), "plain");
    }
}
