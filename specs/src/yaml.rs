//! A YAML tree that remembers where every node came from.
//!
//! Built on yaml-rust2's event parser so that each node carries the line and column it
//! starts at; `de` reads this tree and reports problems at those places. Scalars follow
//! the YAML 1.2 core schema, anchors and merge keys are resolved here, so later stages
//! (decoding, hashing) never see aliases.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

/// How many nodes alias expansion may produce in one stream before it is refused.
/// Guards against "billion laughs" documents: a few lines that expand to gigabytes.
const MAX_ALIAS_NODES: usize = 100_000;

/// How deep mappings and sequences may nest. Specs nest a handful of levels; the cap
/// keeps the recursive builder (and everything that walks the tree) off the stack limit.
const MAX_DEPTH: usize = 256;

/// The prefix yaml-rust2 resolves `!!` to.
const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// A place in the YAML text. Lines and columns count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mark {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Mark {
    fn from_marker(marker: &Marker) -> Self {
        // yaml-rust2's columns count from 0, its lines from 1.
        Self { line: marker.line(), column: marker.col() + 1 }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML value with the place it starts at.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where the value starts: a scalar's first character, a mapping's first key (or its
    /// `{`), a sequence's first `-` (or its `[`). An empty value in a mapping (`key:`)
    /// is placed at its key, which is where an operator would look for it.
    pub mark: Mark,
}

/// The value of a node, after tags, anchors and merge keys are resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing at all.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A decimal, `0x` or `0o` integer that fits in an `i64`.
    Int(i64),
    /// A floating-point number, including `.inf` and `.nan`.
    Float(f64),
    /// Any other scalar, and every quoted or block scalar.
    String(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order. Keys are unique.
    Map(Vec<(Node, Node)>),
}

/// Why a YAML text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// Where the problem is.
    pub mark: Mark,
    /// What is wrong, without the location.
    pub message: String,
}

impl YamlError {
    fn new(mark: Mark, message: impl Into<String>) -> Self {
        Self { mark, message: message.into() }
    }
}

impl Node {
    /// A node holding `value` at `mark`.
    pub fn new(value: Value, mark: Mark) -> Self {
        Self { value, mark }
    }

    /// What kind of value this is, worded for messages: "a string", "a mapping", "null".
    pub fn kind_name(&self) -> &'static str {
        self.value.kind_name()
    }

    /// The value under the string key `key`, when this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => {
                entries.iter().find(|(k, _)| matches!(&k.value, Value::String(s) if s == key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The string, when this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this node is null.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Whether two nodes hold the same value, wherever they are. Mappings compare in
    /// order, so this is the equality a hand-written copy of a document would have.
    pub fn same_value(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Seq(a), Value::Seq(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_value(y)),
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka.same_value(kb) && va.same_value(vb))
            }
            (a, b) => a == b,
        }
    }

    /// The node as JSON, the form specs are hashed in. Integers and finite floats become
    /// numbers; `.inf`, `-.inf` and `.nan` become the strings YAML writes them as, since
    /// JSON has no such numbers. Keys that are not strings are written out as text
    /// (`1`, `true`, `null`, or the JSON of a complex key).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => J::String(float_text(*f)),
            },
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.key_text(), v.to_json())).collect()),
        }
    }

    /// The node written as a mapping key, for JSON objects and messages: a string as it
    /// is, other scalars as YAML writes them, complex keys as JSON.
    pub fn key_text(&self) -> String {
        match &self.value {
            Value::String(s) => s.clone(),
            Value::Null => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => float_text(*f),
            Value::Seq(_) | Value::Map(_) => self.to_json().to_string(),
        }
    }

    /// How many nodes this tree holds, counting itself.
    fn count(&self) -> usize {
        match &self.value {
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|(k, v)| k.count() + v.count()).sum::<usize>(),
            _ => 1,
        }
    }
}

impl Value {
    /// What kind of value this is, worded for messages: "a string", "a mapping", "null".
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::String(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A float the way YAML writes it, so non-finite values read back the same.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        ".nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.to_owned()
    } else {
        f.to_string()
    }
}

