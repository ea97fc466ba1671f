//! The search language, parsed by hand into an [`Expr`] and then into a tantivy query.
//!
//! ```text
//! query   := or
//! or      := and ( "OR" and )*
//! and     := unary ( ["AND"] unary )*          -- juxtaposition is AND
//! unary   := ("NOT" | "-") unary | primary
//! primary := "(" or ")" | field ":" value | "quoted phrase" | word
//! value   := word | "quoted phrase"
//! ```
//!
//! Fields: `from: to: cc: bcc:` (full address or any part of it, or display-name words),
//! `subject:`, `mailbox:` (exact address), `folder:` (folder path prefix, `/`-separated,
//! case-insensitive), `attachment:` (attachment name words), `has:attachment`,
//! `before:`/`after:` (`YYYY-MM-DD`, UTC; before is exclusive, after inclusive of the day),
//! `is:deleted`, `is:unread`, `is:read`. Free words must all match somewhere in subject, body,
//! from, to, cc or attachment names; a quoted phrase must occur in subject, body or attachment
//! names. `AND`, `OR`, `NOT` are operators only in upper case.
//!
//! A query is at most [`MAX_QUERY_CHARS`] characters and nests (brackets and negations) at most
//! [`MAX_DEPTH`] deep: the parser, the query builder and tantivy all recurse over the tree, and
//! any caller holding a token may send the query, so its shape must not be able to exhaust a
//! thread's stack.

use std::ops::Bound;

use tantivy::Term;
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::tokenizer::TextAnalyzer;

use crate::index::Fields;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {pos}: {problem}")]
pub struct QueryError {
    /// Character offset in the query (0-based).
    pub pos: usize,
    pub problem: String,
}

/// The longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 4096;
/// The deepest nesting of brackets and negations accepted.
pub const MAX_DEPTH: usize = 64;

