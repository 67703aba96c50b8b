//! JSON output as Patroni writes it: keys in a chosen order and Python's `json.dumps` layout
//! (`", "` and `": "` separators, non-ASCII escaped as `\uXXXX`).
//!
//! `serde_json::Map` sorts its keys (the crate is built without `preserve_order`), so documents
//! whose field order clients may see (`/patroni`, `/cluster`) are built as [`Obj`].

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;
use std::io;

/// A JSON node whose objects keep insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Any plain value (objects inside it are serialized in sorted key order).
    Val(Value),
    /// An ordered object.
    Obj(Obj),
    /// An array of ordered nodes.
    Arr(Vec<Node>),
}

/// An object that keeps its keys in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Obj(pub Vec<(String, Node)>);

impl Obj {
    /// An empty object.
    pub fn new() -> Self {
        Obj(Vec::new())
    }
    /// Appends a key (a key already present is replaced in place).
    pub fn push(&mut self, key: &str, value: impl Into<Node>) {
        let value = value.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.0.push((key.to_owned(), value));
        }
    }
    /// Builder form of [`Obj::push`].
    pub fn with(mut self, key: &str, value: impl Into<Node>) -> Self {
        self.push(key, value);
        self
    }
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }
    /// The keys in order.
    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

impl Node {
    /// The plain value, if this node is one.
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Node::Val(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Into<Value>> From<T> for Node {
    fn from(v: T) -> Self {
        Node::Val(v.into())
    }
}

impl From<Obj> for Node {
    fn from(o: Obj) -> Self {
        Node::Obj(o)
    }
}

impl Serialize for Obj {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Val(v) => v.serialize(s),
            Node::Obj(o) => o.serialize(s),
            Node::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for n in a {
                    seq.serialize_element(n)?;
                }
                seq.end()
            }
        }
    }
}

/// Python's `json.dumps` defaults: `", "`/`": "` separators and `ensure_ascii`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                let mut buf = [0u8; 1];
                w.write_all(c.encode_utf8(&mut buf).as_bytes())?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serializes `value` exactly as Python's `json.dumps(value)` would lay it out.
pub fn to_python_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    if value.serialize(&mut ser).is_err() {
        return "null".into();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_layout_and_order() {
        let o = Obj::new()
            .with("b", 1)
            .with("a", Obj::new().with("z", true).with("y", Value::Null))
            .with("c", Node::Arr(vec![1.into(), "é".into()]))
            .with("d", json!({"k": [1, 2]}));
        assert_eq!(
            to_python_json(&o),
            r#"{"b": 1, "a": {"z": true, "y": null}, "c": [1, "\u00e9"], "d": {"k": [1, 2]}}"#
        );
        assert_eq!(to_python_json(&json!("😀")), r#""\ud83d\ude00""#);
        assert_eq!(to_python_json(&json!([])), "[]");
        assert_eq!(to_python_json(&json!({})), "{}");
    }
}