/// `text` without the UTF-8 byte order mark it may start with. YAML allows one there, and
/// editors on Windows write it; read as text it would become part of the first key
/// (`\u{feff}apiVersion`). Callers that map columns back to the text strip it first, so
/// that columns on the first line are counted as an editor shows them.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Parses every document of a YAML stream, one node per document. A byte order mark at
/// the start is read past ([`strip_bom`]).
///
/// An empty document (a bare `---`) is a `Null` node; a stream with nothing but
/// comments has no documents at all.
pub fn parse_stream(text: &str) -> Result<Vec<Node>, YamlError> {
    let text = strip_bom(text);
    let mut builder = Builder { parser: Parser::new_from_str(text), text, anchors: HashMap::new(), expanded: 0 };
    builder.stream()
}

/// A node registered under an anchor, with its size for the alias-expansion budget.
struct Anchored {
    node: Node,
    count: usize,
}

/// Pulls events from the parser and builds nodes from them.
struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    text: &'a str,
    /// Anchored nodes by the parser's anchor id (unique across the stream).
    anchors: HashMap<usize, Anchored>,
    /// Nodes produced so far by alias expansion.
    expanded: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Mark), YamlError> {
        match self.parser.next_token() {
            Ok((event, marker)) => Ok((event, Mark::from_marker(&marker))),
            Err(e) => Err(self.scan_error(&e)),
        }
    }

    /// Turns a scanner error into ours. `info()` is the message without the location
    /// that yaml-rust2's `Display` appends; we print locations ourselves.
    fn scan_error(&self, e: &ScanError) -> YamlError {
        let mark = Mark::from_marker(e.marker());
        let info = e.info();
        if info.contains("unknown anchor") {
            // The parser does not say which anchor; it is the word after the `*` at the mark.
            let name: String = self
                .text
                .chars()
                .skip(e.marker().index())
                .skip_while(|c| *c == '*')
                .take_while(|c| !c.is_whitespace() && !",[]{}".contains(*c))
                .collect();
            return YamlError::new(mark, format!("alias `*{name}` refers to an unknown anchor"));
        }
        YamlError::new(mark, info)
    }

    fn stream(&mut self) -> Result<Vec<Node>, YamlError> {
        let mut docs = Vec::new();
        loop {
            let (event, mark) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(docs),
                Event::DocumentStart => {
                    let (event, mark) = self.next()?;
                    docs.push(self.node(event, mark, 0)?);
                }
                other => {
                    return Err(YamlError::new(mark, format!("unexpected {other:?} in stream")));
                }
            }
        }
    }

    fn node(&mut self, event: Event, mark: Mark, depth: usize) -> Result<Node, YamlError> {
        if depth > MAX_DEPTH {
            return Err(YamlError::new(mark, format!("mappings and sequences nest deeper than {MAX_DEPTH} levels")));
        }
        let (node, anchor) = match event {
            Event::Alias(id) => return self.alias(id, mark),
            Event::Scalar(text, style, anchor, tag) => {
                (Node::new(scalar(text, style, tag.as_ref(), mark)?, mark), anchor)
            }
            Event::SequenceStart(anchor, tag) => {
                collection_tag(tag.as_ref(), "seq", "a sequence", mark)?;
                (self.sequence(mark, depth)?, anchor)
            }
            Event::MappingStart(anchor, tag) => {
                collection_tag(tag.as_ref(), "map", "a mapping", mark)?;
                (self.mapping(mark, depth)?, anchor)
            }
            other => return Err(YamlError::new(mark, format!("unexpected {other:?}"))),
        };
        if anchor > 0 {
            let count = node.count();
            self.anchors.insert(anchor, Anchored { node: node.clone(), count });
        }
        Ok(node)
    }

    fn alias(&mut self, id: usize, mark: Mark) -> Result<Node, YamlError> {
        // The parser knows every anchor name it has seen; one it knows but we have not
        // registered is still being built, i.e. the alias sits inside its own anchor.
        let Some(anchored) = self.anchors.get(&id) else {
            return Err(YamlError::new(mark, "alias refers to the node that contains it"));
        };
        self.expanded += anchored.count;
        if self.expanded > MAX_ALIAS_NODES {
            return Err(YamlError::new(mark, format!("aliases expand to more than {MAX_ALIAS_NODES} nodes")));
        }
        let mut node = anchored.node.clone();
        // The use site is what an operator looks at first; the contents keep the marks of
        // the anchored definition, where their text is.
        node.mark = mark;
        Ok(node)
    }

    fn sequence(&mut self, start: Mark, depth: usize) -> Result<Node, YamlError> {
        let mut items = Vec::new();
        loop {
            let (event, mark) = self.next()?;
            if event == Event::SequenceEnd {
                return Ok(Node::new(Value::Seq(items), start));
            }
            items.push(self.node(event, mark, depth + 1)?);
        }
    }

    fn mapping(&mut self, start: Mark, depth: usize) -> Result<Node, YamlError> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        // Where each key first appeared, by `key_id`, to report duplicates.
        let mut seen: HashMap<String, Mark> = HashMap::new();
        // Mappings merged in with `<<`, in order, and where the first `<<` was.
        let mut merged: Vec<(Node, Node)> = Vec::new();
        let mut merge_at: Option<usize> = None;
        let mut first_key: Option<Mark> = None;
        loop {
            let (event, key_mark) = self.next()?;
            if event == Event::MappingEnd {
                break;
            }
            first_key.get_or_insert(key_mark);
            let is_merge = matches!(
                &event,
                Event::Scalar(s, TScalarStyle::Plain, _, None) if s == "<<"
            );
            let key = self.node(event, key_mark, depth + 1)?;
            let (event, value_mark) = self.next()?;
            let implicit_null = matches!(&event, Event::Scalar(s, TScalarStyle::Plain, _, _) if s.is_empty());
            let mut value = self.node(event, value_mark, depth + 1)?;
            if implicit_null {
                value.mark = key.mark;
            }

            let id = key_id(&key);
            if let Some(first) = seen.get(&id) {
                return Err(YamlError::new(
                    key.mark,
                    format!("duplicate key `{}` (first at line {})", key.key_text(), first.line),
                ));
            }
            seen.insert(id, key.mark);

            if is_merge {
                merge_at.get_or_insert(entries.len());
                merge_sources(value, &mut merged)?;
            } else {
                entries.push((key, value));
            }
        }

        if let Some(at) = merge_at {
            // Keys written in this mapping win; among merged mappings, the earlier wins.
            let mut taken: Vec<(Node, Node)> = Vec::new();
            for (k, v) in merged {
                if let Entry::Vacant(slot) = seen.entry(key_id(&k)) {
                    slot.insert(k.mark);
                    taken.push((k, v));
                }
            }
            entries.splice(at..at, taken);
        }

        // A block mapping's start event sits at its first `:`, a flow mapping's at `{`;
        // whichever comes first is where the mapping starts.
        let mark = match first_key {
            Some(k) if k < start => k,
            _ => start,
        };
        Ok(Node::new(Value::Map(entries), mark))
    }
}

