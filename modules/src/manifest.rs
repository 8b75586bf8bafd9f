//! The Zipline-style module manifest: parsing, the signed bytes, dependency order and module
//! URLs.
//!
//! Owns the document model ([`Manifest`]) and the rules that only need the document. It does
//! not check signatures (see [`crate::signature`]) and does not fetch anything.
//!
//! Parsing is strict where ambiguity could be exploited and lenient elsewhere: unknown keys are
//! ignored, but a module id that appears twice in `modules` and a top-level key that appears
//! twice are errors, because the signed bytes (built from a generic JSON tree) and the typed
//! document must describe the same modules.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use url::Url;

use crate::ModuleError;

/// How far past the local clock a manifest's `freshAtEpochMs` is believed (clocks of a
/// server and a device disagree a little): see [`Manifest::rollback_floor_at`].
pub const FUTURE_TOLERANCE_MS: u64 = 60 * 60 * 1000;

/// The largest manifest accepted, in bytes (640 KiB).
pub const MANIFEST_MAX_BYTES: usize = 640 * 1024;

/// A module's id, the key in the manifest's `modules` object (for example `./app.js`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct ModuleId(String);

impl ModuleId {
    pub fn new(id: impl Into<String>) -> Self {
        ModuleId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ModuleId {
    fn from(id: &str) -> Self {
        ModuleId(id.to_owned())
    }
}

/// The `unsigned` section: everything here is outside the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unsigned {
    /// Hex signatures by key name.
    #[serde(default)]
    pub signatures: std::collections::BTreeMap<String, String>,
    /// When the manifest was built (or last known current), in ms since the Unix epoch.
    #[serde(default)]
    pub fresh_at_epoch_ms: Option<u64>,
    /// Module URLs are relative to this when set.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// One module of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleEntry {
    /// Where the module is, relative to `baseUrl` or the manifest's URL.
    pub url: String,
    /// Lowercase hex SHA-256 of the module's bytes (lowercased by [`Manifest::parse`]).
    pub sha256: String,
    /// Modules that must be loaded before this one.
    #[serde(default)]
    pub depends_on_ids: Vec<ModuleId>,
}

/// The manifest's modules in document order, with unique ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleMap {
    entries: Vec<(ModuleId, ModuleEntry)>,
    /// Position in `entries` by id: lookups stay cheap in a manifest of thousands of modules.
    positions: std::collections::BTreeMap<String, usize>,
}

impl ModuleMap {
    /// The module with this id.
    pub fn get(&self, id: &str) -> Option<&ModuleEntry> {
        self.position(id).map(|position| &self.entries[position].1)
    }

    /// The position of this id in document order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.positions.get(id).copied()
    }

    /// Modules in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&ModuleId, &ModuleEntry)> {
        self.entries.iter().map(|(id, entry)| (id, entry))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'de> Deserialize<'de> for ModuleMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModuleMapVisitor;

        impl<'de> Visitor<'de> for ModuleMapVisitor {
            type Value = ModuleMap;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of module id to module")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModuleMap, A::Error> {
                let mut entries: Vec<(ModuleId, ModuleEntry)> = Vec::new();
                let mut positions = std::collections::BTreeMap::new();
                while let Some((id, entry)) = map.next_entry::<String, ModuleEntry>()? {
                    if positions.insert(id.clone(), entries.len()).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "module id {id:?} appears more than once"
                        )));
                    }
                    entries.push((ModuleId(id), entry));
                }
                Ok(ModuleMap { entries, positions })
            }
        }

        deserializer.deserialize_map(ModuleMapVisitor)
    }
}

