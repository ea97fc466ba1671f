//! A small namespace-aware element tree built with quick-xml's `NsReader`.
//!
//! Elements are identified by (namespace URI, local name) — never by prefix: Exchange writes
//! `m:`/`t:`, other servers use other prefixes or default namespaces. Unknown elements are kept
//! in the tree and simply never looked at. `MimeContent` text is base64-decoded while it is read
//! and only the decoded bytes are kept, so a GetItem response is never held twice.

use std::io::BufRead;

use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

/// SOAP 1.1 envelope namespace.
pub const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// EWS messages namespace (`m:`).
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// EWS types namespace (`t:`).
pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
/// EWS errors namespace (`e:`), used in SOAP fault details.
pub const NS_ERRORS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// Most text we accept in one element that is not MIME content (guards memory against a hostile
/// or broken server).
const MAX_TEXT: usize = 16 * 1024 * 1024;
/// Deepest element nesting we accept.
const MAX_DEPTH: usize = 128;

/// One parsed element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Namespace URI, empty when unbound.
    pub ns: String,
    /// Local name.
    pub name: String,
    /// Attributes by local name (EWS attributes are unqualified).
    pub attrs: Vec<(String, String)>,
    /// Concatenated character data directly inside this element.
    pub text: String,
    /// Decoded base64 content, for elements named in [`ParseOptions::binary`].
    pub binary: Option<Vec<u8>>,
    /// Child elements in document order.
    pub children: Vec<Element>,
}

impl Element {
    /// First child with this namespace and local name.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    /// Every child with this namespace and local name.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    /// Whether this element is `{ns}name`.
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// Attribute value by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Trimmed text of the first child `{ns}name`.
    pub fn child_text(&self, ns: &str, name: &str) -> Option<&str> {
        self.child(ns, name).map(|c| c.text.trim())
    }

    /// Depth-first search for the first descendant `{ns}name` (self excluded).
    pub fn find(&self, ns: &str, name: &str) -> Option<&Element> {
        for c in &self.children {
            if c.is(ns, name) {
                return Some(c);
            }
            if let Some(f) = c.find(ns, name) {
                return Some(f);
            }
        }
        None
    }
}

/// Why a document could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("XML syntax error at byte {position}: {message}")]
    Syntax { position: u64, message: String },
    #[error("XML document ended early (truncated response)")]
    Truncated,
    #[error("XML document has no root element")]
    Empty,
    #[error("XML limit exceeded: {0}")]
    Limit(&'static str),
    #[error("invalid base64 in <{element}>: {message}")]
    Base64 { element: String, message: String },
}

/// What to treat specially while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions<'a> {
    /// `(namespace, local name)` of elements whose text is base64 to decode while reading.
    pub binary: &'a [(&'a str, &'a str)],
}

impl Default for ParseOptions<'_> {
    fn default() -> Self {
        Self {
            binary: &[(NS_TYPES, "MimeContent"), (NS_MESSAGES, "Data")],
        }
    }
}

