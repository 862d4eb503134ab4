//! Files only their owner may read. What Courier keeps on disk (the SQLite
//! database with its WAL and shared-memory files, the generated secrets,
//! the audit checkpoint file) is messages, hashes and keys: directories are
//! made 0700 and files 0600, the mode set explicitly so that the process
//! umask does not matter, and [`narrow`] takes group and other access off
//! what an older version (or an operator) left readable.
//!
//! Only Unix has these modes; elsewhere the functions create and open
//! without them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// The mode of every file Courier creates.
pub const FILE_MODE: u32 = 0o600;

/// The mode of every directory Courier creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` with its missing parents; a directory it creates is 0700.
/// An existing directory is left as it is (see [`narrow`]).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)?;
    // The builder's mode passed through the umask: set it as meant.
    set_mode(dir, DIR_MODE)
}

/// Opens `path` as `options` say; a file this creates is 0600. An existing
/// file keeps its mode (and its owner's say over it: see [`narrow`]).
pub fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let existed = path.exists();
    let file = options.open(path)?;
    #[cfg(unix)]
    if !existed {
        // The open's mode passed through the umask: set it as meant.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    #[cfg(not(unix))]
    let _ = existed;
    Ok(file)
}

/// Takes group and other access off an existing file (to 0600) or
/// directory (to 0700), with a warning naming it and its old mode. A
/// missing path is fine. A directory with the sticky bit (a shared one,
/// like `/tmp`) is not changed, nor is one this process may not change:
/// both are warned about instead. Never fails, so a start goes on.
pub fn narrow(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the mode of a data file");
                return;
            }
        };
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return;
        }
        let target = if metadata.is_dir() {
            DIR_MODE
        } else if metadata.is_file() {
            FILE_MODE
        } else {
            return;
        };
        if metadata.is_dir() && mode & 0o1000 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:04o}"),
                "the data directory is shared (sticky bit): other users can see what is in it; \
                 give Courier a directory of its own"
            );
            return;
        }
        match set_mode(path, target) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                from = %format!("{mode:04o}"),
                to = %format!("{target:04o}"),
                "data was readable by other users: mode narrowed"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:04o}"),
                error = %e,
                "data is readable by other users and its mode cannot be changed"
            ),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Makes an existing file 0600 (one written by a library that used the
/// umask, such as the local object store).
pub fn make_private(path: &Path) -> io::Result<()> {
    set_mode(path, FILE_MODE)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn created_private_and_narrowed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/b");
        create_dir_all(&dir).expect("create");
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("f");
        open(&file, OpenOptions::new().write(true).create(true)).expect("open");
        assert_eq!(mode(&file), FILE_MODE);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
        narrow(&dir);
        narrow(&file);
        narrow(&dir.join("missing"));
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&file), FILE_MODE);
    }

    #[test]
    fn a_shared_directory_is_left_alone() {
        let tmp = tempfile::tempdir().expect("tmp");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o1777)).expect("chmod");
        narrow(tmp.path());
        assert_eq!(mode(tmp.path()), 0o1777);
    }
}