/// A parsed manifest. Build it with [`Manifest::parse`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub unsigned: Unsigned,
    pub modules: ModuleMap,
    #[serde(default)]
    pub main_module_id: Option<ModuleId>,
    #[serde(default)]
    pub main_function: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses a manifest of at most [`MANIFEST_MAX_BYTES`]. Unknown keys are ignored;
    /// `dependsOnIds` defaults to empty; module hashes must be 64 hex digits and are stored
    /// lowercase. Does not check dependencies (see [`Manifest::load_order`]).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ModuleError> {
        check_size(bytes)?;
        let mut manifest: Manifest =
            serde_json::from_slice(bytes).map_err(ModuleError::ManifestSyntax)?;
        for (id, entry) in manifest.modules.entries.iter_mut() {
            if !is_sha256_hex(&entry.sha256) {
                return Err(ModuleError::InvalidSha256 {
                    module: id.to_string(),
                    value: entry.sha256.clone(),
                });
            }
            entry.sha256.make_ascii_lowercase();
        }
        Ok(manifest)
    }

    /// The `freshAtEpochMs` of the unsigned section.
    pub fn fresh_at_epoch_ms(&self) -> Option<u64> {
        self.unsigned.fresh_at_epoch_ms
    }

    /// The rollback floor this manifest sets when it is pinned at `now_ms`: its
    /// `freshAtEpochMs`, but no later than [`FUTURE_TOLERANCE_MS`] past `now_ms`. The value is
    /// unsigned, and a server stamps it when it serves the manifest, so an honest one is not
    /// in the future; a mirror that wrote a year far ahead would otherwise have every later
    /// release refused as a rollback.
    pub fn rollback_floor_at(&self, now_ms: u64) -> Option<u64> {
        self.fresh_at_epoch_ms()
            .map(|fresh_at| fresh_at.min(now_ms.saturating_add(FUTURE_TOLERANCE_MS)))
    }

    /// Module ids in load order: every module after the modules it depends on; among modules
    /// whose dependencies are all loaded, the one first in the document goes first. Errors on
    /// an unknown dependency, a cycle (naming the ids on it) or a `mainModuleId` that is not a
    /// module.
    pub fn load_order(&self) -> Result<Vec<ModuleId>, ModuleError> {
        let entries = &self.modules.entries;
        if let Some(main) = &self.main_module_id {
            if self.modules.get(main.as_str()).is_none() {
                return Err(ModuleError::MissingMainModule {
                    main: main.to_string(),
                });
            }
        }
        // deps[i]: document positions of module i's dependencies, without repeats.
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            let mut positions = Vec::new();
            for dependency in &entry.depends_on_ids {
                let position = self.modules.position(dependency.as_str()).ok_or_else(|| {
                    ModuleError::UnknownDependency {
                        module: id.to_string(),
                        dependency: dependency.to_string(),
                    }
                })?;
                if !positions.contains(&position) {
                    positions.push(position);
                }
            }
            deps.push(positions);
        }

        let mut waiting_on: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
        for (module, module_deps) in deps.iter().enumerate() {
            for &dependency in module_deps {
                dependents[dependency].push(module);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = waiting_on
            .iter()
            .enumerate()
            .filter(|(_, &count)| count == 0)
            .map(|(position, _)| position)
            .collect();
        let mut order = Vec::with_capacity(entries.len());
        while let Some(next) = ready.pop_first() {
            order.push(entries[next].0.clone());
            for &dependent in &dependents[next] {
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    ready.insert(dependent);
                }
            }
        }
        if order.len() < entries.len() {
            return Err(ModuleError::DependencyCycle {
                cycle: find_cycle(&deps, &waiting_on)
                    .into_iter()
                    .map(|position| entries[position].0.to_string())
                    .collect(),
            });
        }
        Ok(order)
    }

    /// The absolute URL of a module: its `url` resolved against `baseUrl` when set (itself
    /// resolved against the manifest URL, so a relative `baseUrl` works), else against the URL
    /// the manifest came from.
    pub fn module_url(&self, id: &str, manifest_url: &Url) -> Result<Url, ModuleError> {
        let entry = self
            .modules
            .get(id)
            .ok_or_else(|| ModuleError::UnknownModule { id: id.to_owned() })?;
        let base = match &self.unsigned.base_url {
            Some(base_url) => {
                manifest_url
                    .join(base_url)
                    .map_err(|source| ModuleError::InvalidUrl {
                        what: "baseUrl".to_owned(),
                        value: base_url.clone(),
                        source,
                    })?
            }
            None => manifest_url.clone(),
        };
        let url = base
            .join(&entry.url)
            .map_err(|source| ModuleError::InvalidUrl {
                what: format!("module {id:?}"),
                value: entry.url.clone(),
                source,
            })?;
        // Checked here, when the load resolves every module before fetching any: a signed
        // manifest naming `file:` or `data:` is invalid as a whole.
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ModuleError::UnsupportedModuleUrl {
                id: id.to_owned(),
                url: url.to_string(),
            });
        }
        Ok(url)
    }
}

