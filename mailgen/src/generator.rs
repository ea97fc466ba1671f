//! The generator proper: people, threads, messages, deliveries, journal reports and the
//! non-mail item classes.

use std::collections::BTreeSet;
use std::rc::Rc;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::encode::{
    address, address_header, base64_plain, base64_wrapped, encode_words, encode_words_q,
    fold_content_line, header, ical_local, ical_utc, quoted_printable, rfc5322_date,
};
use crate::locale::{self, Lang};
use crate::{Corpus, GenConfig, GeneratedItem, Mailbox};

/// 2024-01-01T00:00:00Z
const EPOCH: i64 = 1_704_067_200;

#[derive(Clone, Debug)]
struct Person {
    display: String,
    first: String,
    addr: String,
    locale: &'static str,
    /// Index into the mailbox list for people of the organisation.
    mailbox: Option<usize>,
    server: String,
}

#[derive(Clone, Debug)]
struct DistList {
    display: String,
    addr: String,
    members: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rcpt {
    Person(usize),
    List(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    To,
    Cc,
    Bcc,
}

#[derive(Clone, Debug)]
struct Attachment {
    name: String,
    content_type: &'static str,
    date: i64,
    data: Rc<[u8]>,
}

#[derive(Clone, Debug)]
struct Thread {
    topic: String,
    references: Vec<String>,
    thread_index: Vec<u8>,
    participants: Vec<usize>,
    last_from: usize,
    last_date: i64,
    last_to: Vec<usize>,
    last_text: String,
    attachments: Vec<Attachment>,
}

/// A message ready to be rendered.
#[derive(Clone, Debug)]
struct Outgoing {
    from: usize,
    rcpts: Vec<(Kind, Rcpt)>,
    subject: String,
    topic: String,
    date: i64,
    message_id: String,
    in_reply_to: Option<String>,
    references: Vec<String>,
    thread_index: Vec<u8>,
    text: String,
    html: bool,
    attachments: Vec<Attachment>,
    /// Extra content headers (DKIM for external mail, …), common to every copy.
    extra: Vec<(String, String)>,
}

/// A rendered message: the parts every copy shares.
struct Rendered {
    /// From … X-MS-TNEF-Correlator (without Bcc).
    top: Vec<u8>,
    /// Bcc header, only in the sender's Sent Items copy.
    bcc: Vec<u8>,
    /// Content-Type … MIME-Version.
    bottom: Vec<u8>,
    /// Everything after the empty line.
    body: Vec<u8>,
}

impl Rendered {
    fn original(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.top.len() + self.bottom.len() + self.body.len() + 2);
        v.extend_from_slice(&self.top);
        v.extend_from_slice(&self.bottom);
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(&self.body);
        v
    }
}

struct Gen<'a> {
    cfg: &'a GenConfig,
    rng: ChaCha8Rng,
    people: Vec<Person>,
    n_internal: usize,
    lists: Vec<DistList>,
    mailboxes: Vec<Mailbox>,
    journal_mailbox: Option<String>,
    clock: i64,
    threads: Vec<Thread>,
    items: Vec<GeneratedItem>,
    seq: u64,
}

pub(crate) fn generate(cfg: &GenConfig) -> Corpus {
    let mut g = Gen::new(cfg, cfg.users.max(1), true);
    for _ in 0..cfg.messages {
        g.one_message();
    }
    if cfg.non_mail_items {
        for u in 0..g.n_internal {
            g.non_mail(u);
        }
    }
    for k in 0..cfg.malformed {
        g.malformed(k);
    }
    if let Some(bytes) = cfg.huge_item_bytes {
        g.huge(bytes);
    }
    Corpus {
        mailboxes: g.mailboxes,
        items: g.items,
    }
}

pub(crate) fn fanout(
    seed: u64,
    recipients: usize,
    attachment_bytes: usize,
    journal: bool,
) -> Vec<GeneratedItem> {
    let cfg = GenConfig {
        seed,
        users: recipients + 1,
        journal,
        localized: true,
        ..GenConfig::default()
    };
    let mut g = Gen::new(&cfg, recipients + 1, false);
    let from = 0;
    let mut rcpts = Vec::new();
    for r in 1..=recipients {
        let kind = if r + 1 == recipients + 1 && recipients >= 3 {
            Kind::Bcc
        } else if r <= 4 {
            Kind::To
        } else {
            Kind::Cc
        };
        rcpts.push((kind, Rcpt::Person(r)));
    }
    let mut msg = g.new_message(from, rcpts, None);
    msg.attachments.clear();
    if attachment_bytes > 0 {
        let date = msg.date;
        msg.attachments
            .push(g.binary_attachment(attachment_bytes, date));
    }
    g.deliver(&msg, false);
    g.items
}

impl<'a> Gen<'a> {
    fn new(cfg: &'a GenConfig, users: usize, externals: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let domain = cfg.domain.clone();
        let servers: Vec<String> = (1..=3).map(|i| format!("EXCH{i:02}.{domain}")).collect();
        let mut people = Vec::new();
        let mut mailboxes = Vec::new();
        let mut used = BTreeSet::new();
        for i in 0..users {
            let loc = if cfg.localized {
                locale::LOCALES[i % locale::LOCALES.len()]
            } else {
                "en-US"
            };
            let (firsts, lasts, family_first) = locale::names(loc);
            let f = firsts[rng.random_range(0..firsts.len())];
            let l = lasts[rng.random_range(0..lasts.len())];
            let display = if family_first {
                if loc == "zh-CN" {
                    format!("{}{}", l.0, f.0)
                } else {
                    format!("{} {}", l.0, f.0)
                }
            } else {
                format!("{} {}", f.0, l.0)
            };
            let mut local = format!("{}.{}", f.1, l.1);
            let mut n = 2;
            while !used.insert(local.clone()) {
                local = format!("{}.{}{n}", f.1, l.1);
                n += 1;
            }
            let addr = format!("{local}@{domain}");
            mailboxes.push(Mailbox {
                address: addr.clone(),
                display_name: display.clone(),
                locale: loc.to_owned(),
            });
            people.push(Person {
                display,
                first: f.0.to_owned(),
                addr,
                locale: loc,
                mailbox: Some(i),
                server: servers[i % servers.len()].clone(),
            });
        }
        let n_internal = people.len();
        if externals {
            const EXT: &[(&str, &str, &str, &str)] = &[
                ("Ava Chen", "Ava", "ava.chen@fabrikam.example", "en-US"),
                (
                    "Dieter Groß",
                    "Dieter",
                    "d.gross@northwind-handel.example",
                    "de-DE",
                ),
                ("周杰", "杰", "zhou.jie@tailspin.example.cn", "zh-CN"),
                ("Support Team", "Support", "support@adatum.example", "en-US"),
                ("Newsletter", "Newsletter", "news@litware.example", "en-US"),
                (
                    "Élodie Marchand",
                    "Élodie",
                    "elodie.marchand@wingtip.example",
                    "fr-FR",
                ),
                ("Grace Kim", "Grace", "grace.kim@mail.example.net", "en-US"),
                (
                    "Sven Öberg",
                    "Sven",
                    "sven.oberg@proseware.example",
                    "de-DE",
                ),
            ];
            for (display, first, addr, loc) in EXT {
                people.push(Person {
                    display: (*display).to_owned(),
                    first: (*first).to_owned(),
                    addr: (*addr).to_owned(),
                    locale: loc,
                    mailbox: None,
                    server: format!("mail.{}", addr.split('@').nth(1).unwrap_or("example.net")),
                });
            }
        }
        let mut lists = Vec::new();
        if n_internal >= 4 && externals {
            lists.push(DistList {
                display: "All Staff".to_owned(),
                addr: format!("all-staff@{domain}"),
                members: (0..n_internal).collect(),
            });
            lists.push(DistList {
                display: "Projektteam Nord".to_owned(),
                addr: format!("team-nord@{domain}"),
                members: (0..n_internal).step_by(2).collect(),
            });
        }
        let journal_mailbox = cfg.journal.then(|| {
            let addr = format!("journal@{domain}");
            mailboxes.push(Mailbox {
                address: addr.clone(),
                display_name: "Journal Mailbox".to_owned(),
                locale: "en-US".to_owned(),
            });
            addr
        });
        let clock = EPOCH + i64::try_from(cfg.seed % 365).unwrap_or(0) * 86_400;
        Gen {
            cfg,
            rng,
            people,
            n_internal,
            lists,
            mailboxes,
            journal_mailbox,
            clock,
            threads: Vec::new(),
            items: Vec::new(),
            seq: 0,
        }
    }

