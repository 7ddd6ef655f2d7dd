//! Partial decoding: a value from a document that has problems, for the checks across
//! documents (a `dependsOn` naming a service, a Backup stopping one), so that what they
//! find comes in the same round as the document's own problems.
//!
//! Decoding runs in passes, as [`from_node`](super::from_node)'s do, but a failure is
//! mended differently: the mapping entry holding the failed node is left out, as if it was
//! not written (its field takes its default; a failure inside a sequence leaves out the
//! entry holding the whole sequence, so the items kept keep their places). A required
//! field that is missing (or was left out) gets a stand-in when it is a mapping or a list
//! (a struct of stand-ins, an empty list); a missing scalar leaves out its mapping in turn.
//! So every name in the value is one the document wrote where it wrote it: a stand-in is
//! never a name. [`Partial::is_real`] tells what is as written (or its default) from what
//! was left out or stood in for.

use std::collections::{HashMap, HashSet};

use serde::de::{self, DeserializeOwned, Visitor};

use super::{De, Error, Kind, MAX_PASSES, State, decode_at, node_id};
use crate::yaml::{Node, Value};

/// A value decoded from a node with problems, leaving out what had them. Only for checks
/// that look at what the document names; the document's problems are reported by
/// [`from_node`](super::from_node).
#[derive(Debug)]
pub struct Partial<T> {
    /// The value: what decoded, defaults for what was left out, stand-ins (empty) for
    /// missing required mappings and lists.
    pub value: T,
    /// Entries left out, by key node.
    left_out: HashSet<usize>,
    /// Missing fields given a stand-in, by mapping node.
    stood_in: HashMap<usize, Vec<&'static str>>,
    /// The identity the node decoded had then. Only the root may move afterwards (into
    /// the struct that keeps it): the nodes below it live in its lists.
    root: usize,
}

impl<T> Partial<T> {
    /// The same record of what was left out, with the value made into another.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Partial<U> {
        Partial { value: f(self.value), left_out: self.left_out, stood_in: self.stood_in, root: self.root }
    }

    /// Whether the value at `path` (mapping keys from `root`, the node decoded, unchanged)
    /// is what the document says: written and kept, or not written, so its default. False
    /// when it, or a mapping on the way, was left out or stood in for.
    pub fn is_real(&self, root: &Node, path: &[&str]) -> bool {
        let mut node = root;
        for key in path {
            let Value::Map(entries) = &node.value else { return false };
            match entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
                Some((k, _)) if self.left_out.contains(&node_id(k)) => return false,
                Some((_, v)) => node = v,
                None => {
                    let id = if std::ptr::eq(node, root) { self.root } else { node_id(node) };
                    return !self.stood_in.get(&id).is_some_and(|fields| fields.contains(key));
                }
            }
        }
        true
    }
}

/// Decodes `node` into `T` as far as it can: an entry with a problem (or holding a
/// sequence with one) is left out, a missing required mapping or list is stood in for.
/// `None` when even that fails (a problem of `node` itself that leaving entries out cannot
/// mend).
pub fn partial_from_node<T: DeserializeOwned>(node: &Node) -> Option<Partial<T>> {
    let state = State::default();
    let places = places(node);
    for _ in 0..MAX_PASSES {
        let e = match decode_at(node, &state, |de| T::deserialize(de)) {
            Ok(value) => {
                let (left_out, stood_in) = (state.left_out.take(), state.stood_in.take());
                return Some(Partial { value, left_out, stood_in, root: node_id(node) });
            }
            Err(e) => e,
        };
        let target = e.node?;
        if let Kind::Missing(field) = e.kind {
            let mut stood_in = state.stood_in.borrow_mut();
            let fields = stood_in.entry(target).or_default();
            if !fields.contains(&field) {
                fields.push(field);
                continue;
            }
        }
        let key = entry_of(target, &places)?;
        if !state.left_out.borrow_mut().insert(key) {
            return None;
        }
    }
    None
}

/// Where a node sits in the tree.
enum Place {
    /// It is the key or the value of the mapping entry with this key node.
    Entry(usize),
    /// It is an item of this sequence node.
    Item(usize),
}

