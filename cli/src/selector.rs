//! Kubernetes label selectors as the API server evaluates a webhook's `namespaceSelector` and
//! `objectSelector`: the webhook crate's evaluator (`remora_webhook::label_selector`), the one the
//! injector and its selector definition (`remora_webhook::selectors`) use too.

pub use remora_webhook::label_selector::*;
