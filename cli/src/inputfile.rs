//! The aria2 input-file format, so existing download lists work unchanged.
//!
//! ```text
//! # a comment
//! http://host/a.iso<TAB>http://mirror/a.iso
//!   out=a.iso
//!   dir=/srv/isos
//!   checksum=sha-256=<hex>
//! ```
//!
//! One download per non-indented line (URIs separated by TABs: the first is used, the rest
//! are mirrors of the same bytes); indented `key=value` lines set options for the download
//! above them (whitespace around a key and its value dropped, as aria2 does). Supported options: `out`, `dir`, `checksum` (`TYPE=DIGEST`, TYPE one of
//! aria2's: sha-1, sha-224, sha-256, sha-384, sha-512, md5, adler32, in any case, with or
//! without the hyphen; another type is an error naming the line), `header`
//! (`Name: value`, repeatable), `http-user` and `http-passwd` (sent as Basic
//! `Authorization`, which like `-H` goes to the first URL only and not across origins).
//! Options aria2 knows but haul sets globally (`split`, `max-connection-per-server`, ...) are
//! ignored with a warning, as are unknown ones and indented lines that are no `key=value`.
//!
//! Lists often come from elsewhere, so `out=` is a path *inside* the download's directory, as
//! aria2 documents it: an absolute path, a `..` part, or a name that is no file (empty, `.`,
//! ending in `/`) is an error naming the line, found before anything is downloaded. An empty
//! `dir=` is an error too. A UTF-8 byte order mark at the start is skipped.

use std::collections::BTreeMap;

use haul_core::{ChecksumAlgorithm, ExpectedChecksum};

/// The algorithm a `checksum=` (or `--checksum`) TYPE names: `None` for sha-256 (haul's own
/// digest, `Download::sha256`), else one of the others; an error naming the types known.
pub fn checksum_type(kind: &str) -> Result<Option<ChecksumAlgorithm>, String> {
    let kind = kind.trim();
    if kind.eq_ignore_ascii_case("sha-256") || kind.eq_ignore_ascii_case("sha256") {
        return Ok(None);
    }
    ChecksumAlgorithm::from_aria2_name(kind)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "checksum type {kind:?} is not supported (sha-256, {})",
                ChecksumAlgorithm::ALL
                    .map(ChecksumAlgorithm::name)
                    .join(", ")
            )
        })
}

/// One download of the list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The URIs: the first one, then mirrors of the same bytes.
    pub uris: Vec<String>,
    /// `out=`: the file name.
    pub out: Option<String>,
    /// `dir=`: the directory.
    pub dir: Option<String>,
    /// `checksum=sha-256=HEX`.
    pub sha256: Option<String>,
    /// `checksum=TYPE=HEX` of another type than sha-256 (the last one given).
    pub checksum: Option<(ChecksumAlgorithm, String)>,
    /// `header=Name: value` lines, then the `Authorization` that `http-user=` and
    /// `http-passwd=` make.
    pub headers: Vec<(String, String)>,
    /// Line number of the URI line (1-based).
    pub line: usize,
    /// Line number of the `out=` line, when there is one.
    pub out_line: Option<usize>,
    /// The list it came from (its name, as given), for messages; `None` for a URL argument.
    pub list: Option<String>,
}

impl Entry {
    /// `message` about this download, prefixed with its list and line when it has them.
    pub fn locate(&self, message: impl std::fmt::Display) -> String {
        self.locate_at(self.line, message)
    }

    /// `message` about this download's `out=`, at that line of its list.
    pub fn locate_out(&self, message: impl std::fmt::Display) -> String {
        self.locate_at(self.out_line.unwrap_or(self.line), message)
    }

    fn locate_at(&self, line: usize, message: impl std::fmt::Display) -> String {
        match &self.list {
            Some(list) => format!("{list}: line {line}: {message}"),
            None => message.to_string(),
        }
    }
}

/// `value` of `out=` as a relative file path within the download's directory.
fn check_out(value: &str) -> Result<String, String> {
    use std::path::{Component, Path};
    let bad = |why: &str| Err(format!("out={value:?} {why}"));
    if value.is_empty() {
        return bad("names no file");
    }
    let last = value.rsplit(['/', '\\']).next().unwrap_or_default();
    if value.ends_with(['/', '\\']) || last == "." || last == ".." {
        return bad("names a directory, not a file");
    }
    let path = Path::new(value);
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return bad("leaves the download's directory ('..'); out= is a path inside dir=")
            }
            Component::RootDir | Component::Prefix(_) => {
                return bad("is absolute; out= is a path inside dir= (use dir= for another place)")
            }
        }
    }
    if !matches!(path.components().next_back(), Some(Component::Normal(_))) {
        return bad("names no file");
    }
    Ok(value.to_string())
}

