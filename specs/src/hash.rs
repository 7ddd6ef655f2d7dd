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

/// The digest that stands for a secret in hashes. Hashes are not secret (they sit in
/// container labels and unit files anyone on the host can read), so with a `salt` — the
/// host's random salt, kept in the state directory — it is HMAC-SHA256 keyed by the salt:
/// guessing a weak secret offline from a hash then needs the salt too. Without one (an empty
/// `salt`: `tend validate`, tests) it is the unsalted, domain-separated digest of tend before
/// host salts. Either way the hash of a config never equals the plain hash of a password.
pub fn secret_digest(salt: &[u8], secret: &[u8]) -> String {
    if salt.is_empty() {
        let mut h = Sha256::new();
        h.update(b"tend-secret-v1\0");
        h.update(secret);
        return hex::encode(h.finalize());
    }
    hex::encode(hmac_sha256(salt, &[b"tend-secret-v2\0", secret]))
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`, keyed by `key`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
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
        assert_ne!(secret_digest(b"", b"hunter2"), sha256_hex(b"hunter2"));
        assert_ne!(secret_digest(b"salt", b"hunter2"), sha256_hex(b"hunter2"));
    }

    #[test]
    fn an_unsalted_digest_is_the_one_of_tend_before_host_salts() {
        // Pinned: secrets' containers created by earlier versions carry hashes made with it.
        assert_eq!(secret_digest(b"", b"hunter2"), sha256_hex(&[b"tend-secret-v1\0".as_slice(), b"hunter2"].concat()));
    }

    #[test]
    fn a_salted_digest_depends_on_the_salt_and_is_an_hmac() {
        let (a, b) = (secret_digest(&[1; 32], b"hunter2"), secret_digest(&[2; 32], b"hunter2"));
        assert_ne!(a, b);
        assert_ne!(a, secret_digest(b"", b"hunter2"));
        assert_eq!(a, secret_digest(&[1; 32], b"hunter2"), "stable for one salt");
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // RFC 4231, test case 6: a key longer than a block is hashed first.
        let mac = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }
}