    // ---------------------------------------------------------------- randomness helpers

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn range(&mut self, lo: usize, hi_incl: usize) -> usize {
        if hi_incl <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi_incl)
        }
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.random_range(0..xs.len())]
    }

    fn hex(&mut self, n: usize) -> String {
        const H: &[u8; 16] = b"0123456789abcdef";
        (0..n)
            .map(|_| char::from(H[self.rng.random_range(0..16)]))
            .collect()
    }

    fn guid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn tick(&mut self, max_secs: u64) -> i64 {
        self.clock += i64::try_from(self.rng.random_range(30..=max_secs)).unwrap_or(60);
        self.clock
    }

    fn message_id(&mut self, from: usize) -> String {
        self.seq += 1;
        let p = &self.people[from];
        if p.mailbox.is_some() {
            let host = p.server.clone();
            let h = self.hex(32).to_ascii_uppercase();
            format!("<{h}@{host}>")
        } else {
            let host = p.server.clone();
            let a = self.hex(20);
            format!("<{a}.{}@{host}>", self.seq)
        }
    }

    // ---------------------------------------------------------------- text

    fn sentence(&mut self, lang: Lang) -> String {
        match lang {
            Lang::Zh => {
                let n = self.range(4, 10);
                let mut s = String::new();
                for i in 0..n {
                    s.push_str(self.pick(locale::ZH_WORDS));
                    if i == n / 2 {
                        s.push('，');
                    }
                }
                s.push('。');
                s
            }
            Lang::En | Lang::De => {
                let words = if lang == Lang::En {
                    locale::EN_WORDS
                } else {
                    locale::DE_WORDS
                };
                let n = self.range(6, 16);
                let mut s = String::new();
                for i in 0..n {
                    let w = self.pick(words);
                    if i == 0 {
                        let mut c = w.chars();
                        if let Some(f) = c.next() {
                            s.extend(f.to_uppercase());
                            s.push_str(c.as_str());
                        }
                    } else {
                        s.push(' ');
                        s.push_str(w);
                    }
                }
                s.push(if self.chance(0.1) { '?' } else { '.' });
                s
            }
        }
    }

    fn paragraph(&mut self, lang: Lang) -> String {
        let n = self.range(1, 5);
        let sep = if lang == Lang::Zh { "" } else { " " };
        (0..n)
            .map(|_| self.sentence(lang))
            .collect::<Vec<_>>()
            .join(sep)
    }

    fn subject(&mut self, lang: Lang) -> String {
        let n = self.range(2, 6);
        let words = match lang {
            Lang::En => locale::EN_WORDS,
            Lang::De => locale::DE_WORDS,
            Lang::Zh => locale::ZH_WORDS,
        };
        let sep = if lang == Lang::Zh { "" } else { " " };
        let mut s = (0..n)
            .map(|_| self.pick(words))
            .collect::<Vec<_>>()
            .join(sep);
        if let Some(f) = s.chars().next() {
            let up: String = f.to_uppercase().collect();
            s.replace_range(..f.len_utf8(), &up);
        }
        if self.chance(0.2) {
            let y = 2023 + self.range(0, 2);
            let q = self.range(1, 4);
            s.push_str(&format!(" Q{q}/{y}"));
        }
        s
    }

    fn body_text(&mut self, from: usize, to: Option<usize>) -> String {
        let sender = self.people[from].clone();
        let lang = locale::lang(sender.locale);
        let (hello, bye) = locale::greeting(sender.locale);
        let mut t = String::new();
        match to {
            Some(r) => t.push_str(&format!("{hello} {},\r\n\r\n", self.people[r].first)),
            None => t.push_str(&format!("{hello},\r\n\r\n")),
        }
        let paras = self.range(1, 4);
        for _ in 0..paras {
            let p = self.paragraph(lang);
            t.push_str(&p);
            t.push_str("\r\n\r\n");
        }
        if self.chance(0.15) {
            // a bullet list, as people paste into mails
            for i in 1..=self.range(2, 5) {
                let s = self.sentence(lang);
                t.push_str(&format!("{i}. {s}\r\n"));
            }
            t.push_str("\r\n");
        }
        t.push_str(&format!("{bye}\r\n{}\r\n\r\n", sender.display));
        if sender.mailbox.is_some() {
            t.push_str(&format!(
                "{}\r\nContoso Ltd. | {}\r\nTel. +49 30 1234 {:04}\r\n",
                sender.display,
                sender.addr,
                sender.mailbox.unwrap_or(0) * 37 % 10_000
            ));
        }
        t
    }

    // ---------------------------------------------------------------- attachments

    fn attachment(&mut self, date: i64, lang: Lang) -> Attachment {
        let roll = self.rng.random_range(0..100);
        let size = if roll < 80 {
            self.range(2_000, 40_000)
        } else if roll < 97 {
            self.range(40_000, 100_000)
        } else {
            self.range(100_000, 2_000_000)
        };
        let kind = self.rng.random_range(0..6);
        let (stem, ext, ct): (&str, &str, &'static str) = match kind {
            0 | 1 => (
                self.pick(match lang {
                    Lang::De => &[
                        "Angebot Müller GmbH",
                        "Protokoll Besprechung",
                        "Rechnung 2024-117",
                    ][..],
                    Lang::Zh => &["预算表", "会议纪要", "合同草稿"][..],
                    Lang::En => &["Quarterly Report", "Proposal v2", "Invoice 2024-117"][..],
                }),
                "pdf",
                "application/pdf",
            ),
            2 => (
                "Forecast",
                "xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
            3 => (
                "Draft",
                "docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            4 => ("image001", "png", "image/png"),
            _ => ("export", "csv", "text/csv"),
        };
        let data: Vec<u8> = match ext {
            "csv" => self.csv(size),
            "pdf" => self.pdf_like(size),
            "png" => self.binary(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", size),
            _ => self.binary(b"PK\x03\x04\x14\0\x06\0\x08\0\0\0!\0", size),
        };
        Attachment {
            name: format!("{stem}.{ext}"),
            content_type: ct,
            date,
            data: data.into(),
        }
    }

    fn binary_attachment(&mut self, size: usize, date: i64) -> Attachment {
        Attachment {
            name: "Präsentation.pdf".to_owned(),
            content_type: "application/pdf",
            date,
            data: self.pdf_like(size).into(),
        }
    }

    fn binary(&mut self, magic: &[u8], size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size.max(magic.len())];
        v[..magic.len()].copy_from_slice(magic);
        let n = magic.len();
        self.rng.fill_bytes(&mut v[n..]);
        v.truncate(size.max(1));
        v
    }

    /// A PDF-like file: readable object structure around compressed-looking streams.
    fn pdf_like(&mut self, size: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(size + 256);
        v.extend_from_slice(b"%PDF-1.7\r\n%\xe2\xe3\xcf\xd3\r\n");
        let mut obj = 1;
        while v.len() + 64 < size {
            let chunk = (size - v.len() - 64).min(self.range(4_000, 60_000));
            v.extend_from_slice(
                format!("{obj} 0 obj\r\n<</Filter/FlateDecode/Length {chunk}>>\r\nstream\r\n")
                    .as_bytes(),
            );
            let start = v.len();
            v.resize(start + chunk, 0);
            self.rng.fill_bytes(&mut v[start..]);
            v.extend_from_slice(b"\r\nendstream\r\nendobj\r\n");
            obj += 1;
        }
        v.extend_from_slice(b"trailer\r\n<</Root 1 0 R>>\r\n%%EOF\r\n");
        if size > 0 {
            v.truncate(size.max(32));
            if v.len() < size {
                v.resize(size, b' ');
            }
        }
        v
    }

    fn csv(&mut self, size: usize) -> Vec<u8> {
        let mut s = String::from("Date;Region;Product;Units;Revenue;Owner\r\n");
        const REG: &[&str] = &["Nord", "Süd", "West", "Ost", "华东", "EMEA"];
        const PROD: &[&str] = &["Widget A", "Widget B", "Service Plus", "Lizenz Pro"];
        while s.len() < size {
            let d = self.range(1, 28);
            let m = self.range(1, 12);
            let r = self.pick(REG);
            let p = self.pick(PROD);
            let u = self.range(1, 900);
            let c = self.range(100, 99_999);
            s.push_str(&format!(
                "2024-{m:02}-{d:02};{r};{p};{u};{}.{:02};{}\r\n",
                c,
                c % 100,
                self.pick(&["jm", "ks", "wl", "fd"])
            ));
        }
        s.into_bytes()
    }

    // ---------------------------------------------------------------- messages

    fn pick_recipients(&mut self, from: usize) -> Vec<(Kind, Rcpt)> {
        let max = self.cfg.max_recipients.max(1);
        let n = if self.chance(0.6) {
            self.range(1, 2.min(max))
        } else {
            self.range(1, max)
        };
        let mut out: Vec<(Kind, Rcpt)> = Vec::new();
        if !self.lists.is_empty() && self.chance(0.03) {
            let l = self.rng.random_range(0..self.lists.len());
            out.push((Kind::To, Rcpt::List(l)));
        }
        let mut guard = 0;
        while out.len() < n && guard < 100 {
            guard += 1;
            let p = if self.chance(0.85) || self.people.len() == self.n_internal {
                self.rng.random_range(0..self.n_internal)
            } else {
                self.rng.random_range(self.n_internal..self.people.len())
            };
            if p == from || out.iter().any(|(_, r)| *r == Rcpt::Person(p)) {
                continue;
            }
            let kind = if out.is_empty() {
                Kind::To
            } else {
                match self.rng.random_range(0..10) {
                    0..=4 => Kind::To,
                    5..=8 => Kind::Cc,
                    _ => Kind::Bcc,
                }
            };
            out.push((kind, Rcpt::Person(p)));
        }
        out
    }

    fn new_message(
        &mut self,
        from: usize,
        rcpts: Vec<(Kind, Rcpt)>,
        extra_att: Option<bool>,
    ) -> Outgoing {
        let date = self.tick(3 * 3600);
        let lang = locale::lang(self.people[from].locale);
        let topic = self.subject(lang);
        let first_to = rcpts.iter().find_map(|(k, r)| match (k, r) {
            (Kind::To, Rcpt::Person(p)) => Some(*p),
            _ => None,
        });
        let text = self.body_text(from, first_to);
        let message_id = self.message_id(from);
        let mut ti = vec![0x01u8];
        ti.extend_from_slice(&(date as u64).to_be_bytes()[3..8]);
        let mut g = [0u8; 16];
        self.rng.fill_bytes(&mut g);
        ti.extend_from_slice(&g);
        let with_att = extra_att.unwrap_or_else(|| self.cfg.attachments && self.chance(0.12));
        let mut attachments = Vec::new();
        if with_att {
            let n = if self.chance(0.8) {
                1
            } else {
                self.range(2, 3)
            };
            for _ in 0..n {
                attachments.push(self.attachment(date, lang));
            }
        }
        let html = self.chance(0.9);
        Outgoing {
            from,
            rcpts,
            subject: topic.clone(),
            topic,
            date,
            message_id,
            in_reply_to: None,
            references: Vec::new(),
            thread_index: ti,
            text,
            html,
            attachments,
            extra: Vec::new(),
        }
    }

    fn reply(&mut self, t: usize, forward: bool) -> Outgoing {
        let th = self.threads[t].clone();
        let from = if forward {
            th.participants[self.rng.random_range(0..th.participants.len())]
        } else {
            // someone who received the last message answers it
            let cands: Vec<usize> = th
                .last_to
                .iter()
                .copied()
                .filter(|p| self.people[*p].mailbox.is_some() || self.chance(0.5))
                .collect();
            if cands.is_empty() {
                th.last_from
            } else {
                cands[self.rng.random_range(0..cands.len())]
            }
        };
        let date = self.tick(2 * 3600).max(th.last_date + 60);
        let loc = self.people[from].locale;
        let (re, fw) = locale::reply_prefix(loc);
        let subject = format!("{}{}", if forward { fw } else { re }, th.topic);
        let mut rcpts: Vec<(Kind, Rcpt)> = Vec::new();
        if forward {
            let mut r = self.pick_recipients(from);
            r.retain(|(_, x)| *x != Rcpt::Person(from));
            rcpts = r;
        } else {
            if th.last_from != from {
                rcpts.push((Kind::To, Rcpt::Person(th.last_from)));
            }
            if self.chance(0.5) {
                for p in &th.last_to {
                    if *p != from && *p != th.last_from {
                        rcpts.push((Kind::Cc, Rcpt::Person(*p)));
                    }
                }
            }
        }
        if rcpts.is_empty() {
            let r = (from + 1) % self.n_internal.max(1);
            rcpts.push((Kind::To, Rcpt::Person(r)));
        }
        let first_to = rcpts.iter().find_map(|(_, r)| match r {
            Rcpt::Person(p) => Some(*p),
            Rcpt::List(_) => None,
        });
        let mut text = self.body_text(from, first_to);
        let prev = &self.people[th.last_from];
        let de = loc == "de-DE";
        let (l_from, l_sent, l_to, l_subj) = if de {
            ("Von", "Gesendet", "An", "Betreff")
        } else {
            ("From", "Sent", "To", "Subject")
        };
        let to_names: Vec<String> = th
            .last_to
            .iter()
            .map(|p| self.people[*p].display.clone())
            .collect();
        text.push_str(&format!(
            "\r\n{l_from}: {} <{}>\r\n{l_sent}: {}\r\n{l_to}: {}\r\n{l_subj}: {}\r\n\r\n",
            prev.display,
            prev.addr,
            rfc5322_date(th.last_date, locale::utc_offset_minutes(loc)),
            to_names.join("; "),
            th.topic
        ));
        // Outlook quotes the whole previous message; keep threads from growing without bound.
        let mut quoted = th.last_text.clone();
        if quoted.len() > 12_000 {
            let mut cut = 12_000;
            while !quoted.is_char_boundary(cut) {
                cut -= 1;
            }
            quoted.truncate(cut);
            quoted.push_str("\r\n[...]\r\n");
        }
        text.push_str(&quoted);
        let message_id = self.message_id(from);
        let mut refs = th.references.clone();
        if refs.len() > 10 {
            refs.drain(1..refs.len() - 9);
        }
        let in_reply_to = refs.last().cloned();
        let mut ti = th.thread_index.clone();
        let mut delta = [0u8; 5];
        self.rng.fill_bytes(&mut delta);
        ti.extend_from_slice(&delta);
        if ti.len() > 22 + 5 * 20 {
            ti.truncate(22);
        }
        let mut attachments = if forward {
            th.attachments.clone()
        } else {
            Vec::new()
        };
        if self.cfg.attachments && self.chance(0.05) {
            let lang = locale::lang(loc);
            attachments.push(self.attachment(date, lang));
        }
        Outgoing {
            from,
            rcpts,
            subject,
            topic: th.topic,
            date,
            message_id,
            in_reply_to,
            references: refs,
            thread_index: ti,
            text,
            html: self.chance(0.9),
            attachments,
            extra: Vec::new(),
        }
    }

    fn one_message(&mut self) {
        let r = self.rng.random_range(0..100);
        let external_from = self.people.len() > self.n_internal && r < 22;
        let mut msg = if !self.threads.is_empty() && r >= 60 {
            let t = if self.chance(0.7) {
                self.threads.len() - 1 - self.range(0, 3.min(self.threads.len() - 1))
            } else {
                self.rng.random_range(0..self.threads.len())
            };
            self.reply(t, r >= 92)
        } else {
            let from = if external_from {
                self.rng.random_range(self.n_internal..self.people.len())
            } else {
                self.rng.random_range(0..self.n_internal)
            };
            let mut rcpts = self.pick_recipients(from);
            if external_from {
                // inbound mail is addressed to the organisation
                rcpts.retain(|(_, r)| match r {
                    Rcpt::Person(p) => self.people[*p].mailbox.is_some(),
                    Rcpt::List(_) => true,
                });
                if rcpts.is_empty() {
                    let p = self.rng.random_range(0..self.n_internal);
                    rcpts.push((Kind::To, Rcpt::Person(p)));
                }
                for (k, _) in rcpts.iter_mut() {
                    if *k == Kind::Bcc {
                        *k = Kind::Cc;
                    }
                }
            }
            self.new_message(from, rcpts, None)
        };
        if self.people[msg.from].mailbox.is_none() {
            let d = self.people[msg.from]
                .addr
                .split('@')
                .nth(1)
                .unwrap_or("example.net")
                .to_owned();
            let bh = base64_plain(&{
                let mut b = [0u8; 32];
                self.rng.fill_bytes(&mut b);
                b
            });
            let mut sig = [0u8; 128];
            self.rng.fill_bytes(&mut sig);
            let sig = base64_plain(&sig);
            let mut folded = String::new();
            for (i, c) in sig.as_bytes().chunks(70).enumerate() {
                if i > 0 {
                    folded.push_str("\r\n\t ");
                }
                folded.push_str(std::str::from_utf8(c).unwrap_or(""));
            }
            msg.extra.push((
                "DKIM-Signature".to_owned(),
                format!(
                    "v=1; a=rsa-sha256; c=relaxed/relaxed; d={d}; s=selector1;\r\n\th=From:Date:Subject:Message-ID:Content-Type:MIME-Version;\r\n\tbh={bh};\r\n\tb={folded}"
                ),
            ));
        }
        self.deliver(&msg, true);
        // remember the thread
        let to: Vec<usize> = self
            .expand(&msg.rcpts)
            .into_iter()
            .map(|(_, p, _)| p)
            .collect();
        let mut refs = msg.references.clone();
        refs.push(msg.message_id.clone());
        let mut participants: Vec<usize> = to.clone();
        participants.push(msg.from);
        participants.retain(|p| self.people[*p].mailbox.is_some());
        if participants.is_empty() {
            participants.push(0);
        }
        let th = Thread {
            topic: msg.topic.clone(),
            references: refs,
            thread_index: msg.thread_index.clone(),
            participants,
            last_from: msg.from,
            last_date: msg.date,
            last_to: to,
            last_text: msg.text.clone(),
            attachments: msg.attachments.clone(),
        };
        if let Some(existing) = self.threads.iter_mut().find(|t| t.topic == msg.topic) {
            *existing = th;
        } else {
            self.threads.push(th);
            if self.threads.len() > 64 {
                self.threads.remove(0);
            }
        }
    }

    /// (kind, person, expanded-from list) for every recipient, lists expanded, each person
    /// once (first occurrence wins).
    fn expand(&self, rcpts: &[(Kind, Rcpt)]) -> Vec<(Kind, usize, Option<usize>)> {
        let mut out: Vec<(Kind, usize, Option<usize>)> = Vec::new();
        for (k, r) in rcpts {
            match r {
                Rcpt::Person(p) => {
                    if !out.iter().any(|(_, q, _)| q == p) {
                        out.push((*k, *p, None));
                    }
                }
                Rcpt::List(l) => {
                    for m in &self.lists[*l].members {
                        if !out.iter().any(|(_, q, _)| q == m) {
                            out.push((*k, *m, Some(*l)));
                        }
                    }
                }
            }
        }
        out
    }

    fn rcpt_header(&self, r: &Rcpt) -> String {
        match r {
            Rcpt::Person(p) => address(&self.people[*p].display, &self.people[*p].addr),
            Rcpt::List(l) => address(&self.lists[*l].display, &self.lists[*l].addr),
        }
    }

    fn render(&mut self, m: &Outgoing) -> Rendered {
        let bid = self.hex(24).to_ascii_uppercase();
        let sender = &self.people[m.from];
        let loc = sender.locale;
        let off = locale::utc_offset_minutes(loc);
        let mut top = Vec::with_capacity(1024);
        for (n, v) in &m.extra {
            header(&mut top, n, v);
        }
        header(&mut top, "From", &address(&sender.display, &sender.addr));
        let list = |k: Kind| -> Vec<String> {
            m.rcpts
                .iter()
                .filter(|(kk, _)| *kk == k)
                .map(|(_, r)| self.rcpt_header(r))
                .collect()
        };
        address_header(&mut top, "To", &list(Kind::To));
        address_header(&mut top, "CC", &list(Kind::Cc));
        let mut bcc = Vec::new();
        address_header(&mut bcc, "BCC", &list(Kind::Bcc));
        let subj = if m.subject.len() % 7 == 3 {
            encode_words_q(&m.subject)
        } else {
            encode_words(&m.subject)
        };
        header(&mut top, "Subject", &subj);
        header(&mut top, "Thread-Topic", &encode_words(&m.topic));
        header(&mut top, "Thread-Index", &base64_plain(&m.thread_index));
        header(&mut top, "Date", &rfc5322_date(m.date, off));
        header(&mut top, "Message-ID", &m.message_id);
        if !m.references.is_empty() {
            header(&mut top, "References", &m.references.join("\r\n "));
        }
        if let Some(irt) = &m.in_reply_to {
            header(&mut top, "In-Reply-To", irt);
        }
        header(&mut top, "Accept-Language", &format!("{}, en-US", loc));
        header(&mut top, "Content-Language", loc);
        header(
            &mut top,
            "X-MS-Has-Attach",
            if m.attachments.is_empty() { "" } else { "yes" },
        );
        header(&mut top, "X-MS-TNEF-Correlator", "");

        let mut bottom = Vec::with_capacity(256);
        let mut body = Vec::with_capacity(m.text.len() * 3 + 1024);
        let (charset, b64) = if m.text.is_ascii() {
            ("us-ascii", false)
        } else {
            (
                "utf-8",
                locale::lang(loc) == Lang::Zh && m.text.len().is_multiple_of(2),
            )
        };
        let cte = if b64 { "base64" } else { "quoted-printable" };
        let enc = |bytes: &[u8], out: &mut Vec<u8>| {
            if b64 {
                base64_wrapped(bytes, out);
            } else {
                quoted_printable(bytes, out);
                out.extend_from_slice(b"\r\n");
            }
        };
        let text_part = |out: &mut Vec<u8>| {
            header(
                out,
                "Content-Type",
                &format!("text/plain; charset=\"{charset}\""),
            );
            header(out, "Content-Transfer-Encoding", cte);
            out.extend_from_slice(b"\r\n");
            enc(m.text.as_bytes(), out);
        };
        let html_part = |out: &mut Vec<u8>| {
            header(
                out,
                "Content-Type",
                &format!("text/html; charset=\"{charset}\""),
            );
            header(out, "Content-Transfer-Encoding", cte);
            out.extend_from_slice(b"\r\n");
            enc(html_of(&m.text, loc).as_bytes(), out);
        };
        let alt = |out: &mut Vec<u8>, b: &str| {
            out.extend_from_slice(format!("--{b}\r\n").as_bytes());
            text_part(out);
            out.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
            html_part(out);
            out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        };
        if m.attachments.is_empty() {
            if m.html {
                let b = format!("_000_{bid}_");
                header(
                    &mut bottom,
                    "Content-Type",
                    &format!("multipart/alternative;\r\n\tboundary=\"{b}\""),
                );
                alt(&mut body, &b);
            } else {
                header(
                    &mut bottom,
                    "Content-Type",
                    &format!("text/plain; charset=\"{charset}\""),
                );
                header(&mut bottom, "Content-Transfer-Encoding", cte);
                enc(m.text.as_bytes(), &mut body);
            }
        } else {
            let outer = format!("_004_{bid}_");
            let inner = format!("_000_{bid}_");
            header(
                &mut bottom,
                "Content-Type",
                &format!("multipart/mixed;\r\n\tboundary=\"{outer}\""),
            );
            body.extend_from_slice(format!("--{outer}\r\n").as_bytes());
            if m.html {
                header(
                    &mut body,
                    "Content-Type",
                    &format!("multipart/alternative;\r\n\tboundary=\"{inner}\""),
                );
                body.extend_from_slice(b"\r\n");
                alt(&mut body, &inner);
            } else {
                text_part(&mut body);
            }
            for a in &m.attachments {
                body.extend_from_slice(format!("\r\n--{outer}\r\n").as_bytes());
                attachment_part(a, &mut body);
            }
            body.extend_from_slice(format!("\r\n--{outer}--\r\n").as_bytes());
        }
        header(&mut bottom, "MIME-Version", "1.0");
        Rendered {
            top,
            bcc,
            bottom,
            body,
        }
    }

    fn received(
        &mut self,
        out: &mut Vec<u8>,
        from_host: &str,
        to_host: &str,
        at: i64,
        off: i32,
        external: bool,
    ) {
        let id = format!("15.2.{}.{}", 1118 + (at % 140), at % 40);
        if external {
            let ip = format!("203.0.113.{}", at % 250 + 1);
            header(
                out,
                "Received",
                &format!(
                    "from {from_host} ({ip}) by {to_host}\r\n (10.0.1.{}) with Microsoft SMTP Server (version=TLS1_2,\r\n cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id {id} via Frontend\r\n Transport; {}",
                    at % 20 + 10,
                    rfc5322_date(at, off)
                ),
            );
        } else {
            header(
                out,
                "Received",
                &format!(
                    "from {from_host} (10.0.1.{}) by {to_host}\r\n (10.0.1.{}) with Microsoft SMTP Server (version=TLS1_2,\r\n cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id {id}; {}",
                    at % 7 + 11,
                    at % 5 + 21,
                    rfc5322_date(at, off)
                ),
            );
        }
    }

    /// Renders `m` and files every copy: Sent Items (internal senders), one copy per
    /// internal recipient mailbox, and a journal report.
    fn deliver(&mut self, m: &Outgoing, vary_folders: bool) {
        let r = self.render(m);
        let original = r.original();
        let sender = self.people[m.from].clone();
        let net_id = self.guid();
        if let Some(mb) = sender.mailbox {
            let mut sent = Vec::with_capacity(original.len() + r.bcc.len());
            sent.extend_from_slice(&r.top);
            sent.extend_from_slice(&r.bcc);
            sent.extend_from_slice(&r.bottom);
            sent.extend_from_slice(b"\r\n");
            sent.extend_from_slice(&r.body);
            let loc = self.mailboxes[mb].locale.clone();
            self.push(mb, &loc, "sentitems", Vec::new(), "IPM.Note", true, sent);
        }
        let expanded = self.expand(&m.rcpts);
        for (kind, p, _) in &expanded {
            let person = self.people[*p].clone();
            let Some(mb) = person.mailbox else { continue };
            if *p == m.from {
                continue;
            }
            let at = m.date + i64::try_from(self.range(0, 4)).unwrap_or(0);
            let off = locale::utc_offset_minutes(person.locale);
            let mut copy = Vec::with_capacity(original.len() + 2048);
            let external = sender.mailbox.is_none();
            if external {
                let edge = format!("EDGE01.{}", self.cfg.domain);
                self.received(&mut copy, &edge, &person.server, at, off, false);
                self.received(&mut copy, &sender.server, &edge, at - 1, off, true);
            } else if sender.server != person.server {
                let (a, b) = (sender.server.clone(), person.server.clone());
                self.received(&mut copy, &a, &b, at, off, false);
            }
            if !external {
                let s = sender.server.clone();
                header(
                    &mut copy,
                    "Received",
                    &format!(
                        "from {s} ([fe80::{:x}:{:x}]) by\r\n {s} ([fe80::{:x}:{:x}%12]) with mapi id\r\n 15.02.1258.012; {}",
                        at % 0xffff,
                        (at / 7) % 0xffff,
                        at % 0xfff,
                        (at / 3) % 0xfff,
                        rfc5322_date(m.date, locale::utc_offset_minutes(sender.locale))
                    ),
                );
            } else {
                header(
                    &mut copy,
                    "Authentication-Results",
                    &format!(
                        "{}; dkim=pass header.d={}; spf=pass smtp.mailfrom={}",
                        self.cfg.domain,
                        sender.addr.split('@').nth(1).unwrap_or(""),
                        sender.addr
                    ),
                );
            }
            copy.extend_from_slice(&r.top);
            let h = |c: &mut Vec<u8>, n: &str, v: &str| header(c, n, v);
            h(
                &mut copy,
                "X-MS-Exchange-Organization-AuthSource",
                &sender.server,
            );
            h(
                &mut copy,
                "X-MS-Exchange-Organization-AuthAs",
                if external { "Anonymous" } else { "Internal" },
            );
            h(
                &mut copy,
                "X-MS-Exchange-Organization-AuthMechanism",
                if external { "06" } else { "04" },
            );
            h(
                &mut copy,
                "X-MS-Exchange-Organization-SCL",
                if external { "1" } else { "-1" },
            );
            h(
                &mut copy,
                "X-MS-Exchange-Organization-Network-Message-Id",
                &net_id,
            );
            h(
                &mut copy,
                "X-MS-Exchange-Organization-MessageDirectionality",
                if external { "Incoming" } else { "Originating" },
            );
            h(
                &mut copy,
                "X-MS-Exchange-Organization-Recipient-P2-Type",
                match kind {
                    Kind::To => "To",
                    Kind::Cc => "Cc",
                    Kind::Bcc => "Bcc",
                },
            );
            if *kind == Kind::Bcc {
                h(
                    &mut copy,
                    "X-MS-Exchange-Organization-Processed-By-BccFoldering",
                    "15.02.1258.012",
                );
            }
            h(
                &mut copy,
                "X-MS-Exchange-Organization-OriginalArrivalTime",
                &rfc5322_date(m.date, 0),
            );
            h(
                &mut copy,
                "X-MS-Exchange-Transport-EndToEndLatency",
                &format!("00:00:0{}.{:07}", at - m.date, (at * 7919) % 10_000_000),
            );
            h(&mut copy, "X-MS-Exchange-Inbox-Rules-Loop", &person.addr);
            h(&mut copy, "Return-Path", &sender.addr);
            copy.extend_from_slice(&r.bottom);
            copy.extend_from_slice(b"\r\n");
            copy.extend_from_slice(&r.body);
            let loc = person.locale;
            let (dist, sub, read) = if vary_folders {
                let roll = self.rng.random_range(0..100);
                let (subs, subsubs) = locale::user_folders(loc);
                if external && roll < 3 {
                    ("junkemail", Vec::new(), false)
                } else if roll < 7 {
                    ("deleteditems", Vec::new(), true)
                } else if roll < 25 {
                    let mut path = vec![subs[m.topic.len() % subs.len()].to_owned()];
                    if roll < 10 {
                        path.push(subsubs[m.topic.len() % subsubs.len()].to_owned());
                    }
                    ("inbox", path, self.chance(0.8))
                } else {
                    ("inbox", Vec::new(), self.chance(0.7))
                }
            } else {
                ("inbox", Vec::new(), false)
            };
            self.push(mb, loc, dist, sub, "IPM.Note", read, copy);
        }
        if self.journal_mailbox.is_some() {
            self.journal(m, &expanded, &original);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        mb: usize,
        loc: &str,
        dist: &str,
        sub: Vec<String>,
        class: &str,
        read: bool,
        mime: Vec<u8>,
    ) {
        let mut path = vec![
            locale::well_known_folder_name(loc, dist)
                .unwrap_or(dist)
                .to_owned(),
        ];
        path.extend(sub);
        self.items.push(GeneratedItem {
            mailbox: self.mailboxes[mb].address.clone(),
            folder_path: path,
            distinguished: Some(dist.to_owned()),
            item_class: class.to_owned(),
            is_read: read,
            mime,
        });
    }

    /// Exchange envelope journal report: report headers, a text/plain envelope listing the
    /// sender and every recipient (Bcc and expanded list members included), and the original
    /// message, unchanged, as a `message/rfc822` attachment.
    fn journal(
        &mut self,
        m: &Outgoing,
        expanded: &[(Kind, usize, Option<usize>)],
        original: &[u8],
    ) {
        let Some(jaddr) = self.journal_mailbox.clone() else {
            return;
        };
        let domain = self.cfg.domain.clone();
        let at = m.date + 2;
        let sender = self.people[m.from].clone();
        let mut env = String::new();
        env.push_str(&format!("Sender: {}\r\n", sender.addr));
        env.push_str(&format!("Subject: {}\r\n", m.subject));
        env.push_str(&format!("Message-Id: {}\r\n", m.message_id));
        for (kind, p, list) in expanded {
            let k = match kind {
                Kind::To => "To",
                Kind::Cc => "Cc",
                Kind::Bcc => "Bcc",
            };
            match list {
                Some(l) => env.push_str(&format!(
                    "{k}: {}, Expanded: {}\r\n",
                    self.people[*p].addr, self.lists[*l].addr
                )),
                None => env.push_str(&format!("{k}: {}\r\n", self.people[*p].addr)),
            }
        }
        let b = format!("_002_{}_", self.hex(24).to_ascii_uppercase());
        let mut out = Vec::with_capacity(original.len() + env.len() + 2048);
        let s = sender.server.clone();
        let journal_server = format!("EXCH01.{domain}");
        self.received(&mut out, &s, &journal_server, at, 0, false);
        header(
            &mut out,
            "From",
            &format!(
                "Microsoft Exchange <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@{domain}>"
            ),
        );
        header(&mut out, "To", &address("Journal Mailbox", &jaddr));
        header(&mut out, "Subject", &encode_words(&m.subject));
        header(&mut out, "Date", &rfc5322_date(at, 0));
        let jid = format!("<{}@{journal_server}>", self.hex(32).to_ascii_uppercase());
        header(&mut out, "Message-ID", &jid);
        header(&mut out, "Content-Language", "en-US");
        header(&mut out, "X-MS-Has-Attach", "yes");
        header(&mut out, "X-MS-Journal-Report", "");
        header(&mut out, "X-MS-Exchange-Organization-SCL", "-1");
        header(&mut out, "X-MS-Exchange-Organization-AuthAs", "Internal");
        header(&mut out, "X-MS-Exchange-Organization-AuthMechanism", "04");
        header(
            &mut out,
            "X-MS-Exchange-Organization-Processed-By-Journaling",
            "Journal Agent",
        );
        header(
            &mut out,
            "Content-Type",
            &format!("multipart/mixed;\r\n\tboundary=\"{b}\""),
        );
        header(&mut out, "MIME-Version", "1.0");
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(format!("--{b}\r\n").as_bytes());
        let cs = if env.is_ascii() { "us-ascii" } else { "utf-8" };
        header(
            &mut out,
            "Content-Type",
            &format!("text/plain; charset=\"{cs}\""),
        );
        header(
            &mut out,
            "Content-Transfer-Encoding",
            if env.is_ascii() { "7bit" } else { "8bit" },
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(env.as_bytes());
        out.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
        header(&mut out, "Content-Type", "message/rfc822");
        header(&mut out, "Content-Disposition", "attachment");
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(original);
        out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        let jmb = self.mailboxes.len() - 1;
        self.push(jmb, "en-US", "inbox", Vec::new(), "IPM.Note", false, out);
    }

    // ---------------------------------------------------------------- non-mail items

    fn non_mail(&mut self, u: usize) {
        let per = (self.cfg.messages / (self.n_internal * 8)).clamp(2, 40);
        for _ in 0..per {
            self.appointment(u);
        }
        for _ in 0..3 {
            self.contact(u);
        }
        for _ in 0..2 {
            self.task(u);
        }
        for _ in 0..2 {
            self.note(u);
        }
    }

    fn simple_headers(&mut self, out: &mut Vec<u8>, u: usize, subject: &str, date: i64) {
        let p = self.people[u].clone();
        header(out, "From", &address(&p.display, &p.addr));
        header(out, "Subject", &encode_words(subject));
        header(out, "Thread-Topic", &encode_words(subject));
        header(
            out,
            "Date",
            &rfc5322_date(date, locale::utc_offset_minutes(p.locale)),
        );
        let id = self.message_id(u);
        header(out, "Message-ID", &id);
        header(out, "Content-Language", p.locale);
        header(out, "X-MS-Has-Attach", "");
        header(out, "X-MS-TNEF-Correlator", "");
    }

    fn appointment(&mut self, u: usize) {
        let p = self.people[u].clone();
        let lang = locale::lang(p.locale);
        let created = self.clock - i64::try_from(self.range(0, 90 * 86_400)).unwrap_or(0);
        let start = (created / 1800 + i64::try_from(self.range(2, 400)).unwrap_or(2)) * 1800;
        let dur = 1800 * i64::try_from(self.range(1, 4)).unwrap_or(1);
        let summary = self.subject(lang);
        let desc = self.paragraph(lang);
        let off = locale::utc_offset_minutes(p.locale);
        let tz = locale::windows_zone(p.locale);
        let n_att = self.range(0, 4.min(self.n_internal.saturating_sub(1)));
        let mut attendees = Vec::new();
        for _ in 0..n_att {
            let a = self.rng.random_range(0..self.n_internal);
            if a != u && !attendees.contains(&a) {
                attendees.push(a);
            }
        }
        let uid = format!(
            "040000008200E00074C5B7101A82E00800000000{}",
            self.hex(72).to_ascii_uppercase()
        );
        let mut ics = String::new();
        let mut line = |s: &str| fold_content_line(s, &mut ics);
        line("BEGIN:VCALENDAR");
        line(if attendees.is_empty() {
            "METHOD:PUBLISH"
        } else {
            "METHOD:REQUEST"
        });
        line("PRODID:Microsoft Exchange Server 2010");
        line("VERSION:2.0");
        line("BEGIN:VTIMEZONE");
        line(&format!("TZID:{tz}"));
        line("BEGIN:STANDARD");
        line("DTSTART:16010101T030000");
        line(&format!("TZOFFSETFROM:{:+03}{:02}", off / 60 + 1, 0));
        line(&format!("TZOFFSETTO:{:+03}{:02}", off / 60, off.abs() % 60));
        line("RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10");
        line("END:STANDARD");
        line("END:VTIMEZONE");
        line("BEGIN:VEVENT");
        line(&format!(
            "ORGANIZER;CN={}:mailto:{}",
            ical_text(&p.display),
            p.addr
        ));
        for a in &attendees {
            let ap = &self.people[*a];
            line(&format!(
                "ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN={}:mailto:{}",
                ical_text(&ap.display),
                ap.addr
            ));
        }
        line(&format!(
            "DESCRIPTION;LANGUAGE={}:{}\\n",
            p.locale,
            ical_text(&desc)
        ));
        if start % 3 == 0 {
            line("RRULE:FREQ=WEEKLY;UNTIL=20251231T000000Z;INTERVAL=1;BYDAY=MO;WKST=MO");
        }
        line(&format!("UID:{uid}"));
        line(&format!(
            "SUMMARY;LANGUAGE={}:{}",
            p.locale,
            ical_text(&summary)
        ));
        line(&format!("DTSTART;TZID={tz}:{}", ical_local(start, off)));
        line(&format!("DTEND;TZID={tz}:{}", ical_local(start + dur, off)));
        line("CLASS:PUBLIC");
        line("PRIORITY:5");
        line(&format!("DTSTAMP:{}", ical_utc(created)));
        line("TRANSP:OPAQUE");
        line("STATUS:CONFIRMED");
        line("SEQUENCE:0");
        line(&format!(
            "LOCATION;LANGUAGE={}:Room {}",
            p.locale,
            start % 17 + 1
        ));
        line("X-MICROSOFT-CDO-APPT-SEQUENCE:0");
        line("X-MICROSOFT-CDO-BUSYSTATUS:BUSY");
        line("X-MICROSOFT-CDO-IMPORTANCE:1");
        line("X-MICROSOFT-DISALLOW-COUNTER:FALSE");
        line("BEGIN:VALARM");
        line("DESCRIPTION:REMINDER");
        line("TRIGGER;RELATED=START:-PT15M");
        line("ACTION:DISPLAY");
        line("END:VALARM");
        line("END:VEVENT");
        line("END:VCALENDAR");

        let mut out = Vec::with_capacity(ics.len() * 2 + 1024);
        self.simple_headers(&mut out, u, &summary, created);
        let to: Vec<String> = attendees
            .iter()
            .map(|a| address(&self.people[*a].display, &self.people[*a].addr))
            .collect();
        address_header(&mut out, "To", &to);
        let b = format!("_000_{}_", self.hex(24).to_ascii_uppercase());
        header(
            &mut out,
            "Content-Type",
            &format!("multipart/alternative;\r\n\tboundary=\"{b}\""),
        );
        header(&mut out, "MIME-Version", "1.0");
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(format!("--{b}\r\n").as_bytes());
        header(&mut out, "Content-Type", "text/plain; charset=\"utf-8\"");
        header(&mut out, "Content-Transfer-Encoding", "quoted-printable");
        out.extend_from_slice(b"\r\n");
        quoted_printable(desc.as_bytes(), &mut out);
        out.extend_from_slice(format!("\r\n\r\n--{b}\r\n").as_bytes());
        header(
            &mut out,
            "Content-Type",
            "text/calendar; charset=\"utf-8\"; method=REQUEST",
        );
        header(&mut out, "Content-Transfer-Encoding", "base64");
        out.extend_from_slice(b"\r\n");
        base64_wrapped(ics.as_bytes(), &mut out);
        out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        let loc = p.locale;
        self.push(u, loc, "calendar", Vec::new(), "IPM.Appointment", true, out);
    }

    fn contact(&mut self, u: usize) {
        let c = self.rng.random_range(0..self.people.len());
        let cp = self.people[c].clone();
        let owner = self.people[u].clone();
        let mut v = String::new();
        let mut line = |s: &str| fold_content_line(s, &mut v);
        let (first, last) = match cp.display.split_once(' ') {
            Some((a, b)) => (a.to_owned(), b.to_owned()),
            None => (cp.display.clone(), String::new()),
        };
        line("BEGIN:VCARD");
        line("VERSION:3.0");
        line(&format!("N:{};{};;;", ical_text(&last), ical_text(&first)));
        line(&format!("FN:{}", ical_text(&cp.display)));
        line(&format!(
            "ORG:{};",
            if cp.mailbox.is_some() {
                "Contoso Ltd."
            } else {
                "Partner"
            }
        ));
        line(&format!(
            "TITLE:{}",
            self.pick(&[
                "Manager",
                "Engineer",
                "Sachbearbeiterin",
                "经理",
                "Directeur"
            ])
        ));
        line(&format!(
            "TEL;TYPE=WORK,VOICE:+49 30 1234 {:04}",
            c * 37 % 10_000
        ));
        line(&format!(
            "TEL;TYPE=CELL,VOICE:+49 171 555 {:04}",
            c * 91 % 10_000
        ));
        line(&format!("EMAIL;TYPE=PREF,INTERNET:{}", cp.addr));
        line("ADR;TYPE=WORK:;;Hauptstraße 12;Berlin;;10115;Deutschland");
        let note = self.sentence(locale::lang(owner.locale));
        line(&format!("NOTE:{}", ical_text(&note)));
        line(&format!("REV:{}", ical_utc(self.clock)));
        line("END:VCARD");
        let mut out = Vec::with_capacity(v.len() + 512);
        let when = self.clock;
        self.simple_headers(&mut out, u, &cp.display, when);
        header(
            &mut out,
            "Content-Type",
            "text/directory; charset=\"utf-8\"; profile=\"vCard\"",
        );
        header(&mut out, "Content-Transfer-Encoding", "8bit");
        header(&mut out, "MIME-Version", "1.0");
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(v.as_bytes());
        self.push(
            u,
            owner.locale,
            "contacts",
            Vec::new(),
            "IPM.Contact",
            true,
            out,
        );
    }

    fn task(&mut self, u: usize) {
        let p = self.people[u].clone();
        let lang = locale::lang(p.locale);
        let summary = self.subject(lang);
        let desc = self.paragraph(lang);
        let due = self.clock + i64::try_from(self.range(1, 30)).unwrap_or(1) * 86_400;
        let mut ics = String::new();
        let mut line = |s: &str| fold_content_line(s, &mut ics);
        line("BEGIN:VCALENDAR");
        line("METHOD:PUBLISH");
        line("PRODID:Microsoft Exchange Server 2010");
        line("VERSION:2.0");
        line("BEGIN:VTODO");
        line(&format!("UID:{}", self.guid_upper()));
        line(&format!(
            "SUMMARY;LANGUAGE={}:{}",
            p.locale,
            ical_text(&summary)
        ));
        line(&format!("DESCRIPTION:{}", ical_text(&desc)));
        line(&format!("DUE;VALUE=DATE:{}", &ical_utc(due)[..8]));
        line(&format!(
            "STATUS:{}",
            self.pick(&["NEEDS-ACTION", "IN-PROCESS", "COMPLETED"])
        ));
        line("PRIORITY:5");
        line(&format!("DTSTAMP:{}", ical_utc(self.clock)));
        line("END:VTODO");
        line("END:VCALENDAR");
        let mut out = Vec::new();
        let when = self.clock;
        self.simple_headers(&mut out, u, &summary, when);
        header(
            &mut out,
            "Content-Type",
            "text/calendar; charset=\"utf-8\"; method=PUBLISH",
        );
        header(&mut out, "Content-Transfer-Encoding", "quoted-printable");
        header(&mut out, "MIME-Version", "1.0");
        out.extend_from_slice(b"\r\n");
        quoted_printable(ics.as_bytes(), &mut out);
        out.extend_from_slice(b"\r\n");
        self.push(u, p.locale, "tasks", Vec::new(), "IPM.Task", true, out);
    }

    fn guid_upper(&mut self) -> String {
        self.guid().to_ascii_uppercase()
    }

    fn note(&mut self, u: usize) {
        let p = self.people[u].clone();
        let lang = locale::lang(p.locale);
        let text = self.paragraph(lang);
        let subject: String = text.chars().take(40).collect();
        let mut out = Vec::new();
        let when = self.clock;
        self.simple_headers(&mut out, u, &subject, when);
        let cs = if text.is_ascii() { "us-ascii" } else { "utf-8" };
        header(
            &mut out,
            "Content-Type",
            &format!("text/plain; charset=\"{cs}\""),
        );
        header(&mut out, "Content-Transfer-Encoding", "quoted-printable");
        header(&mut out, "MIME-Version", "1.0");
        out.extend_from_slice(b"\r\n");
        quoted_printable(text.as_bytes(), &mut out);
        out.extend_from_slice(b"\r\n");
        self.push(
            u,
            p.locale,
            "notes",
            Vec::new(),
            "IPM.StickyNote",
            true,
            out,
        );
    }

    // ---------------------------------------------------------------- faults

    fn malformed(&mut self, k: usize) {
        let u = self.rng.random_range(0..self.n_internal);
        let p = self.people[u].clone();
        let date = self.tick(600);
        let mid = self.message_id(u);
        let mut out = Vec::new();
        let ascii_date = rfc5322_date(date, 0);
        match k % 7 {
            0 => {
                // declared boundary never used, no closing delimiter
                header(&mut out, "From", &p.addr);
                header(&mut out, "To", &p.addr);
                header(&mut out, "Subject", "broken boundary");
                header(&mut out, "Date", &ascii_date);
                header(&mut out, "Message-ID", &mid);
                header(&mut out, "MIME-Version", "1.0");
                header(
                    &mut out,
                    "Content-Type",
                    "multipart/mixed; boundary=\"declared-one\"",
                );
                out.extend_from_slice(b"\r\n--other-boundary\r\nContent-Type: text/plain\r\n\r\nText without a matching boundary.\r\n--other-boundary\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\n");
            }
            1 => {
                // invalid base64 and an undeclared charset
                header(&mut out, "From", &p.addr);
                header(&mut out, "Subject", "=?utf-8?B?invalid$$base64?=");
                header(&mut out, "Date", &ascii_date);
                header(&mut out, "Message-ID", &mid);
                header(&mut out, "MIME-Version", "1.0");
                header(
                    &mut out,
                    "Content-Type",
                    "text/plain; charset=\"x-unknown-charset\"",
                );
                header(&mut out, "Content-Transfer-Encoding", "base64");
                out.extend_from_slice(
                    b"\r\nThis is !!not base64 at all=== \xff\xfe\r\nSGVsbG8gV29ybGQ\r\n",
                );
            }
            2 => {
                // no Date, no From, no Message-ID
                header(&mut out, "Subject", "missing headers");
                header(&mut out, "To", &p.addr);
                out.extend_from_slice(b"\r\nA message without From, Date or Message-ID.\r\n");
            }
            3 => {
                // raw 8-bit (Latin-1) bytes in headers, invalid UTF-8 in a utf-8 body
                out.extend_from_slice(b"From: J\xfcrgen M\xfcller <");
                out.extend_from_slice(p.addr.as_bytes());
                out.extend_from_slice(b">\r\nSubject: Gr\xfc\xdfe aus K\xf6ln\r\n");
                header(&mut out, "Date", &ascii_date);
                header(&mut out, "Message-ID", &mid);
                header(&mut out, "Content-Type", "text/plain; charset=utf-8");
                out.extend_from_slice(b"\r\nInvalid UTF-8: \xc3\x28 \xa0\xa1 \xf0\x28\x8c\xbc\r\n");
            }
            4 => {
                // bare LF line endings in the body, a header line over 998 octets
                header(&mut out, "From", &p.addr);
                header(&mut out, "Subject", "bare LF");
                header(&mut out, "Date", &ascii_date);
                header(&mut out, "Message-ID", &mid);
                let long = "x".repeat(1200);
                header(&mut out, "X-Long-Header", &long);
                header(&mut out, "Content-Type", "text/plain");
                out.extend_from_slice(b"\r\nline one\nline two\r\nline three\n\n\nend\n");
            }
            5 => {
                // multipart without a boundary parameter; nested unterminated part
                header(&mut out, "From", &p.addr);
                header(&mut out, "Subject", "multipart without boundary");
                header(&mut out, "Date", "Mon, 32 Foo 2024 25:61:00 +9999");
                header(&mut out, "Message-ID", "<no-closing-bracket@broken");
                header(&mut out, "MIME-Version", "1.0");
                header(&mut out, "Content-Type", "multipart/mixed");
                out.extend_from_slice(b"\r\n--\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nunterminated");
            }
            _ => {
                // bad quoted-printable and a bad encoded-word in a filename
                header(&mut out, "From", &p.addr);
                header(&mut out, "Subject", "=?iso-8859-1?Q?bad=ZZqp?=");
                header(&mut out, "Date", &ascii_date);
                header(&mut out, "Message-ID", &mid);
                header(&mut out, "MIME-Version", "1.0");
                header(&mut out, "Content-Type", "multipart/mixed; boundary=\"b1\"");
                out.extend_from_slice(b"\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbad =G1 sequence =\r\n=E2=82\r\n--b1\r\nContent-Type: application/pdf; name=\"=?utf-8?B?!!!?=\"\r\nContent-Disposition: attachment; filename*=utf-8''%ZZbad.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjcK\r\n--b1--\r\n");
            }
        }
        let loc = p.locale;
        self.push(u, loc, "inbox", Vec::new(), "IPM.Note", false, out);
    }

    fn huge(&mut self, bytes: usize) {
        let from = if self.people.len() > self.n_internal {
            self.n_internal
        } else {
            self.n_internal.saturating_sub(1).min(1)
        };
        let to = 0;
        let mut msg = self.new_message(from, vec![(Kind::To, Rcpt::Person(to))], Some(false));
        msg.subject = format!("Large file: {} MB", bytes / 1_000_000);
        msg.attachments = vec![Attachment {
            name: "dump.bin".to_owned(),
            content_type: "application/octet-stream",
            date: msg.date,
            data: self.binary(b"", bytes).into(),
        }];
        if from == to {
            msg.rcpts = vec![(Kind::To, Rcpt::Person(self.n_internal.saturating_sub(1)))];
        }
        self.deliver(&msg, false);
    }
}

fn attachment_part(a: &Attachment, out: &mut Vec<u8>) {
    let name = encode_words(&a.name);
    header(
        out,
        "Content-Type",
        &format!("{}; name=\"{name}\"", a.content_type),
    );
    header(out, "Content-Description", &name);
    let gmt = rfc5322_date(a.date, 0).replace(" +0000", " GMT");
    header(
        out,
        "Content-Disposition",
        &format!(
            "attachment; filename=\"{name}\"; size={};\r\n\tcreation-date=\"{gmt}\";\r\n\tmodification-date=\"{gmt}\"",
            a.data.len()
        ),
    );
    header(out, "Content-Transfer-Encoding", "base64");
    out.extend_from_slice(b"\r\n");
    base64_wrapped(&a.data, out);
}

/// Escapes iCalendar/vCard TEXT values.
fn ical_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(';', "\\;")
        .replace(',', "\\,")
        .replace("\r\n", "\\n")
}

/// Outlook-style HTML of a plain-text body.
fn html_of(text: &str, loc: &str) -> String {
    let mut h = String::with_capacity(text.len() * 2 + 2048);
    h.push_str("<html xmlns:v=\"urn:schemas-microsoft-com:vml\" xmlns:o=\"urn:schemas-microsoft-com:office:office\" xmlns:w=\"urn:schemas-microsoft-com:office:word\" xmlns:m=\"http://schemas.microsoft.com/office/2004/12/omml\" xmlns=\"http://www.w3.org/TR/REC-html40\">\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n<meta name=\"Generator\" content=\"Microsoft Word 15 (filtered medium)\">\r\n<style><!--\r\n/* Font Definitions */\r\n@font-face\r\n\t{font-family:\"Cambria Math\";\r\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\r\n@font-face\r\n\t{font-family:Calibri;\r\n\tpanose-1:2 15 5 2 2 2 4 3 2 4;}\r\n/* Style Definitions */\r\np.MsoNormal, li.MsoNormal, div.MsoNormal\r\n\t{margin:0cm;\r\n\tfont-size:11.0pt;\r\n\tfont-family:\"Calibri\",sans-serif;}\r\nspan.EmailStyle17\r\n\t{mso-style-type:personal-compose;\r\n\tfont-family:\"Calibri\",sans-serif;\r\n\tcolor:windowtext;}\r\n.MsoChpDefault\r\n\t{mso-style-type:export-only;\r\n\tfont-family:\"Calibri\",sans-serif;}\r\n@page WordSection1\r\n\t{size:612.0pt 792.0pt;\r\n\tmargin:72.0pt 72.0pt 72.0pt 72.0pt;}\r\ndiv.WordSection1\r\n\t{page:WordSection1;}\r\n--></style>\r\n</head>\r\n");
    let lang = loc.split('-').next().unwrap_or("EN").to_ascii_uppercase();
    h.push_str(&format!(
        "<body lang=\"{lang}\" link=\"#0563C1\" vlink=\"#954F72\" style=\"word-wrap:break-word\">\r\n<div class=\"WordSection1\">\r\n"
    ));
    for line in text.split("\r\n") {
        if line.is_empty() {
            h.push_str("<p class=\"MsoNormal\"><o:p>&nbsp;</o:p></p>\r\n");
        } else if line.starts_with("From: ") || line.starts_with("Von: ") {
            h.push_str("<div style=\"border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm\">\r\n<p class=\"MsoNormal\"><b>");
            push_escaped(&mut h, line);
            h.push_str("</b><o:p></o:p></p>\r\n</div>\r\n");
        } else {
            h.push_str("<p class=\"MsoNormal\">");
            push_escaped(&mut h, line);
            h.push_str("<o:p></o:p></p>\r\n");
        }
    }
    h.push_str("</div>\r\n</body>\r\n</html>\r\n");
    h
}

fn push_escaped(h: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => h.push_str("&lt;"),
            '>' => h.push_str("&gt;"),
            '&' => h.push_str("&amp;"),
            '"' => h.push_str("&quot;"),
            _ => h.push(c),
        }
    }
}
