//! Turning a client's video name into a file inside the configured media roots, and nothing
//! else.
//!
//! Clients name videos relative to a media root (`clips/a.mp4`). A name is refused before any
//! file system access when it is absolute, climbs with `..`, holds a NUL, or looks like a URL
//! (`http:`, `concat:`, `pipe:`, `file:`): FFmpeg would read those as protocols. A name that
//! passes is joined to each root in turn and canonicalised, and the result must still lie inside
//! that (canonical) root, which catches symlinks that lead out. Error messages repeat the
//! client's name, never a path outside the roots.

use std::fs;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RootsError {
    #[error("video {name:?} not found under the media roots")]
    NotFound { name: String },
    #[error("video name {name:?} is not allowed: {reason}")]
    Forbidden { name: String, reason: &'static str },
    #[error("video {name:?} cannot be read: permission denied")]
    Unreadable { name: String },
    #[error("video name {name:?} is invalid: {reason}")]
    Invalid { name: String, reason: &'static str },
}

/// File name endings listed by `ListVideos`.
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "ts", "m2ts", "mts", "mpg", "mpeg", "flv", "ogv", "h264", "264", "hevc",
    "265", "ivf", "obu", "mxf", "nut", "wmv", "asf", "3gp", "gif", "apng", "y4m", "dv", "mjpeg", "mjpg",
];

/// At most this many names in one listing, and this deep, so a huge tree cannot stall it.
const LIST_LIMIT: usize = 100_000;
const LIST_DEPTH: usize = 16;

#[derive(Debug, Clone)]
pub struct MediaRoots {
    /// Canonical absolute paths of the roots, in the order names are tried.
    roots: Vec<PathBuf>,
}

impl MediaRoots {
    /// Canonicalise the configured roots. A root that does not exist is an error: the operator
    /// should hear about a typo at start, not as NOT_FOUND on every request.
    pub fn new(roots: &[PathBuf]) -> Result<MediaRoots, String> {
        if roots.is_empty() {
            return Err("no media roots configured".into());
        }
        let roots = roots
            .iter()
            .map(|r| fs::canonicalize(r).map_err(|e| format!("media root {} is not usable: {e}", r.display())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MediaRoots { roots })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The file a name refers to, canonical and inside a root.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, RootsError> {
        let relative = check_name(name)?;
        let mut denied = false;
        for root in &self.roots {
            let candidate = root.join(&relative);
            let canonical = match fs::canonicalize(&candidate) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    denied = true;
                    continue;
                }
                Err(_) => continue,
            };
            if !canonical.starts_with(root) {
                return Err(RootsError::Forbidden {
                    name: name.to_string(),
                    reason: "it leads outside the media roots",
                });
            }
            match fs::metadata(&canonical) {
                Ok(m) if m.is_file() => {}
                Ok(_) => continue,
                Err(_) => continue,
            }
            if let Err(e) = fs::File::open(&canonical) {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    return Err(RootsError::Unreadable { name: name.to_string() });
                }
                continue;
            }
            return Ok(canonical);
        }
        if denied {
            return Err(RootsError::Unreadable { name: name.to_string() });
        }
        Err(RootsError::NotFound { name: name.to_string() })
    }

    /// Names of the video files under the roots that start with `prefix`, sorted, without
    /// duplicates (the first root wins, as in `resolve`).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        for root in &self.roots {
            walk(root, root, 0, &mut names);
        }
        names.retain(|n: &String| n.starts_with(prefix));
        names.sort();
        names.dedup();
        names
    }
}

