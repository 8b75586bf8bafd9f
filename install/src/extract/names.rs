//! Entry-name rules shared by validation, `select` outputs and the installers' path
//! components. A name is refused, never repaired: repairing (`a/../b` -> `b`) is how
//! extractors disagree with each other.

use crate::error::UnsafeReason;

/// Longest single path component accepted (common filesystem limit).
pub const MAX_COMPONENT_LEN: usize = 255;

/// A checked relative path: `/`-separated components, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct CheckedName {
    pub(crate) path: String,
    /// The raw name ended with `/` (a directory entry).
    pub(crate) trailing_slash: bool,
}

/// Checks a raw zip entry name (or a path produced by a `select` function).
pub(crate) fn check_entry_name(raw: &[u8], max_len: usize) -> Result<CheckedName, UnsafeReason> {
    if raw.is_empty() {
        return Err(UnsafeReason::EmptyComponent);
    }
    if raw.len() > max_len {
        return Err(UnsafeReason::NameTooLong);
    }
    let name = std::str::from_utf8(raw).map_err(|_| UnsafeReason::NotUtf8)?;
    for c in name.chars() {
        if c.is_control() {
            return Err(UnsafeReason::ControlCharacter);
        }
        if c == '\\' {
            return Err(UnsafeReason::Backslash);
        }
        if c == ':' {
            return Err(UnsafeReason::Colon);
        }
    }
    if name.starts_with('/') {
        return Err(UnsafeReason::AbsolutePath);
    }
    let (path, trailing_slash) = match name.strip_suffix('/') {
        Some(p) => (p, true),
        None => (name, false),
    };
    if path.is_empty() {
        return Err(UnsafeReason::EmptyComponent);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(UnsafeReason::EmptyComponent),
            "." => return Err(UnsafeReason::DotComponent),
            ".." => return Err(UnsafeReason::ParentComponent),
            c if c.len() > MAX_COMPONENT_LEN => return Err(UnsafeReason::NameTooLong),
            _ => {}
        }
    }
    Ok(CheckedName {
        path: path.to_string(),
        trailing_slash,
    })
}

/// Checks that `s` is a safe single path component (no separators, not `.`/`..`, no
/// control characters, backslashes or colons, not empty, at most 255 bytes).
pub fn check_component(s: &str) -> Result<(), UnsafeReason> {
    let checked = check_entry_name(s.as_bytes(), MAX_COMPONENT_LEN)?;
    if checked.trailing_slash || checked.path.contains('/') {
        return Err(UnsafeReason::Separator);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> UnsafeReason {
        check_entry_name(name.as_bytes(), 1024).unwrap_err()
    }

    #[test]
    fn traversal_and_absolute_forms_are_refused_with_their_reason() {
        assert_eq!(reason("../x"), UnsafeReason::ParentComponent);
        assert_eq!(reason("a/../../x"), UnsafeReason::ParentComponent);
        assert_eq!(reason("a/.."), UnsafeReason::ParentComponent);
        assert_eq!(reason("./x"), UnsafeReason::DotComponent);
        assert_eq!(reason("/etc/passwd"), UnsafeReason::AbsolutePath);
        assert_eq!(reason("//server/share/x"), UnsafeReason::AbsolutePath);
        assert_eq!(reason("C:/x"), UnsafeReason::Colon);
        assert_eq!(reason("C:x"), UnsafeReason::Colon);
        assert_eq!(reason("\\\\server\\share\\x"), UnsafeReason::Backslash);
        assert_eq!(reason("a\\..\\..\\x"), UnsafeReason::Backslash);
        assert_eq!(reason("a\0b"), UnsafeReason::ControlCharacter);
        assert_eq!(reason("a\nb"), UnsafeReason::ControlCharacter);
        assert_eq!(reason("a//b"), UnsafeReason::EmptyComponent);
        assert_eq!(reason(""), UnsafeReason::EmptyComponent);
        assert_eq!(
            check_entry_name(b"a/\xff", 1024).unwrap_err(),
            UnsafeReason::NotUtf8
        );
        assert_eq!(
            check_entry_name("a".repeat(20).as_bytes(), 10).unwrap_err(),
            UnsafeReason::NameTooLong
        );
        assert_eq!(reason(&"b".repeat(256)), UnsafeReason::NameTooLong);
    }

    #[test]
    fn ordinary_names_pass_and_lose_only_the_trailing_slash() {
        let file = check_entry_name(b"extension/out/main.js", 1024).unwrap();
        assert_eq!(file.path, "extension/out/main.js");
        assert!(!file.trailing_slash);
        let dir = check_entry_name(b"extension/out/", 1024).unwrap();
        assert_eq!(dir.path, "extension/out");
        assert!(dir.trailing_slash);
        assert!(check_entry_name("ünïcödé/..hidden".as_bytes(), 1024).is_ok());
    }

    #[test]
    fn single_components_refuse_separators() {
        assert!(check_component("publisher").is_ok());
        assert!(check_component("a/b").is_err());
        assert!(check_component("dir/").is_err());
        assert!(check_component("..").is_err());
        assert!(check_component("").is_err());
    }
}
