//! Namespace-aware parsing of SOAP requests into a small element tree, and XML escaping for
//! the responses (which are written as text).

use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const NS_T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const NS_E: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// An element: namespace URI (empty when unbound), local name, attributes by local name,
/// children and the concatenated text content.
#[derive(Clone, Debug, Default)]
pub struct El {
    pub ns: String,
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<El>,
    pub text: String,
}

impl El {
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// First child with this local name (any namespace).
    pub fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self, names: &[&str]) -> Option<&El> {
        let mut cur = self;
        for n in names {
            cur = cur.child(n)?;
        }
        Some(cur)
    }

    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(pub String);

/// Parses a whole document into its root element.
pub fn parse(doc: &[u8]) -> Result<El, XmlError> {
    let text = std::str::from_utf8(doc).map_err(|e| XmlError(format!("not UTF-8: {e}")))?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<El> = Vec::new();
    let mut root: Option<El> = None;
    loop {
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| XmlError(e.to_string()))?;
        let ns_str = match ns {
            ResolveResult::Bound(n) => n.into_inner().to_owned(),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(p) => {
                return Err(XmlError(format!("unknown namespace prefix {p}")));
            }
        };
        match ev {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(XmlError("content after the root element".into()));
            }
            Event::Start(e) => {
                let el = start_el(&e, ns_str)?;
                stack.push(el);
            }
            Event::Empty(e) => {
                let el = start_el(&e, ns_str)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    _ => match &*r.xml10_content() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(XmlError(format!("unknown entity &{other};"))),
                    },
                };
                if let Some(cur) = stack.last_mut() {
                    cur.text.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("unexpected end of document".into()));
    }
    root.ok_or_else(|| XmlError("no root element".into()))
}

fn start_el(e: &quick_xml::events::BytesStart<'_>, ns: String) -> Result<El, XmlError> {
    let name = e.local_name().as_ref().to_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| XmlError(e.to_string()))?;
        let key = a.key.local_name();
        let k = key.as_ref().to_owned();
        if a.key.as_ref().starts_with("xmlns") {
            continue;
        }
        let v = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| XmlError(e.to_string()))?
            .into_owned();
        attrs.push((k, v));
    }
    Ok(El {
        ns,
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// Escapes text for element content and attribute values; drops characters XML 1.0 cannot
/// carry (C0 controls other than tab, CR, LF).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_matter() {
        let a = parse(br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:x="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Body><x:GetFolder a="1 &amp; 2">t&lt;&#233;</x:GetFolder></soap:Body></soap:Envelope>"#).expect("parses");
        let op = &a.children[0].children[0];
        assert!(op.is(NS_M, "GetFolder"));
        assert_eq!(op.attr("a"), Some("1 & 2"));
        assert_eq!(op.text, "t<é");
        let b = parse(br#"<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><GetFolder xmlns="http://schemas.microsoft.com/exchange/services/2006/messages"/></Body></Envelope>"#).expect("parses");
        assert!(b.children[0].children[0].is(NS_M, "GetFolder"));
        assert!(parse(b"<a><b></a>").is_err());
        assert!(parse(b"<a>").is_err());
    }
}