fn check_name(name: &str) -> Result<PathBuf, RootsError> {
    let invalid = |reason| RootsError::Invalid { name: name.to_string(), reason };
    let forbidden = |reason| RootsError::Forbidden { name: name.to_string(), reason };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > 4096 {
        return Err(invalid("it is longer than 4096 bytes"));
    }
    if name.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if looks_like_url(name) {
        return Err(forbidden("it names a protocol; only files inside the media roots are served"));
    }
    let path = Path::new(name);
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(forbidden("it climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(forbidden("it is absolute; names are relative to a media root"))
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(invalid("it names no file"));
    }
    Ok(clean)
}

/// `scheme:` at the start, as FFmpeg's URL parser would see it (`http:`, `concat:`, `file:`).
fn looks_like_url(name: &str) -> bool {
    let Some(colon) = name.find(':') else { return false };
    let scheme = &name[..colon];
    !scheme.is_empty()
        && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'))
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
    if depth > LIST_DEPTH || out.len() >= LIST_LIMIT {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        // Follow symlinks only where they stay inside the root.
        let Ok(canonical) = fs::canonicalize(&path) else { continue };
        if !canonical.starts_with(root) {
            continue;
        }
        let Ok(meta) = fs::metadata(&canonical) else { continue };
        if meta.is_dir() {
            if canonical.starts_with(dir) && canonical != dir {
                walk(root, &path, depth + 1, out);
            }
        } else if meta.is_file() {
            let is_video = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if let (true, Ok(rel)) = (is_video, path.strip_prefix(root)) {
                if let Some(name) = rel.to_str() {
                    out.push(name.to_string());
                }
            }
        }
        if out.len() >= LIST_LIMIT {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, MediaRoots) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("media");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a.mp4"), b"x").unwrap();
        fs::write(root.join("sub/b.mkv"), b"x").unwrap();
        fs::write(root.join("notes.txt"), b"x").unwrap();
        fs::write(dir.path().join("secret.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.mp4"), root.join("link.mp4")).unwrap();
        std::os::unix::fs::symlink(root.join("a.mp4"), root.join("inside.mp4")).unwrap();
        let roots = MediaRoots::new(&[root]).unwrap();
        (dir, roots)
    }

    #[test]
    fn names_inside_the_root_resolve() {
        let (_d, roots) = setup();
        assert!(roots.resolve("a.mp4").unwrap().ends_with("media/a.mp4"));
        assert!(roots.resolve("./sub/b.mkv").unwrap().ends_with("media/sub/b.mkv"));
        assert!(roots.resolve("inside.mp4").unwrap().ends_with("media/a.mp4"));
    }

    #[test]
    fn escaping_names_are_forbidden() {
        let (_d, roots) = setup();
        for name in ["../secret.mp4", "sub/../../secret.mp4", "/etc/passwd", "link.mp4"] {
            assert!(
                matches!(roots.resolve(name), Err(RootsError::Forbidden { .. })),
                "{name}: {:?}",
                roots.resolve(name)
            );
        }
    }

    #[test]
    fn protocol_names_are_forbidden() {
        let (_d, roots) = setup();
        for name in [
            "http://example.com/a.mp4",
            "concat:a.mp4|b.mp4",
            "pipe:0",
            "file:a.mp4",
            "subfile:,,start,0,end,0,,:a.mp4",
        ] {
            assert!(matches!(roots.resolve(name), Err(RootsError::Forbidden { .. })), "{name}");
        }
    }

    #[test]
    fn missing_and_odd_names_are_not_found_or_invalid() {
        let (_d, roots) = setup();
        assert!(matches!(roots.resolve("nope.mp4"), Err(RootsError::NotFound { .. })));
        assert!(matches!(roots.resolve("sub"), Err(RootsError::NotFound { .. })));
        assert!(matches!(roots.resolve(""), Err(RootsError::Invalid { .. })));
        assert!(matches!(roots.resolve("a\0.mp4"), Err(RootsError::Invalid { .. })));
    }

    #[test]
    fn listing_shows_videos_inside_the_roots_only() {
        let (_d, roots) = setup();
        assert_eq!(roots.list(""), vec!["a.mp4", "inside.mp4", "sub/b.mkv"]);
        assert_eq!(roots.list("sub/"), vec!["sub/b.mkv"]);
    }
}