/// Adds the entries of a merge key's value (a mapping or a sequence of mappings).
fn merge_sources(value: Node, merged: &mut Vec<(Node, Node)>) -> Result<(), YamlError> {
    const WRONG: &str = "the merge key `<<` takes a mapping or a sequence of mappings";
    match value.value {
        Value::Map(entries) => merged.extend(entries),
        Value::Seq(items) => {
            for item in items {
                match item.value {
                    Value::Map(entries) => merged.extend(entries),
                    _ => {
                        return Err(YamlError::new(
                            item.mark,
                            format!("{WRONG}, found {} in the sequence", item.kind_name()),
                        ));
                    }
                }
            }
        }
        ref other => {
            return Err(YamlError::new(value.mark, format!("{WRONG}, found {}", other.kind_name())));
        }
    }
    Ok(())
}

/// A key's identity for duplicate detection: equal values, equal ids, whatever the marks.
fn key_id(key: &Node) -> String {
    match &key.value {
        Value::String(s) => format!("s{s}"),
        Value::Float(f) => format!("f{}", float_text(*f)),
        other => format!("{}{}", other.kind_name(), key.to_json()),
    }
}

/// The tag as written: `!!str`, `!local`, or the full tag.
fn tag_text(tag: &Tag) -> String {
    let full = format!("{}{}", tag.handle, tag.suffix);
    match full.strip_prefix(CORE_TAG_PREFIX) {
        Some(name) => format!("!!{name}"),
        None => full,
    }
}

