//! The one decoder of the rule kinds: a document's `spec` is deserialized with serde into structs
//! that carry Istio's field names (`#[serde(rename_all = "camelCase")]`), so each name is written
//! once, on its struct. [`decode`] reads the JSON value a YAML document becomes and gives
//! - the first error with its field path (`serde_path_to_error`) and the value found, in YAML's
//!   words: `spec.hosts: expected a list, found the string "a"`;
//! - every field the structs do not define (`serde_ignored`): accepted and ignored, as the API
//!   server does with preserved unknown fields, but a typo such as `matches:` for `match:`
//!   silently changes routing, so each one is a warning ([`Unknown`]) with the closest name of
//!   that struct, or a note that the name belongs one level up (mis-indented YAML). The names
//!   come from the structs themselves (serde hands them to the deserializer).
//!
//! Checks serde cannot express (Istio's validation across fields) run after decoding and report
//! the same way ([`FieldError`]). [`Int`], [`Dur`] and [`Percent`] are value types with their own
//! checks; [`one_of`] reads a string naming one of a few values.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// A field and why it is wrong; `field` is a path from the document (`spec.http[0].timeout`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

pub type R<T> = Result<T, FieldError>;

/// `Err(FieldError)` for `field`.
pub fn fail<T>(field: &str, reason: impl Into<String>) -> R<T> {
    Err(FieldError::new(field, reason))
}

/// One unknown field: its path and the closest known name, if any is close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    pub field: String,
    pub suggestion: Option<&'static str>,
    /// The name is a field of the enclosing object (mis-indented YAML).
    pub misplaced: bool,
}

impl Unknown {
    pub fn reason(&self) -> String {
        match (self.misplaced, self.suggestion) {
            (true, _) => {
                "unknown field here, ignored (it is a field one level up: check the indentation)"
                    .to_string()
            }
            (false, Some(s)) => format!("unknown field, ignored (did you mean \"{s}\"?)"),
            (false, None) => "unknown field, ignored".to_string(),
        }
    }
}

/// Decode `value` (found at path `root`, e.g. `spec`; empty for a whole document) as `T`: the
/// value, or the first error with its field path. The unknown fields met on the way are added
/// to `unknown` either way (those after an error are not reached).
pub fn decode<T: DeserializeOwned>(value: &Value, root: &str, unknown: &mut Vec<Unknown>) -> R<T> {
    let known: Known = RefCell::new(HashMap::new());
    let mut ignored: Vec<Ignored> = Vec::new();
    let mut note = |p: serde_ignored::Path<'_>| {
        let (key, object, enclosing) = match &p {
            serde_ignored::Path::Map { parent, key } => {
                (key.clone(), render(parent), enclosing_object(parent))
            }
            _ => (String::new(), String::new(), None),
        };
        ignored.push(Ignored {
            field: render(&p),
            key,
            object,
            enclosing,
        });
    };
    let node = Node {
        v: value,
        path: String::new(),
        known: &known,
    };
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(node, &mut note));
    let known = known.into_inner();
    unknown.extend(ignored.into_iter().map(|i| {
        Unknown {
            field: at(root, &i.field),
            suggestion: known.get(&i.object).and_then(|k| suggestion(&i.key, k)),
            misplaced: i
                .enclosing
                .and_then(|e| known.get(&e))
                .is_some_and(|k| k.contains(&i.key.as_str())),
        }
    }));
    result.or_else(|e| {
        let mut rel = String::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => rel.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => {
                    rel.push('.');
                    rel.push_str(key);
                }
                serde_path_to_error::Segment::Enum { variant } => {
                    rel.push('.');
                    rel.push_str(variant);
                }
                serde_path_to_error::Segment::Unknown => rel.push_str(".?"),
            }
        }
        fail(&at(root, &rel), friendly(&e.into_inner().to_string()))
    })
}

/// `root` followed by a relative path (`.a[0].b`).
fn at(root: &str, rel: &str) -> String {
    if root.is_empty() {
        rel.strip_prefix('.').unwrap_or(rel).to_string()
    } else {
        format!("{root}{rel}")
    }
}

