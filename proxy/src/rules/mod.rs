//! The rules as the data plane holds them: the model's `Snapshot` (re-exported from
//! `remora-model`, where the kinds, the decoder and the loader live) behind an `ArcSwap`, and the
//! watcher that reloads it when the mounted ConfigMap changes.

use std::sync::Arc;

pub use remora_model::rules::*;

pub mod watch;

pub use watch::spawn_watcher;

/// The shared, atomically swapped current snapshot.
pub type SharedSnapshot = Arc<arc_swap::ArcSwap<Snapshot>>;
