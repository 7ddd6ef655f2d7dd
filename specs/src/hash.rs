//! Canonical hashing. An object's hash is the SHA-256 of the canonical JSON (keys sorted,
//! no whitespace) of what it puts on the host, so it is stable across key order,
//! formatting and YAML anchors, and changes exactly when the live object must change.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `v` as canonical JSON: object keys sorted, no insignificant whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of the canonical JSON of `v`.
pub fn hash_value(v: &Value) -> String {
    sha256_hex(canonical_json(v).as_bytes())
}

/// The digest that stands for a secret in hashes: domain-separated, so the hash of a
/// config never equals the plain hash of a password.
pub fn secret_digest(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"tend-secret-v1\0");
    h.update(secret);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(hash_value(&a), hash_value(&b));
    }

    #[test]
    fn array_order_and_values_do_change_the_hash() {
        assert_ne!(hash_value(&json!([1, 2])), hash_value(&json!([2, 1])));
        assert_ne!(hash_value(&json!({"a": "1"})), hash_value(&json!({"a": 1})));
    }

    #[test]
    fn a_secret_digest_is_not_its_plain_sha256() {
        assert_ne!(secret_digest(b"hunter2"), sha256_hex(b"hunter2"));
    }
}
