//! Names from peers made safe to create on any of our platforms (Linux, macOS, Windows,
//! Android), and never-overwrite naming. Pure: strings in, strings out.
//!
//! A received name is only ever one path component: separators, `..`, drive letters, control,
//! terminal-escape and bidi characters, Windows-reserved names and trailing dots or spaces are all
//! neutralised, and the result is at most [`MAX_COMPONENT`] bytes.

/// The longest file-name component we create, in bytes (the common file-system limit).
pub const MAX_COMPONENT: usize = 255;
/// The name used when nothing usable is left of a peer's name.
pub const FALLBACK: &str = "download";

const WINDOWS_RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn is_bidi_or_invisible(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' |
        '\u{2066}'..='\u{2069}' | '\u{feff}' | '\u{061c}')
}

/// Characters that are unsafe or invalid in a file name somewhere.
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || is_bidi_or_invisible(c)
        || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
}

/// Turns a peer's name into one safe path component. Never fails: unusable names become
/// [`FALLBACK`].
pub fn sanitize_component(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if is_forbidden(c) { '_' } else { c })
        .collect();
    // One byte kept free for the `_` a reserved name gets.
    let s = shorten(s.trim_start_matches(' '), MAX_COMPONENT - 1);
    // Windows drops trailing dots and spaces, which would let "a.txt." alias "a.txt"; this also
    // turns ".", ".." and "..." into nothing.
    let s = s.trim_end_matches(['.', ' ']);
    if s.is_empty() {
        return FALLBACK.to_owned();
    }
    let stem = s.split('.').next().unwrap_or("").trim_end();
    if WINDOWS_RESERVED
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem))
    {
        format!("_{s}")
    } else {
        s.to_owned()
    }
}

/// The name a received drop gets in the receive folder: [`sanitize_component`], and never
/// hidden: leading dots become one `_` (`.bashrc` → `_bashrc`, `.ssh` → `_ssh`). A drop cannot
/// plant a dotfile (shell start-up files, `.ssh`, `.config`) that would act where it lands, and
/// what arrives is always visible. Names inside a folder drop keep their dots: they land inside
/// the drop's own folder.
pub fn sanitize_top_level(name: &str) -> String {
    let s = sanitize_component(name);
    let rest = s.trim_start_matches('.');
    if rest.len() == s.len() {
        s
    } else {
        format!("_{rest}")
    }
}

/// Cuts `name` to at most `max` bytes, keeping a short extension (".pdf") if there is one.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, ext) = split_ext(name);
    if ext.len() > 16 || stem.is_empty() {
        return crate::protocol::codec::truncate_utf8(name, max).to_owned();
    }
    let stem = crate::protocol::codec::truncate_utf8(stem, max - ext.len());
    format!("{stem}{ext}")
}

/// ("report", ".pdf") from "report.pdf"; a leading dot is part of the stem (".bashrc").
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// Why a relative path from a directory drop was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    #[error("an entry path is empty")]
    Empty,
    #[error("an entry path is absolute or names a drive: {0:?}")]
    Absolute(String),
    #[error("an entry path leaves its folder: {0:?}")]
    Escapes(String),
    #[error("an entry path is too deep or too long")]
    TooLong,
}

/// The longest relative path accepted inside a directory drop, in bytes.
pub const MAX_PATH: usize = 4096;
/// The deepest nesting accepted inside a directory drop.
pub const MAX_DEPTH: usize = 64;

/// Checks a relative path from a directory drop (components separated by `/`) and sanitizes each
/// component. Paths that try to leave the folder are refused, not repaired: a well-behaved sender
/// never produces them.
pub fn sanitize_relative(path: &str) -> Result<Vec<String>, PathError> {
    Ok(split_relative(path)?
        .into_iter()
        .map(sanitize_component)
        .collect())
}

/// The checks of [`sanitize_relative`] without the sanitizing: the path's components, each one
/// non-empty, not `.` or `..`, without a backslash. Each still needs [`sanitize_component`].
pub fn split_relative(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if path.starts_with(['/', '\\']) || path.as_bytes().get(1) == Some(&b':') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return Err(PathError::TooLong);
    }
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." || part.contains('\\') {
            return Err(PathError::Escapes(path.to_owned()));
        }
    }
    Ok(parts)
}