/// Checks the tag of a mapping or sequence: none, `!`, or the matching core tag.
fn collection_tag(tag: Option<&Tag>, core: &str, kind: &str, mark: Mark) -> Result<(), YamlError> {
    let Some(tag) = tag else { return Ok(()) };
    let full = format!("{}{}", tag.handle, tag.suffix);
    if full == "!" || full.strip_prefix(CORE_TAG_PREFIX) == Some(core) {
        return Ok(());
    }
    Err(YamlError::new(mark, format!("tag `{}` cannot be used on {kind}", tag_text(tag))))
}

/// Resolves a scalar: by its tag when it has one, else plain scalars by the YAML 1.2
/// core schema and everything quoted or block-styled as a string.
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>, mark: Mark) -> Result<Value, YamlError> {
    let Some(tag) = tag else {
        return if style == TScalarStyle::Plain { Ok(plain(text, mark)?) } else { Ok(Value::String(text)) };
    };
    let full = format!("{}{}", tag.handle, tag.suffix);
    if full == "!" {
        // The non-specific tag: "do not resolve me", i.e. a string.
        return Ok(Value::String(text));
    }
    let invalid =
        |what: &str| YamlError::new(mark, format!("`{text}` is not {what}, as its tag `{}` requires", tag_text(tag)));
    match full.strip_prefix(CORE_TAG_PREFIX) {
        Some("str") => Ok(Value::String(text)),
        Some("null") if is_null(&text) => Ok(Value::Null),
        Some("null") => Err(invalid("null")),
        Some("bool") => parse_bool(&text).map(Value::Bool).ok_or_else(|| invalid("a boolean")),
        Some("int") => match parse_int(&text) {
            Some(Ok(i)) => Ok(Value::Int(i)),
            Some(Err(())) => Err(out_of_range(&text, mark)),
            None => Err(invalid("an integer")),
        },
        Some("float") => match (parse_float(&text), parse_int(&text)) {
            (Some(f), _) => Ok(Value::Float(f)),
            // Integers written under `!!float` are floats; precision loss is expected.
            (None, Some(Ok(i))) => Ok(Value::Float(i as f64)),
            _ => Err(invalid("a float")),
        },
        Some("map") | Some("seq") => {
            Err(YamlError::new(mark, format!("tag `{}` cannot be used on a scalar", tag_text(tag))))
        }
        _ => Err(YamlError::new(mark, format!("unknown tag `{}`", tag_text(tag)))),
    }
}

fn out_of_range(text: &str, mark: Mark) -> YamlError {
    YamlError::new(mark, format!("integer `{text}` does not fit in 64 bits"))
}