/// serde's own messages (unknown variants, missing fields) with Rust words replaced by YAML ones.
fn friendly(msg: &str) -> String {
    msg.replace("invalid type: map", "invalid type: mapping")
        .replace("invalid type: sequence", "invalid type: list")
        .replace("a sequence", "a list")
        .replace("struct ", "")
}

/// One field the structs do not define: its path, its name, the path of the object holding it
/// and of the object around that one (lists are transparent).
struct Ignored {
    field: String,
    key: String,
    object: String,
    enclosing: Option<String>,
}

/// The known field names of every struct decoded, by the path of its object.
type Known = RefCell<HashMap<String, &'static [&'static str]>>;

/// `serde_ignored`'s path as `.a[0].b` (the form `Node` records).
fn render(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        Path::Map { parent, key } => format!("{}.{key}", render(parent)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render(parent),
    }
}

/// The object enclosing the object at `p`, through lists.
fn enclosing_object(p: &serde_ignored::Path<'_>) -> Option<String> {
    use serde_ignored::Path;
    match p {
        Path::Root => None,
        Path::Map { parent, .. } => Some(render(parent)),
        Path::Seq { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => enclosing_object(parent),
    }
}

/// The known name closest to `key`, if it is close enough to be a likely typo.
pub fn suggestion(key: &str, known: &'static [&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.min(k.len() / 2) || k.eq_ignore_ascii_case(key))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (small strings only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// How a value is named in messages: `the string "a"`, `the number 5`, `true`, `a list`.
pub fn found(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 60 => {
            let head: String = s.chars().take(60).collect();
            format!("the string \"{}...\"", head.escape_debug())
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}

fn custom(msg: String) -> serde_json::Error {
    de::Error::custom(msg)
}

/// A JSON value as a serde deserializer that names what it found in YAML's words, treats
/// `null` as absent, and records the field names of every struct decoded from it.
struct Node<'a> {
    v: &'a Value,
    /// `.a[0].b` from the decoded root.
    path: String,
    known: &'a Known,
}

impl<'a> Node<'a> {
    fn integer(&self, min: i128, max: i128) -> Result<i128, serde_json::Error> {
        let n = match self.v {
            Value::Number(n) => match n.as_i64().map(i128::from) {
                Some(i) => i,
                None => match n.as_u64() {
                    Some(u) => i128::from(u),
                    None => return Err(custom(format!("expected an integer, found {n}"))),
                },
            },
            Value::String(s) if s.parse::<i64>().is_ok() => {
                return Err(custom(format!(
                    "expected an integer, found the string {s:?} (remove the quotes)"
                )))
            }
            other => {
                return Err(custom(format!(
                    "expected an integer, found {}",
                    found(other)
                )))
            }
        };
        if n < 0 && min == 0 {
            return Err(custom(format!("{n} is not a non-negative integer")));
        }
        if n < min || n > max {
            return Err(custom(format!("{n} is out of range {min}..={max}")));
        }
        Ok(n)
    }

    fn unsigned<V: Visitor<'a>>(self, max: u64, v: V) -> Result<V::Value, serde_json::Error> {
        let n = self.integer(0, i128::from(max))?;
        v.visit_u64(u64::try_from(n).map_err(|e| custom(e.to_string()))?)
    }

    fn signed<V: Visitor<'a>>(
        self,
        min: i64,
        max: i64,
        v: V,
    ) -> Result<V::Value, serde_json::Error> {
        // Beyond i64: let the visitor (`Int`) say what range it wants.
        if max == i64::MAX {
            if let Value::Number(n) = self.v {
                if let (None, Some(u)) = (n.as_i64(), n.as_u64()) {
                    return v.visit_u64(u);
                }
            }
        }
        let n = self.integer(i128::from(min), i128::from(max))?;
        v.visit_i64(i64::try_from(n).map_err(|e| custom(e.to_string()))?)
    }

    fn seq<V: Visitor<'a>>(self, v: V) -> Result<V::Value, serde_json::Error> {
        let items: &'a [Value] = match self.v {
            Value::Array(a) => a,
            Value::Null => &[],
            other => return Err(custom(format!("expected a list, found {}", found(other)))),
        };
        v.visit_seq(SeqNode {
            items: items.iter(),
            index: 0,
            path: self.path,
            known: self.known,
        })
    }

    fn map<V: Visitor<'a>>(self, v: V) -> Result<V::Value, serde_json::Error> {
        let entries = match self.v {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                return Err(custom(format!(
                    "expected a mapping, found {}",
                    found(other)
                )))
            }
        };
        v.visit_map(MapNode {
            entries: entries.map(Map::iter),
            value: None,
            path: self.path,
            known: self.known,
        })
    }

    fn string<V: Visitor<'a>>(self, v: V) -> Result<V::Value, serde_json::Error> {
        match self.v {
            Value::String(s) => v.visit_str(s),
            other @ (Value::Number(_) | Value::Bool(_)) => Err(custom(format!(
                "expected a string, found {} (write it in quotes: \"{other}\")",
                found(other)
            ))),
            other => Err(custom(format!("expected a string, found {}", found(other)))),
        }
    }
}

