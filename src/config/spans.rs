//! Where a key sits in the config text, for error messages: toml's own
//! spanned parse tree (`toml::de::DeTable`) maps a key path to its line and
//! an error's byte offset back to the dotted key, so no hand-written
//! scanner has to understand TOML's quoting, inline tables or dotted keys.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key, or an index into an array of tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The spanned parse tree of one config text.
pub struct Spans<'i> {
    text: &'i str,
    root: Spanned<DeTable<'i>>,
}

impl<'i> Spans<'i> {
    /// `None` when the text is not TOML at all (serde reports that error).
    pub fn parse(text: &'i str) -> Option<Spans<'i>> {
        DeTable::parse(text).ok().map(|root| Spans { text, root })
    }

    /// 1-based line of a byte offset.
    pub fn line_at(text: &str, offset: usize) -> usize {
        text[..offset.min(text.len())].matches('\n').count() + 1
    }

    /// The line of the key at `path`; when that key is not written (a
    /// default), the line of the nearest table on the path that is.
    pub fn line_of(&self, path: &[Seg<'_>]) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut table: &DeTable<'_> = self.root.get_ref();
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in path {
            let next = match (seg, value.map(|v| v.get_ref())) {
                (Seg::Key(k), None | Some(DeValue::Table(_))) => {
                    if let Some(DeValue::Table(t)) = value.map(|v| v.get_ref()) {
                        table = t;
                    }
                    let Some((key, v)) = table.iter().find(|(key, _)| key.get_ref() == k) else {
                        break;
                    };
                    best = Some(key.span().start);
                    v
                }
                (Seg::Index(i), Some(DeValue::Array(a))) => {
                    let Some(v) = a.get(*i) else { break };
                    best = Some(v.span().start);
                    v
                }
                _ => break,
            };
            value = Some(next);
        }
        best.map(|at| Self::line_at(self.text, at))
    }

    /// The dotted key (array indices left out, e.g. `backends.name`) whose
    /// key or value covers byte `offset`, the most specific one.
    pub fn key_at(&self, offset: usize) -> Option<String> {
        let mut found: Option<(usize, String)> = None;
        walk_table(self.root.get_ref(), &mut Vec::new(), offset, &mut found);
        found.map(|(_, k)| k)
    }
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Keeps the narrowest span covering `offset` seen so far, as (width, key).
fn consider(span: Range<usize>, path: &[&str], offset: usize, found: &mut Option<(usize, String)>) {
    if covers(&span, offset) && found.as_ref().is_none_or(|(w, _)| span.len() <= *w) {
        *found = Some((span.len(), path.join(".")));
    }
}

/// Depth-first search for the narrowest key or scalar value span covering
/// `offset`.
fn walk_table<'a>(
    t: &'a DeTable<'_>,
    path: &mut Vec<&'a str>,
    offset: usize,
    found: &mut Option<(usize, String)>,
) {
    for (key, value) in t.iter() {
        path.push(key.get_ref());
        consider(key.span(), path, offset, found);
        walk_value(value, path, offset, found);
        path.pop();
    }
}

fn walk_value<'a>(
    v: &'a Spanned<DeValue<'_>>,
    path: &mut Vec<&'a str>,
    offset: usize,
    found: &mut Option<(usize, String)>,
) {
    match v.get_ref() {
        DeValue::Table(t) => walk_table(t, path, offset, found),
        DeValue::Array(a)
            if !a.is_empty() && a.iter().all(|e| matches!(e.get_ref(), DeValue::Table(_))) =>
        {
            for e in a.iter() {
                if let DeValue::Table(t) = e.get_ref() {
                    walk_table(t, path, offset, found);
                }
            }
        }
        _ => consider(v.span(), path, offset, found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nlisten = \"x\"\n\n[[backends]]\nname = \"a\"\n\n[[backends]]\nurl = \"u\"\nname = \"b\"\n[heartbeat]\nclient_interval = \"3 parsecs\"\n";

    #[test]
    fn lines_of_keys_tables_and_array_elements() {
        let s = Spans::parse(TEXT).unwrap();
        assert_eq!(
            s.line_of(&[Seg::Key("server"), Seg::Key("listen")]),
            Some(2)
        );
        let b1 = [Seg::Key("backends"), Seg::Index(1), Seg::Key("name")];
        assert_eq!(s.line_of(&b1), Some(9));
        // Not written: the table that would hold it.
        let w = [Seg::Key("backends"), Seg::Index(1), Seg::Key("weight")];
        assert_eq!(s.line_of(&w), Some(7));
        assert_eq!(s.line_of(&[Seg::Key("auth"), Seg::Key("mode")]), None);
    }

    #[test]
    fn dotted_key_at_an_offset() {
        let s = Spans::parse(TEXT).unwrap();
        let at = TEXT.find("3 parsecs").unwrap();
        assert_eq!(s.key_at(at).as_deref(), Some("heartbeat.client_interval"));
        let at = TEXT.find("url").unwrap();
        assert_eq!(s.key_at(at).as_deref(), Some("backends.url"));
    }
}