/// A plain scalar by the core schema.
fn plain(text: String, mark: Mark) -> Result<Value, YamlError> {
    if is_null(&text) {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(&text) {
        return Ok(Value::Bool(b));
    }
    match parse_int(&text) {
        Some(Ok(i)) => return Ok(Value::Int(i)),
        Some(Err(())) => return Err(out_of_range(&text, mark)),
        None => {}
    }
    if let Some(f) = parse_float(&text) {
        return Ok(Value::Float(f));
    }
    Ok(Value::String(text))
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `None` when `text` is not an integer; `Some(Err)` when it is one that does not fit.
fn parse_int(text: &str) -> Option<Result<i64, ()>> {
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = text.strip_prefix("0x") {
        return digits(hex, 16).then(|| i64::from_str_radix(hex, 16).map_err(|_| ()));
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return digits(oct, 8).then(|| i64::from_str_radix(oct, 8).map_err(|_| ()));
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    digits(unsigned, 10).then(|| text.parse::<i64>().map_err(|_| ()))
}

/// Core-schema floats: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, `.inf`, `.nan`.
fn parse_float(text: &str) -> Option<f64> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return Some(if negative { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, frac)) => all_digits(whole) && all_digits(frac) && (!whole.is_empty() || !frac.is_empty()),
        None => !mantissa.is_empty() && all_digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    if !(mantissa_ok && exponent_ok) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse_stream(text).expect("valid YAML");
        assert_eq!(docs.len(), 1, "one document");
        docs.remove(0)
    }

    fn err(text: &str) -> (usize, usize, String) {
        let e = parse_stream(text).expect_err("invalid YAML");
        (e.mark.line, e.mark.column, e.message)
    }

    fn at(node: &Node) -> (usize, usize) {
        (node.mark.line, node.mark.column)
    }

    fn value(text: &str) -> Value {
        one(&format!("v: {text}\n")).get("v").expect("v").value.clone()
    }

    #[test]
    fn nested_nodes_carry_the_place_their_value_starts() {
        let doc = one(
            "# a comment\nname: web\nspec:\n  image: nginx\n  ports:\n    - 80\n    - {host: 8080, protocols: [tcp, udp]}\n  empty:\n",
        );
        assert_eq!(at(&doc), (2, 1));
        assert_eq!(at(doc.get("name").expect("name")), (2, 7));
        let spec = doc.get("spec").expect("spec");
        assert_eq!(at(spec), (4, 3));
        assert_eq!(at(spec.get("image").expect("image")), (4, 10));
        let Value::Seq(ports) = &spec.get("ports").expect("ports").value else { panic!("ports is a sequence") };
        assert_eq!(at(spec.get("ports").expect("ports")), (6, 5));
        assert_eq!(at(&ports[0]), (6, 7));
        assert_eq!(at(&ports[1]), (7, 7));
        assert_eq!(at(ports[1].get("host").expect("host")), (7, 14));
        assert_eq!(at(ports[1].get("protocols").expect("protocols")), (7, 31));
        // An empty value is placed at its key rather than at whatever follows it.
        assert_eq!(at(spec.get("empty").expect("empty")), (8, 3));
        let Value::Map(entries) = &doc.value else { panic!("mapping") };
        assert_eq!(at(&entries[1].0), (3, 1));
    }

    #[test]
    fn a_stream_yields_one_node_per_document_and_empty_documents_are_null() {
        let docs = parse_stream("a: 1\n---\n- x\n---\n# nothing here\n---\n").expect("valid");
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0].to_json(), serde_json::json!({"a": 1}));
        assert_eq!(docs[1].to_json(), serde_json::json!(["x"]));
        assert_eq!(at(&docs[1]), (3, 1));
        assert!(docs[2].is_null());
        assert!(docs[3].is_null());
        assert!(parse_stream("# only a comment\n").expect("valid").is_empty());
        assert!(parse_stream("").expect("valid").is_empty());
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        for (text, expected) in [
            ("~", Value::Null),
            ("null", Value::Null),
            ("NULL", Value::Null),
            ("", Value::Null),
            ("true", Value::Bool(true)),
            ("False", Value::Bool(false)),
            ("yes", Value::String("yes".into())),
            ("42", Value::Int(42)),
            ("-7", Value::Int(-7)),
            ("+7", Value::Int(7)),
            ("0x1F", Value::Int(31)),
            ("0o17", Value::Int(15)),
            ("1.5", Value::Float(1.5)),
            ("-.5", Value::Float(-0.5)),
            ("1e3", Value::Float(1000.0)),
            ("2.", Value::Float(2.0)),
            (".inf", Value::Float(f64::INFINITY)),
            ("-.Inf", Value::Float(f64::NEG_INFINITY)),
            ("1_000", Value::String("1_000".into())),
            ("0x", Value::String("0x".into())),
            ("inf", Value::String("inf".into())),
            ("1.2.3", Value::String("1.2.3".into())),
            ("'42'", Value::String("42".into())),
            ("\"true\"", Value::String("true".into())),
            ("\"\"", Value::String(String::new())),
        ] {
            assert_eq!(value(text), expected, "{text}");
        }
        assert!(matches!(value(".nan"), Value::Float(f) if f.is_nan()));
        assert_eq!(value("|\n  block\n"), Value::String("block\n".into()));
    }

    #[test]
    fn explicit_tags_decide_the_type() {
        assert_eq!(value("!!str 12"), Value::String("12".into()));
        assert_eq!(value("!!int \"12\""), Value::Int(12));
        assert_eq!(value("!!float 3"), Value::Float(3.0));
        assert_eq!(value("!!bool 'true'"), Value::Bool(true));
        assert_eq!(value("!!null ''"), Value::Null);
        assert_eq!(value("! 12"), Value::String("12".into()));
        assert_eq!(value("!!map {a: 1}").kind_name(), "a mapping");
        assert_eq!(err("v: !!int abc\n"), (1, 10, "`abc` is not an integer, as its tag `!!int` requires".into()));
        assert_eq!(err("v: !local x\n"), (1, 11, "unknown tag `!local`".into()));
        assert_eq!(err("v: !!seq {}\n"), (1, 10, "tag `!!seq` cannot be used on a mapping".into()));
        assert_eq!(err("v: !!binary aGk=\n"), (1, 13, "unknown tag `!!binary`".into()));
    }

    #[test]
    fn integers_beyond_64_bits_are_refused() {
        assert_eq!(
            err("v: 99999999999999999999\n"),
            (1, 4, "integer `99999999999999999999` does not fit in 64 bits".into())
        );
    }

    #[test]
    fn aliases_copy_the_anchored_node_and_sit_at_the_alias() {
        let doc = one("base: &b\n  image: nginx\ncopy: *b\nname: &n web\nalso: *n\n");
        assert_eq!(doc.get("copy").expect("copy").to_json(), serde_json::json!({"image": "nginx"}));
        assert_eq!(at(doc.get("copy").expect("copy")), (3, 7));
        // Contents keep the place they were written.
        assert_eq!(at(doc.get("copy").expect("copy").get("image").expect("image")), (2, 10));
        assert_eq!(doc.get("also").expect("also").as_str(), Some("web"));
    }

    #[test]
    fn merge_keys_give_the_same_document_as_writing_it_out() {
        let merged = one(
            "base: &base\n  image: nginx\n  restart: always\n  env: {A: '1'}\nextra: &extra\n  restart: never\n  user: web\nweb:\n  <<: [*base, *extra]\n  image: nginx:1.27\nsingle:\n  <<: *extra\n",
        );
        let written = one(
            "base:\n  image: nginx\n  restart: always\n  env: {A: '1'}\nextra:\n  restart: never\n  user: web\nweb:\n  restart: always\n  env: {A: '1'}\n  user: web\n  image: nginx:1.27\nsingle:\n  restart: never\n  user: web\n",
        );
        assert_eq!(merged.to_json(), written.to_json());
        assert!(merged.same_value(&written), "{merged:#?}");
    }

    #[test]
    fn a_merge_key_needs_mappings() {
        assert_eq!(
            err("a: &a 1\nb:\n  <<: *a\n"),
            (3, 7, "the merge key `<<` takes a mapping or a sequence of mappings, found an integer".into())
        );
    }

    #[test]
    fn an_alias_to_an_unknown_anchor_is_an_error_at_the_alias() {
        assert_eq!(err("a: 1\nb: *nope\n"), (2, 4, "alias `*nope` refers to an unknown anchor".into()));
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second_key() {
        assert_eq!(err("image: a\nports: []\nimage: b\n"), (3, 1, "duplicate key `image` (first at line 1)".into()));
        assert_eq!(err("{1: a, 1: b}\n"), (1, 8, "duplicate key `1` (first at line 1)".into()));
        // The same text as a string and as an integer are different keys.
        assert!(parse_stream("{1: a, '1': b}\n").is_ok());
    }

    #[test]
    fn scanner_errors_carry_a_clean_message_and_their_place() {
        assert_eq!(err("a: b\n c: d\n"), (2, 3, "mapping values are not allowed in this context".into()));
        assert_eq!(err("a: [1, 2\n"), (2, 1, "while parsing a flow sequence, expected ',' or ']'".into()));
        assert_eq!(err("key: @x\n"), (1, 6, "unexpected character: `@'".into()));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (_, _, message) = err(&text);
        assert_eq!(message, "aliases expand to more than 100000 nodes");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}x\n", "- ".repeat(300));
        let (_, _, message) = err(&text);
        assert_eq!(message, "mappings and sequences nest deeper than 256 levels");
    }

    #[test]
    fn json_keeps_numbers_and_stringifies_what_json_cannot_hold() {
        let doc = one("1: .inf\ntrue: -.inf\nn: .nan\nf: 1.5\ns: [~, 'x']\n");
        assert_eq!(
            doc.to_json(),
            serde_json::json!({"1": ".inf", "true": "-.inf", "n": ".nan", "f": 1.5, "s": [null, "x"]})
        );
    }
}