fn err<T>(pos: usize, problem: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError {
        pos,
        problem: problem.into(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    From,
    To,
    Cc,
    Bcc,
    Subject,
    Mailbox,
    Folder,
    Attachment,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    All,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// Free word or phrase (`phrase` when quoted).
    Text {
        text: String,
        phrase: bool,
    },
    Field {
        field: Field,
        value: String,
    },
    HasAttachment,
    Deleted,
    Unread,
    Read,
    /// Date in ms: before (exclusive) / after (inclusive).
    Before(i64),
    After(i64),
}

impl Expr {
    /// Whether `is:deleted` occurs anywhere (then deleted items are not filtered out).
    pub fn mentions_deleted(&self) -> bool {
        match self {
            Expr::Deleted => true,
            Expr::And(v) | Expr::Or(v) => v.iter().any(Expr::mentions_deleted),
            Expr::Not(e) => e.mentions_deleted(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Minus,
    And,
    Or,
    Not,
    Word(String),
    Quoted(String),
    Field(String, String, usize),
}

fn lex(input: &str) -> Result<Vec<(usize, Tok)>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let quoted = |i: &mut usize| -> Result<String, QueryError> {
        let start = *i;
        *i += 1;
        let mut s = String::new();
        while *i < chars.len() && chars[*i] != '"' {
            s.push(chars[*i]);
            *i += 1;
        }
        if *i >= chars.len() {
            return err(start, "unterminated quote");
        }
        *i += 1;
        Ok(s)
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            '-' if i + 1 < chars.len() && !chars[i + 1].is_whitespace() => {
                out.push((start, Tok::Minus));
                i += 1;
            }
            '"' => {
                let s = quoted(&mut i)?;
                out.push((start, Tok::Quoted(s)));
            }
            _ => {
                let mut w = String::new();
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '"')
                {
                    if chars[i] == ':' && !w.is_empty() && is_field_name(&w) {
                        i += 1;
                        let vpos = i;
                        let value = if i < chars.len() && chars[i] == '"' {
                            quoted(&mut i)?
                        } else {
                            let mut v = String::new();
                            while i < chars.len()
                                && !chars[i].is_whitespace()
                                && !matches!(chars[i], '(' | ')' | '"')
                            {
                                v.push(chars[i]);
                                i += 1;
                            }
                            v
                        };
                        if value.is_empty() {
                            return err(vpos, format!("{w}: needs a value"));
                        }
                        out.push((start, Tok::Field(w.to_ascii_lowercase(), value, vpos)));
                        w = String::new();
                        break;
                    }
                    w.push(chars[i]);
                    i += 1;
                }
                match w.as_str() {
                    "" => {}
                    "AND" => out.push((start, Tok::And)),
                    "OR" => out.push((start, Tok::Or)),
                    "NOT" => out.push((start, Tok::Not)),
                    _ => out.push((start, Tok::Word(w))),
                }
            }
        }
    }
    Ok(out)
}

const FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "mailbox",
    "folder",
    "attachment",
    "has",
    "is",
    "before",
    "after",
];

fn is_field_name(w: &str) -> bool {
    FIELDS.iter().any(|f| f.eq_ignore_ascii_case(w))
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
    end: usize,
    /// Brackets and negations open around the current token.
    depth: usize,
}

/// Parses a query. An empty query matches everything.
pub fn parse(input: &str) -> Result<Expr, QueryError> {
    let end = input.chars().count();
    if end > MAX_QUERY_CHARS {
        return err(
            MAX_QUERY_CHARS,
            format!("query is {end} characters long, more than the {MAX_QUERY_CHARS} allowed"),
        );
    }
    let toks = lex(input)?;
    let mut p = Parser {
        toks,
        i: 0,
        end,
        depth: 0,
    };
    if p.toks.is_empty() {
        return Ok(Expr::All);
    }
    let e = p.or()?;
    if let Some((pos, t)) = p.toks.get(p.i) {
        return err(*pos, format!("unexpected {}", describe(t)));
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "'('".into(),
        Tok::RParen => "')' without a matching '('".into(),
        Tok::Minus => "'-'".into(),
        Tok::And => "AND".into(),
        Tok::Or => "OR".into(),
        Tok::Not => "NOT".into(),
        Tok::Word(w) => format!("word {w:?}"),
        Tok::Quoted(w) => format!("phrase {w:?}"),
        Tok::Field(f, v, _) => format!("{f}:{v}"),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.end, |(p, _)| *p)
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut v = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::And) => {
                    self.i += 1;
                    v.push(self.unary()?);
                }
                None | Some(Tok::Or) | Some(Tok::RParen) => break,
                Some(_) => v.push(self.unary()?),
            }
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::And(v)
        })
    }

    /// Runs `inner` one level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested<T>(
        &mut self,
        pos: usize,
        inner: impl FnOnce(&mut Self) -> Result<T, QueryError>,
    ) -> Result<T, QueryError> {
        if self.depth >= MAX_DEPTH {
            return err(
                pos,
                format!("brackets and negations nest more than {MAX_DEPTH} deep"),
            );
        }
        self.depth += 1;
        let out = inner(self);
        self.depth -= 1;
        out
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        match self.peek() {
            Some(Tok::Not) | Some(Tok::Minus) => {
                let pos = self.pos();
                self.i += 1;
                self.nested(pos, |p| Ok(Expr::Not(Box::new(p.unary()?))))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let Some((_, tok)) = self.toks.get(self.i).cloned() else {
            return err(pos, "query ends where a term was expected");
        };
        self.i += 1;
        match tok {
            Tok::LParen => {
                let e = self.nested(pos, Self::or)?;
                if self.peek() != Some(&Tok::RParen) {
                    return err(self.pos(), format!("missing ')' for '(' at position {pos}"));
                }
                self.i += 1;
                Ok(e)
            }
            Tok::Word(w) => Ok(Expr::Text {
                text: w,
                phrase: false,
            }),
            Tok::Quoted(q) => Ok(Expr::Text {
                text: q,
                phrase: true,
            }),
            Tok::Field(f, v, vpos) => field(&f, v, vpos),
            t => err(pos, format!("expected a term, found {}", describe(&t))),
        }
    }
}

fn field(f: &str, v: String, vpos: usize) -> Result<Expr, QueryError> {
    let field = |field| {
        Ok(Expr::Field {
            field,
            value: v.clone(),
        })
    };
    match f {
        "from" => field(Field::From),
        "to" => field(Field::To),
        "cc" => field(Field::Cc),
        "bcc" => field(Field::Bcc),
        "subject" => field(Field::Subject),
        "mailbox" => field(Field::Mailbox),
        "folder" => field(Field::Folder),
        "attachment" => field(Field::Attachment),
        "has" => match v.to_ascii_lowercase().as_str() {
            "attachment" | "attachments" => Ok(Expr::HasAttachment),
            _ => err(vpos, format!("has:{v} is unknown (has:attachment)")),
        },
        "is" => match v.to_ascii_lowercase().as_str() {
            "deleted" => Ok(Expr::Deleted),
            "unread" => Ok(Expr::Unread),
            "read" => Ok(Expr::Read),
            _ => err(
                vpos,
                format!("is:{v} is unknown (is:deleted, is:unread, is:read)"),
            ),
        },
        "before" => Ok(Expr::Before(parse_date(&v, vpos)?)),
        "after" => Ok(Expr::After(parse_date(&v, vpos)?)),
        _ => err(vpos, format!("unknown field {f}")),
    }
}

/// `YYYY-MM-DD` → unix ms at 00:00 UTC.
pub fn parse_date(s: &str, pos: usize) -> Result<i64, QueryError> {
    let bad = || QueryError {
        pos,
        problem: format!("{s:?} is not a date (YYYY-MM-DD)"),
    };
    let mut it = s.split('-');
    let (Some(y), Some(m), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let y: i64 = y.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    let d: i64 = d.parse().map_err(|_| bad())?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d < 1 || d > dim {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86_400_000)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Builds tantivy queries from parsed expressions.
pub(crate) struct Builder<'a> {
    pub f: &'a Fields,
    pub analyzer: TextAnalyzer,
    /// The searching user's address (lower case) when the search is scoped to one user: who
    /// was Bcc'd is theirs to know only where they sent the message or were Bcc'd themselves.
    pub user: Option<String>,
}

fn term_q(t: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(t, IndexRecordOption::WithFreqsAndPositions))
}

fn basic_q(t: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(t, IndexRecordOption::Basic))
}