macro_rules! unsigned {
    ($($m:ident: $t:ty),*) => {$(
        fn $m<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
            self.unsigned(u64::from(<$t>::MAX), v)
        }
    )*};
}

macro_rules! signed {
    ($($m:ident: $t:ty),*) => {$(
        fn $m<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
            self.signed(i64::from(<$t>::MIN), i64::from(<$t>::MAX), v)
        }
    )*};
}

impl<'a> Deserializer<'a> for Node<'a> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.v {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => v.visit_u64(u),
                (_, Some(i), _) => v.visit_i64(i),
                (_, _, Some(f)) => v.visit_f64(f),
                _ => Err(custom(format!("unsupported number {n}"))),
            },
            Value::String(s) => v.visit_str(s),
            Value::Array(_) => self.seq(v),
            Value::Object(_) => self.map(v),
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.v {
            Value::Bool(b) => v.visit_bool(*b),
            other => Err(custom(format!(
                "expected true or false, found {}",
                found(other)
            ))),
        }
    }

    unsigned!(deserialize_u8: u8, deserialize_u16: u16, deserialize_u32: u32, deserialize_u64: u64);
    signed!(deserialize_i8: i8, deserialize_i16: i16, deserialize_i32: i32, deserialize_i64: i64);

    fn deserialize_f32<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.v {
            Value::Number(n) => match n.as_f64() {
                Some(f) => v.visit_f64(f),
                None => Err(custom(format!("unsupported number {n}"))),
            },
            Value::String(s) if s.parse::<f64>().is_ok() => Err(custom(format!(
                "expected a number, found the string {s:?} (remove the quotes)"
            ))),
            other => Err(custom(format!("expected a number, found {}", found(other)))),
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    fn deserialize_str<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    fn deserialize_string<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.v.deserialize_bytes(v)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.v.deserialize_byte_buf(v)
    }

    fn deserialize_option<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.v {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.v {
            Value::Null => v.visit_unit(),
            other => Err(custom(format!("expected null, found {}", found(other)))),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.seq(v)
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, v: V) -> Result<V::Value, Self::Error> {
        self.seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.seq(v)
    }

    fn deserialize_map<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.map(v)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.known.borrow_mut().insert(self.path.clone(), fields);
        self.map(v)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        match self.v {
            Value::String(s) => v.visit_enum(de::value::StrDeserializer::<Self::Error>::new(s)),
            Value::Object(_) => self.v.deserialize_enum(name, variants, v),
            other => Err(custom(format!(
                "expected one of {}, found {}",
                variants.join(", "),
                found(other)
            ))),
        }
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.string(v)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_unit()
    }
}

struct SeqNode<'a> {
    items: std::slice::Iter<'a, Value>,
    index: usize,
    path: String,
    known: &'a Known,
}

