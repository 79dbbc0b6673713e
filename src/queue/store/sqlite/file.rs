//! Which file a path names: the queue notices a SQLite file that was deleted or replaced under
//! it (a new producer then creates a new file at the same path) instead of serving the old,
//! unlinked inode for good, or splitting its connections between the two.

use std::path::Path;

/// A file's identity: device and inode (`None` where the platform has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId(Option<(u64, u64)>);

impl FileId {
    /// The identity of what `path` names now; `Err` if nothing.
    pub(crate) fn of(path: &Path) -> Result<FileId, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("the queue file {} is gone: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            Ok(FileId(Some((meta.dev(), meta.ino()))))
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            Ok(FileId(None))
        }
    }

    /// `Ok` if `path` still names this file.
    pub(crate) fn check(&self, path: &Path) -> Result<(), String> {
        let now = FileId::of(path)?;
        if now == *self {
            Ok(())
        } else {
            Err(format!(
                "the queue file {} was replaced by another file",
                path.display()
            ))
        }
    }
}
