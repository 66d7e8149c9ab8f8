//! Any bytes as what a downstream client sends to the outbound capture listener (malformed
//! request lines, header floods, bad chunked bodies, pipelined requests, non-HTTP). Properties:
//! no panic anywhere in the proxy; whatever comes back is an HTTP answer (or nothing: a close);
//! the proxy still proxies a well-formed request afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora_proxy_fuzz::{assert_still_serving, check_http1_answer, harness};

fuzz_target!(|data: &[u8]| {
    let h = harness();
    // An h2c preface goes to the h2_frames target.
    if data.starts_with(b"PRI * HTTP/2.0") {
        return;
    }
    let Ok(seen) = h.exchange(data) else {
        return;
    };
    check_http1_answer(data, &seen);
    assert_still_serving(data);
});
