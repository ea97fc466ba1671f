//! Export formats: EML files in a zip (byte-exact members, streamed with data descriptors) and
//! MBOX (mboxrd quoting).
//!
//! [`write_archive`] runs on a blocking thread and pulls its input piece by piece: an item's
//! label, then its bytes chunk by chunk, then its end. Output goes to any `Write` (a channel to
//! the gRPC stream, a file), so an export never holds a whole item or archive in memory.

use std::io::{self, Write};

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    EmlZip,
    Mbox,
}

/// What a member is called and what goes into an MBOX `From ` line.
#[derive(Debug, Clone)]
pub struct ItemLabel {
    pub id: String,
    pub mailbox: String,
    pub folder_path: Vec<String>,
    pub from: String,
    pub date_unix_ms: i64,
}

/// One step of the input.
#[derive(Debug)]
pub enum Input {
    Begin(ItemLabel),
    Data(Bytes),
    End,
    /// The producer failed; the archive is abandoned with this error.
    Abort(String),
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// `mailbox/folder/…/<id>.eml`; ids are unique per item version, so names are too.
pub fn member_name(label: &ItemLabel) -> String {
    let mut parts = vec![sanitize(&label.mailbox)];
    parts.extend(label.folder_path.iter().map(|p| sanitize(p)));
    parts.push(format!("{}.eml", sanitize(&label.id)));
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

fn zip_err(e: rawzip::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes the whole archive; returns the number of items.
pub fn write_archive(
    format: Format,
    mut input: impl Iterator<Item = Input>,
    out: impl Write,
) -> io::Result<u64> {
    match format {
        Format::EmlZip => write_zip(&mut input, out),
        Format::Mbox => write_mbox(&mut input, out),
    }
}

fn unexpected(what: &str) -> io::Error {
    io::Error::other(format!("export input out of order: {what}"))
}

fn write_zip(input: &mut impl Iterator<Item = Input>, out: impl Write) -> io::Result<u64> {
    let mut archive = rawzip::ZipArchiveWriter::new(out);
    let mut items = 0;
    while let Some(step) = input.next() {
        let label = match step {
            Input::Begin(l) => l,
            Input::Abort(e) => return Err(io::Error::other(e)),
            Input::Data(_) | Input::End => return Err(unexpected("data before an item")),
        };
        let (mut entry, config) = archive
            .new_file(&member_name(&label))
            .start()
            .map_err(zip_err)?;
        let mut writer = config.wrap(&mut entry);
        loop {
            match input.next() {
                Some(Input::Data(b)) => writer.write_all(&b)?,
                Some(Input::End) => break,
                Some(Input::Abort(e)) => return Err(io::Error::other(e)),
                Some(Input::Begin(_)) | None => return Err(unexpected("item without end")),
            }
        }
        let (_, descriptor) = writer.finish().map_err(zip_err)?;
        entry.finish(descriptor).map_err(zip_err)?;
        items += 1;
    }
    archive.finish().map_err(zip_err)?;
    Ok(items)
}

fn write_mbox(input: &mut impl Iterator<Item = Input>, mut out: impl Write) -> io::Result<u64> {
    let mut items = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(step) = input.next() {
        let label = match step {
            Input::Begin(l) => l,
            Input::Abort(e) => return Err(io::Error::other(e)),
            Input::Data(_) | Input::End => return Err(unexpected("data before an item")),
        };
        let from = if label.from.is_empty() || label.from.contains(char::is_whitespace) {
            "MAILER-DAEMON".to_owned()
        } else {
            label.from.clone()
        };
        let date = chrono::DateTime::from_timestamp_millis(label.date_unix_ms)
            .unwrap_or_default()
            .format("%a %b %e %H:%M:%S %Y");
        out.write_all(format!("From {from} {date}\n").as_bytes())?;
        let mut q = Mboxrd::default();
        loop {
            match input.next() {
                Some(Input::Data(b)) => {
                    buf.clear();
                    q.push(&b, &mut buf);
                    out.write_all(&buf)?;
                }
                Some(Input::End) => break,
                Some(Input::Abort(e)) => return Err(io::Error::other(e)),
                Some(Input::Begin(_)) | None => return Err(unexpected("item without end")),
            }
        }
        buf.clear();
        q.finish(&mut buf);
        out.write_all(&buf)?;
        items += 1;
    }
    out.flush()?;
    Ok(items)
}

/// mboxrd: a line matching `>*From ` gets one more `>`; readers remove one.
#[derive(Debug)]
struct Mboxrd {
    at_line_start: bool,
    /// A `>*From ` candidate at the start of a line, not yet decided.
    pending: Vec<u8>,
    last: u8,
}

impl Default for Mboxrd {
    fn default() -> Self {
        Mboxrd {
            at_line_start: true,
            pending: Vec::new(),
            last: b'\n',
        }
    }
}

impl Mboxrd {
    fn push(&mut self, data: &[u8], o: &mut Vec<u8>) {
        const FROM: &[u8] = b"From ";
        for &b in data {
            self.last = b;
            if self.at_line_start {
                self.pending.push(b);
                let gts = self.pending.iter().take_while(|c| **c == b'>').count();
                let rest = &self.pending[gts..];
                if rest.len() <= FROM.len() && FROM.starts_with(rest) {
                    if rest.len() == FROM.len() {
                        o.push(b'>');
                        o.append(&mut self.pending);
                        self.at_line_start = false;
                    }
                } else {
                    self.at_line_start = b == b'\n';
                    o.append(&mut self.pending);
                }
            } else {
                o.push(b);
                if b == b'\n' {
                    self.at_line_start = true;
                }
            }
        }
    }

    fn finish(&mut self, o: &mut Vec<u8>) {
        o.append(&mut self.pending);
        if self.last != b'\n' {
            o.push(b'\n');
        }
        // The blank line that separates messages.
        o.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(id: &str) -> ItemLabel {
        ItemLabel {
            id: id.into(),
            mailbox: "alice@contoso.com".into(),
            folder_path: vec!["Inbox".into(), "Pro/jects".into()],
            from: "bob@contoso.com".into(),
            date_unix_ms: 1_700_000_000_000,
        }
    }

    fn inputs(items: &[(ItemLabel, Vec<u8>)], chunk: usize) -> Vec<Input> {
        let mut v = Vec::new();
        for (l, body) in items {
            v.push(Input::Begin(l.clone()));
            for c in body.chunks(chunk) {
                v.push(Input::Data(Bytes::copy_from_slice(c)));
            }
            v.push(Input::End);
        }
        v
    }

    #[test]
    fn mbox_quotes_from_lines_across_chunk_boundaries() {
        let body = b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nFromage\r\nok".to_vec();
        let mut out = Vec::new();
        let n = write_archive(
            Format::Mbox,
            inputs(&[(label("a"), body)], 3).into_iter(),
            &mut out,
        )
        .expect("write");
        assert_eq!(n, 1);
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.starts_with("From bob@contoso.com Tue Nov 14 22:13:20 2023\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\r\n>From here\r\n>>From there\r\nFromage\r\nok\n\n"),
            "{out:?}"
        );
    }

    #[test]
    fn zip_members_are_byte_exact_and_readable_by_another_implementation() {
        let items: Vec<(ItemLabel, Vec<u8>)> = (0..3)
            .map(|i| {
                (
                    label(&format!("id{i}")),
                    format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes(),
                )
            })
            .collect();
        let mut out = Vec::new();
        let n =
            write_archive(Format::EmlZip, inputs(&items, 5).into_iter(), &mut out).expect("write");
        assert_eq!(n, 3);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(out)).expect("valid zip");
        assert_eq!(z.len(), 3);
        for (l, body) in &items {
            let mut f = z.by_name(&member_name(l)).expect("member");
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut got).expect("read");
            assert_eq!(&got, body);
        }
        assert_eq!(
            member_name(&items[0].0),
            "alice@contoso.com/Inbox/Pro_jects/id0.eml"
        );
    }

    #[test]
    fn a_failing_producer_fails_the_archive() {
        let v = vec![
            Input::Begin(label("a")),
            Input::Abort("item a: chunk missing".into()),
        ];
        let err = write_archive(Format::EmlZip, v.into_iter(), Vec::new()).expect_err("abort");
        assert!(err.to_string().contains("chunk missing"));
    }
}
