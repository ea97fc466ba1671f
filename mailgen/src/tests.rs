use super::*;

fn small() -> GenConfig {
    GenConfig {
        seed: 42,
        users: 7,
        messages: 300,
        malformed: 7,
        huge_item_bytes: Some(300_000),
        ..GenConfig::default()
    }
}

fn body_of(mime: &[u8]) -> &[u8] {
    split_header_body(mime)
        .expect("message has an empty line")
        .1
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = generate(&small());
    let b = generate(&small());
    assert_eq!(a.mailboxes, b.mailboxes);
    assert_eq!(a.items, b.items);
    let c = generate(&GenConfig {
        seed: 43,
        ..small()
    });
    assert_ne!(a.items, c.items);
    assert_eq!(fanout(9, 4, 10_000, true), fanout(9, 4, 10_000, true));
}

#[test]
fn every_item_is_headers_blank_line_body() {
    let corpus = generate(&small());
    let mut bare_lf = 0;
    for item in &corpus.items {
        let (head, _) = split_header_body(&item.mime).expect("empty line present");
        assert!(head.ends_with(b"\r\n"), "header block ends with CRLF");
        for line in head[..head.len() - 1].split(|&b| b == b'\n') {
            let Some(line) = line.strip_suffix(b"\r") else {
                panic!(
                    "header line without CR in {:?}: {:?}",
                    item.folder_path,
                    String::from_utf8_lossy(line)
                );
            };
            if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                continue; // folded continuation
            }
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .expect("header has a colon");
            assert!(colon > 0 && line[..colon].iter().all(|b| b.is_ascii_graphic()));
        }
        if item
            .mime
            .windows(2)
            .enumerate()
            .any(|(i, w)| w[1] == b'\n' && w[0] != b'\r' || (i == 0 && w[0] == b'\n'))
        {
            bare_lf += 1;
        }
    }
    // only the deliberately malformed "bare LF" message (one per 7 malformed) has bare LFs
    assert_eq!(bare_lf, 1);
}

#[test]
fn fanout_copies_share_exact_body_bytes() {
    let items = fanout(7, 5, 50_000, true);
    assert_eq!(items.len(), 1 + 5 + 1);
    assert_eq!(items[0].distinguished.as_deref(), Some("sentitems"));
    let body = body_of(&items[0].mime);
    assert!(body.len() > 50_000 * 4 / 3);
    let mut mailboxes = std::collections::BTreeSet::new();
    for copy in &items[1..6] {
        assert_eq!(copy.distinguished.as_deref(), Some("inbox"));
        assert_eq!(
            body_of(&copy.mime),
            body,
            "identical body bytes in every copy"
        );
        assert!(copy.mime.starts_with(b"Received: "));
        assert!(
            mailboxes.insert(copy.mailbox.clone()),
            "one copy per mailbox"
        );
    }
    // the transport headers differ per recipient
    assert_ne!(items[1].mime, items[2].mime);
    assert!(!mailboxes.contains(&items[0].mailbox));
}

fn embedded_original(report: &[u8]) -> &[u8] {
    let marker = b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n";
    let start = report
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("report has a message/rfc822 part")
        + marker.len();
    // ends with CRLF --boundary-- CRLF
    let tail = report[..report.len() - 2]
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("closing delimiter line");
    &report[start..tail - 1]
}

#[test]
fn journal_report_wraps_the_original_unchanged() {
    // two recipients, no Bcc: the Sent Items copy is the original
    let items = fanout(3, 2, 0, true);
    let report = &items[3];
    assert_eq!(report.mailbox, "journal@contoso.com");
    let head = split_header_body(&report.mime).expect("report head").0;
    assert!(head.windows(21).any(|w| w == b"X-MS-Journal-Report: "));
    assert_eq!(embedded_original(&report.mime), &items[0].mime[..]);
    for copy in &items[1..3] {
        let addr = &copy.mailbox;
        let line = format!("To: {addr}\r\n");
        assert!(
            report
                .mime
                .windows(line.len())
                .any(|w| w == line.as_bytes())
        );
    }

    // with Bcc: the report lists the Bcc recipient; the original has no Bcc header
    let items = fanout(3, 5, 1000, true);
    let report = &items[6];
    let bcc = format!("Bcc: {}\r\n", items[5].mailbox);
    assert!(report.mime.windows(bcc.len()).any(|w| w == bcc.as_bytes()));
    let original = embedded_original(&report.mime);
    assert_eq!(body_of(original), body_of(&items[0].mime));
    assert!(!original.windows(5).any(|w| w == b"BCC: "));
    assert!(items[0].mime.windows(5).any(|w| w == b"BCC: "));
}