impl<'a> de::SeqAccess<'a> for SeqNode<'a> {
    type Error = serde_json::Error;

    fn next_element_seed<T: de::DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let Some(v) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(Node {
            v,
            path,
            known: self.known,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapNode<'a> {
    entries: Option<serde_json::map::Iter<'a>>,
    value: Option<(&'a String, &'a Value)>,
    path: String,
    known: &'a Known,
}

impl<'a> de::MapAccess<'a> for MapNode<'a> {
    type Error = serde_json::Error;

    fn next_key_seed<K: de::DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((k, v)) = self.entries.as_mut().and_then(Iterator::next) else {
            return Ok(None);
        };
        self.value = Some((k, v));
        seed.deserialize(de::value::BorrowedStrDeserializer::<Self::Error>::new(k))
            .map(Some)
    }

    fn next_value_seed<T: de::DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let Some((k, v)) = self.value.take() else {
            return Err(custom("a value was asked for before its key".to_string()));
        };
        seed.deserialize(Node {
            v,
            path: format!("{}.{k}", self.path),
            known: self.known,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.entries.as_ref().map(ExactSizeIterator::len)
    }
}

/// An integer Istio bounds to `MIN..=MAX` (ports, weights, status codes); the error names the
/// value and the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

/// A port number, 1..=65535.
pub type Port = Int<1, 65535>;

impl<const MIN: i64, const MAX: i64> Int<MIN, MAX> {
    /// The value as a `u16` (a port or status code: the range keeps it in bounds).
    pub fn as_u16(self) -> u16 {
        u16::try_from(self.0).unwrap_or(u16::MAX)
    }

    /// The value as a `u32` (a weight or count: the range keeps it in bounds).
    pub fn as_u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: i64, const MAX: i64>;
        impl<const MIN: i64, const MAX: i64> Visitor<'_> for V<MIN, MAX> {
            type Value = Int<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an integer from {MIN} to {MAX}")
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&i) {
                    Ok(Int(i))
                } else {
                    Err(E::custom(format!("{i} is out of range {MIN}..={MAX}")))
                }
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
                match i64::try_from(u) {
                    Ok(i) => self.visit_i64(i),
                    Err(_) => Err(E::custom(format!("{u} is out of range {MIN}..={MAX}"))),
                }
            }
        }
        d.deserialize_i64(V::<MIN, MAX>)
    }
}

impl<const MIN: i64, const MAX: i64> Serialize for Int<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<const MIN: i64, const MAX: i64> schemars::JsonSchema for Int<MIN, MAX> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Int_{MIN}_{MAX}").into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "minimum": MIN, "maximum": MAX})
    }
}

