//! Decoding spec types from the YAML tree, reporting every problem with its place.
//!
//! serde stops at the first error, and its seeds and visitors cannot be reused, so a
//! failed field cannot simply be retried. Instead decoding runs in passes: when a pass
//! fails at a node, the problem is recorded and the next pass decodes that node as a
//! *stand-in* that gives each visitor a harmless value (`None`, `""`, `0`, an empty
//! list, a struct of stand-ins, the first variant). Decoding then goes past it and finds
//! the next problem. When a stand-in is refused too (a validated type rejecting `""`), the
//! parent becomes the stand-in, silently: its cause has already been reported. Unknown
//! fields are skipped and reported without stopping. A document with problems decodes to
//! nothing, so stand-in values never leave [`from_node`]. (The value [`partial_from_node`]
//! makes of such a document may hold stand-ins for missing mappings and lists, never a
//! made-up name.)
//!
//! An unknown field is worded once decoding is over, when the fields of every struct that
//! was decoded are known: a key written one level too far left (it lands in the parent
//! mapping) is named as a field of the block mapping that ends just above it, rather than
//! taken for a misspelling of one of the parent's fields.
//!
//! [`partial_from_node`] decodes a document with problems as far as it can, for the checks
//! across documents.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, Expected, MapAccess, SeqAccess, Unexpected, VariantAccess,
    Visitor,
};

use crate::diag::{Diagnostic, Location};
use crate::yaml::{Mark, Node, Value};

mod partial;

pub use partial::{Partial, partial_from_node};

/// A bound on decoding passes; each pass replaces one more node by a stand-in.
const MAX_PASSES: usize = 500;

/// Decodes `node` into `T`. Every problem becomes a [`Diagnostic`] (in `file`, at the
/// line and column of the node it concerns) pushed onto `diags`, in document order.
/// Returns `Some` only when no diagnostic was added.
pub fn from_node<T: DeserializeOwned>(node: &Node, file: &Arc<Path>, diags: &mut Vec<Diagnostic>) -> Option<T> {
    let state = State::default();
    let mut decoded = None;
    for _ in 0..MAX_PASSES {
        match decode_at(node, &state, |de| T::deserialize(de)) {
            Ok(value) => {
                decoded = Some(value);
                break;
            }
            Err(e) => {
                let Some(poison) = e.poison_target() else {
                    break;
                };
                match e.kind {
                    Kind::Problem(message) => state.record(e.mark.unwrap_or(node.mark), message),
                    missing @ Kind::Missing(_) => state.record(e.mark.unwrap_or(node.mark), missing.to_string()),
                    _ => {}
                }
                if !state.poisoned.borrow_mut().insert(poison) {
                    // A node already stood in for failed again: nothing more to learn.
                    break;
                }
            }
        }
    }

    let unknown = state.word_unknown_fields(node);
    let mut found = state.found.into_inner();
    found.extend(unknown);
    if found.is_empty() && decoded.is_none() {
        // Only when passes ran out with nothing to show; never expected in practice.
        found.push((node.mark, "could not decode this document".to_owned()));
    }
    if found.is_empty() {
        return decoded;
    }
    drop_missing_fields_explained_by_typos(&mut found);
    found.sort_by_key(|(mark, _)| *mark);
    diags.extend(found.into_iter().map(|(mark, message)| {
        let location = Location { file: file.clone(), line: mark.line, column: mark.column };
        Diagnostic::at(location, message)
    }));
    None
}

/// A misspelt required field is reported once, as the typo with its suggestion: the
/// "missing field `X`" it also causes says nothing new when some unknown field suggests `X`.
fn drop_missing_fields_explained_by_typos(found: &mut Vec<(Mark, String)>) {
    let suggested: HashSet<String> = found
        .iter()
        .filter_map(|(_, m)| m.split_once(", did you mean `").map(|(_, rest)| rest.trim_end_matches("`?").to_owned()))
        .collect();
    found.retain(|(_, m)| {
        m.strip_prefix("missing field `").and_then(|f| f.strip_suffix('`')).is_none_or(|f| !suggested.contains(f))
    });
}

/// What the passes of one decoding share.
#[derive(Default)]
struct State {
    /// Problems found so far, deduplicated: later passes meet soft problems again.
    found: RefCell<Vec<(Mark, String)>>,
    /// Nodes (by address) decoded as stand-ins from now on.
    poisoned: RefCell<HashSet<usize>>,
    /// How many stand-ins this pass has used, to tell whether one is below an error.
    stand_ins: Cell<usize>,
    /// Unknown fields met, worded when decoding is over ([`State::word_unknown_fields`]).
    unknown: RefCell<Vec<Unknown>>,
    /// The fields of each mapping decoded as a struct (in any pass), by node.
    structs: RefCell<HashMap<usize, &'static [&'static str]>>,
    /// Entries (by key node) decoded as if not written: partial decoding only.
    left_out: RefCell<HashSet<usize>>,
    /// Missing fields of mappings (by node) given a stand-in: partial decoding only.
    stood_in: RefCell<HashMap<usize, Vec<&'static str>>>,
}

/// An unknown field: a key of a mapping decoded as a struct that names none of its fields.
struct Unknown {
    /// The key node.
    key: usize,
    /// The mapping it is in.
    map: usize,
    /// The struct's fields.
    fields: &'static [&'static str],
}

impl State {
    fn record(&self, mark: Mark, message: String) {
        let mut found = self.found.borrow_mut();
        if !found.iter().any(|(m, msg)| *m == mark && *msg == message) {
            found.push((mark, message));
        }
    }

