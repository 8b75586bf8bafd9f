//! The names of the working files and directories haul keeps beside a file or directory
//! that someone else named: a download's partial, state file and copy, an install's
//! staging, old, trash and temporary siblings. Each is that name with haul's own text
//! around it; when the result would be too long for a file name, a shortened stem stands
//! for the name instead.
//!
//! Owns only the mapping from a name to its stem. The text around the stem belongs to its
//! users ([`crate::download::RESERVED_SUFFIXES`], `haul-install`'s leftover kinds), and so
//! does recognising a working file (by that text, which a shortened stem keeps).

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};

use sha2::{Digest, Sha256};

/// The longest file name, in bytes, that the file systems haul writes to accept
/// (`NAME_MAX` of Linux file systems).
pub const MAX_NAME_BYTES: usize = 255;

/// Hex digits of the name's SHA-256 that end a shortened stem.
const DIGEST_HEX_DIGITS: usize = 16;

/// Separates a shortened stem's prefix of the name from its digest.
const DIGEST_MARK: &str = "~";

/// What stands for `name` in the name of a working file that adds `room` bytes of haul's
/// own to it (a suffix, a leading dot).
///
/// `name` itself when `name` and `room` fit in [`MAX_NAME_BYTES`], so working files of
/// names that fit keep their plain names. Otherwise the longest prefix of `name` (cut on a
/// character boundary; a name that is not UTF-8 is cut in its lossy form) that leaves space
/// for `~`, the first 16 hex digits of the SHA-256 of the whole name, and `room`: the same
/// name always gets the same stem (a resume finds its working files again), and two long
/// names that differ anywhere get different stems.
pub fn working_stem(name: &OsStr, room: usize) -> Cow<'_, OsStr> {
    let bytes = name.as_encoded_bytes();
    if bytes.len() + room <= MAX_NAME_BYTES {
        return Cow::Borrowed(name);
    }
    let digest = hex::encode(Sha256::digest(bytes));
    let budget = MAX_NAME_BYTES.saturating_sub(room + DIGEST_MARK.len() + DIGEST_HEX_DIGITS);
    let text = name.to_string_lossy();
    let mut cut = budget.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut stem = OsString::from(&text[..cut]);
    stem.push(DIGEST_MARK);
    stem.push(&digest[..DIGEST_HEX_DIGITS]);
    Cow::Owned(stem)
}

/// Whether [`working_stem`] shortened `name` for `room`.
pub fn is_shortened(name: &OsStr, room: usize) -> bool {
    matches!(working_stem(name, room), Cow::Owned(_))
}

/// Whether `stem` has the form [`working_stem`] gives a name it shortens for `room`: within
/// 3 bytes (a cut before a character) of the longest that leaves `room`, and ending with `~`
/// and 16 lowercase hex digits. A name that fits has that form only if chosen to.
pub fn has_shortened_form(stem: &OsStr, room: usize) -> bool {
    let bytes = stem.as_encoded_bytes();
    let longest = MAX_NAME_BYTES.saturating_sub(room);
    let tail = DIGEST_MARK.len() + DIGEST_HEX_DIGITS;
    if bytes.len() > longest || bytes.len() + 3 < longest || bytes.len() < tail {
        return false;
    }
    let (mark, digits) = bytes[bytes.len() - tail..].split_at(DIGEST_MARK.len());
    mark == DIGEST_MARK.as_bytes()
        && digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stem(name: &str, room: usize) -> String {
        working_stem(OsStr::new(name), room)
            .to_str()
            .expect("a UTF-8 name keeps a UTF-8 stem")
            .to_string()
    }

    #[test]
    fn a_name_that_fits_with_its_room_is_its_own_stem() {
        assert_eq!(stem("file.bin", 15), "file.bin");
        let longest = "a".repeat(MAX_NAME_BYTES - 15);
        assert_eq!(stem(&longest, 15), longest);
        assert!(!is_shortened(OsStr::new(&longest), 15));
        assert!(is_shortened(OsStr::new(&longest), 16));
    }

    #[test]
    fn a_long_name_gets_a_stem_that_leaves_its_room_and_ends_with_its_digest() {
        for len in [MAX_NAME_BYTES - 14, 250, MAX_NAME_BYTES, 400] {
            let name = "n".repeat(len);
            let s = stem(&name, 15);
            assert_eq!(s.len() + 15, MAX_NAME_BYTES, "{len}");
            let digest = hex::encode(Sha256::digest(name.as_bytes()));
            assert!(s.ends_with(&format!("~{}", &digest[..16])), "{s}");
            assert!(name.starts_with(&s[..s.len() - 17]));
            assert_eq!(stem(&name, 15), s, "the same name, the same stem");
        }
    }

    #[test]
    fn shortened_stems_have_their_form_and_names_that_fit_mostly_do_not() {
        for (unit, room) in [("n", 15), ("é", 15), ("€", 19), ("😀", 0)] {
            let name = unit.repeat(300 / unit.len());
            let s = working_stem(OsStr::new(&name), room);
            assert!(has_shortened_form(&s, room), "{unit} {room}");
            assert!(!has_shortened_form(&s, room + 4), "{unit} {room}");
        }
        assert!(!has_shortened_form(OsStr::new("file.bin"), 15));
        let fits = "a".repeat(MAX_NAME_BYTES - 15);
        assert!(!has_shortened_form(OsStr::new(&fits), 15));
        let hexless = format!("{}~{}", "a".repeat(223), "g".repeat(16));
        assert!(!has_shortened_form(OsStr::new(&hexless), 15));
    }

    #[test]
    fn long_names_sharing_their_first_240_bytes_get_different_stems() {
        let common = "x".repeat(240);
        let a = format!("{common}{}", "a".repeat(10));
        let b = format!("{common}{}", "b".repeat(10));
        let (sa, sb) = (stem(&a, 15), stem(&b, 15));
        assert_ne!(sa, sb);
        assert_eq!(
            sa[..sa.len() - 16],
            sb[..sb.len() - 16],
            "only the digests differ"
        );
    }

    #[test]
    fn a_multibyte_name_is_cut_on_a_character_boundary() {
        // 'é' is 2 bytes, '€' 3: every cut position meets the middle of some character.
        for unit in ["é", "€", "a€", "😀"] {
            let name = unit.repeat(300 / unit.len());
            for room in 0..20 {
                let s = stem(&name, room);
                assert!(s.len() + room <= MAX_NAME_BYTES, "{unit} {room}");
                let prefix = &s[..s.len() - 17];
                assert!(name.starts_with(prefix), "{unit} {room}");
                assert!(
                    prefix.len() + 4 > MAX_NAME_BYTES - room - 17,
                    "cut no more than needed"
                );
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_gets_a_utf8_stem_of_its_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let mut a = vec![b'z'; 250];
        a[0] = 0xff;
        let mut b = a.clone();
        b[1] = 0xfe;
        let sa = working_stem(OsStr::from_bytes(&a), 15);
        let sb = working_stem(OsStr::from_bytes(&b), 15);
        assert!(sa.len() + 15 <= MAX_NAME_BYTES);
        assert_ne!(sa, sb);
        assert!(sa.to_str().unwrap().starts_with('\u{fffd}'));
    }
}