/// An Istio duration (`"1.5s"`, `"100ms"`, `"1m30s"`); a bare number is refused with the form
/// to write. Written back as seconds (`"1.5s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn number<E: de::Error>(n: impl fmt::Display) -> E {
                E::custom(format!(
                    "expected a duration such as \"{n}s\" or \"100ms\", found the number {n}"
                ))
            }
            fn other<E: de::Error>(what: &str) -> E {
                E::custom(format!(
                    "expected a duration such as \"10s\" or \"100ms\", found {what}"
                ))
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                crate::duration::parse_duration(s)
                    .map(Dur)
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                Err(V::number(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                Err(V::number(n))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(V::number(number(n)))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Dur, E> {
                Err(V::other(&b.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Dur, E> {
                Err(V::other("null"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Dur, A::Error> {
                Err(V::other("a list"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Dur, A::Error> {
                Err(V::other("a mapping"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::serde_util::secs::serialize(&self.0, s)
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string"})
    }
}

/// A percentage, 0..=100 (fractions allowed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = f64::deserialize(d)?;
        if (0.0..=100.0).contains(&f) {
            Ok(Percent(f))
        } else {
            let shown = if f.abs() >= 1e16 {
                format!("{f:e}")
            } else {
                f.to_string()
            };
            Err(de::Error::custom(format!(
                "{shown} is out of range 0..=100"
            )))
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl schemars::JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "number", "minimum": 0, "maximum": 100})
    }
}

/// A string naming one of `names`; any other is an error listing `listed` (`"X" is not A, B or
/// C`), which may leave out accepted aliases.
pub fn one_of<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    names: &[(&str, T)],
    listed: &str,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    pick(&s, names, listed).map_err(de::Error::custom)
}

/// The value `s` names among `names`, or the error `one_of` gives.
pub fn pick<T: Copy>(s: &str, names: &[(&str, T)], listed: &str) -> Result<T, String> {
    names
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("{s:?} is not {listed}"))
}

/// The schema of a string naming one of `names` (what [`one_of`] reads).
pub fn names_schema<T>(names: &[(&str, T)]) -> schemars::Schema {
    let names: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    schemars::json_schema!({"type": "string", "enum": names})
}

/// A string schema (a value type read from a string and checked by its own parser).
pub fn string_schema() -> schemars::Schema {
    schemars::json_schema!({"type": "string"})
}

/// `JsonSchema` for a type read from a string: `$schema` is the expression giving its schema.
#[macro_export]
macro_rules! string_schema {
    ($t:ty, $name:literal, $schema:expr) => {
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                $schema
            }
        }
    };
}

/// A number as a message shows it (`1.5`, `1e99`).
fn number(f: f64) -> String {
    if f.abs() >= 1e16 {
        format!("{f:e}")
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        sub_name: Option<String>,
        weight: Option<Int<0, 100>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        hosts: Vec<String>,
        timeout: Option<Dur>,
        count: Option<u32>,
        on: Option<bool>,
        ratio: Option<f64>,
        labels: Option<std::collections::BTreeMap<String, Inner>>,
    }

    fn err(v: Value) -> String {
        decode::<Outer>(&v, "spec", &mut Vec::new())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_path_value_and_reason() {
        use serde_json::json;
        let cases = [
            (json!({"hosts": "a"}), "spec.hosts: expected a list, found the string \"a\""),
            (json!({"hosts": [1]}), "spec.hosts[0]: expected a string, found the number 1 (write it in quotes: \"1\")"),
            (json!({"items": [{}, {"weight": 101}]}), "spec.items[1].weight: 101 is out of range 0..=100"),
            (json!({"items": [{"weight": "5"}]}), "spec.items[0].weight: expected an integer, found the string \"5\" (remove the quotes)"),
            (json!({"items": [{"weight": u64::MAX}]}), "spec.items[0].weight: 18446744073709551615 is out of range 0..=100"),
            (json!({"items": [{"weight": 1.5}]}), "spec.items[0].weight: expected an integer, found 1.5"),
            (json!({"timeout": 10}), "spec.timeout: expected a duration such as \"10s\" or \"100ms\", found the number 10"),
            (json!({"timeout": 1e99}), "spec.timeout: expected a duration such as \"1e99s\" or \"100ms\", found the number 1e99"),
            (json!({"timeout": "10x"}), "spec.timeout: invalid duration \"10x\": unknown unit \"x\" (ns, us, ms, s, m, h)"),
            (json!({"count": -1}), "spec.count: -1 is not a non-negative integer"),
            (json!({"count": 5000000000u64}), "spec.count: 5000000000 is out of range 0..=4294967295"),
            (json!({"on": "yes"}), "spec.on: expected true or false, found the string \"yes\""),
            (json!({"ratio": "0.5"}), "spec.ratio: expected a number, found the string \"0.5\" (remove the quotes)"),
            (json!({"labels": {"a": 1}}), "spec.labels.a: expected a mapping, found the number 1"),
            (json!([]), "spec: expected a mapping, found a list"),
        ];
        for (v, want) in cases {
            assert_eq!(err(v.clone()), want, "{v}");
        }
    }

    #[test]
    fn null_is_absent_and_unknown_fields_are_named() {
        use serde_json::json;
        let mut unknown = Vec::new();
        let o = decode::<Outer>(
            &json!({"hosts": null, "items": [{"subNmae": "x", "items": []}], "timout": "1s",
                    "labels": {"k": {"wieght": 1}}}),
            "spec",
            &mut unknown,
        )
        .unwrap();
        assert!(o.hosts.is_empty());
        let got: Vec<(String, String)> = unknown
            .iter()
            .map(|u| (u.field.clone(), u.reason()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("spec.items[0].items".to_string(), "unknown field here, ignored (it is a field one level up: check the indentation)".to_string()),
                ("spec.items[0].subNmae".to_string(), "unknown field, ignored (did you mean \"subName\"?)".to_string()),
                ("spec.labels.k.wieght".to_string(), "unknown field, ignored (did you mean \"weight\"?)".to_string()),
                ("spec.timout".to_string(), "unknown field, ignored (did you mean \"timeout\"?)".to_string()),
            ]
        );
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("matches", "match"), 2);
        assert_eq!(edit_distance("wieght", "weight"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