    fn is_poisoned(&self, node: &Node) -> bool {
        self.poisoned.borrow().contains(&node_id(node))
    }

    /// Whether the entry with key `key` is decoded (not left out by partial decoding).
    fn is_kept(&self, key: &Node) -> bool {
        !self.left_out.borrow().contains(&node_id(key))
    }

    /// The missing fields of `map` that partial decoding gives a stand-in.
    fn stood_in(&self, map: &Node) -> Vec<&'static str> {
        self.stood_in.borrow().get(&node_id(map)).cloned().unwrap_or_default()
    }

    /// Notes the unknown field `key` of `map` (once, though every pass meets it).
    fn unknown_field(&self, key: &Node, map: usize, fields: &'static [&'static str]) {
        let mut unknown = self.unknown.borrow_mut();
        if !unknown.iter().any(|u| u.key == node_id(key)) {
            unknown.push(Unknown { key: node_id(key), map, fields });
        }
    }

    /// The problems of the unknown fields under `root`. A key that is a field of the block
    /// mapping just above it gets the indentation hint ([`dedent_hint`]) instead of a
    /// spelling suggestion, and a "missing field" of that mapping that it explains is
    /// dropped from what was found.
    fn word_unknown_fields(&self, root: &Node) -> Vec<(Mark, String)> {
        let unknown = self.unknown.take();
        if unknown.is_empty() {
            return Vec::new();
        }
        let structs = self.structs.borrow();
        let mappings = mappings(root);
        let mut worded = Vec::new();
        for u in unknown {
            let Some(&(map, parent)) = mappings.get(&u.map) else { continue };
            let Value::Map(entries) = &map.value else { continue };
            let Some(at) = entries.iter().position(|(k, _)| node_id(k) == u.key) else { continue };
            let key = &entries[at].0;
            let name = key.key_text();
            match dedent_hint(&entries[..at], &name, &structs) {
                Some((sibling, value)) => {
                    let within = parent.map(|p| format!(" in `{}`", p.key_text())).unwrap_or_default();
                    let sibling_name = sibling.key_text();
                    worded.push((
                        key.mark,
                        format!(
                            "unknown field `{name}`{within}: it is a field of `{sibling_name}` (line {}) — indent it under `{sibling_name}`",
                            sibling.mark.line
                        ),
                    ));
                    let missing = format!("missing field `{name}`");
                    self.found.borrow_mut().retain(|(mark, message)| !(*mark == value.mark && *message == missing));
                }
                None => worded.push((key.mark, unknown_field(&name, u.fields))),
            }
        }
        worded
    }
}

/// For a key `name` that is not a field of its mapping, written after `before` (the
/// entries above it): the key and value of the block mapping it most likely belongs in.
/// That is the value of the entry just above when it is a block mapping decoded as a
/// struct that has the field `name` and does not set it yet; else the same asked of that
/// mapping's last entry, and so on down (a key dedented by more than one level). A flow
/// mapping (`{...}` on its key's line) ends on its own line, so it is never offered.
fn dedent_hint<'n>(
    before: &'n [(Node, Node)],
    name: &str,
    structs: &HashMap<usize, &'static [&'static str]>,
) -> Option<(&'n Node, &'n Node)> {
    let (mut key, mut value) = before.last().map(|(k, v)| (k, v))?;
    loop {
        let Value::Map(entries) = &value.value else { return None };
        if value.mark.line <= key.mark.line {
            return None;
        }
        let has = |field: &str| entries.iter().any(|(k, _)| k.as_str() == Some(field));
        if structs.get(&node_id(value)).is_some_and(|fields| fields.contains(&name)) && !has(name) {
            return Some((key, value));
        }
        (key, value) = entries.last().map(|(k, v)| (k, v))?;
    }
}

/// Every mapping in the tree of `root`, by identity, with the key it is the value of (for a
/// mapping in a sequence, the key of the sequence; none for `root`).
fn mappings(root: &Node) -> HashMap<usize, (&Node, Option<&Node>)> {
    fn walk<'n>(node: &'n Node, parent: Option<&'n Node>, out: &mut HashMap<usize, (&'n Node, Option<&'n Node>)>) {
        match &node.value {
            Value::Map(entries) => {
                out.insert(node_id(node), (node, parent));
                for (k, v) in entries {
                    walk(v, Some(k), out);
                }
            }
            Value::Seq(items) => items.iter().for_each(|item| walk(item, parent, out)),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(root, None, &mut out);
    out
}

/// A node's identity for the passes: its address, stable because the tree is not touched.
fn node_id(node: &Node) -> usize {
    std::ptr::from_ref(node).addr()
}

/// Decodes `node` with `decode`, and settles any error at `node`: gives it the node's
/// place unless a deeper node already did, or escalates it when it is not worth
/// reporting. Every node is decoded through here.
fn decode_at<'de, T>(
    node: &'de Node,
    st: &State,
    decode: impl FnOnce(De<'de, '_>) -> Result<T, Error>,
) -> Result<T, Error> {
    if st.is_poisoned(node) {
        st.stand_ins.set(st.stand_ins.get() + 1);
        return decode(De { node, st, stand_in: true }).map_err(|_| Error::escalate());
    }
    let before = st.stand_ins.get();
    decode(De { node, st, stand_in: false }).map_err(|e| e.settle(node, st.stand_ins.get() != before))
}