/// Incremental base64 decoder: decodes every complete 4-character group as text arrives.
#[derive(Debug, Default)]
struct Base64Sink {
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl Base64Sink {
    fn push(&mut self, text: &str) -> Result<(), String> {
        // Copied run by run between whitespace: byte by byte through a filter was a
        // tenth of the collector's CPU on a GetItem response.
        for run in text.as_bytes().split(u8::is_ascii_whitespace) {
            self.pending.extend_from_slice(run);
        }
        let whole = self.pending.len() / 4 * 4;
        // Keep the final group back until the end: it may carry padding.
        let whole = if whole == self.pending.len() && whole >= 4 {
            whole - 4
        } else {
            whole
        };
        if whole > 0 {
            base64::engine::general_purpose::STANDARD
                .decode_vec(&self.pending[..whole], &mut self.out)
                .map_err(|e| e.to_string())?;
            self.pending.drain(..whole);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>, String> {
        if !self.pending.is_empty() {
            base64::engine::general_purpose::STANDARD
                .decode_vec(&self.pending, &mut self.out)
                .map_err(|e| e.to_string())?;
        }
        Ok(self.out)
    }
}

struct Open {
    el: Element,
    sink: Option<Base64Sink>,
}

fn resolved_ns(r: &ResolveResult<'_>) -> String {
    match r {
        ResolveResult::Bound(ns) => ns.0.to_owned(),
        _ => String::new(),
    }
}

/// Parses a whole document from a buffered reader (a byte slice or a streaming HTTP body) and
/// returns its root element.
pub fn parse<R: BufRead>(input: R, opts: ParseOptions<'_>) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_reader(input);
    let mut buf = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        buf.clear();
        let (ns, event) = match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, event)) => (resolved_ns(&ns), event),
            Err(e) => {
                let message = e.to_string();
                return Err(XmlError::Syntax {
                    position: reader.buffer_position(),
                    message,
                });
            }
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::Limit("element nesting too deep"));
                }
                let name = e.local_name().as_ref().to_owned();
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|err| XmlError::Syntax {
                        position: reader.buffer_position(),
                        message: err.to_string(),
                    })?;
                    let key = a.key.local_name().as_ref().to_owned();
                    if a.key.0.starts_with("xmlns") {
                        continue;
                    }
                    let value = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| XmlError::Syntax {
                            position: reader.buffer_position(),
                            message: err.to_string(),
                        })?
                        .into_owned();
                    attrs.push((key, value));
                }
                let binary = opts
                    .binary
                    .iter()
                    .any(|(bns, bname)| *bns == ns && *bname == name);
                let el = Element {
                    ns,
                    name,
                    attrs,
                    binary: if binary { Some(Vec::new()) } else { None },
                    ..Element::default()
                };
                if is_empty {
                    attach(&mut stack, &mut root, el)?;
                } else {
                    stack.push(Open {
                        el,
                        sink: binary.then(Base64Sink::default),
                    });
                }
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(XmlError::Syntax {
                        position: reader.buffer_position(),
                        message: "unexpected end tag".into(),
                    });
                };
                let mut el = open.el;
                if let Some(sink) = open.sink {
                    let bytes = sink.finish().map_err(|message| XmlError::Base64 {
                        element: el.name.clone(),
                        message,
                    })?;
                    el.binary = Some(bytes);
                }
                attach(&mut stack, &mut root, el)?;
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                push_text(&mut stack, &text)?;
            }
            Event::CData(t) => {
                push_text(&mut stack, &t.into_inner())?;
            }
            Event::GeneralRef(r) => {
                let resolved = if let Ok(Some(ch)) = r.resolve_char_ref() {
                    ch.to_string()
                } else {
                    let raw = format!("&{};", &*r);
                    quick_xml::escape::unescape(&raw)
                        .map_err(|e| XmlError::Syntax {
                            position: reader.buffer_position(),
                            message: e.to_string(),
                        })?
                        .into_owned()
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::Eof => {
                if !stack.is_empty() {
                    return Err(XmlError::Truncated);
                }
                return root.ok_or(XmlError::Empty);
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
}

fn push_text(stack: &mut [Open], text: &str) -> Result<(), XmlError> {
    let Some(top) = stack.last_mut() else {
        return Ok(()); // whitespace outside the root
    };
    if let Some(sink) = top.sink.as_mut() {
        sink.push(text).map_err(|message| XmlError::Base64 {
            element: top.el.name.clone(),
            message,
        })
    } else {
        if top.el.text.len() + text.len() > MAX_TEXT {
            return Err(XmlError::Limit("element text too large"));
        }
        top.el.text.push_str(text);
        Ok(())
    }
}

fn attach(stack: &mut [Open], root: &mut Option<Element>, el: Element) -> Result<(), XmlError> {
    if let Some(parent) = stack.last_mut() {
        parent.el.children.push(el);
        Ok(())
    } else if root.is_none() {
        *root = Some(el);
        Ok(())
    } else {
        Err(XmlError::Syntax {
            position: 0,
            message: "more than one root element".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_matter() {
        let a = r#"<a:R xmlns:a="urn:x"><a:C k="v">hi &amp; bye</a:C></a:R>"#;
        let b = r#"<R xmlns="urn:x"><C k="v">hi &amp; bye</C></R>"#;
        let pa = parse(a.as_bytes(), ParseOptions::default()).expect("parse a");
        let pb = parse(b.as_bytes(), ParseOptions::default()).expect("parse b");
        assert_eq!(pa, pb);
        assert_eq!(pa.child_text("urn:x", "C"), Some("hi & bye"));
        assert_eq!(pa.child("urn:x", "C").and_then(|c| c.attr("k")), Some("v"));
    }

    #[test]
    fn truncated_is_an_error() {
        let doc = r#"<a xmlns="urn:x"><b>text"#;
        assert!(matches!(
            parse(doc.as_bytes(), ParseOptions::default()),
            Err(XmlError::Truncated | XmlError::Syntax { .. })
        ));
    }

    #[test]
    fn base64_decoded_incrementally() {
        let doc = format!(
            r#"<t:MimeContent xmlns:t="{NS_TYPES}">SGVs&#x62;G8s
IHdvcmxkIQ==</t:MimeContent>"#
        );
        let el = parse(doc.as_bytes(), ParseOptions::default()).expect("parse");
        assert_eq!(el.binary.as_deref(), Some(&b"Hello, world!"[..]));
        assert!(el.text.is_empty());
    }

    #[test]
    fn sink_handles_any_split() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdefgh");
        for split in 0..encoded.len() {
            let mut s = Base64Sink::default();
            s.push(&encoded[..split]).expect("first half");
            s.push(&encoded[split..]).expect("second half");
            assert_eq!(s.finish().expect("finish"), b"0123456789abcdefgh");
        }
    }

    #[test]
    fn sink_skips_whitespace_anywhere() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        // Wrapped at 76 like RFC 2045, with CRLF, plus stray spaces and tabs.
        let mut wrapped = String::new();
        for (i, c) in encoded.chars().enumerate() {
            if i % 76 == 0 && i > 0 {
                wrapped.push_str("\r\n");
            }
            if i % 97 == 5 {
                wrapped.push_str(" \t");
            }
            wrapped.push(c);
        }
        wrapped.push_str("\r\n");
        for split in [0, 1, 77, 78, 79, 500, wrapped.len()] {
            let mut s = Base64Sink::default();
            s.push(&wrapped[..split]).expect("first half");
            s.push(&wrapped[split..]).expect("second half");
            assert_eq!(s.finish().expect("finish"), data, "split at {split}");
        }
    }
}