fn any_of(v: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    match v.len() {
        0 => Box::new(EmptyQuery),
        1 => v.into_iter().next().unwrap_or_else(|| Box::new(EmptyQuery)),
        _ => Box::new(BooleanQuery::new(
            v.into_iter().map(|q| (Occur::Should, q)).collect(),
        )),
    }
}

fn all_of(v: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    match v.len() {
        0 => Box::new(AllQuery),
        1 => v.into_iter().next().unwrap_or_else(|| Box::new(AllQuery)),
        _ => Box::new(BooleanQuery::new(
            v.into_iter().map(|q| (Occur::Must, q)).collect(),
        )),
    }
}

impl Builder<'_> {
    fn tokens(&mut self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut ts = self.analyzer.token_stream(text);
        while ts.advance() {
            out.push(ts.token().text.clone());
        }
        out
    }

    /// Words or a phrase in a tokenized text field.
    fn text_in(&mut self, field: tantivy::schema::Field, text: &str) -> Box<dyn Query> {
        let toks = self.tokens(text);
        match toks.len() {
            0 => Box::new(EmptyQuery),
            1 => term_q(Term::from_field_text(field, &toks[0])),
            _ => Box::new(PhraseQuery::new(
                toks.iter()
                    .map(|t| Term::from_field_text(field, t))
                    .collect(),
            )),
        }
    }

    fn address_in(&mut self, field: tantivy::schema::Field, value: &str) -> Box<dyn Query> {
        let v = value.trim().to_lowercase();
        let words: Vec<&str> = v.split_whitespace().collect();
        all_of(
            words
                .iter()
                .map(|w| basic_q(Term::from_field_text(field, w)))
                .collect(),
        )
    }

    /// Items whose Bcc recipients user `u` may search for `value`: their own mailbox's
    /// copies, messages they sent, and, when they look for themselves, those they were
    /// Bcc'd on (a journal copy lists every Bcc recipient; the other recipients never saw them).
    fn may_see_bcc(&mut self, u: &str, value: &str) -> Box<dyn Query> {
        let f = self.f;
        let mut allowed = vec![
            basic_q(Term::from_field_text(f.mailbox, u)),
            basic_q(Term::from_field_text(f.from_t, u)),
        ];
        let own: Vec<String> = crate::extract::address_terms(&[crate::extract::Party {
            name: String::new(),
            address: u.to_owned(),
        }])
        .into_iter()
        .map(|t| t.into_owned())
        .collect();
        let v = value.trim().to_lowercase();
        if v.split_whitespace().all(|w| own.iter().any(|o| o == w)) {
            allowed.push(basic_q(Term::from_field_text(f.bcc_t, u)));
        }
        any_of(allowed)
    }

    pub fn build(&mut self, e: &Expr) -> Box<dyn Query> {
        let f = self.f;
        match e {
            Expr::All => Box::new(AllQuery),
            Expr::And(v) => {
                let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for x in v {
                    match x {
                        Expr::Not(inner) => clauses.push((Occur::MustNot, self.build(inner))),
                        x => clauses.push((Occur::Must, self.build(x))),
                    }
                }
                if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
                    clauses.push((Occur::Must, Box::new(AllQuery)));
                }
                Box::new(BooleanQuery::new(clauses))
            }
            Expr::Or(v) => any_of(v.iter().map(|x| self.build(x)).collect()),
            Expr::Not(inner) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
                (Occur::MustNot, self.build(inner)),
            ])),
            Expr::Text { text, phrase } => {
                let mut alts = vec![
                    self.text_in(f.subject, text),
                    self.text_in(f.body, text),
                    self.text_in(f.attachment, text),
                ];
                if !phrase {
                    let w = text.to_lowercase();
                    for af in [f.from_t, f.to_t, f.cc_t] {
                        alts.push(basic_q(Term::from_field_text(af, &w)));
                    }
                }
                any_of(alts)
            }
            Expr::Field { field, value } => match field {
                Field::From => self.address_in(f.from_t, value),
                Field::To => self.address_in(f.to_t, value),
                Field::Cc => self.address_in(f.cc_t, value),
                Field::Bcc => {
                    let matches = self.address_in(f.bcc_t, value);
                    match self.user.clone() {
                        None => matches,
                        Some(u) => Box::new(BooleanQuery::new(vec![
                            (Occur::Must, matches),
                            (Occur::Must, self.may_see_bcc(&u, value)),
                        ])),
                    }
                }
                Field::Subject => self.text_in(f.subject, value),
                Field::Attachment => self.text_in(f.attachment, value),
                Field::Mailbox => basic_q(Term::from_field_text(
                    f.mailbox,
                    &value.trim().to_lowercase(),
                )),
                Field::Folder => basic_q(Term::from_field_text(f.folder, &folder_key(value))),
            },
            Expr::HasAttachment => basic_q(Term::from_field_u64(f.has_attachment, 1)),
            Expr::Deleted => basic_q(Term::from_field_u64(f.deleted, 1)),
            Expr::Unread => basic_q(Term::from_field_u64(f.is_read, 0)),
            Expr::Read => basic_q(Term::from_field_u64(f.is_read, 1)),
            Expr::Before(ms) => Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_i64(f.date, *ms)),
            )),
            Expr::After(ms) => Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_i64(f.date, *ms)),
                Bound::Unbounded,
            )),
        }
    }
}

