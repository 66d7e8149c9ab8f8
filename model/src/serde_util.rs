//! Serde helpers shared by the model kinds and the config dump: durations as Istio writes them
//! (`"1.5s"`), `(name, value)` pairs as a mapping in document order, CIDRs as strings, and
//! settings kept as written in Istio's shape next to what they mean (`Setting`).
//! Each is written once and used in both directions, so what the proxy serves is what the CLI
//! reads back.

/// `Duration` ↔ `"1.5s"`; reads any duration Istio accepts (`100ms`, `1m30s`).
pub mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        crate::kinds::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `Option<Duration>` ↔ `"1.5s"` or `null`.
pub mod opt_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match <Option<String> as serde::Deserialize>::deserialize(d)? {
            None => Ok(None),
            Some(text) => crate::kinds::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `Vec<(String, V)>` ↔ a mapping, in document order (Istio's YAML shape for header maps).
pub mod pairs {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, V: Serialize>(
        v: &[(String, V)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D, V>(d: D) -> Result<Vec<(String, V)>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        struct Pairs<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
            type Value = Vec<(String, V)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, V>()? {
                    out.push(kv);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Pairs(PhantomData))
    }
}

/// `Vec<IpNet>` ↔ `["10.0.0.0/8", ...]`.
pub mod nets {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A configuration type that rules write in Istio's shape `Spec` (a DestinationRule's
/// `loadBalancer`, `connectionPool`, ...), interpreted by `from_spec`, whose error says what is
/// wrong.
pub trait IstioShape: Sized {
    type Spec: serde::Serialize + serde::de::DeserializeOwned + Clone + PartialEq + std::fmt::Debug;
    fn from_spec(spec: &Self::Spec) -> Result<Self, String>;
}

/// A setting as written (Istio's shape, typed) and what it means (`value`), decoded together:
/// reading it decodes `spec` and interprets it at once, so an invalid setting is an error of
/// the document that holds it; writing it writes `spec` (what `/config_dump` shows).
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T: IstioShape> {
    pub spec: T::Spec,
    pub value: T,
}

impl<T: IstioShape> Setting<T> {
    /// Interpret `spec`.
    pub fn new(spec: T::Spec) -> Result<Setting<T>, String> {
        let value = T::from_spec(&spec)?;
        Ok(Setting { spec, value })
    }
}

impl<T: IstioShape> serde::Serialize for Setting<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.spec, s)
    }
}

/// Written in Istio's shape: the schema of `spec`.
impl<T: IstioShape> schemars::JsonSchema for Setting<T>
where
    T::Spec: schemars::JsonSchema,
{
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::Spec::schema_name()
    }

    fn inline_schema() -> bool {
        T::Spec::inline_schema()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::Spec::json_schema(g)
    }
}

impl<'de, T: IstioShape> serde::Deserialize<'de> for Setting<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = <T::Spec as serde::Deserialize>::deserialize(d)?;
        Setting::new(spec).map_err(serde::de::Error::custom)
    }
}
