//! Signed overrides: an override honoured because whoever sent it holds a
//! key, not because of where it came from.
//!
//! The signature travels beside the dtab headers in `l5d-dtab-sig`:
//!
//! ```text
//! l5d-dtab-sig: kid=<key id>, exp=<unix seconds>, sig=<hex HMAC-SHA256>
//! ```
//!
//! It is an HMAC-SHA256, under the key named `kid`, of
//! `sidetrack-override-v1\n<kid>\n<exp>\n<dtab>`, where `<dtab>` is the
//! request's combined override (`l5d-ctx-dtab` then `l5d-dtab`) in
//! canonical form, so spacing and a trailing `;` do not matter. The proxy
//! forwards the combined override as `l5d-ctx-dtab` with the signature
//! beside it, so the next hop checks the same text. Keys come from a
//! directory (a Kubernetes Secret volume: one file per key, named by its
//! id), several at once so that they can rotate. Pure: the caller reads the
//! keys and the clock.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::dtab::Dtab;

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "l5d-dtab-sig";

/// The keys overrides may be signed with, by id.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keys(HashMap<String, Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ids only: secrets stay out of logs.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Keys {
    pub fn new(keys: impl IntoIterator<Item = (String, Vec<u8>)>) -> Keys {
        Keys(keys.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Reads every regular file of `dir` as a key named by the file (a
    /// trailing newline is not part of the key); names starting with `.`
    /// are skipped (a Secret volume's `..data` links, editors' files).
    pub fn read_dir(dir: &std::path::Path) -> std::io::Result<Keys> {
        let mut keys = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_file() {
                continue;
            }
            let mut secret = std::fs::read(entry.path())?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if !secret.is_empty() {
                keys.insert(name, secret);
            }
        }
        Ok(Keys(keys))
    }
}

/// Why a signed override is not honoured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the override is not signed ({SIGNATURE_HEADER})")]
    Missing,
    #[error("{SIGNATURE_HEADER} is malformed: {0}")]
    Malformed(&'static str),
    #[error("{SIGNATURE_HEADER} names key {0:?}, which the proxy does not hold")]
    UnknownKey(String),
    #[error("the override's signature expired at {0}")]
    Expired(u64),
    #[error("the override's signature does not match it")]
    Mismatch,
}

/// A parsed `l5d-dtab-sig` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub kid: String,
    pub expires: u64,
    mac: [u8; 32],
}

