//! Validation of the names a guest sends.
//!
//! Every operation that takes a name (lookup, create, mknod, mkdir, symlink, link, rename,
//! unlink, rmdir) must validate it before touching any state: a hostile guest kernel can send
//! anything, including `..` or names with `/`.

use std::ffi::CStr;
use std::io;

/// Longest name Linux accepts for one path component.
pub const NAME_MAX: usize = 255;

/// Checks one path component from the guest.
///
/// * empty, `.`, `..`, or containing `/` → `EINVAL`
/// * longer than [`NAME_MAX`] bytes → `ENAMETOOLONG`
///
/// (A NUL cannot occur inside a `CStr`.)
///
/// ```
/// use std::ffi::CString;
/// use boxfs::name::validate;
/// assert!(validate(&CString::new("ok.txt").unwrap()).is_ok());
/// assert_eq!(validate(&CString::new("..").unwrap()).unwrap_err().raw_os_error(), Some(libc::EINVAL));
/// assert_eq!(validate(&CString::new("a/b").unwrap()).unwrap_err().raw_os_error(), Some(libc::EINVAL));
/// ```
pub fn validate(name: &CStr) -> io::Result<&[u8]> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if bytes.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(bytes)
}

/// Checks an extended attribute name: non-empty and at most 255 bytes (`XATTR_NAME_MAX`).
pub fn validate_xattr(name: &CStr) -> io::Result<&[u8]> {
    let bytes = name.to_bytes();
    if bytes.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if bytes.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ERANGE));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn errno(s: &[u8]) -> Option<i32> {
        let c = CString::new(s.to_vec()).expect("no NUL");
        validate(&c).err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn rejects_what_linux_rejects() {
        assert_eq!(errno(b""), Some(libc::EINVAL));
        assert_eq!(errno(b"."), Some(libc::EINVAL));
        assert_eq!(errno(b".."), Some(libc::EINVAL));
        assert_eq!(errno(b"/etc"), Some(libc::EINVAL));
        assert_eq!(errno(&[b'x'; 256]), Some(libc::ENAMETOOLONG));
        assert_eq!(errno(&[b'x'; 255]), None);
        assert_eq!(errno(b"..."), None);
    }
}