/// Why decoding stopped. Private: only this module's deserializer produces it.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
struct Error {
    kind: Kind,
    /// Where, once a node has claimed the error.
    mark: Option<Mark>,
    /// Which node, once claimed.
    node: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
enum Kind {
    /// A problem to report; not something a stand-in can cause (a wrong type, an unknown
    /// name).
    #[error("{0}")]
    Problem(String),
    /// A visitor's `invalid_type`; worded once its node's kind is known.
    #[error("expected {0}")]
    InvalidType(String),
    /// A custom error, usually a validation. It may be the doing of a stand-in below.
    #[error("{0}")]
    Custom(String),
    /// A required field is not written: a problem, which partial decoding may mend.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// Already reported, or caused by a stand-in: the claiming node is replaced silently.
    #[error("already reported")]
    Escalate,
}

impl Error {
    fn problem(message: impl Into<String>) -> Self {
        Self { kind: Kind::Problem(message.into()), mark: None, node: None }
    }

    fn escalate() -> Self {
        Self { kind: Kind::Escalate, mark: None, node: None }
    }

    /// Claims the error for `node` unless a deeper node has. `tainted`: a stand-in was
    /// decoded below `node` while producing it.
    fn settle(mut self, node: &Node, tainted: bool) -> Self {
        if self.node.is_some() {
            return self;
        }
        self.kind = match self.kind {
            Kind::InvalidType(expected) => Kind::Problem(format!("expected {expected}, found {}", node.kind_name())),
            Kind::Custom(_) if tainted => Kind::Escalate,
            Kind::Custom(message) => Kind::Problem(message),
            other => other,
        };
        self.mark = Some(node.mark);
        self.node = Some(node_id(node));
        self
    }

    /// The node to decode as a stand-in next pass; `None` when the root stand-in failed.
    fn poison_target(&self) -> Option<usize> {
        self.node
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self { kind: Kind::Custom(msg.to_string()), mark: None, node: None }
    }

    fn invalid_type(_unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self { kind: Kind::InvalidType(expected.to_string()), mark: None, node: None }
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::custom(format!("expected {expected}, found {unexpected}"))
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Self {
        Self::custom(format!("expected {expected}, found {}", items(len)))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::problem(unknown_value(variant, expected))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::problem(unknown_field(field, expected))
    }

    fn missing_field(field: &'static str) -> Self {
        Self { kind: Kind::Missing(field), mark: None, node: None }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::problem(format!("duplicate field `{field}`"))
    }
}

/// ``unknown field `imgae`, did you mean `image`?``, or the list of known fields.
fn unknown_field(field: &str, expected: &[&str]) -> String {
    match suggest(field, expected) {
        Some(near) => format!("unknown field `{field}`, did you mean `{near}`?"),
        None if expected.is_empty() => {
            format!("unknown field `{field}`; no fields are expected here")
        }
        None => format!("unknown field `{field}`; expected one of {}", one_of(expected)),
    }
}

/// ``unknown value `alwyas`, did you mean `always`?``, or the list of known values.
fn unknown_value(value: &str, expected: &[&str]) -> String {
    match suggest(value, expected) {
        Some(near) => format!("unknown value `{value}`, did you mean `{near}`?"),
        None if expected.is_empty() => {
            format!("unknown value `{value}`; no values are allowed here")
        }
        None => format!("unknown value `{value}`, expected one of {}", one_of(expected)),
    }
}

/// "1 item", "3 items".
fn items(n: usize) -> String {
    if n == 1 { "1 item".to_owned() } else { format!("{n} items") }
}

/// `` `a`, `b`, `c` ``
fn one_of(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// The known name nearest to `name`, if it is near enough to be a likely typo. Case,
/// `-` and `_` are ignored, so `restart_policy` finds `restartPolicy`.
fn suggest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    /// Jaro-Winkler similarity from which a name is offered; typos (a swap, a missing or
    /// extra letter) score above it, unrelated short names well below.
    const NEAR: f64 = 0.8;
    fn fold(s: &str) -> String {
        s.chars().filter(|c| !matches!(c, '-' | '_')).flat_map(char::to_lowercase).collect()
    }
    let name = fold(name);
    known
        .iter()
        .map(|k| (*k, strsim::jaro_winkler(&name, &fold(k))))
        .filter(|(_, score)| *score >= NEAR)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// What a visitor says it expects, for messages.
fn expecting<'de, V: Visitor<'de>>(visitor: &V) -> String {
    struct Expecting<'a, V>(&'a V);
    impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }
    }
    Expecting(visitor).to_string()
}

/// The deserializer for one node. As a stand-in it ignores the node and hands each
/// visitor the plainest value it can take.
struct De<'de, 's> {
    node: &'de Node,
    st: &'s State,
    stand_in: bool,
}

impl<'de, 's> De<'de, 's> {
    fn stand_in(&self) -> Self {
        Self { node: self.node, st: self.st, stand_in: true }
    }

    /// "expected {expected}, found {kind}", claimed by this node's `decode_at`.
    fn mismatch(&self, expected: impl fmt::Display) -> Error {
        Error::problem(format!("expected {expected}, found {}", self.node.kind_name()))
    }
}

macro_rules! integer {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            if self.stand_in {
                return visitor.$visit(0);
            }
            let expected = format!("a whole number from {} to {}", <$ty>::MIN, <$ty>::MAX);
            match self.node.value {
                Value::Int(i) => match <$ty>::try_from(i) {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(Error::problem(format!("expected {expected}, found {i}"))),
                },
                _ => Err(self.mismatch(expected)),
            }
        }
    };
}

