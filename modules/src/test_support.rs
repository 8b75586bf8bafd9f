//! Test helpers: real signers from fixed seeds and manifest builders. Test-only.

use sha2::Digest as _;

use crate::manifest::signed_bytes;
use crate::signature::{Algorithm, TrustedKey};

pub enum SignerKey {
    Ed25519(ed25519_dalek::SigningKey),
    EcdsaP256(p256::ecdsa::SigningKey),
}

pub struct Signer {
    pub name: String,
    pub key: SignerKey,
}

pub fn ed25519_signer(name: &str, seed: u8) -> Signer {
    Signer {
        name: name.to_owned(),
        key: SignerKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])),
    }
}

pub fn ecdsa_signer(name: &str, scalar: u8) -> Signer {
    let bytes = p256::FieldBytes::from([scalar; 32]);
    Signer {
        name: name.to_owned(),
        key: SignerKey::EcdsaP256(p256::ecdsa::SigningKey::from_bytes(&bytes).unwrap()),
    }
}

impl Signer {
    pub fn trusted(&self) -> TrustedKey {
        match &self.key {
            SignerKey::Ed25519(key) => TrustedKey::new(
                &self.name,
                Algorithm::Ed25519,
                key.verifying_key().to_bytes().to_vec(),
            )
            .unwrap(),
            SignerKey::EcdsaP256(key) => TrustedKey::new(
                &self.name,
                Algorithm::EcdsaP256,
                key.verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap(),
        }
    }

    pub fn sign_hex(&self, message: &[u8]) -> String {
        match &self.key {
            SignerKey::Ed25519(key) => {
                hex::encode(ed25519_dalek::Signer::sign(key, message).to_bytes())
            }
            SignerKey::EcdsaP256(_) => hex::encode(self.sign_ecdsa_raw(message).to_der()),
        }
    }

    pub fn sign_ecdsa_raw(&self, message: &[u8]) -> p256::ecdsa::Signature {
        match &self.key {
            SignerKey::EcdsaP256(key) => p256::ecdsa::signature::Signer::sign(key, message),
            SignerKey::Ed25519(_) => panic!("not an ECDSA signer"),
        }
    }
}

/// A module for a test manifest: id, content and dependencies; its URL is `<content hash>.zipline`
/// unless set.
#[derive(Clone)]
pub struct ModuleSpec {
    pub id: String,
    pub bytes: Vec<u8>,
    pub deps: Vec<String>,
}

impl ModuleSpec {
    pub fn new(id: &str, bytes: &[u8], deps: &[&str]) -> ModuleSpec {
        ModuleSpec {
            id: id.to_owned(),
            bytes: bytes.to_vec(),
            deps: deps.iter().map(|dep| (*dep).to_owned()).collect(),
        }
    }

    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }

    pub fn file_name(&self) -> String {
        format!("{}.zipline", self.id.trim_start_matches("./"))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A pretty-printed manifest with an `unsigned` section first, signed by `signers`; the last
/// module is the main module.
pub fn manifest_json(
    modules: &[ModuleSpec],
    fresh_at: Option<u64>,
    signers: &[&Signer],
) -> Vec<u8> {
    let mut module_map = serde_json::Map::new();
    for module in modules {
        module_map.insert(
            module.id.clone(),
            serde_json::json!({
                "url": module.file_name(),
                "sha256": module.sha256(),
                "dependsOnIds": module.deps,
            }),
        );
    }
    let mut document = serde_json::Map::new();
    document.insert(
        "unsigned".to_owned(),
        serde_json::json!({"signatures": {}, "freshAtEpochMs": fresh_at, "baseUrl": null}),
    );
    document.insert("modules".to_owned(), serde_json::Value::Object(module_map));
    if let Some(main) = modules.last() {
        document.insert("mainModuleId".to_owned(), serde_json::json!(main.id));
    }
    document.insert(
        "mainFunction".to_owned(),
        serde_json::json!("com.example.main"),
    );
    document.insert("version".to_owned(), serde_json::json!("test-1"));
    let raw = serde_json::to_vec_pretty(&serde_json::Value::Object(document)).unwrap();
    let message = signed_bytes(&raw).unwrap();
    let signatures: Vec<(&str, String)> = signers
        .iter()
        .map(|signer| (signer.name.as_str(), signer.sign_hex(&message)))
        .collect();
    with_signatures(&raw, &signatures)
}

/// The manifest with its `unsigned.signatures` replaced.
pub fn with_signatures(raw: &[u8], signatures: &[(&str, String)]) -> Vec<u8> {
    let mut document: serde_json::Value = serde_json::from_slice(raw).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = signatures
        .iter()
        .map(|(name, signature)| ((*name).to_owned(), serde_json::json!(signature)))
        .collect();
    document["unsigned"]["signatures"] = serde_json::Value::Object(map);
    serde_json::to_vec_pretty(&document).unwrap()
}