/// The bytes a manifest signature covers: the document with its top-level `unsigned` member
/// removed, written back as compact JSON in the document's key order.
///
/// Strings are re-encoded by serde_json: plain strings come back byte-identical, but a signer
/// that escapes characters serde_json writes raw (`\/`, `\u00e9`) signs different bytes.
/// Zipline's signer writes compact JSON the same way for the fields a manifest has. A
/// document whose signed part gives a key twice in an object, or holds a number serde_json
/// would write otherwise (`1e2`, `-0`, an integer past 64 bits), is refused
/// ([`ModuleError::ManifestNotSignable`]): otherwise documents that read differently would
/// verify with one signature.
///
/// A document the round trip would only strip of whitespace is compacted from its text
/// instead (see `compacted`): the same bytes, without building the document.
pub fn signed_bytes(raw: &[u8]) -> Result<Vec<u8>, ModuleError> {
    check_size(raw)?;
    if let Some(compact) = compacted(raw) {
        return Ok(compact);
    }
    round_trip(raw)
}

/// [`signed_bytes`] through a parsed document: the reference for [`compacted`].
fn round_trip(raw: &[u8]) -> Result<Vec<u8>, ModuleError> {
    let mut document: serde_json::Value =
        serde_json::from_slice(raw).map_err(ModuleError::ManifestSyntax)?;
    let object = document
        .as_object_mut()
        .ok_or(ModuleError::ManifestNotObject)?;
    // Valid JSON (serde_json read it): what the parsed document would lose must not be
    // signed away.
    check_signable(raw)?;
    // shift_remove keeps the other keys in place; `remove` would swap the last key into the
    // hole and change the signed bytes.
    object.shift_remove("unsigned");
    serde_json::to_vec(&document).map_err(ModuleError::ManifestSyntax)
}

/// Refuses a document whose signed part the round trip would not keep as written: an
/// object that gives a key twice (serde_json keeps one value; a reader that keeps the other
/// would see what no signer signed, e.g. `"role": "admin"` before the signed
/// `"role": "user"`), or a number serde_json writes back otherwise (`1e2`, `-0`, an integer
/// past 64 bits: different numbers would verify with one signature). The top-level
/// `unsigned` member is not signed and not looked at. `raw` is valid JSON.
fn check_signable(raw: &[u8]) -> Result<(), ModuleError> {
    let mut scan = Scan { raw, pos: 0 };
    scan.value(0)
        .map_err(|reason| ModuleError::ManifestNotSignable { reason })
}

