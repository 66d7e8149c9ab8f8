//! Where the tests find Istio's own test corpus, and what they do without it.
//!
//! Some tests compare remora with Istio's own test data (injection inputs and goldens, the
//! `istio-iptables` goldens, the Bookinfo routing rules), read in place from
//! `$REMORA_SHARED/anchors/istio/` (default: `shared/` next to the checkout). That folder is not
//! part of this repository (see `docs/testing.md`). Without it:
//!
//! * by default each test that needs it prints one `SKIPPED` line on stderr (naming the test,
//!   the path it looked at and where the corpus comes from) and returns; every other test runs;
//! * with `REMORA_REQUIRE_CORPUS=1` (set by `scripts/test`) such a test fails instead.
//!
//! ```no_run
//! #[test]
//! fn bookinfo() {
//!     let dir = remora_corpus::require!("networking");
//!     // ... read dir.join("virtual-service-all-v1.yaml")
//! }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

/// The Istio commit the corpus was copied from (its `SOURCE.md` says which files).
pub const ISTIO_COMMIT: &str = "86c9f01fd735fb01d8192f5bcaf0d424afb7f14c";

/// Set to `1` to make a missing corpus a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "REMORA_REQUIRE_CORPUS";

/// The shared material folder: `$REMORA_SHARED`, else `shared/` next to the checkout.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("REMORA_SHARED") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// The root of Istio's corpus: `<shared>/anchors/istio`.
pub fn istio_dir() -> PathBuf {
    shared_dir().join("anchors/istio")
}

/// Whether a missing corpus must fail the test (`REMORA_REQUIRE_CORPUS=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The corpus folder `<shared>/anchors/istio/<sub>` (`sub` may be a file), or `None` when it
/// does not exist: then one `SKIPPED` line goes to stderr (not captured by the test harness),
/// or, with `REMORA_REQUIRE_CORPUS=1`, this panics with the same explanation.
#[track_caller]
pub fn istio(sub: &str) -> Option<PathBuf> {
    let path = istio_dir().join(sub);
    if path.exists() {
        return Some(path);
    }
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_string();
    let why = missing_message(&path);
    if required() {
        panic!("{test}: {why} ({REQUIRE_ENV}=1: the corpus is required here; set REMORA_SHARED to the folder holding anchors/istio)");
    }
    // Straight to the stderr handle: libtest captures only the print macros, and a skip must
    // be visible in a passing run.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
    None
}

/// Why the corpus is not there and where it comes from, in one line.
pub fn missing_message(path: &Path) -> String {
    format!(
        "Istio corpus not found at {}; it is Istio's own testdata (github.com/istio/istio at commit {}), see docs/testing.md",
        path.display(),
        &ISTIO_COMMIT[..12]
    )
}

/// `let dir = require!("networking");` in a test: the corpus path, or return from the test
/// after [`istio`] printed its `SKIPPED` line.
#[macro_export]
macro_rules! require {
    ($sub:expr) => {
        match $crate::istio($sub) {
            Some(path) => path,
            None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: it sets process environment variables.
    #[test]
    fn missing_corpus_skips_or_fails_when_required() {
        let empty = std::env::temp_dir().join(format!("remora-corpus-test-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        std::env::set_var("REMORA_SHARED", &empty);
        std::env::remove_var(REQUIRE_ENV);
        assert_eq!(istio("networking"), None);
        std::env::set_var(REQUIRE_ENV, "1");
        let err = std::panic::catch_unwind(|| istio("networking")).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains(&format!(
                "Istio corpus not found at {}",
                empty.join("anchors/istio/networking").display()
            )),
            "{msg}"
        );
        assert!(msg.contains("REMORA_REQUIRE_CORPUS=1"), "{msg}");
        std::fs::create_dir_all(empty.join("anchors/istio/networking")).unwrap();
        assert_eq!(
            istio("networking"),
            Some(empty.join("anchors/istio/networking"))
        );
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