/// The indexed form of a folder path or prefix: lower-case components joined by `/`.
pub fn folder_key(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Expr {
        Expr::Text {
            text: s.into(),
            phrase: false,
        }
    }

    #[test]
    fn parses_operators_fields_and_grouping() {
        assert_eq!(parse("").expect("ok"), Expr::All);
        assert_eq!(parse("a b").expect("ok"), Expr::And(vec![t("a"), t("b")]));
        assert_eq!(
            parse("a OR b c").expect("ok"),
            Expr::Or(vec![t("a"), Expr::And(vec![t("b"), t("c")])])
        );
        assert_eq!(
            parse("(a OR b) AND NOT c -d").expect("ok"),
            Expr::And(vec![
                Expr::Or(vec![t("a"), t("b")]),
                Expr::Not(Box::new(t("c"))),
                Expr::Not(Box::new(t("d"))),
            ])
        );
        assert_eq!(
            parse("from:alice@contoso.com subject:\"quarterly report\" has:attachment")
                .expect("ok"),
            Expr::And(vec![
                Expr::Field {
                    field: Field::From,
                    value: "alice@contoso.com".into()
                },
                Expr::Field {
                    field: Field::Subject,
                    value: "quarterly report".into()
                },
                Expr::HasAttachment,
            ])
        );
        assert_eq!(
            parse("\"exact words\" is:deleted").expect("ok"),
            Expr::And(vec![
                Expr::Text {
                    text: "exact words".into(),
                    phrase: true
                },
                Expr::Deleted
            ])
        );
        assert!(parse("x OR is:deleted").expect("ok").mentions_deleted());
        assert!(!parse("x is:unread").expect("ok").mentions_deleted());
        assert_eq!(
            parse("after:2024-02-29 folder:Inbox/Projects").expect("ok"),
            Expr::And(vec![
                Expr::After(1_709_164_800_000),
                Expr::Field {
                    field: Field::Folder,
                    value: "Inbox/Projects".into()
                }
            ])
        );
        // A colon in a non-field word is just text.
        assert_eq!(parse("re:hello").expect("ok"), t("re:hello"));
        // Lower-case operators are words.
        assert_eq!(
            parse("a or b").expect("ok"),
            Expr::And(vec![t("a"), t("or"), t("b")])
        );
    }

    #[test]
    fn hostile_shapes_are_refused_without_recursing_deep() {
        // Each of these used to overflow the stack of the thread that parsed it.
        for q in [
            "(".repeat(3000),
            "-".repeat(3000) + "x",
            "NOT ".repeat(3000) + "x",
        ] {
            let q = q.chars().take(MAX_QUERY_CHARS).collect::<String>();
            let e = parse(&q).expect_err("too deep");
            assert!(e.problem.contains("nest more than 64"), "{e}");
        }
        let long = "a ".repeat(MAX_QUERY_CHARS);
        let e = parse(&long).expect_err("too long");
        assert!(e.problem.contains("more than the 4096 allowed"), "{e}");
        // At the limit it still parses.
        let deep = format!("{}x{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(parse(&deep), Ok(t("x")));
        let too_deep = format!("({deep})");
        assert!(parse(&too_deep).is_err());
        let nots = format!("{}x", "-".repeat(MAX_DEPTH));
        assert!(parse(&nots).is_ok());
    }

    #[test]
    fn errors_name_position_and_problem() {
        let e = parse("a (b OR c").expect_err("unbalanced");
        assert_eq!(e.pos, 9);
        assert!(e.problem.contains("missing ')'"), "{e}");
        let e = parse("a )").expect_err("stray paren");
        assert_eq!(e.pos, 2);
        let e = parse("before:2024-13-01").expect_err("month 13");
        assert_eq!(e.pos, 7);
        assert!(e.problem.contains("not a date"));
        let e = parse("is:flagged").expect_err("unknown is:");
        assert_eq!(e.pos, 3);
        let e = parse("subject:\"open").expect_err("quote");
        assert_eq!(e.pos, 8);
        assert!(e.problem.contains("unterminated"));
        let e = parse("a OR").expect_err("dangling OR");
        assert_eq!(e.pos, 4);
        let e = parse("from:").expect_err("empty value");
        assert_eq!(e.pos, 5);
        assert_eq!(e.to_string(), "at position 5: from: needs a value");
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01", 0), Ok(0));
        assert_eq!(parse_date("2024-01-02", 0), Ok(1_704_153_600_000));
        assert!(parse_date("2023-02-29", 0).is_err());
        assert!(parse_date("24-01-01", 0).is_err());
    }
}