impl Signature {
    pub fn parse(value: &[u8]) -> Result<Signature, SignatureError> {
        let text =
            std::str::from_utf8(value).map_err(|_| SignatureError::Malformed("not UTF-8"))?;
        let (mut kid, mut exp, mut sig) = (None, None, None);
        for part in text.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed(
                    "expected kid=..., exp=..., sig=...",
                ))?;
            let slot = match k.trim() {
                "kid" => &mut kid,
                "exp" => &mut exp,
                "sig" => &mut sig,
                _ => return Err(SignatureError::Malformed("unknown field")),
            };
            *slot = Some(v.trim());
        }
        let kid = kid
            .filter(|k| !k.is_empty())
            .ok_or(SignatureError::Malformed("no kid"))?;
        let expires = exp
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or(SignatureError::Malformed("exp is not unix seconds"))?;
        let mac = sig
            .and_then(unhex)
            .ok_or(SignatureError::Malformed("sig is not 64 hex digits"))?;
        Ok(Signature {
            kid: kid.to_owned(),
            expires,
            mac,
        })
    }

    /// Checks the signature of `dtab` at `now` (unix seconds) with `keys`.
    /// The MAC is compared in constant time.
    pub fn verify(&self, dtab: &Dtab, keys: &Keys, now: u64) -> Result<(), SignatureError> {
        let key = keys
            .0
            .get(&self.kid)
            .ok_or_else(|| SignatureError::UnknownKey(self.kid.clone()))?;
        if now >= self.expires {
            return Err(SignatureError::Expired(self.expires));
        }
        mac(key, &self.kid, self.expires, dtab)
            .verify_slice(&self.mac)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// The `l5d-dtab-sig` value signing `dtab` with `key` (named `kid`) until
/// `expires` (unix seconds).
pub fn sign(dtab: &Dtab, kid: &str, key: &[u8], expires: u64) -> String {
    let tag = mac(key, kid, expires, dtab).finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    format!("kid={kid}, exp={expires}, sig={hex}")
}

fn mac(key: &[u8], kid: &str, expires: u64, dtab: &Dtab) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(b"sidetrack-override-v1\n");
    mac.update(kid.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(dtab.to_string().as_bytes());
    mac
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new([
            ("2026-12".to_owned(), b"december secret".to_vec()),
            ("2027-01".to_owned(), b"january secret".to_vec()),
        ])
    }

    fn dtab(s: &str) -> Dtab {
        Dtab::parse(s).unwrap()
    }

    #[test]
    fn a_signature_holds_for_the_canonical_dtab_until_it_expires() {
        let d = dtab("/host/world => /srv/world-v2");
        let value = sign(&d, "2026-12", b"december secret", 1_000);
        let sig = Signature::parse(value.as_bytes()).unwrap();
        assert_eq!((sig.kid.as_str(), sig.expires), ("2026-12", 1_000));
        assert_eq!(sig.verify(&d, &keys(), 999), Ok(()));
        // Spacing and a trailing ';' are not part of what is signed.
        let respaced = dtab("/host/world=>/srv/world-v2;");
        assert_eq!(sig.verify(&respaced, &keys(), 999), Ok(()));
        assert_eq!(
            sig.verify(&d, &keys(), 1_000),
            Err(SignatureError::Expired(1_000))
        );
    }

    #[test]
    fn tampering_a_removed_key_and_bad_values_are_refused() {
        let d = dtab("/host/world => /srv/world-v2");
        let value = sign(&d, "2026-12", b"december secret", 1_000);
        let sig = Signature::parse(value.as_bytes()).unwrap();
        let other = dtab("/host/world => /srv/world-v3");
        assert_eq!(
            sig.verify(&other, &keys(), 1),
            Err(SignatureError::Mismatch)
        );
        // A later expiry claimed for the same MAC.
        let stretched = value.replace("exp=1000", "exp=99999");
        let stretched = Signature::parse(stretched.as_bytes()).unwrap();
        assert_eq!(
            stretched.verify(&d, &keys(), 1),
            Err(SignatureError::Mismatch)
        );
        // Signed with another key than the one named.
        let forged = sign(&d, "2027-01", b"december secret", 1_000);
        let forged = Signature::parse(forged.as_bytes()).unwrap();
        assert_eq!(forged.verify(&d, &keys(), 1), Err(SignatureError::Mismatch));
        // A key the proxy no longer holds.
        let only_january = Keys::new([("2027-01".to_owned(), b"january secret".to_vec())]);
        assert_eq!(
            sig.verify(&d, &only_january, 1),
            Err(SignatureError::UnknownKey("2026-12".into()))
        );
        for bad in [
            "",
            "kid=a, exp=1",
            "kid=a, exp=soon, sig=00",
            "kid=, exp=1, sig=0000000000000000000000000000000000000000000000000000000000000000",
            "kid=a, exp=1, sig=zz00000000000000000000000000000000000000000000000000000000000000",
            "kid=a, exp=1, sig=00, extra=1",
        ] {
            assert!(
                matches!(
                    Signature::parse(bad.as_bytes()),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_are_read_from_a_directory() {
        let dir = std::env::temp_dir().join(format!("sidetrack-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("2026-12"), "december secret\n").unwrap();
        std::fs::write(dir.join(".hidden"), "skipped").unwrap();
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let keys = Keys::read_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            keys,
            Keys::new([("2026-12".to_owned(), b"december secret".to_vec())])
        );
        assert_eq!(format!("{keys:?}"), r#"{"2026-12"}"#);
    }
}
