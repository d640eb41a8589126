//! The files a node writes, locks, removes or reads as its own (subnet file, its lock, the
//! VTEP MAC file, stats file, trace socket, config file), checked apart before it starts: two
//! of them naming one file would have the node overwrite, replace or delete its own file.

use std::path::{Component, Path, PathBuf};

/// One file a node uses: what names it (a flag, or a file beside one), its path, and whether
/// the node writes, locks or removes it (else it only reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnFile {
    /// What names the file in a message: `--stats-file`, `the lock beside --subnet-file`.
    pub what: String,
    /// The path as given (relative to the working directory when not absolute).
    pub path: PathBuf,
    /// The node writes, locks or removes it; a file it only reads may share its name with
    /// another it only reads.
    pub written: bool,
}

impl OwnFile {
    /// A file the node writes, locks or removes.
    pub fn written(what: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            what: what.into(),
            path: path.into(),
            written: true,
        }
    }

    /// A file the node only reads.
    pub fn read(what: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            what: what.into(),
            path: path.into(),
            written: false,
        }
    }
}

/// Two of a node's files name the same file, one of them written, locked or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{first} {} and {second} {} name the same file: give each its own path",
    crate::sys::printable(&first_path.display().to_string()),
    crate::sys::printable(&second_path.display().to_string())
)]
pub struct Clash {
    /// What names the first file.
    pub first: String,
    /// Its path as given.
    pub first_path: PathBuf,
    /// What names the second file.
    pub second: String,
    /// Its path as given.
    pub second_path: PathBuf,
}

/// Returns the first pair of `files` (in their order) that name the same file, one of them
/// written, locked or removed ([`same_file`]).
pub fn find_clash(files: &[OwnFile]) -> Option<Clash> {
    let resolved: Vec<PathBuf> = files.iter().map(|f| resolved(&f.path)).collect();
    for (i, a) in files.iter().enumerate() {
        for (j, b) in files.iter().enumerate().skip(i + 1) {
            if !(a.written || b.written) {
                continue;
            }
            if resolved[i] == resolved[j] || same_inode(&a.path, &b.path) {
                return Some(Clash {
                    first: a.what.clone(),
                    first_path: a.path.clone(),
                    second: b.what.clone(),
                    second_path: b.path.clone(),
                });
            }
        }
    }
    None
}

/// Returns whether `a` and `b` name the same file: the same [`resolved`] path, or, when both
/// exist, the same device and inode (a symbolic link to the other, a hard link).
pub fn same_file(a: &Path, b: &Path) -> bool {
    resolved(a) == resolved(b) || same_inode(a, b)
}

/// Whether both exist (links followed) as the same device and inode.
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Returns `path` in an absolute form that any other name of the same place shares: made
/// absolute from the working directory; its directory canonicalised when it exists (symbolic
/// links followed, `..` after one resolved as the kernel does); else `.` and `..` resolved
/// lexically and the deepest existing ancestor canonicalised. The last component is kept as
/// it is (the node replaces a link there rather than writing through it).
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(dir) => dir.join(path),
            Err(_) => path.to_path_buf(),
        }
    };
    if let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name())
        && let Ok(dir) = std::fs::canonicalize(dir)
    {
        return dir.join(name);
    }
    let lexical = lexical(&absolute);
    let mut base = lexical.as_path();
    let mut rest = Vec::new();
    while let (Some(dir), Some(name)) = (base.parent(), base.file_name()) {
        rest.push(name);
        base = dir;
        if let Ok(mut found) = std::fs::canonicalize(base) {
            found.extend(rest.iter().rev());
            return found;
        }
    }
    lexical
}

/// `path` with `.` left out and each `..` taking off the component before it (never above
/// the root).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.file_name().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fustian-paths-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn lexical_resolves_dots_never_above_the_root() {
        assert_eq!(lexical(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(lexical(Path::new("/../x")), Path::new("/x"));
        assert_eq!(lexical(Path::new("/a/b/..")), Path::new("/a"));
    }

    #[test]
    fn other_names_of_one_place_are_the_same_file() {
        let dir = scratch("names");
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).expect("sub");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&sub, &link).expect("symlink");
        // Neither file exists: the paths alone say it.
        let file = sub.join("subnet.env");
        assert!(same_file(&file, &sub.join("./x/../subnet.env")));
        assert!(same_file(&file, &link.join("subnet.env")));
        assert!(same_file(&file, &dir.join("sub/.").join("subnet.env")));
        // A directory not made yet, under a linked one.
        assert!(same_file(
            &sub.join("new/stats.prom"),
            &link.join("new/../new/stats.prom")
        ));
        assert!(!same_file(&file, &sub.join("subnet.env.lock")));
        assert!(!same_file(&file, &dir.join("subnet.env")));
        // Relative to the working directory.
        let cwd = std::env::current_dir().expect("cwd");
        assert!(same_file(Path::new("x.prom"), &cwd.join("x.prom")));
        // Hard and symbolic links to an existing file.
        std::fs::write(&file, b"x").expect("write");
        std::fs::hard_link(&file, dir.join("hard")).expect("hard link");
        assert!(same_file(&file, &dir.join("hard")));
        std::os::unix::fs::symlink(&file, dir.join("soft")).expect("symlink");
        assert!(same_file(&dir.join("soft"), &file));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_clash_names_both_and_only_a_written_file_clashes() {
        let dir = scratch("clash");
        let subnet = dir.join("subnet.env");
        let files = [
            OwnFile::written("--subnet-file", &subnet),
            OwnFile::read("--etcd-cafile", dir.join("ca.pem")),
            OwnFile::read("--etcd-certfile", dir.join("ca.pem")),
            OwnFile::written("--stats-file", dir.join("./subnet.env")),
        ];
        let clash = find_clash(&files).expect("clash");
        assert_eq!(clash.first, "--subnet-file");
        assert_eq!(clash.second, "--stats-file");
        let text = clash.to_string();
        assert!(
            text.contains("--subnet-file") && text.contains("--stats-file"),
            "{text}"
        );
        // Two files only read may be one.
        assert_eq!(find_clash(&files[..3]), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