impl<'de> de::Deserializer<'de> for De<'de, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.stand_in {
            return visitor.visit_unit();
        }
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(Items::in_order(items, self.st)),
            Value::Map(entries) => visitor.visit_map(Entries::in_order(entries, self.st)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            _ if self.stand_in => visitor.visit_bool(false),
            Value::Bool(b) => visitor.visit_bool(b),
            _ => Err(self.mismatch(expecting(&visitor))),
        }
    }

    integer!(deserialize_i8, visit_i8, i8);
    integer!(deserialize_i16, visit_i16, i16);
    integer!(deserialize_i32, visit_i32, i32);
    integer!(deserialize_i64, visit_i64, i64);
    integer!(deserialize_i128, visit_i128, i128);
    integer!(deserialize_u8, visit_u8, u8);
    integer!(deserialize_u16, visit_u16, u16);
    integer!(deserialize_u32, visit_u32, u32);
    integer!(deserialize_u64, visit_u64, u64);
    integer!(deserialize_u128, visit_u128, u128);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            _ if self.stand_in => visitor.visit_f64(0.0),
            Value::Float(f) => visitor.visit_f64(f),
            // Integers are numbers too; `1` is as good a float as `1.0`.
            Value::Int(i) => visitor.visit_f64(i as f64),
            _ => Err(self.mismatch("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.stand_in {
            return visitor.visit_char(' ');
        }
        if let Value::String(s) = &self.node.value {
            let mut chars = s.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                return visitor.visit_char(c);
            }
        }
        Err(self.mismatch("a single character"))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            _ if self.stand_in => visitor.visit_borrowed_str(""),
            Value::String(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.mismatch(expecting(&visitor))),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.stand_in {
            return visitor.visit_borrowed_bytes(&[]);
        }
        Err(Error::problem("binary data cannot be written in a spec"))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            _ if self.stand_in => visitor.visit_none(),
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            _ if self.stand_in => visitor.visit_unit(),
            Value::Null => visitor.visit_unit(),
            _ => Err(self.mismatch("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            _ if self.stand_in => visitor.visit_seq(StandIns::new(&self, 0)),
            Value::Seq(items) => visitor.visit_seq(Items::stand_ins_last(items, self.st)),
            _ => Err(self.mismatch(expecting(&visitor))),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            _ if self.stand_in => visitor.visit_seq(StandIns::new(&self, len)),
            Value::Seq(items) if items.len() == len => visitor.visit_seq(Items::in_order(items, self.st)),
            Value::Seq(found) => {
                Err(Error::problem(format!("expected a sequence of {}, found {}", items(len), items(found.len()))))
            }
            _ => Err(self.mismatch(format!("a sequence of {}", items(len)))),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            _ if self.stand_in => visitor.visit_map(StandInFields::new(&self, &[])),
            Value::Map(entries) => visitor.visit_map(Entries::all(entries, self.st)),
            _ => Err(self.mismatch("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if !self.stand_in {
            // (A stand-in's node is the one it stands in for: a nested struct's fields are not its.)
            self.st.structs.borrow_mut().insert(node_id(self.node), fields);
        }
        match &self.node.value {
            _ if self.stand_in => visitor.visit_map(StandInFields::new(&self, fields)),
            Value::Map(_) => visitor.visit_map(Entries::fields(self.node, fields, self.st)),
            _ => Err(self.mismatch("a mapping")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if self.stand_in {
            let Some(first) = variants.first() else {
                return Err(Error::escalate());
            };
            return visitor.visit_enum(StandInVariant { de: self.stand_in(), name: first });
        }
        let (tag, content) = match &self.node.value {
            Value::String(_) => (self.node, None),
            Value::Map(entries) if entries.len() == 1 => (&entries[0].0, Some(&entries[0].1)),
            Value::Map(entries) => {
                return Err(Error::problem(format!(
                    "expected one of {} as the only key of this mapping, found {} keys",
                    one_of(variants),
                    entries.len()
                )));
            }
            _ => return Err(self.mismatch(format!("one of {}", one_of(variants)))),
        };
        let Some(name) = tag.as_str() else {
            return Err(Error::problem(format!(
                "expected one of {} as the key of this mapping, found {}",
                one_of(variants),
                tag.kind_name()
            )));
        };
        visitor.visit_enum(Variant { tag, name, content, st: self.st })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            _ if self.stand_in => visitor.visit_borrowed_str(""),
            Value::String(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.mismatch("a name")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// The items of a sequence.
struct Items<'de, 's> {
    items: std::vec::IntoIter<&'de Node>,
    st: &'s State,
}

impl<'de, 's> Items<'de, 's> {
    /// The items in order, for tuples and anything that buffers (`deserialize_any`).
    fn in_order(items: &'de [Node], st: &'s State) -> Self {
        Self { items: items.iter().collect::<Vec<_>>().into_iter(), st }
    }

    /// The items with stand-ins last. A stand-in may be refused and end the sequence; put
    /// last, it cannot hide problems in the items after it. Once a stand-in exists the
    /// document has problems and the value is dropped, so the order is free to change.
    fn stand_ins_last(items: &'de [Node], st: &'s State) -> Self {
        let (mut order, stand_ins): (Vec<_>, Vec<_>) = items.iter().partition(|item| !st.is_poisoned(item));
        order.extend(stand_ins);
        Self { items: order.into_iter(), st }
    }
}

impl<'de> SeqAccess<'de> for Items<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(item) => decode_at(item, self.st, |de| seed.deserialize(de)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a mapping: all of them, or for a struct only those naming one of its
/// fields, the others being reported as unknown and left out. Entries with stand-ins
/// come last, for the reason given at [`Items::stand_ins_last`]. Partial decoding leaves
/// out the entries it was told to, and adds stand-ins for the missing fields it was told
/// to (after the written ones).
struct Entries<'de, 's> {
    entries: std::vec::IntoIter<&'de (Node, Node)>,
    /// The struct's fields; `None` for a plain mapping.
    fields: Option<&'static [&'static str]>,
    /// The struct's mapping; `None` for a plain mapping.
    map: Option<&'de Node>,
    /// Missing fields still to give a stand-in.
    fill: std::vec::IntoIter<&'static str>,
    value: Option<&'de Node>,
    /// Whether the value asked for next is a missing field's stand-in.
    filling: bool,
    st: &'s State,
}

impl<'de, 's> Entries<'de, 's> {
    fn new(entries: std::vec::IntoIter<&'de (Node, Node)>, st: &'s State) -> Self {
        let fill = Vec::new().into_iter();
        Self { entries, fields: None, map: None, fill, value: None, filling: false, st }
    }

    /// Every entry, in order: for `deserialize_any`, which may buffer them.
    fn in_order(entries: &'de [(Node, Node)], st: &'s State) -> Self {
        Self::new(entries.iter().filter(|(k, _)| st.is_kept(k)).collect::<Vec<_>>().into_iter(), st)
    }

    /// Every entry, stand-ins last: for maps.
    fn all(entries: &'de [(Node, Node)], st: &'s State) -> Self {
        Self::new(Self::stand_ins_last(entries, st), st)
    }

    /// The entries of `map` naming one of `fields`, stand-ins last: for structs.
    fn fields(map: &'de Node, fields: &'static [&'static str], st: &'s State) -> Self {
        let entries = match &map.value {
            Value::Map(entries) => entries.as_slice(),
            _ => &[],
        };
        let fill = st.stood_in(map).into_iter();
        Self { fields: Some(fields), map: Some(map), fill, ..Self::new(Self::stand_ins_last(entries, st), st) }
    }

    fn stand_ins_last(entries: &'de [(Node, Node)], st: &'s State) -> std::vec::IntoIter<&'de (Node, Node)> {
        let (mut order, stand_ins): (Vec<_>, Vec<_>) =
            entries.iter().filter(|(k, _)| st.is_kept(k)).partition(|(k, v)| !st.is_poisoned(k) && !st.is_poisoned(v));
        order.extend(stand_ins);
        order.into_iter()
    }

    /// Notes `key` as an unknown field when it names none of the struct's fields; returns
    /// whether it did.
    fn unknown(&self, key: &Node) -> bool {
        let (Some(fields), Some(map)) = (self.fields, self.map) else { return false };
        let unknown = !key.as_str().is_some_and(|k| fields.contains(&k));
        if unknown {
            self.st.unknown_field(key, node_id(map), fields);
        }
        unknown
    }

    /// Reports the unknown fields among the entries not yet read, when a failure stops
    /// the visitor from reading them.
    fn report_unknown_rest(&mut self) {
        while let Some((key, _)) = self.entries.next() {
            self.unknown(key);
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        while let Some((key, value)) = self.entries.next() {
            if self.unknown(key) {
                continue;
            }
            self.value = Some(value);
            return decode_at(key, self.st, |de| seed.deserialize(de)).map(Some);
        }
        if let Some(field) = self.fill.next() {
            self.filling = true;
            return seed.deserialize(BorrowedStrDeserializer::new(field)).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        if let (true, Some(map)) = (std::mem::take(&mut self.filling), self.map) {
            return seed.deserialize(partial::Filler(De { node: map, st: self.st, stand_in: true }));
        }
        match self.value.take() {
            Some(value) => {
                decode_at(value, self.st, |de| seed.deserialize(de)).inspect_err(|_| self.report_unknown_rest())
            }
            None => Err(<Error as de::Error>::custom("a value was asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.fields.is_none().then(|| self.entries.len())
    }
}

/// An enum written as `name` or `name: content`.
struct Variant<'de, 's> {
    /// The node naming the variant: the whole node, or the key of its only entry.
    tag: &'de Node,
    name: &'de str,
    content: Option<&'de Node>,
    st: &'s State,
}

impl<'de, 's> EnumAccess<'de> for Variant<'de, 's> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let value = decode_at(self.tag, self.st, |de| seed.deserialize(de))?;
        Ok((value, self))
    }
}

impl<'de> Variant<'de, '_> {
    /// The content, or the problem of a variant written without one.
    fn content(&self) -> Result<&'de Node, Error> {
        self.content.ok_or_else(|| Error::problem(format!("`{0}` needs a value, as in `{0}: ...`", self.name)))
    }
}

impl<'de> VariantAccess<'de> for Variant<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            None => Ok(()),
            Some(content) => decode_at(content, self.st, |de| match de.node.value {
                _ if de.stand_in => Ok(()),
                Value::Null => Ok(()),
                _ => Err(Error::problem(format!("`{}` takes no value, found {}", self.name, de.node.kind_name()))),
            }),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        decode_at(self.content()?, self.st, |de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        decode_at(self.content()?, self.st, |de| de::Deserializer::deserialize_tuple(de, len, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        decode_at(self.content()?, self.st, |de| de::Deserializer::deserialize_struct(de, "", fields, visitor))
    }
}

/// A sequence of `len` stand-ins.
struct StandIns<'de, 's> {
    de: De<'de, 's>,
    left: usize,
}

impl<'de, 's> StandIns<'de, 's> {
    fn new(de: &De<'de, 's>, len: usize) -> Self {
        Self { de: de.stand_in(), left: len }
    }
}

impl<'de> SeqAccess<'de> for StandIns<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.de.stand_in()).map(Some)
    }
}

/// A mapping with a stand-in for each of `fields`.
struct StandInFields<'de, 's> {
    de: De<'de, 's>,
    fields: std::slice::Iter<'static, &'static str>,
}

impl<'de, 's> StandInFields<'de, 's> {
    fn new(de: &De<'de, 's>, fields: &'static [&'static str]) -> Self {
        Self { de: de.stand_in(), fields: fields.iter() }
    }
}

impl<'de> MapAccess<'de> for StandInFields<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.fields.next() {
            Some(field) => seed.deserialize(BorrowedStrDeserializer::new(field)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.de.stand_in())
    }
}

/// A stand-in enum: its first variant, with stand-in content.
struct StandInVariant<'de, 's> {
    de: De<'de, 's>,
    name: &'static str,
}

impl<'de, 's> EnumAccess<'de> for StandInVariant<'de, 's> {
    type Error = Error;
    type Variant = De<'de, 's>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), Error> {
        let value = seed.deserialize(BorrowedStrDeserializer::new(self.name))?;
        Ok((value, self.de))
    }
}

impl<'de> VariantAccess<'de> for De<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.stand_in())
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(StandIns::new(&self, len))
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(StandInFields::new(&self, fields))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::parse_stream;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Service {
        image: String,
        #[serde(default)]
        restart: Restart,
        #[serde(default)]
        ports: Vec<Port>,
        #[serde(default)]
        env: BTreeMap<String, EnvValue>,
        stop_timeout: Option<Duration>,
        health: Option<Health>,
        #[serde(default)]
        mounts: Vec<Mount>,
        #[serde(default)]
        resources: Resources,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Restart {
        #[default]
        Always,
        OnFailure,
        Never,
        Hold,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Port(u16);

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", default)]
    struct Resources {
        cpu_shares: Option<u32>,
        memory_mb: u64,
        cpu: f64,
    }

    /// Milliseconds, written `500ms`, `30s`, `5m`.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(try_from = "String")]
    struct Duration(u64);

    impl FromStr for Duration {
        type Err = String;

        fn from_str(s: &str) -> Result<Self, String> {
            let bad = || format!("invalid duration `{s}`: expected a number followed by ms, s, m, h or d");
            let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let n: u64 = s[..split].parse().map_err(|_| bad())?;
            let unit = match &s[split..] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            Ok(Self(n * unit))
        }
    }

    impl TryFrom<String> for Duration {
        type Error = String;

        fn try_from(s: String) -> Result<Self, String> {
            s.parse()
        }
    }

    /// An environment value: strings as they are, numbers and booleans as written.
    #[derive(Debug, PartialEq)]
    struct EnvValue(String);

    impl<'de> Deserialize<'de> for EnvValue {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = EnvValue;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, a number or a boolean")
                }
                fn visit_str<E>(self, v: &str) -> Result<EnvValue, E> {
                    Ok(EnvValue(v.to_owned()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<EnvValue, E> {
                    Ok(EnvValue(v.to_string()))
                }
                fn visit_bool<E>(self, v: bool) -> Result<EnvValue, E> {
                    Ok(EnvValue(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// Externally tagged: `health: {cmd: [...]}`, `health: {http: {...}}`, `health: none`.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    enum Health {
        Cmd(Vec<String>),
        Http { path: String, port: u16 },
        None,
    }

    /// Untagged: `- /data:/var/lib/data` or `- {source: ..., target: ...}`.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(untagged, expecting = "a mount, as `source:target` or `{source, target}`")]
    enum Mount {
        Short(String),
        Long { source: String, target: String, read_only: Option<bool> },
    }

    fn decode<T: DeserializeOwned>(text: &str) -> Result<T, Vec<String>> {
        let docs = parse_stream(text).expect("valid YAML");
        let file: Arc<Path> = Arc::from(Path::new("web.yaml"));
        let mut diags = Vec::new();
        let decoded = from_node::<T>(&docs[0], &file, &mut diags);
        match decoded {
            Some(value) if diags.is_empty() => Ok(value),
            Some(_) => panic!("a value and diagnostics: {diags:?}"),
            None => {
                assert!(!diags.is_empty(), "None without diagnostics");
                Err(diags.iter().map(ToString::to_string).collect())
            }
        }
    }

    fn problems<T: DeserializeOwned + fmt::Debug>(text: &str) -> Vec<String> {
        decode::<T>(text).expect_err("problems")
    }

    #[test]
    fn a_valid_document_decodes_with_every_kind_of_field() {
        let service: Service = decode(
            "image: nginx\nrestart: on-failure\nports: [80, 443]\nenv: {A: x, B: 2, C: true}\nstopTimeout: 30s\nhealth:\n  http: {path: /healthz, port: 8080}\nmounts:\n  - /data:/data\n  - {source: logs, target: /var/log}\nresources: {cpu: 1, memoryMb: 512}\n",
        )
        .expect("valid");
        assert_eq!(
            service,
            Service {
                image: "nginx".into(),
                restart: Restart::OnFailure,
                ports: vec![Port(80), Port(443)],
                env: [("A", "x"), ("B", "2"), ("C", "true")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), EnvValue(v.to_owned())))
                    .collect(),
                stop_timeout: Some(Duration(30_000)),
                health: Some(Health::Http { path: "/healthz".into(), port: 8080 }),
                mounts: vec![
                    Mount::Short("/data:/data".into()),
                    Mount::Long { source: "logs".into(), target: "/var/log".into(), read_only: None },
                ],
                resources: Resources { cpu_shares: None, memory_mb: 512, cpu: 1.0 },
            }
        );
        let health: Service = decode("image: x\nhealth: none\n").expect("valid");
        assert_eq!(health.health, Some(Health::None));
        assert_eq!(
            problems::<Service>("image: x\nhealth: {cmd: [true]}\n"),
            ["web.yaml:2:16: expected a string, found a boolean"]
        );
    }

    #[test]
    fn every_unknown_field_is_reported_with_a_suggestion_when_one_is_close() {
        assert_eq!(
            problems::<Service>("imgae: nginx\nimage: nginx\nprots: [80]\nzzz: 1\nstop_timeout: 5s\n"),
            [
                "web.yaml:1:1: unknown field `imgae`, did you mean `image`?",
                "web.yaml:3:1: unknown field `prots`, did you mean `ports`?",
                "web.yaml:4:1: unknown field `zzz`; expected one of `image`, `restart`, `ports`, `env`, `stopTimeout`, `health`, `mounts`, `resources`",
                "web.yaml:5:1: unknown field `stop_timeout`, did you mean `stopTimeout`?",
            ]
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_at_the_value() {
        assert_eq!(
            problems::<Service>("image:\n  name: nginx\n"),
            ["web.yaml:2:3: expected a string, found a mapping"]
        );
        // No coercion: a number is not a string.
        assert_eq!(problems::<Service>("image: 12\n"), ["web.yaml:1:8: expected a string, found an integer"]);
        assert_eq!(
            problems::<Service>("image: x\nports: 80\n"),
            ["web.yaml:2:8: expected a sequence, found an integer"]
        );
        assert_eq!(problems::<Service>("- image: x\n"), ["web.yaml:1:1: expected a mapping, found a sequence"]);
        assert_eq!(
            problems::<Service>("image: x\nenv: {A: [1]}\n"),
            ["web.yaml:2:10: expected a string, a number or a boolean, found a sequence"]
        );
    }

    #[test]
    fn a_missing_field_is_reported_at_the_mapping_that_lacks_it() {
        assert_eq!(problems::<Service>("restart: never\nports: [80]\n"), ["web.yaml:1:1: missing field `image`"]);
        assert_eq!(
            problems::<Service>("image: x\nhealth:\n  http:\n    port: 80\n"),
            ["web.yaml:4:5: missing field `path`"]
        );
    }

    #[test]
    fn an_unknown_enum_value_lists_the_values_or_suggests_the_nearest() {
        assert_eq!(
            problems::<Service>("image: x\nrestart: sometimes\n"),
            ["web.yaml:2:10: unknown value `sometimes`, expected one of `always`, `on-failure`, `never`, `hold`"]
        );
        assert_eq!(
            problems::<Service>("image: x\nrestart: on_failure\n"),
            ["web.yaml:2:10: unknown value `on_failure`, did you mean `on-failure`?"]
        );
        assert_eq!(
            problems::<Service>("image: x\nrestart: 3\n"),
            ["web.yaml:2:10: expected one of `always`, `on-failure`, `never`, `hold`, found an integer"]
        );
        assert_eq!(
            problems::<Service>("image: x\nhealth: {http: {path: /, port: 1}, cmd: []}\n"),
            ["web.yaml:2:9: expected one of `cmd`, `http`, `none` as the only key of this mapping, found 2 keys"]
        );
        assert_eq!(
            problems::<Service>("image: x\nhealth: cmd\n"),
            ["web.yaml:2:9: `cmd` needs a value, as in `cmd: ...`"]
        );
        assert_eq!(
            problems::<Service>("image: x\nhealth: {none: 1}\n"),
            ["web.yaml:2:16: `none` takes no value, found an integer"]
        );
    }

    #[test]
    fn a_custom_error_from_a_parsed_type_is_reported_at_its_value() {
        assert_eq!(
            problems::<Service>("image: x\nstopTimeout: 5 mins\n"),
            ["web.yaml:2:14: invalid duration `5 mins`: expected a number followed by ms, s, m, h or d"]
        );
    }

    #[test]
    fn problems_in_nested_structs_are_reported_where_they_are() {
        assert_eq!(
            problems::<Service>("image: x\nresources:\n  cpu: lots\n  memoryMB: 5\n  cpuShares: -1\n"),
            [
                "web.yaml:3:8: expected a number, found a string",
                "web.yaml:4:3: unknown field `memoryMB`, did you mean `memoryMb`?",
                "web.yaml:5:14: expected a whole number from 0 to 4294967295, found -1",
            ]
        );
    }

    #[test]
    fn decoding_goes_on_after_a_problem_so_all_of_them_are_reported() {
        assert_eq!(
            problems::<Service>(
                "restart: sometimes\nstopTimeout: 5 mins\nports: [80, 70000, http]\nhealth: {cmd: ls}\n"
            ),
            [
                "web.yaml:1:1: missing field `image`",
                "web.yaml:1:10: unknown value `sometimes`, expected one of `always`, `on-failure`, `never`, `hold`",
                "web.yaml:2:14: invalid duration `5 mins`: expected a number followed by ms, s, m, h or d",
                "web.yaml:3:13: expected a whole number from 0 to 65535, found 70000",
                "web.yaml:3:20: expected a whole number from 0 to 65535, found a string",
                "web.yaml:4:15: expected a sequence, found a string",
            ]
        );
    }

    #[test]
    fn a_required_value_that_fails_still_lets_its_siblings_be_checked() {
        // `image` fails, cannot be left out, and the stand-in keeps `restart` in view.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            timeout: Duration,
            restart: Restart,
        }
        assert_eq!(
            problems::<Strict>("timeout: soon\nrestart: sometimes\n"),
            [
                "web.yaml:1:10: invalid duration `soon`: expected a number followed by ms, s, m, h or d",
                "web.yaml:2:10: unknown value `sometimes`, expected one of `always`, `on-failure`, `never`, `hold`",
            ]
        );
    }

    #[test]
    fn an_untagged_enum_takes_the_form_that_fits_or_says_what_it_expected() {
        let service: Service = decode("image: x\nmounts: [{source: a, target: b, read_only: true}]\n").expect("valid");
        assert_eq!(service.mounts, [Mount::Long { source: "a".into(), target: "b".into(), read_only: Some(true) }]);
        assert_eq!(
            problems::<Service>("image: x\nmounts:\n  - /a:/b\n  - 12\n  - {source: a}\n"),
            [
                "web.yaml:4:5: a mount, as `source:target` or `{source, target}`",
                "web.yaml:5:5: a mount, as `source:target` or `{source, target}`",
            ]
        );
    }

    #[test]
    fn integers_out_of_range_are_reported_with_the_range() {
        assert_eq!(problems::<Port>("70000\n"), ["web.yaml:1:1: expected a whole number from 0 to 65535, found 70000"]);
        assert_eq!(problems::<u8>("-1\n"), ["web.yaml:1:1: expected a whole number from 0 to 255, found -1"]);
        assert_eq!(problems::<i8>("1.5\n"), ["web.yaml:1:1: expected a whole number from -128 to 127, found a float"]);
        assert_eq!(decode::<i128>("-5\n"), Ok(-5));
    }

    #[test]
    fn scalars_seqs_tuples_and_maps_decode_strictly() {
        assert_eq!(decode::<(u8, String)>("[1, a]\n"), Ok((1, "a".to_owned())));
        assert_eq!(problems::<(u8, String)>("[1]\n"), ["web.yaml:1:1: expected a sequence of 2 items, found 1 item"]);
        assert_eq!(decode::<char>("x\n"), Ok('x'));
        assert_eq!(problems::<char>("xy\n"), ["web.yaml:1:1: expected a single character, found a string"]);
        assert_eq!(decode::<f32>("2\n"), Ok(2.0));
        assert_eq!(decode::<()>("~\n"), Ok(()));
        assert_eq!(decode::<Option<bool>>("~\n"), Ok(None));
        assert_eq!(problems::<bool>("yes\n"), ["web.yaml:1:1: expected a boolean, found a string"]);
        assert_eq!(
            problems::<BTreeMap<String, u8>>("a: 1\n2: 3\n"),
            ["web.yaml:2:1: expected a string, found an integer"]
        );
        assert_eq!(decode::<BTreeMap<u8, bool>>("{1: true}\n"), Ok([(1, true)].into()));
        assert_eq!(
            decode::<serde_json::Value>("a: [1, 1.5, x, ~]\n"),
            Ok(serde_json::json!({"a": [1, 1.5, "x", null]}))
        );
    }

    #[test]
    fn an_unknown_field_inside_a_failing_struct_is_still_reported() {
        assert_eq!(
            problems::<Service>("health:\n  http: {pth: /, port: 1}\n"),
            ["web.yaml:1:1: missing field `image`", "web.yaml:2:10: unknown field `pth`, did you mean `path`?",]
        );
    }

    #[test]
    fn a_key_dedented_out_of_the_block_mapping_above_it_is_told_to_indent() {
        assert_eq!(
            problems::<Service>("image: x\nresources:\n  cpu: 1\nmemoryMb: 5\n"),
            [
                "web.yaml:4:1: unknown field `memoryMb`: it is a field of `resources` (line 2) — indent it under `resources`"
            ]
        );
        // Inside a mapping, the message says which.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            spec: Service,
        }
        assert_eq!(
            problems::<Doc>("spec:\n  image: x\n  resources:\n    cpu: 1\n  memoryMb: 5\n"),
            [
                "web.yaml:5:3: unknown field `memoryMb` in `spec`: it is a field of `resources` (line 3) — indent it under `resources`"
            ]
        );
        // Two levels too far left: a field of the mapping that ends the one above. The
        // required field it is, missing where it belongs, is not reported again.
        assert_eq!(
            problems::<Service>("image: x\nhealth:\n  http:\n    path: /\nport: 80\n"),
            ["web.yaml:5:1: unknown field `port`: it is a field of `http` (line 3) — indent it under `http`"]
        );
    }

    #[test]
    fn a_key_after_a_flow_mapping_or_one_that_sets_it_gets_no_indentation_hint() {
        let plain = "unknown field `memoryMb`; expected one of `image`, `restart`, `ports`, `env`, `stopTimeout`, `health`, `mounts`, `resources`";
        for (text, line) in [
            // A flow mapping ends on its own line.
            ("image: x\nresources: {cpu: 1}\nmemoryMb: 5\n", 3),
            // The mapping above sets it already.
            ("image: x\nresources:\n  memoryMb: 1\nmemoryMb: 5\n", 4),
            // The mapping with the field does not end just above it.
            ("resources:\n  cpu: 1\nimage: x\nmemoryMb: 5\n", 4),
        ] {
            assert_eq!(problems::<Service>(text), [format!("web.yaml:{line}:1: {plain}")], "{text}");
        }
    }

    #[test]
    fn suggestions_are_offered_only_for_near_names() {
        let known = ["image", "restart", "ports", "restartPolicy", "name"];
        assert_eq!(suggest("imgae", &known), Some("image"));
        assert_eq!(suggest("restart_policy", &known), Some("restartPolicy"));
        assert_eq!(suggest("port", &known), Some("ports"));
        assert_eq!(suggest("x", &known), None);
        assert_eq!(suggest("volumes", &known), None);
    }
}
