//! The h2c connection preface followed by any bytes as HTTP/2 frames, to the outbound capture
//! listener (Pingora's h2 server: bad frames, bad HPACK, floods of SETTINGS/PING/RST_STREAM,
//! window overflows). Properties: no panic anywhere in the proxy; it still proxies a well-formed
//! request afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora_proxy_fuzz::{assert_still_serving, harness, H2_PREFACE};

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let mut bytes = Vec::with_capacity(H2_PREFACE.len() + data.len());
    bytes.extend_from_slice(H2_PREFACE);
    bytes.extend_from_slice(data);
    let _ = h.exchange(&bytes);
    assert_still_serving(data);
});