#[test]
fn corpus_has_every_item_class_and_localized_folders() {
    let corpus = generate(&small());
    for class in [
        "IPM.Note",
        "IPM.Appointment",
        "IPM.Contact",
        "IPM.Task",
        "IPM.StickyNote",
    ] {
        assert!(
            corpus.items.iter().any(|i| i.item_class == class),
            "{class}"
        );
    }
    let de = corpus
        .mailboxes
        .iter()
        .find(|m| m.locale == "de-DE")
        .expect("a German mailbox");
    let zh = corpus
        .mailboxes
        .iter()
        .find(|m| m.locale == "zh-CN")
        .expect("a Chinese mailbox");
    let folders = |mb: &Mailbox| -> std::collections::BTreeSet<Vec<String>> {
        corpus
            .items
            .iter()
            .filter(|i| i.mailbox == mb.address)
            .map(|i| i.folder_path.clone())
            .collect()
    };
    let d = folders(de);
    assert!(d.contains(&vec!["Posteingang".to_owned()]));
    assert!(d.contains(&vec!["Gesendete Elemente".to_owned()]));
    assert!(d.contains(&vec!["Kalender".to_owned()]));
    assert!(
        d.iter().any(|p| p.len() >= 2 && p[0] == "Posteingang"),
        "user subfolders"
    );
    assert!(folders(zh).contains(&vec!["收件箱".to_owned()]));
    for item in &corpus.items {
        let dist = item
            .distinguished
            .as_deref()
            .expect("every top folder is well-known");
        let mb = corpus
            .mailboxes
            .iter()
            .find(|m| m.address == item.mailbox)
            .expect("item's mailbox exists");
        assert_eq!(
            well_known_folder_name(&mb.locale, dist),
            Some(item.folder_path[0].as_str())
        );
    }
    assert!(
        corpus.items.iter().any(|i| i.mime.len() > 300_000),
        "huge item"
    );
}

fn header_value(mime: &[u8], name: &str) -> Option<String> {
    let head = split_header_body(mime)?.0;
    let head = String::from_utf8_lossy(head)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    head.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Decodes `=?utf-8?B?…?=` words (enough for what the generator writes); `None` for a
/// broken word (the malformed messages have some).
fn decode_b_words(v: &str) -> Option<String> {
    use base64::Engine as _;
    let mut out = String::new();
    for w in v.split(' ') {
        if let Some(b) = w
            .strip_prefix("=?utf-8?B?")
            .and_then(|w| w.strip_suffix("?="))
        {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
            out.push_str(&String::from_utf8(bytes).ok()?);
        } else {
            out.push_str(w);
        }
    }
    Some(out)
}

#[test]
fn mail_looks_like_exchange_mail() {
    let corpus = generate(&small());
    let mut attachments = 0;
    let mut replies = 0;
    let mut non_ascii_subjects = 0;
    let mut sizes = Vec::new();
    for item in corpus.items.iter().filter(|i| i.item_class == "IPM.Note") {
        let m = &item.mime;
        attachments += m
            .windows(32)
            .filter(|w| *w == b"Content-Disposition: attachment;")
            .count();
        if header_value(m, "In-Reply-To").is_some() {
            replies += 1;
        }
        if let Some(s) = header_value(m, "Subject")
            && s.starts_with("=?utf-8?B?")
            && let Some(decoded) = decode_b_words(&s)
        {
            assert!(!decoded.is_ascii());
            non_ascii_subjects += 1;
        }
        sizes.push(m.len());
    }
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2];
    assert!((2_000..=20_000).contains(&median), "median {median}");
    assert!(attachments > 10, "{attachments}");
    assert!(replies > 50, "{replies}");
    assert!(non_ascii_subjects > 20, "{non_ascii_subjects}");
}

#[test]
fn calendar_and_contact_payloads() {
    use base64::Engine as _;
    let corpus = generate(&small());
    let appt = corpus
        .items
        .iter()
        .find(|i| i.item_class == "IPM.Appointment")
        .expect("an appointment");
    let text = String::from_utf8(appt.mime.clone()).expect("appointment MIME is utf-8");
    let start = text
        .find("method=REQUEST\r\nContent-Transfer-Encoding: base64\r\n\r\n")
        .expect("text/calendar part");
    let b64: String = text[start..]
        .split("\r\n\r\n")
        .nth(1)
        .expect("part body")
        .split("\r\n")
        .collect();
    let ics = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("calendar part is base64");
    let ics = String::from_utf8(ics).expect("ics is utf-8");
    assert!(ics.starts_with("BEGIN:VCALENDAR\r\n") && ics.contains("BEGIN:VEVENT\r\n"));
    assert!(ics.lines().all(|l| l.len() <= 76));
    let contact = corpus
        .items
        .iter()
        .find(|i| i.item_class == "IPM.Contact")
        .expect("a contact");
    let body = body_of(&contact.mime);
    assert!(body.starts_with(b"BEGIN:VCARD\r\nVERSION:3.0\r\n"));
}

#[test]
fn maildir_layout() {
    let corpus = generate(&GenConfig {
        messages: 40,
        ..GenConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    write_maildir(&corpus, dir.path()).expect("write maildir");
    let mut files = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("dir entry");
            if e.file_type().expect("file type").is_dir() {
                stack.push(e.path());
            } else {
                assert!(e.file_name().to_string_lossy().ends_with('.'));
                files += 1;
            }
        }
    }
    assert_eq!(files, corpus.items.len());
    let first = &corpus.items[0];
    let local = first.mailbox.split('@').next().expect("local part");
    let mut p = dir.path().join(local);
    for f in &first.folder_path {
        p.push(f);
    }
    assert_eq!(std::fs::read(p.join("1.")).expect("first file"), first.mime);
}
