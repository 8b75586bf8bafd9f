//! Trusted keys and manifest signature verification.
//!
//! Owns the key format ([`TrustedKey`], including the CLI form `NAME:ALG:HEX`) and the policy
//! in [`verify`]. It does not decide which keys to trust; the caller passes them.
//!
//! Policy (the choice made here):
//! - Signatures are looked up by trusted key name in `unsigned.signatures`; names the verifier
//!   does not trust are ignored.
//! - Every trusted key that has a signature in the manifest is checked. If any of them is
//!   malformed or does not verify, the manifest is rejected naming that key, even when another
//!   trusted key's signature verifies. A bad signature under a trusted name means the document
//!   was altered or mis-signed; failing closed makes that visible instead of masking it.
//! - Otherwise, if at least one trusted key verified, the manifest passes ([`VerifiedBy`] names
//!   the first one in the caller's order). Key rotation works by signing with old and new keys
//!   while clients trust either.
//! - If no trusted name is present, the error lists the names that are present.

use sha2::Digest as _;

use crate::manifest::{signed_bytes, Manifest};
use crate::ModuleError;

/// A signature algorithm a manifest key can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519: 32-byte public key, 64-byte signature over the signed bytes.
    Ed25519,
    /// ECDSA P-256 with SHA-256: 65-byte uncompressed public key `04||X||Y`, DER signature.
    EcdsaP256,
}

impl Algorithm {
    /// The name used in `NAME:ALG:HEX` (`ed25519` or `ecdsa-p256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256 => "ecdsa-p256",
        }
    }

    fn public_key_len(self) -> usize {
        match self {
            Algorithm::Ed25519 => 32,
            Algorithm::EcdsaP256 => 65,
        }
    }
}

/// A key the caller trusts to sign manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub name: String,
    pub algorithm: Algorithm,
    pub public_key: Vec<u8>,
}

impl TrustedKey {
    /// A trusted key, checking the public key's length and encoding for the algorithm.
    pub fn new(
        name: impl Into<String>,
        algorithm: Algorithm,
        public_key: Vec<u8>,
    ) -> Result<TrustedKey, ModuleError> {
        let key = TrustedKey {
            name: name.into(),
            algorithm,
            public_key,
        };
        key.check()
            .map_err(|reason| ModuleError::InvalidTrustedKey {
                input: key.name.clone(),
                reason,
            })?;
        Ok(key)
    }

    /// Parses the CLI form `NAME:ALG:HEX`, ALG being `ed25519` or `ecdsa-p256`.
    pub fn parse(text: &str) -> Result<TrustedKey, ModuleError> {
        let invalid = |reason: String| ModuleError::InvalidTrustedKey {
            input: text.to_owned(),
            reason,
        };
        let mut parts = text.rsplitn(3, ':');
        let (Some(hex_key), Some(algorithm), Some(name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("expected NAME:ALG:HEX".to_owned()));
        };
        if name.is_empty() {
            return Err(invalid("the key name is empty".to_owned()));
        }
        let algorithm = match algorithm.to_ascii_lowercase().as_str() {
            "ed25519" => Algorithm::Ed25519,
            "ecdsa-p256" => Algorithm::EcdsaP256,
            other => {
                return Err(invalid(format!(
                    "unknown algorithm {other:?}, expected ed25519 or ecdsa-p256"
                )))
            }
        };
        let public_key = hex::decode(hex_key)
            .map_err(|error| invalid(format!("public key is not hex: {error}")))?;
        let key = TrustedKey {
            name: name.to_owned(),
            algorithm,
            public_key,
        };
        key.check().map_err(invalid)?;
        Ok(key)
    }

    fn check(&self) -> Result<(), String> {
        let expected = self.algorithm.public_key_len();
        if self.public_key.len() != expected {
            return Err(format!(
                "{} public key must be {expected} bytes, got {}",
                self.algorithm.name(),
                self.public_key.len()
            ));
        }
        match self.algorithm {
            Algorithm::Ed25519 => {
                let bytes: [u8; 32] = self
                    .public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| "ed25519 public key must be 32 bytes".to_owned())?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|error| format!("not an ed25519 point: {error}"))?;
            }
            Algorithm::EcdsaP256 => {
                if self.public_key[0] != 0x04 {
                    return Err("P-256 public key must be uncompressed (start with 04)".to_owned());
                }
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.public_key)
                    .map_err(|_| "not a point on P-256".to_owned())?;
            }
        }
        Ok(())
    }

    /// Checks `signature` over `message` with this key. `Err` carries why the signature is
    /// malformed; `Ok(false)` means well-formed but wrong.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> Result<bool, String> {
        match self.algorithm {
            Algorithm::Ed25519 => {
                let bytes: [u8; 32] = self
                    .public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| "trusted ed25519 key is not 32 bytes".to_owned())?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|error| format!("trusted key is not an ed25519 point: {error}"))?;
                let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
                    format!(
                        "ed25519 signature must be 64 bytes, got {}",
                        signature.len()
                    )
                })?;
                Ok(key.verify_strict(message, &signature).is_ok())
            }
            Algorithm::EcdsaP256 => {
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.public_key)
                    .map_err(|_| "trusted key is not a P-256 point".to_owned())?;
                let signature = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| "not a DER ECDSA P-256 signature".to_owned())?;
                // Verifier<Signature> hashes with SHA-256, the digest P-256 is bound to. High-S
                // signatures (as Java's SHA256withECDSA makes) are accepted.
                Ok(p256::ecdsa::signature::Verifier::verify(&key, message, &signature).is_ok())
            }
        }
    }
}

