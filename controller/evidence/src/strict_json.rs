//! JSON read strictly, for documents that carry a signature or a hash: a
//! member named twice is refused (serde_json keeps the last; another
//! parser may keep the first, and a signed document must mean one thing
//! to every reader), as is anything after the document, and every number
//! that is not an integer every parser reads exactly (a fraction or an
//! exponent, or beyond ±(2^53 - 1), the I-JSON range of RFC 7493): the
//! documents hold integers only, and `3.0` or `3e0` would be signed as one
//! thing and read as another.

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `text` as one JSON value, or why it is refused.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let Strict(value) = Strict::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| format!("more after the document: {e}"))?;
    Ok(value)
}

/// The largest integer every JSON parser reads exactly (IEEE 754 doubles).
const MAX_EXACT: u64 = (1 << 53) - 1;

/// `text` as a `T`, read strictly, with no member `T` does not know:
/// for documents whose every member counts (an audit record's hash covers
/// its named fields; a member beside them would be read by some and
/// ignored by others).
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str, members: &[&str]) -> Result<T, String> {
    let value = parse(text)?;
    if let Value::Object(map) = &value
        && let Some(unknown) = map.keys().find(|k| !members.contains(&k.as_str()))
    {
        return Err(format!("the member {unknown:?} is not one of the format's"));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() > MAX_EXACT {
            return Err(E::custom(format!(
                "the number {v} is beyond ±(2^53 - 1), which not every parser reads exactly"
            )));
        }
        Ok(Value::from(v))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        if v > MAX_EXACT {
            return Err(E::custom(format!(
                "the number {v} is beyond ±(2^53 - 1), which not every parser reads exactly"
            )));
        }
        Ok(Value::from(v))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        Err(E::custom(format!(
            "the number {v} is written with a fraction or an exponent (or is too large): only integers are allowed"
        )))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("the member {key:?} is given twice")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_given_twice_and_trailing_data_are_refused() {
        assert_eq!(
            parse(r#"{"a":1,"b":[1,{"c":null}]}"#).unwrap()["b"][1]["c"],
            Value::Null
        );
        let twice = parse(r#"{"check":{"exit":0,"exit":3}}"#).unwrap_err();
        assert!(twice.contains("\"exit\" is given twice"), "{twice}");
        let after = parse(r#"{"a":1} {"a":2}"#).unwrap_err();
        assert!(after.contains("more after the document"), "{after}");
        assert!(parse("{\"a\":1}\n").is_ok());
    }

    #[test]
    fn numbers_every_parser_reads_alike_only() {
        assert_eq!(parse("[0,-5,9007199254740991]").unwrap()[2], 9_007_199_254_740_991u64);
        for (text, why) in [
            ("{\"exit\":3.0}", "fraction or an exponent"),
            ("{\"exit\":3e0}", "fraction or an exponent"),
            ("[9007199254740993]", "beyond ±(2^53 - 1)"),
            ("[-9007199254740993]", "beyond ±(2^53 - 1)"),
            (
                "[123456789012345678901234567890]",
                "fraction or an exponent (or is too large)",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_member_the_format_does_not_have_is_refused() {
        #[derive(serde::Deserialize)]
        struct Two {
            a: u64,
        }
        let two: Two = from_str(r#"{"a":1}"#, &["a"]).unwrap();
        assert_eq!(two.a, 1);
        let e = from_str::<Two>(r#"{"a":1,"exit":0}"#, &["a"]).err().unwrap();
        assert!(e.contains("\"exit\" is not one of the format's"), "{e}");
    }
}
