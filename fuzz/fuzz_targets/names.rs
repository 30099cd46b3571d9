//! Media-root name resolution over arbitrary strings, as the gRPC `video` field and the HTTP
//! path (`/v1/videos/{rest}`, through the route parser) deliver them: a name resolves to a file
//! inside a root or to an error, never to anything outside, whatever `..`, symlinks, NULs,
//! protocol prefixes or odd bytes it holds. Listings only name files under the roots.
#![no_main]

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::OnceLock;

use framesrv::media_roots::MediaRoots;
use framesrv::server::http::VideoRoute;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    roots: MediaRoots,
    outside: PathBuf,
}

/// Two roots with files, subfolders and symlinks that lead in, out and round in circles, and
/// a folder outside them with a video in it.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("framesrv-fuzz-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (one, two, outside) = (base.join("one"), base.join("two"), base.join("outside"));
        for dir in [one.join("sub"), two.join("sub"), outside.clone()] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for file in [
            outside.join("secret.mp4"),
            one.join("a.mp4"),
            one.join("sub/b.mkv"),
            one.join("sp ace%20.mp4"),
            two.join("c.webm"),
            two.join("sub/d.avi"),
        ] {
            std::fs::write(file, b"not a video").unwrap();
        }
        symlink("../outside", one.join("out")).unwrap();
        symlink("../outside/secret.mp4", one.join("secret.mp4")).unwrap();
        symlink(outside.join("secret.mp4"), two.join("abs.mp4")).unwrap();
        symlink("a.mp4", one.join("in.mp4")).unwrap();
        symlink("loop", one.join("loop")).unwrap();
        let roots = MediaRoots::new(&[one, two]).unwrap();
        Fixture { roots, outside: std::fs::canonicalize(outside).unwrap() }
    })
}

fn check(fixture: &Fixture, name: &str) {
    if let Ok(path) = fixture.roots.resolve(name) {
        assert!(fixture.roots.roots().iter().any(|r| path.starts_with(r)), "{name:?} resolved outside: {path:?}");
        assert!(!path.starts_with(&fixture.outside), "{name:?} resolved outside: {path:?}");
        assert!(path.is_file(), "{name:?} resolved to a non-file: {path:?}");
    }
}

fuzz_target!(|name: &str| {
    let fixture = fixture();
    check(fixture, name);
    if let Ok(route) = VideoRoute::parse(name) {
        let video = match &route {
            VideoRoute::Info(v) | VideoRoute::Frame(v, _) | VideoRoute::At(v, _) | VideoRoute::Storyboard(v) => v,
        };
        check(fixture, video);
    }
    for listed in fixture.roots.list(name) {
        assert!(listed.starts_with(name));
        check(fixture, &listed);
        assert!(fixture.roots.resolve(&listed).is_ok(), "listed {listed:?} does not resolve");
    }
});