/// The name of the trusted key whose signature verified the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBy(pub String);

/// Verifies a raw manifest's signatures against the trusted keys (see the module docs for the
/// policy). Parses the manifest, so a document that is not a manifest fails here too.
pub fn verify(raw_manifest: &[u8], trusted: &[TrustedKey]) -> Result<VerifiedBy, ModuleError> {
    check_trusted_keys(trusted)?;
    let manifest = Manifest::parse(raw_manifest)?;
    verify_parsed(raw_manifest, &manifest, trusted)
}

/// The trusted keys' names must be distinct (a signature is looked up by name).
pub fn check_trusted_keys(trusted: &[TrustedKey]) -> Result<(), ModuleError> {
    for (index, key) in trusted.iter().enumerate() {
        if trusted[..index]
            .iter()
            .any(|earlier| earlier.name == key.name)
        {
            return Err(ModuleError::DuplicateTrustedKey {
                name: key.name.clone(),
            });
        }
    }
    Ok(())
}

/// [`verify`] for a manifest the caller has parsed already from `raw_manifest` (with
/// [`Manifest::parse`]): one parse less per load. The keys are not checked for duplicate
/// names here: see [`check_trusted_keys`].
pub fn verify_parsed(
    raw_manifest: &[u8],
    manifest: &Manifest,
    trusted: &[TrustedKey],
) -> Result<VerifiedBy, ModuleError> {
    let message = signed_bytes(raw_manifest)?;
    let signatures = &manifest.unsigned.signatures;
    let mut verified_by = None;
    for key in trusted {
        let Some(signature_hex) = signatures.get(&key.name) else {
            continue;
        };
        let malformed = |reason: String| ModuleError::MalformedSignature {
            key: key.name.clone(),
            reason,
        };
        let signature = hex::decode(signature_hex)
            .map_err(|error| malformed(format!("signature is not hex: {error}")))?;
        if !key.verifies(&message, &signature).map_err(malformed)? {
            tracing::warn!(key = %key.name, "manifest signature does not verify");
            return Err(ModuleError::SignatureMismatch {
                key: key.name.clone(),
            });
        }
        verified_by.get_or_insert_with(|| key.name.clone());
    }
    match verified_by {
        Some(name) => {
            tracing::debug!(
                key = %name,
                signed_sha256 = %hex::encode(sha2::Sha256::digest(&message)),
                "manifest signature verified"
            );
            Ok(VerifiedBy(name))
        }
        None => Err(ModuleError::NoTrustedSignature {
            present: signatures.keys().cloned().collect(),
            trusted: trusted.iter().map(|key| key.name.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ecdsa_signer, ed25519_signer, manifest_json, ModuleSpec, Signer};

    fn one_module() -> Vec<ModuleSpec> {
        vec![ModuleSpec::new("./app.js", b"app code", &[])]
    }

    #[test]
    fn ed25519_signature_verifies() {
        let signer = ed25519_signer("release", 7);
        let raw = manifest_json(&one_module(), Some(10), &[&signer]);
        assert_eq!(
            verify(&raw, &[signer.trusted()]).unwrap(),
            VerifiedBy("release".to_owned())
        );
    }

    #[test]
    fn ecdsa_p256_signature_verifies() {
        let signer = ecdsa_signer("p256", 11);
        let raw = manifest_json(&one_module(), None, &[&signer]);
        assert_eq!(
            verify(&raw, &[signer.trusted()]).unwrap(),
            VerifiedBy("p256".to_owned())
        );
    }

    #[test]
    fn ecdsa_high_s_signature_is_accepted() {
        let signer = ecdsa_signer("p256", 12);
        let raw = manifest_json(&one_module(), None, &[]);
        let message = signed_bytes(&raw).unwrap();
        let low_s = signer.sign_ecdsa_raw(&message);
        let (r, s) = low_s.split_scalars();
        let high_s = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        assert!(bool::from(p256::elliptic_curve::scalar::IsHigh::is_high(
            &*high_s.s()
        )));
        let raw = crate::test_support::with_signatures(
            &raw,
            &[("p256", hex::encode(high_s.to_der().as_bytes()))],
        );
        assert!(verify(&raw, &[signer.trusted()]).is_ok());
    }

    #[test]
    fn unsigned_section_changes_do_not_break_the_signature() {
        let signer = ed25519_signer("release", 7);
        let raw = manifest_json(&one_module(), Some(10), &[&signer]);
        let mut value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        value["unsigned"]["freshAtEpochMs"] = serde_json::json!(99);
        value["unsigned"]["baseUrl"] = serde_json::json!("https://elsewhere.test/");
        let changed = serde_json::to_vec_pretty(&value).unwrap();
        assert!(verify(&changed, &[signer.trusted()]).is_ok());
    }

    #[test]
    fn wrong_signature_fails_naming_the_key() {
        let signer = ed25519_signer("release", 7);
        let impostor = ed25519_signer("release", 8);
        let raw = manifest_json(&one_module(), None, &[&impostor]);
        match verify(&raw, &[signer.trusted()]) {
            Err(error @ ModuleError::SignatureMismatch { .. }) => {
                assert!(error.to_string().contains("\"release\""), "{error}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn altered_signed_content_fails() {
        let signer = ecdsa_signer("p256", 3);
        let raw = manifest_json(&one_module(), None, &[&signer]);
        let text = String::from_utf8(raw)
            .unwrap()
            .replace("app.js.zipline", "evil.zipline");
        assert!(matches!(
            verify(text.as_bytes(), &[signer.trusted()]),
            Err(ModuleError::SignatureMismatch { key }) if key == "p256"
        ));
    }

    #[test]
    fn no_trusted_key_present_lists_present_names() {
        let signer = ed25519_signer("someone-else", 1);
        let trusted = ed25519_signer("release", 2);
        let raw = manifest_json(&one_module(), None, &[&signer]);
        match verify(&raw, &[trusted.trusted()]) {
            Err(error @ ModuleError::NoTrustedSignature { .. }) => {
                let text = error.to_string();
                assert!(
                    text.contains("someone-else") && text.contains("release"),
                    "{text}"
                );
            }
            other => panic!("expected no trusted signature, got {other:?}"),
        }
    }

    #[test]
    fn key_rotation_accepts_either_key_when_both_sign() {
        let old = ed25519_signer("2023", 1);
        let new = ecdsa_signer("2024", 2);
        let raw = manifest_json(&one_module(), None, &[&old, &new]);
        assert_eq!(verify(&raw, &[old.trusted()]).unwrap().0, "2023");
        assert_eq!(verify(&raw, &[new.trusted()]).unwrap().0, "2024");
        assert_eq!(
            verify(&raw, &[new.trusted(), old.trusted()]).unwrap().0,
            "2024"
        );
        // Only the new key signs; a client trusting both still accepts it.
        let rotated = manifest_json(&one_module(), None, &[&new]);
        assert_eq!(
            verify(&rotated, &[old.trusted(), new.trusted()]).unwrap().0,
            "2024"
        );
    }

    #[test]
    fn a_wrong_trusted_signature_fails_even_if_another_verifies() {
        let good = ed25519_signer("good", 1);
        let expected_bad = ed25519_signer("bad", 2);
        let forger = Signer {
            name: "bad".to_owned(),
            ..ed25519_signer("bad", 3)
        };
        let raw = manifest_json(&one_module(), None, &[&good, &forger]);
        assert!(matches!(
            verify(&raw, &[good.trusted(), expected_bad.trusted()]),
            Err(ModuleError::SignatureMismatch { key }) if key == "bad"
        ));
    }

    #[test]
    fn malformed_signature_hex_is_reported_for_the_key() {
        let signer = ed25519_signer("release", 7);
        let raw = manifest_json(&one_module(), None, &[]);
        let raw = crate::test_support::with_signatures(&raw, &[("release", "zz".to_owned())]);
        assert!(matches!(
            verify(&raw, &[signer.trusted()]),
            Err(ModuleError::MalformedSignature { key, .. }) if key == "release"
        ));
    }

    #[test]
    fn trusted_key_parse_accepts_cli_form_and_rejects_bad_input() {
        let ed = ed25519_signer("k", 5).trusted();
        let parsed =
            TrustedKey::parse(&format!("k:ed25519:{}", hex::encode(&ed.public_key))).unwrap();
        assert_eq!(parsed, ed);
        let ec = ecdsa_signer("prod:2024", 5).trusted();
        assert_eq!(ec.public_key.len(), 65);
        let parsed = TrustedKey::parse(&format!(
            "prod:2024:ecdsa-p256:{}",
            hex::encode(&ec.public_key)
        ))
        .unwrap();
        assert_eq!(parsed, ec);
        for bad in [
            "k:ed25519",
            ":ed25519:00",
            "k:rsa:00",
            "k:ed25519:xyz",
            "k:ed25519:0011",
        ] {
            assert!(
                matches!(
                    TrustedKey::parse(bad),
                    Err(ModuleError::InvalidTrustedKey { .. })
                ),
                "{bad}"
            );
        }
        let compressed = {
            let mut key = ec.public_key[..33].to_vec();
            key[0] = 0x02;
            key
        };
        assert!(TrustedKey::new("c", Algorithm::EcdsaP256, compressed).is_err());
    }

    #[test]
    fn duplicate_trusted_key_names_are_rejected() {
        let signer = ed25519_signer("release", 7);
        let raw = manifest_json(&one_module(), None, &[&signer]);
        assert!(matches!(
            verify(&raw, &[signer.trusted(), signer.trusted()]),
            Err(ModuleError::DuplicateTrustedKey { .. })
        ));
    }
}