/// A walk over valid JSON for [`check_signable`].
struct Scan<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl Scan<'_> {
    fn skip_whitespace(&mut self) {
        while matches!(self.raw.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The value at the position; `depth` 0 is the document itself.
    fn value(&mut self, depth: usize) -> Result<(), String> {
        self.skip_whitespace();
        match self.raw.get(self.pos) {
            Some(b'{') => self.object(depth),
            Some(b'[') => {
                self.pos += 1;
                loop {
                    self.skip_whitespace();
                    match self.raw.get(self.pos) {
                        Some(b']') => break,
                        Some(b',') => self.pos += 1,
                        _ => self.value(depth + 1)?,
                    }
                }
                self.pos += 1;
                Ok(())
            }
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            // true, false, null
            _ => {
                while self.raw.get(self.pos).is_some_and(u8::is_ascii_alphabetic) {
                    self.pos += 1;
                }
                Ok(())
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), String> {
        self.pos += 1;
        let mut keys = std::collections::BTreeSet::new();
        loop {
            self.skip_whitespace();
            match self.raw.get(self.pos) {
                Some(b'}') | None => break,
                Some(b',') => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            let key = self.string()?;
            self.skip_whitespace();
            self.pos += 1; // ':'
            if depth == 0 && key == "unsigned" {
                let mut skip = Scan {
                    raw: self.raw,
                    pos: self.pos,
                };
                skip.skip_value();
                self.pos = skip.pos;
            } else {
                self.value(depth + 1)?;
            }
            if !keys.insert(key.clone()) {
                return Err(format!("an object gives the key {key:?} more than once"));
            }
        }
        self.pos += 1;
        Ok(())
    }

    /// A string, unescaped.
    fn string(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        while let Some(&byte) = self.raw.get(self.pos) {
            self.pos += 1;
            match byte {
                b'\\' => self.pos += 1,
                b'"' => break,
                _ => {}
            }
        }
        serde_json::from_slice(&self.raw[start..self.pos]).map_err(|e| e.to_string())
    }

    fn number(&mut self) -> Result<(), String> {
        let start = self.pos;
        while matches!(
            self.raw.get(self.pos),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.pos += 1;
        }
        let text = &self.raw[start..self.pos];
        let written = serde_json::from_slice::<serde_json::Number>(text)
            .ok()
            .and_then(|n| serde_json::to_vec(&n).ok());
        if written.as_deref() != Some(text) {
            return Err(format!(
                "the number {} would be signed as {}",
                String::from_utf8_lossy(text),
                written.map_or_else(
                    || "something else".into(),
                    |w| String::from_utf8_lossy(&w).into_owned()
                )
            ));
        }
        Ok(())
    }

    /// Past the value at the position, whatever it holds.
    fn skip_value(&mut self) {
        self.skip_whitespace();
        match self.raw.get(self.pos) {
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(&byte) = self.raw.get(self.pos) {
                    match byte {
                        b'"' => {
                            let _ = self.string();
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return;
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            Some(b'"') => {
                let _ = self.string();
            }
            _ => {
                while self.raw.get(self.pos).is_some_and(|b| {
                    !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                }) {
                    self.pos += 1;
                }
            }
        }
    }
}

/// Nesting deeper than this goes the parsed way (serde_json has a limit of its own).
const COMPACT_MAX_DEPTH: usize = 100;

/// [`signed_bytes`] without building the document, for a document the round trip would only
/// strip of whitespace: its strings have no escapes, its numbers are integers in canonical
/// form well inside `i64`, and no object repeats a key. The whitespace between tokens is
/// dropped and the top-level `unsigned` member left out, which is byte for byte what the
/// round trip writes for such a document. `None` for anything else (or anything that is not
/// JSON): [`round_trip`] then decides. Parsing and writing back a manifest of 500 modules
/// costs about a millisecond; this a tenth of that.
fn compacted(raw: &[u8]) -> Option<Vec<u8>> {
    std::str::from_utf8(raw).ok()?;
    let mut compactor = Compactor {
        raw,
        pos: 0,
        out: Vec::with_capacity(raw.len()),
    };
    compactor.skip_whitespace();
    compactor.object(1, true)?;
    compactor.skip_whitespace();
    (compactor.pos == raw.len()).then_some(compactor.out)
}

struct Compactor<'a> {
    raw: &'a [u8],
    pos: usize,
    out: Vec<u8>,
}

impl<'a> Compactor<'a> {
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.raw.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1, false),
            b'[' => self.array(depth + 1),
            b'"' => {
                let string = self.string()?;
                self.out.extend_from_slice(string);
                Some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.integer(),
            _ => None,
        }
    }

    /// A string without escapes, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        self.expect(b'"')?;
        let rest = &self.raw[self.pos..];
        let len = rest
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.pos += len + 1;
        Some(&self.raw[start..self.pos])
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.raw[self.pos..].starts_with(word) {
            return None;
        }
        self.pos += word.len();
        self.out.extend_from_slice(word);
        Some(())
    }

    fn integer(&mut self) -> Option<()> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let digits = &self.raw[digits_start..self.pos];
        let canonical = match digits {
            [] => false,
            [b'0'] => !negative,
            [b'0', ..] => false,
            _ => digits.len() <= 18,
        };
        if !canonical || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.out.extend_from_slice(&self.raw[start..self.pos]);
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > COMPACT_MAX_DEPTH {
            return None;
        }
        self.expect(b'[')?;
        self.out.push(b'[');
        self.skip_whitespace();
        if self.expect(b']').is_some() {
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.out.push(b',');
                    self.skip_whitespace();
                }
                b']' => {
                    self.pos += 1;
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An object; at the top level its `unsigned` member is left out.
    fn object(&mut self, depth: usize, top: bool) -> Option<()> {
        if depth > COMPACT_MAX_DEPTH {
            return None;
        }
        self.expect(b'{')?;
        self.out.push(b'{');
        self.skip_whitespace();
        let mut keys: Vec<&[u8]> = Vec::new();
        if self.expect(b'}').is_none() {
            loop {
                let key = self.string()?;
                self.skip_whitespace();
                self.expect(b':')?;
                self.skip_whitespace();
                if top && key == b"\"unsigned\"" {
                    let kept = self.out.len();
                    self.value(depth)?;
                    self.out.truncate(kept);
                } else {
                    if self.out.last() != Some(&b'{') {
                        self.out.push(b',');
                    }
                    self.out.extend_from_slice(key);
                    self.out.push(b':');
                    self.value(depth)?;
                }
                keys.push(key);
                self.skip_whitespace();
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.skip_whitespace();
                    }
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.out.push(b'}');
        // A repeated key: the round trip keeps one value for it.
        keys.sort_unstable();
        if keys.windows(2).any(|pair| pair[0] == pair[1]) {
            return None;
        }
        Some(())
    }
}

/// Whether `value` is 64 hex digits (either case).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn check_size(bytes: &[u8]) -> Result<(), ModuleError> {
    if bytes.len() > MANIFEST_MAX_BYTES {
        return Err(ModuleError::ManifestTooLarge {
            size: bytes.len(),
            max: MANIFEST_MAX_BYTES,
        });
    }
    Ok(())
}

/// Finds one cycle among the modules Kahn's algorithm could not order. Every such module still
/// waits on at least one such module, so walking "first unordered dependency" edges must
/// revisit a module; the walk from the first revisit is the cycle.
fn find_cycle(deps: &[Vec<usize>], waiting_on: &[usize]) -> Vec<usize> {
    let unordered = |position: usize| waiting_on[position] > 0;
    let Some(start) = (0..deps.len()).find(|&position| unordered(position)) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut current = start;
    loop {
        let Some(&next) = deps[current].iter().find(|&&dep| unordered(dep)) else {
            return path;
        };
        if let Some(cycle_start) = path.iter().position(|&seen| seen == next) {
            return path.split_off(cycle_start);
        }
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "6bd4d3a3b6c7e5f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2";
    const HASH_B: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn manifest_with(modules: &str, extra: &str) -> Manifest {
        let text = format!(r#"{{"modules":{{{modules}}}{extra}}}"#);
        Manifest::parse(text.as_bytes()).unwrap()
    }

    fn ids(order: Vec<ModuleId>) -> Vec<String> {
        order.into_iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn signed_bytes_of_formats_example_is_compact_and_keeps_key_order() {
        let raw = format!(
            r#"{{
  "unsigned": {{"signatures": {{"key1": "abcd"}}, "freshAtEpochMs": 1700000000000, "baseUrl": null}},
  "modules": {{
    "./kotlin_kotlin.js": {{"url": "kotlin_kotlin.zipline", "sha256": "{HASH_A}"}}
  }}
}}"#
        );
        let signed = signed_bytes(raw.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(signed).unwrap(),
            format!(
                r#"{{"modules":{{"./kotlin_kotlin.js":{{"url":"kotlin_kotlin.zipline","sha256":"{HASH_A}"}}}}}}"#
            )
        );
    }

    #[test]
    fn signed_bytes_keep_order_of_keys_after_removed_unsigned() {
        // With `remove` (swap semantics) "zeta" would move into the first slot.
        let raw = format!(
            r#"{{"unsigned":{{}},"modules":{{"b":{{"url":"b","sha256":"{HASH_B}"}},"a":{{"sha256":"{HASH_A}","url":"a"}}}},"mainModuleId":"b","zeta":{{"unsigned":1}}}}"#
        );
        let signed = String::from_utf8(signed_bytes(raw.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            signed,
            format!(
                r#"{{"modules":{{"b":{{"url":"b","sha256":"{HASH_B}"}},"a":{{"sha256":"{HASH_A}","url":"a"}}}},"mainModuleId":"b","zeta":{{"unsigned":1}}}}"#
            )
        );
    }

    #[test]
    fn signed_bytes_refuse_what_they_would_not_keep_as_written() {
        let signed = |text: &str| signed_bytes(text.as_bytes());
        // A key given twice in a nested object: one value is signed, a reader may use the
        // other.
        let twice = r#"{"metadata":{"role":"admin","role":"user"}}"#;
        let escaped = r#"{"metadata":{"role":"admin","\u0072ole":"user"}}"#;
        for text in [twice, escaped] {
            match signed(text) {
                Err(ModuleError::ManifestNotSignable { reason }) => {
                    assert!(reason.contains("\"role\" more than once"), "{reason}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Numbers serde_json would write otherwise: different values, one signature.
        for number in [
            "123456789012345678901234567890",
            "-0",
            "1.5e300",
            "1E2",
            "1.50",
        ] {
            let text = format!(r#"{{"metadata":{{"n":{number}}}, "x": [1]}}"#);
            match signed(&text) {
                Err(ModuleError::ManifestNotSignable { reason }) => {
                    assert!(reason.contains(number), "{reason}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Numbers that come back as written, escapes, and anything in the unsigned part.
        let fine = r#"{"unsigned":{"a":1,"a":1e2},"metadata":{"n":[1.5,0.1,-3,1e+300,2.2968114317930053e+173],"s":"\u00e9"}}"#;
        assert_eq!(
            String::from_utf8(signed(fine).unwrap()).unwrap(),
            r#"{"metadata":{"n":[1.5,0.1,-3,1e+300,2.2968114317930053e+173],"s":"é"}}"#
        );
    }

    /// A JSON document for the property below: strings from an alphabet with characters
    /// serde_json escapes or not, integers of every size and floats.
    #[derive(Debug, Clone)]
    struct Doc(serde_json::Value);

    fn arbitrary_value(g: &mut quickcheck::Gen, depth: usize) -> serde_json::Value {
        use quickcheck::Arbitrary;
        use serde_json::Value;
        const ALPHABET: &[char] = &[
            'a', 'z', ' ', '/', 'é', '"', '\\', '\n', '\u{2028}', '\u{7f}',
        ];
        let string = |g: &mut quickcheck::Gen| -> String {
            let len = usize::arbitrary(g) % 5;
            (0..len).map(|_| *g.choose(ALPHABET).unwrap()).collect()
        };
        let pick = if depth >= 3 {
            u8::arbitrary(g) % 6
        } else {
            u8::arbitrary(g) % 8
        };
        match pick {
            0 => Value::Null,
            1 => Value::Bool(bool::arbitrary(g)),
            2 => Value::from(i64::arbitrary(g) >> (u8::arbitrary(g) % 64)),
            3 => Value::from(u64::arbitrary(g)),
            4 => f64::arbitrary(g)
                .is_finite()
                .then(|| Value::from(f64::arbitrary(g)))
                .filter(|v| !v.is_null())
                .unwrap_or(Value::from(0.5)),
            5 => Value::String(string(g)),
            6 => Value::Array(
                (0..usize::arbitrary(g) % 4)
                    .map(|_| arbitrary_value(g, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut map = serde_json::Map::new();
                for _ in 0..usize::arbitrary(g) % 4 {
                    let key = match u8::arbitrary(g) % 3 {
                        0 => "unsigned".to_owned(),
                        _ => string(g),
                    };
                    map.insert(key, arbitrary_value(g, depth + 1));
                }
                Value::Object(map)
            }
        }
    }

    impl quickcheck::Arbitrary for Doc {
        fn arbitrary(g: &mut quickcheck::Gen) -> Doc {
            let mut map = serde_json::Map::new();
            for key in ["unsigned", "modules", "mainModuleId", "x"] {
                if bool::arbitrary(g) {
                    map.insert(key.to_owned(), arbitrary_value(g, 1));
                }
            }
            Doc(serde_json::Value::Object(map))
        }
    }

    /// Whether serde_json writes `value` back as it reads it: no escaped string, no float.
    fn plain(value: &serde_json::Value) -> bool {
        use serde_json::Value;
        let plain_str = |s: &str| !s.chars().any(|c| c == '"' || c == '\\' || c < ' ');
        match value {
            Value::Null | Value::Bool(_) => true,
            Value::Number(n) => n.as_i64().is_some_and(|i| i.unsigned_abs() < 10u64.pow(18)),
            Value::String(s) => plain_str(s),
            Value::Array(items) => items.iter().all(plain),
            Value::Object(map) => map.iter().all(|(k, v)| plain_str(k) && plain(v)),
        }
    }

    #[test]
    fn compacting_writes_exactly_the_round_trip_or_defers_to_it() {
        fn property(doc: Doc) -> bool {
            let texts = [
                serde_json::to_string(&doc.0).unwrap(),
                serde_json::to_string_pretty(&doc.0).unwrap(),
                format!(
                    " \r\n\t{}\n ",
                    serde_json::to_string_pretty(&doc.0).unwrap()
                ),
            ];
            texts.iter().all(|text| {
                let reference = round_trip(text.as_bytes()).unwrap();
                match compacted(text.as_bytes()) {
                    Some(compact) => compact == reference,
                    // A plain document must take the fast way.
                    None => !plain(&doc.0),
                }
            })
        }
        quickcheck::QuickCheck::new()
            .tests(2000)
            .quickcheck(property as fn(Doc) -> bool);
    }

    #[test]
    fn compacting_defers_what_the_round_trip_would_change_or_refuse() {
        for text in [
            r#"{"a":"\/"}"#,
            r#"{"a":"\u00e9"}"#,
            r#"{"a":1.0}"#,
            r#"{"a":1e2}"#,
            r#"{"a":-0}"#,
            r#"{"a":01}"#,
            r#"{"a":12345678901234567890}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"m":{"x":1,"y":2,"x":3}}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":tru}"#,
            "{\"a\":\"tab\there\"}",
            "{\"a\":1}\u{0c}",
            "[1]",
            "",
        ] {
            assert_eq!(compacted(text.as_bytes()), None, "{text}");
        }
        assert_eq!(
            compacted(r#" { "unsigned" : {"signatures":{}} , "b" : [ 1 , -2 , true , null , "é/" ] , "c" : { } } "#.as_bytes()),
            Some(r#"{"b":[1,-2,true,null,"é/"],"c":{}}"#.as_bytes().to_vec())
        );
    }

    #[test]
    fn signed_bytes_reject_non_object_and_oversized_documents() {
        assert!(matches!(
            signed_bytes(b"[1,2]"),
            Err(ModuleError::ManifestNotObject)
        ));
        let big = vec![b' '; MANIFEST_MAX_BYTES + 1];
        assert!(matches!(
            signed_bytes(&big),
            Err(ModuleError::ManifestTooLarge { .. })
        ));
        assert!(matches!(
            Manifest::parse(&big),
            Err(ModuleError::ManifestTooLarge { .. })
        ));
    }

    #[test]
    fn parse_reads_all_fields_ignores_unknown_keys_and_lowercases_hashes() {
        let upper = HASH_B.to_ascii_uppercase();
        let raw = format!(
            r#"{{"unsigned":{{"signatures":{{"k":"00"}},"freshAtEpochMs":17,"baseUrl":"https://cdn/x/","later":true}},
               "modules":{{"./a.js":{{"url":"a.zipline","sha256":"{upper}","extra":1}},
                           "./b.js":{{"url":"b.zipline","sha256":"{HASH_A}","dependsOnIds":["./a.js"]}}}},
               "mainModuleId":"./b.js","mainFunction":"main","version":"v1","metadata":{{"k":"v"}},"future":[1]}}"#
        );
        let manifest = Manifest::parse(raw.as_bytes()).unwrap();
        assert_eq!(manifest.unsigned.signatures.get("k").unwrap(), "00");
        assert_eq!(manifest.fresh_at_epoch_ms(), Some(17));
        assert_eq!(
            manifest.unsigned.base_url.as_deref(),
            Some("https://cdn/x/")
        );
        let a = manifest.modules.get("./a.js").unwrap();
        assert_eq!(a.sha256, HASH_B);
        assert!(a.depends_on_ids.is_empty());
        assert_eq!(
            manifest.modules.get("./b.js").unwrap().depends_on_ids,
            vec![ModuleId::from("./a.js")]
        );
        assert_eq!(manifest.main_module_id, Some(ModuleId::from("./b.js")));
        assert_eq!(manifest.main_function.as_deref(), Some("main"));
        assert_eq!(manifest.version.as_deref(), Some("v1"));
        assert_eq!(manifest.metadata, Some(serde_json::json!({"k": "v"})));
    }

    #[test]
    fn parse_rejects_bad_hashes_and_duplicate_module_ids() {
        let short = r#"{"modules":{"a":{"url":"a","sha256":"abc"}}}"#;
        assert!(matches!(
            Manifest::parse(short.as_bytes()),
            Err(ModuleError::InvalidSha256 { module, .. }) if module == "a"
        ));
        let duplicate = format!(
            r#"{{"modules":{{"a":{{"url":"a","sha256":"{HASH_A}"}},"a":{{"url":"b","sha256":"{HASH_B}"}}}}}}"#
        );
        let error = Manifest::parse(duplicate.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("more than once"), "{error}");
    }

    #[test]
    fn load_order_puts_dependencies_first_and_breaks_ties_by_document_order() {
        let manifest = manifest_with(
            &format!(
                r#""app":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["lib","std"]}},
                   "z":{{"url":"u","sha256":"{HASH_A}"}},
                   "lib":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["std"]}},
                   "std":{{"url":"u","sha256":"{HASH_A}"}}"#
            ),
            r#","mainModuleId":"app""#,
        );
        assert_eq!(
            ids(manifest.load_order().unwrap()),
            vec!["z", "std", "lib", "app"]
        );
    }

    #[test]
    fn load_order_names_the_modules_of_a_cycle() {
        let manifest = manifest_with(
            &format!(
                r#""free":{{"url":"u","sha256":"{HASH_A}"}},
                   "a":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["b"]}},
                   "b":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["c"]}},
                   "c":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["a","free"]}}"#
            ),
            "",
        );
        match manifest.load_order() {
            Err(ModuleError::DependencyCycle { cycle }) => {
                assert_eq!(cycle, vec!["a", "b", "c"]);
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
        let self_loop = manifest_with(
            &format!(r#""me":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["me"]}}"#),
            "",
        );
        assert!(matches!(
            self_loop.load_order(),
            Err(ModuleError::DependencyCycle { cycle }) if cycle == vec!["me".to_owned()]
        ));
    }

    #[test]
    fn load_order_rejects_unknown_dependency_and_missing_main_module() {
        let unknown = manifest_with(
            &format!(r#""a":{{"url":"u","sha256":"{HASH_A}","dependsOnIds":["ghost"]}}"#),
            "",
        );
        match unknown.load_order() {
            Err(error @ ModuleError::UnknownDependency { .. }) => {
                let text = error.to_string();
                assert!(
                    text.contains("\"a\"") && text.contains("\"ghost\""),
                    "{text}"
                );
            }
            other => panic!("expected unknown dependency, got {other:?}"),
        }
        let missing_main = manifest_with(
            &format!(r#""a":{{"url":"u","sha256":"{HASH_A}"}}"#),
            r#","mainModuleId":"./main.js""#,
        );
        assert!(matches!(
            missing_main.load_order(),
            Err(ModuleError::MissingMainModule { main }) if main == "./main.js"
        ));
    }

    #[test]
    fn module_url_is_relative_to_manifest_url_without_base_url() {
        let manifest = manifest_with(
            &format!(r#""a":{{"url":"mods/a.zipline","sha256":"{HASH_A}"}}"#),
            "",
        );
        let manifest_url = Url::parse("https://example.test/apps/app.manifest.json").unwrap();
        assert_eq!(
            manifest.module_url("a", &manifest_url).unwrap().as_str(),
            "https://example.test/apps/mods/a.zipline"
        );
        assert!(matches!(
            manifest.module_url("nope", &manifest_url),
            Err(ModuleError::UnknownModule { .. })
        ));
    }

    #[test]
    fn module_url_is_relative_to_base_url_when_set() {
        let absolute = manifest_with(
            &format!(r#""a":{{"url":"a.zipline","sha256":"{HASH_A}"}}"#),
            r#","unsigned":{"baseUrl":"https://cdn.test/v2/"}"#,
        );
        let manifest_url = Url::parse("https://example.test/apps/app.manifest.json").unwrap();
        assert_eq!(
            absolute.module_url("a", &manifest_url).unwrap().as_str(),
            "https://cdn.test/v2/a.zipline"
        );
        let relative = manifest_with(
            &format!(r#""a":{{"url":"a.zipline","sha256":"{HASH_A}"}}"#),
            r#","unsigned":{"baseUrl":"../cdn/"}"#,
        );
        assert_eq!(
            relative.module_url("a", &manifest_url).unwrap().as_str(),
            "https://example.test/cdn/a.zipline"
        );
    }

    #[test]
    fn a_module_url_that_is_not_http_is_an_invalid_manifest() {
        let manifest_url = Url::parse("https://example.test/apps/app.manifest.json").unwrap();
        for (url, base) in [
            ("file:///etc/passwd", ""),
            ("data:text/plain,hi", ""),
            ("a.zipline", r#","unsigned":{"baseUrl":"ftp://cdn.test/"}"#),
        ] {
            let manifest = manifest_with(
                &format!(r#""a":{{"url":"{url}","sha256":"{HASH_A}"}}"#),
                base,
            );
            assert!(
                matches!(
                    manifest.module_url("a", &manifest_url),
                    Err(ModuleError::UnsupportedModuleUrl { ref id, .. }) if id == "a"
                ),
                "{url} {base}"
            );
        }
    }
}