/// Where each node under `root` sits, by identity (`root` has no place).
fn places(root: &Node) -> HashMap<usize, Place> {
    fn walk(node: &Node, out: &mut HashMap<usize, Place>) {
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    out.insert(node_id(k), Place::Entry(node_id(k)));
                    out.insert(node_id(v), Place::Entry(node_id(k)));
                    walk(k, out);
                    walk(v, out);
                }
            }
            Value::Seq(items) => {
                for item in items {
                    out.insert(node_id(item), Place::Item(node_id(node)));
                    walk(item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(root, &mut out);
    out
}

/// The key node of the mapping entry to leave out for a failure at `node`: the entry it is
/// in, through any sequences; `None` for the root.
fn entry_of(mut node: usize, places: &HashMap<usize, Place>) -> Option<usize> {
    loop {
        match places.get(&node)? {
            Place::Entry(key) => return Some(*key),
            Place::Item(seq) => node = *seq,
        }
    }
}

/// The value of a missing required field: a stand-in when the field is a mapping, a list
/// or a tuple (it holds no name then, only stand-ins and empty lists), a failure for any
/// other (a name, a number, a choice), which leaves out the mapping that misses it.
pub(super) struct Filler<'de, 's>(pub(super) De<'de, 's>);

impl<'de> de::Deserializer<'de> for Filler<'de, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(Error::escalate())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_none()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_seq(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_struct(name, fields, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::yaml::parse_stream;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        name: String,
        #[serde(default)]
        replicas: u32,
        #[serde(default)]
        depends_on: Vec<Dep>,
        target: Target,
        extra: Option<Target>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Dep {
        name: String,
        #[serde(default)]
        optional: bool,
    }

    #[derive(Debug, Deserialize)]
    struct Target {
        dir: String,
        #[serde(default)]
        services: Vec<String>,
    }

    fn partial(text: &str) -> (Node, Option<Partial<Doc>>) {
        let node = parse_stream(text).expect("valid YAML").remove(0);
        let partial = partial_from_node::<Doc>(&node);
        (node, partial)
    }

    #[test]
    fn an_entry_with_a_problem_is_left_out_and_the_rest_is_kept() {
        let (node, p) = partial(
            "name: web\nreplicas: many\nnmae: x\ndependsOn: [{name: db, optional: perhaps}, {name: cache}]\ntarget: {dir: /d, services: [a]}\n",
        );
        let p = p.expect("decodes partly");
        assert_eq!(p.value.name, "web");
        assert_eq!(p.value.replicas, 0, "left out: its default");
        assert_eq!(
            p.value.depends_on,
            [Dep { name: "db".into(), optional: false }, Dep { name: "cache".into(), optional: false }]
        );
        assert_eq!(p.value.target.services, ["a"]);
        assert!(p.is_real(&node, &["name"]));
        assert!(!p.is_real(&node, &["replicas"]));
        assert!(p.is_real(&node, &["dependsOn"]));
        assert!(p.is_real(&node, &["extra"]), "not written: its default is what the document says");
    }

    #[test]
    fn a_problem_in_a_sequence_leaves_out_the_whole_sequence() {
        let (node, p) =
            partial("name: web\ndependsOn: [{name: db}, {optional: true}]\ntarget: {dir: /d, services: [a, [b]]}\n");
        let p = p.expect("decodes partly");
        assert!(p.value.depends_on.is_empty(), "an item without a name is not kept alone");
        assert!(p.value.target.services.is_empty());
        assert!(!p.is_real(&node, &["dependsOn"]));
        assert!(p.is_real(&node, &["target", "dir"]));
        assert!(!p.is_real(&node, &["target", "services"]));
    }

    #[test]
    fn a_missing_mapping_is_stood_in_for_and_a_missing_name_leaves_out_its_mapping() {
        let (node, p) = partial("name: web\ntargte: {dir: /d}\nextra: {services: [a]}\n");
        let p = p.expect("decodes partly");
        assert_eq!(p.value.target.dir, "", "a stand-in");
        assert!(!p.is_real(&node, &["target"]));
        assert!(!p.is_real(&node, &["target", "dir"]));
        assert!(p.value.extra.is_none(), "`extra` misses its `dir`, so it is left out");
        assert!(!p.is_real(&node, &["extra"]));
        assert!(p.is_real(&node, &["name"]));
    }

    #[test]
    fn a_problem_of_the_root_itself_cannot_be_mended() {
        let (_, p) = partial("target: {dir: /d}\n");
        assert!(p.is_none(), "`name` is missing, and a name is never made up");
        let (_, p) = partial("[1, 2]\n");
        assert!(p.is_none());
    }
}
