//! The SPIFFE id each mesh endpoint's server presented, kept with the workload identity that
//! checked it, for the metrics of requests that reuse a pooled connection.

use std::net::SocketAddr;
use std::sync::Arc;

/// The SPIFFE id each endpoint's server presented at the last mTLS handshake with it (checked
/// against the mesh roots and the destination), for the metrics of the requests that reuse the
/// connection. Bounded: forgotten all at once past [`ServerIds::MAX`] endpoints.
#[derive(Debug, Default)]
pub struct ServerIds {
    map: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<str>>>,
}

impl ServerIds {
    pub const MAX: usize = 10_000;

    pub fn note(&self, endpoint: SocketAddr, id: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&endpoint).is_some_and(|known| &**known == id) {
            return;
        }
        if m.len() >= Self::MAX {
            m.clear();
        }
        m.insert(endpoint, Arc::from(id));
    }

    pub fn get(&self, endpoint: SocketAddr) -> Option<Arc<str>> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&endpoint).cloned()
    }
}
