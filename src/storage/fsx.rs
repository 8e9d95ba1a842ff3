//! File-system operations that never follow a planted symlink or replace an existing name,
//! with the operating system's own primitive where it has one and a careful fallback where not.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// Opens `path` with `options`, refusing to follow a symlink at its last component (where the
/// platform can say so: `O_NOFOLLOW` on Unix; elsewhere a symlink is refused after a check).
pub fn open_no_follow(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW).open(path)
    }
    #[cfg(not(unix))]
    {
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(io::Error::other(format!(
                "{} is a symbolic link",
                path.display()
            )));
        }
        options.open(path)
    }
}

/// Renames `from` to `to` unless `to` exists: `AlreadyExists` then, and nothing changes. Uses
/// `renameat2(RENAME_NOREPLACE)` on Linux and Android and `renamex_np(RENAME_EXCL)` on macOS,
/// which decide atomically; where those are missing (other systems, old kernels, file systems
/// without support) it checks and then renames, which a concurrent writer could race.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match os_rename_no_replace(from, to) {
        Some(result) => result,
        None => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", to.display()),
                ));
            }
            fs::rename(from, to)
        }
    }
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
))]
fn c_path(p: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// `None`: the system cannot do it atomically here; fall back.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn os_rename_no_replace(from: &Path, to: &Path) -> Option<io::Result<()>> {
    let (f, t) = match (c_path(from), c_path(to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
    };
    // The raw system call: the libc wrapper is missing from older Android C libraries.
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Some(Ok(()));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => None,
        _ => Some(Err(e)),
    }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn os_rename_no_replace(from: &Path, to: &Path) -> Option<io::Result<()>> {
    let (f, t) = match (c_path(from), c_path(to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
    };
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let r = unsafe { libc::renamex_np(f.as_ptr(), t.as_ptr(), libc::RENAME_EXCL) };
    if r == 0 {
        return Some(Ok(()));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTSUP | libc::EINVAL) => None,
        _ => Some(Err(e)),
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
)))]
fn os_rename_no_replace(_from: &Path, _to: &Path) -> Option<io::Result<()>> {
    // Windows' MoveFileEx without MOVEFILE_REPLACE_EXISTING would do; std's rename sets that
    // flag, so this falls back to check-then-rename. Not testable here.
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_never_replaces_a_file_or_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"new").unwrap();
        fs::write(&b, b"keep").unwrap();
        let e = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(fs::read(&b).unwrap(), b"keep");
        // A folder over an empty folder: a plain rename would replace it.
        let (d1, d2) = (dir.path().join("d1"), dir.path().join("d2"));
        fs::create_dir(&d1).unwrap();
        fs::write(d1.join("x"), b"x").unwrap();
        fs::create_dir(&d2).unwrap();
        assert_eq!(
            rename_no_replace(&d1, &d2).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(d1.join("x").exists() && !d2.join("x").exists());
        // And to a free name it renames.
        rename_no_replace(&d1, &dir.path().join("d3")).unwrap();
        assert!(dir.path().join("d3/x").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let opened = open_no_follow(OpenOptions::new().append(true), &link);
        assert!(opened.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }
}