/// The `n`th alternative to `name` that does not overwrite: `report (1).pdf`, `report (2).pdf`.
pub fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    let (stem, ext) = split_ext(name);
    let suffix = format!(" ({n})");
    let stem = crate::protocol::codec::truncate_utf8(
        stem,
        MAX_COMPONENT.saturating_sub(suffix.len() + ext.len()),
    );
    format!("{stem}{suffix}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_table() {
        let long = "a".repeat(300);
        let long_pdf = format!("{}.pdf", "b".repeat(300));
        let cases: &[(&str, &str)] = &[
            ("report.pdf", "report.pdf"),
            ("résumé 2024 ✓.txt", "résumé 2024 ✓.txt"),
            ("../../etc/passwd", ".._.._etc_passwd"),
            ("..", FALLBACK),
            (".", FALLBACK),
            ("...", FALLBACK),
            ("", FALLBACK),
            ("/etc/passwd", "_etc_passwd"),
            ("C:\\Windows\\evil.dll", "C__Windows_evil.dll"),
            ("C:evil", "C_evil"),
            ("a/b", "a_b"),
            ("a\\b", "a_b"),
            ("bell\x07.txt", "bell_.txt"),
            ("esc\x1b[31mred", "esc_[31mred"),
            ("csi\u{9b}31m", "csi_31m"),
            ("new\nline", "new_line"),
            ("nul\0byte", "nul_byte"),
            ("gpj.\u{202e}exe", "gpj._exe"),
            ("zero\u{200b}width", "zero_width"),
            ("CON", "_CON"),
            ("con.txt", "_con.txt"),
            ("Lpt9.tar.gz", "_Lpt9.tar.gz"),
            ("COM10", "COM10"),
            ("console", "console"),
            ("trailing. . ", "trailing"),
            ("   lead", "lead"),
            ("what?<>|*\".txt", "what______.txt"),
            (".bashrc", ".bashrc"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize_component(input), *want, "input {input:?}");
        }
        assert_eq!(sanitize_component(&long).len(), MAX_COMPONENT - 1);
        let cut = sanitize_component(&long_pdf);
        assert!(cut.len() <= MAX_COMPONENT && cut.ends_with(".pdf"), "{cut}");
        let multibyte = "é".repeat(200);
        assert!(sanitize_component(&multibyte).len() <= MAX_COMPONENT);
    }

    #[test]
    fn a_top_level_name_is_never_hidden() {
        for (input, want) in [
            (".bashrc", "_bashrc"),
            (".ssh", "_ssh"),
            ("..profile", "_profile"),
            (". .x", "_ .x"),
            ("...", FALLBACK),
            ("report.pdf", "report.pdf"),
            ("../.ssh", "__.ssh"),
            ("\u{202e}.x", "_.x"),
        ] {
            assert_eq!(sanitize_top_level(input), want, "{input:?}");
        }
        let long = format!(".{}", "x".repeat(400));
        assert!(sanitize_top_level(&long).len() <= MAX_COMPONENT);
        assert!(!sanitize_top_level(&long).starts_with('.'));
    }

    #[test]
    fn regression_fuzz_names_crash_0080b967_long_name_after_two_dots_became_a_dot() {
        // Found by `fuzz/run.sh` (target names): a long name whose only dots lead it was cut to
        // its "stem" ".", which names the folder itself.
        let name = format!("..>lAC||{}", ":".repeat(300));
        let s = sanitize_component(&name);
        assert!(s != "." && s != ".." && !s.is_empty(), "{s:?}");
        assert!(s.len() <= MAX_COMPONENT);
        assert_eq!(
            sanitize_component(&format!("..{}", "x".repeat(300))).len(),
            MAX_COMPONENT - 1
        );
    }

    #[test]
    fn sanitized_names_are_always_one_safe_component() {
        let nasty = [
            "..", "a/../b", "\u{202e}", "x\\y", "C:", " . ", "\t", "AUX.", "nul ",
        ];
        for n in nasty {
            let s = sanitize_component(n);
            assert!(!s.is_empty() && s != "." && s != "..", "{n:?} -> {s:?}");
            assert!(!s.contains(['/', '\\', ':']), "{n:?} -> {s:?}");
            assert!(!s.chars().any(char::is_control), "{n:?} -> {s:?}");
            assert!(!s.ends_with(['.', ' ']), "{n:?} -> {s:?}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            sanitize_relative("a/b c/d.txt").unwrap(),
            ["a", "b c", "d.txt"]
        );
        assert_eq!(sanitize_relative("sub/CON").unwrap(), ["sub", "_CON"]);
        for bad in [
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "/abs",
            "\\abs",
            "C:/x",
            "a/",
            "a\\..\\b",
            "",
        ] {
            assert!(sanitize_relative(bad).is_err(), "{bad:?} accepted");
        }
        let deep = vec!["a"; MAX_DEPTH].join("/");
        assert_eq!(sanitize_relative(&deep).unwrap().len(), MAX_DEPTH);
        let deeper = vec!["a"; MAX_DEPTH + 1].join("/");
        assert_eq!(sanitize_relative(&deeper), Err(PathError::TooLong));
        assert_eq!(
            sanitize_relative(&"a".repeat(MAX_PATH + 1)),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn numbered_alternatives() {
        assert_eq!(numbered("report.pdf", 0), "report.pdf");
        assert_eq!(numbered("report.pdf", 1), "report (1).pdf");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered(".bashrc", 3), ".bashrc (3)");
        assert_eq!(numbered("folder", 12), "folder (12)");
        assert!(numbered(&"x".repeat(255), 7).len() <= MAX_COMPONENT);
    }
}