/// `http-user=` and `http-passwd=` of the entry being read, until its end.
#[derive(Default)]
struct Credentials {
    user: Option<String>,
    password: Option<String>,
    /// The line of the first of them, for messages.
    line: usize,
}

impl Credentials {
    /// The `Authorization` header they make, if any (a password needs a user).
    fn header(self) -> Result<Option<(String, String)>, String> {
        use base64::Engine as _;
        match (self.user, self.password) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(format!(
                "line {}: http-passwd= without http-user=",
                self.line
            )),
            (Some(user), password) => {
                let pair = format!("{user}:{}", password.unwrap_or_default());
                let token = base64::engine::general_purpose::STANDARD.encode(pair);
                Ok(Some(("Authorization".into(), format!("Basic {token}"))))
            }
        }
    }
}

/// The entry being read (the last) takes the header its credentials make, once its options
/// have ended.
fn close(entries: &mut [Entry], credentials: &mut Credentials) -> Result<(), String> {
    if let Some(header) = std::mem::take(credentials).header()? {
        if let Some(entry) = entries.last_mut() {
            entry.headers.push(header);
        }
    }
    Ok(())
}

/// Parse a list; warnings go to `warn`.
///
/// An option aria2 has and haul does not is ignored, with one warning per option name
/// however many lines give it (a list of 1,000 entries with `split=5` gave 1,000); so is an
/// option line before the first URI (aria2 ignores it too).
pub fn parse(text: &str, mut warn: impl FnMut(String)) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut credentials = Credentials::default();
    // Per ignored option name: how many lines gave it, and the first.
    let mut ignored: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let opt = line.trim();
            let Some(entry) = entries.last_mut() else {
                warn(format!(
                    "line {line_no}: option {opt:?} before any URI ignored"
                ));
                continue;
            };
            // aria2 warns of an unknown option and goes on; so does haul.
            let Some((key, value)) = opt.split_once('=') else {
                warn(format!(
                    "line {line_no}: {opt:?} is not an option (key=value); ignored"
                ));
                continue;
            };
            // As aria2 does: whitespace around the key and around the value is not part of
            // them (`http-user= me` is the user "me").
            let (key, value) = (key.trim(), value.trim());
            match key {
                "out" => {
                    entry.out =
                        Some(check_out(value.trim()).map_err(|e| format!("line {line_no}: {e}"))?);
                    entry.out_line = Some(line_no);
                }
                "dir" => {
                    let dir = value.trim();
                    if dir.is_empty() {
                        return Err(format!("line {line_no}: dir= names no directory"));
                    }
                    entry.dir = Some(dir.to_string());
                }
                "checksum" => {
                    let (algo, hex) = value.split_once('=').ok_or_else(|| {
                        format!("line {line_no}: checksum must be TYPE=DIGEST, got {value:?}")
                    })?;
                    let hex = hex.trim().to_string();
                    // A malformed digest names this line, not the URI's.
                    match checksum_type(algo).map_err(|e| format!("line {line_no}: {e}"))? {
                        None => {
                            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return Err(format!(
                                    "line {line_no}: a sha-256 digest is 64 hex digits, got {hex:?}"
                                ));
                            }
                            entry.sha256 = Some(hex)
                        }
                        Some(algorithm) => {
                            ExpectedChecksum::parse(algorithm, &hex)
                                .map_err(|e| format!("line {line_no}: {e}"))?;
                            entry.checksum = Some((algorithm, hex))
                        }
                    }
                }
                "header" => {
                    let (name, value) = value
                        .split_once(':')
                        .filter(|(name, _)| !name.trim().is_empty())
                        .ok_or_else(|| {
                            format!("line {line_no}: header must look like 'Name: value', got {value:?}")
                        })?;
                    if haul_core::managed_header(name) {
                        return Err(format!(
                            "line {line_no}: haul writes the {} header itself; it cannot be set",
                            name.trim()
                        ));
                    }
                    entry
                        .headers
                        .push((name.trim().to_string(), value.trim().to_string()));
                }
                "http-user" | "http-passwd" => {
                    if credentials.line == 0 {
                        credentials.line = line_no;
                    }
                    let slot = match key {
                        "http-user" => &mut credentials.user,
                        _ => &mut credentials.password,
                    };
                    *slot = Some(value.to_string());
                }
                other => {
                    let seen = ignored.entry(other.to_string()).or_insert((0, line_no));
                    seen.0 += 1;
                }
            }
            continue;
        }
        close(&mut entries, &mut credentials)?;
        let uris: Vec<String> = line
            .split('\t')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        entries.push(Entry {
            uris,
            line: line_no,
            ..Entry::default()
        });
    }
    close(&mut entries, &mut credentials)?;
    // In the order of their first lines.
    let mut ignored: Vec<(String, (usize, usize))> = ignored.into_iter().collect();
    ignored.sort_by_key(|(_, (_, first))| *first);
    for (name, (count, first)) in ignored {
        match count {
            1 => warn(format!("line {first}: option {name:?} ignored")),
            _ => warn(format!(
                "option {name:?} ignored ({count} lines, the first line {first})"
            )),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris_mirrors_and_options() {
        let ab = "AB".repeat(32);
        let text = format!(
            "# list\nhttp://a/x\thttp://b/x\n  out=y.bin\n  dir=/tmp/d\n  checksum=sha-256={ab}\n\nhttp://a/z\n"
        );
        let text = text.as_str();
        let mut warnings = Vec::new();
        let e = parse(text, |w| warnings.push(w)).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].uris, vec!["http://a/x", "http://b/x"]);
        assert_eq!(e[0].out.as_deref(), Some("y.bin"));
        assert_eq!(e[0].dir.as_deref(), Some("/tmp/d"));
        assert_eq!(e[0].sha256.as_deref(), Some(ab.as_str()));
        assert_eq!(e[1].uris, vec!["http://a/z"]);
        assert_eq!(e[1].line, 7);
        assert!(warnings.is_empty());
    }

    #[test]
    fn unknown_options_warn_once_per_name_and_bad_lines_fail() {
        let mut warnings = Vec::new();
        let e = parse("http://a/x\n  split=4\n", |w| warnings.push(w)).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(warnings, vec!["line 2: option \"split\" ignored"]);
        // A thousand entries giving two options aria2 has: a warning for each name.
        let list = "http://a/x\n  split=5\n  max-connection-per-server=5\n".repeat(1000);
        let mut warnings = Vec::new();
        assert_eq!(parse(&list, |w| warnings.push(w)).unwrap().len(), 1000);
        assert_eq!(
            warnings,
            // In the order of their first lines (they came in name order).
            vec![
                "option \"split\" ignored (1000 lines, the first line 2)",
                "option \"max-connection-per-server\" ignored (1000 lines, the first line 3)",
            ]
        );
        // An option before the first URI is ignored, as aria2 does.
        let mut warnings = Vec::new();
        let e = parse("  out=x\nhttp://a/y\n", |w| warnings.push(w)).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].out, None);
        assert_eq!(
            warnings,
            vec!["line 1: option \"out=x\" before any URI ignored"]
        );
        assert!(parse("http://a\n  checksum=crc32=00\n", |_| {}).is_err());
    }

    #[test]
    fn an_indented_line_that_is_no_key_value_is_ignored_with_a_warning_naming_it() {
        let mut warnings = Vec::new();
        let e = parse("http://a/x\n  nonsense\n  out=y\nhttp://a/z\n", |w| {
            warnings.push(w)
        })
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].out.as_deref(), Some("y"));
        assert_eq!(
            warnings,
            vec!["line 2: \"nonsense\" is not an option (key=value); ignored"]
        );
    }

    #[test]
    fn checksum_lines_of_every_aria2_type_are_taken_and_another_type_names_its_line() {
        // Digests of the right length for each type: "aa" 20 times for sha-1's 20 bytes...
        let d = |pair: &str, bytes: usize| pair.repeat(bytes);
        let (aa, bb, cc, dd, ee, ff, x11) = (
            d("aa", 20),
            d("bb", 16),
            d("cc", 64),
            d("dd", 4),
            d("ee", 32),
            d("ff", 28),
            d("11", 48),
        );
        let text = format!(
            "http://a/1\n  checksum=SHA-1={aa}\nhttp://a/2\n  checksum=md5={bb}\n\
             http://a/3\n  checksum=sha512={cc}\nhttp://a/4\n  checksum=adler32={dd}\n\
             http://a/5\n  checksum=Sha-256={ee}\nhttp://a/6\n  checksum=sha-224={ff}\n\
             http://a/7\n  checksum=sha-384={x11}\n"
        );
        let e = parse(&text, |w| panic!("{w}")).unwrap();
        let taken: Vec<_> = e
            .iter()
            .map(|e| (e.checksum.clone(), e.sha256.clone()))
            .collect();
        let other = |a, h: &str| (Some((a, h.to_string())), None);
        assert_eq!(
            taken,
            vec![
                other(ChecksumAlgorithm::Sha1, &aa),
                other(ChecksumAlgorithm::Md5, &bb),
                other(ChecksumAlgorithm::Sha512, &cc),
                other(ChecksumAlgorithm::Adler32, &dd),
                (None, Some(ee.clone())),
                other(ChecksumAlgorithm::Sha224, &ff),
                other(ChecksumAlgorithm::Sha384, &x11),
            ]
        );
        // A malformed digest names its own line (it named the URI's).
        for (bad, what) in [("sha-256=zz", "sha-256"), ("sha-1=abc", "sha-1")] {
            let error =
                parse(&format!("# list\nhttp://a/x\n\n  checksum={bad}\n"), |_| {}).unwrap_err();
            assert!(
                error.starts_with("line 4: ") && error.contains(what) && error.contains("hex"),
                "{error}"
            );
        }
        let error = parse("# list\nhttp://a/x\n  checksum=crc32=00\n", |_| {}).unwrap_err();
        assert!(
            error.starts_with("line 3: checksum type \"crc32\" is not supported (sha-256, sha-1"),
            "{error}"
        );
        let error = parse("http://a/x\n  checksum=md5\n", |_| {}).unwrap_err();
        assert!(
            error.starts_with("line 2: checksum must be TYPE=DIGEST"),
            "{error}"
        );
    }

    #[test]
    fn headers_and_http_credentials_are_the_entrys_own_request_headers() {
        let text = "http://a/x\n  header=X-Token: abc\n  http-user=me\n  http-passwd=p:w\n\
                    http://a/y\n  header=Accept: */*\n";
        let mut warnings = Vec::new();
        let e = parse(text, |w| warnings.push(w)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            e[0].headers,
            vec![
                ("X-Token".to_string(), "abc".to_string()),
                // base64("me:p:w")
                ("Authorization".to_string(), "Basic bWU6cDp3".to_string()),
            ]
        );
        assert_eq!(
            e[1].headers,
            vec![("Accept".to_string(), "*/*".to_string())]
        );
        let e = parse("http://a/x\n  http-user=me\n", |_| {}).unwrap();
        assert_eq!(e[0].headers[0].1, "Basic bWU6", "no password: an empty one");
        let error = parse("http://a/x\n  http-passwd=p\n", |_| {}).unwrap_err();
        assert!(
            error.contains("line 2: http-passwd= without http-user="),
            "{error}"
        );
        let error = parse("http://a/x\n  header=no colon\n", |_| {}).unwrap_err();
        assert!(
            error.starts_with("line 2: header must look like"),
            "{error}"
        );
    }

    #[test]
    fn option_values_lose_the_whitespace_around_them_as_in_aria2() {
        let text = "http://a/x\n  http-user= me \t\n  http-passwd =\tp w  \n  out= x.bin \n  \
                    dir =  d \n  header= X-Token:  abc \n  checksum= md5 = {md5} \n";
        let text = text.replace("{md5}", &"ab".repeat(16));
        let e = parse(&text, |w| panic!("{w}")).unwrap();
        assert_eq!(e[0].out.as_deref(), Some("x.bin"));
        assert_eq!(e[0].dir.as_deref(), Some("d"));
        assert_eq!(
            e[0].checksum,
            Some((ChecksumAlgorithm::Md5, "ab".repeat(16)))
        );
        assert_eq!(
            e[0].headers,
            vec![
                ("X-Token".to_string(), "abc".to_string()),
                // base64("me:p w")
                ("Authorization".to_string(), "Basic bWU6cCB3".to_string()),
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_not_part_of_the_first_line() {
        let e = parse("\u{feff}http://a/x\n", |_| {}).unwrap();
        assert_eq!(e[0].uris, vec!["http://a/x"]);
        let e = parse("\u{feff}# list\nhttp://a/y\n", |_| {}).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].uris, vec!["http://a/y"]);
    }

    #[test]
    fn out_is_a_file_path_inside_the_directory_and_anything_else_names_its_line() {
        for good in ["f.bin", "sub/f.bin", "./f.bin", "a b.txt"] {
            let e = parse(&format!("http://a/x\n  out={good}\n"), |_| {}).unwrap();
            assert_eq!(e[0].out.as_deref(), Some(good));
        }
        for bad in [
            "",
            ".",
            "..",
            "sub/",
            "../escaped",
            "sub/../../escaped",
            "/etc/passwd",
            "sub/..",
        ] {
            let error =
                parse(&format!("# list\nhttp://a/x\n  out={bad}\n"), |_| {}).expect_err(bad);
            assert!(error.starts_with("line 3: out="), "{bad:?}: {error}");
        }
        let error = parse("http://a/x\n  dir=\n", |_| {}).unwrap_err();
        assert!(error.contains("line 2: dir="), "{error}");
    }
}
