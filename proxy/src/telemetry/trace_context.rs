//! The trace context of a request, decided without I/O: what the incoming W3C (`traceparent`)
//! and B3 (single `b3`, multi `x-b3-*`) headers say, whether the request is sampled (an incoming
//! decision is honoured, else the configured percentage), the span this proxy makes, and the
//! header values the request goes on with.
//!
//! Precedence when several are present: a valid `traceparent`, then a valid `b3`, then the
//! `x-b3-*` headers (an app may propagate only one family; the proxy writes both). A header that
//! does not parse is ignored as if absent, as Envoy does. A B3 sampling decision without ids
//! (`b3: 0`, `x-b3-sampled: 0` alone) is honoured and starts no trace of its own.
//!
//! When those headers make no decision, the request's `x-request-id` does, as Envoy's UUID
//! request ids do: an id of UUID length whose trace nibble (position 14) is `9` (sampled), `a`
//! (forced) or `b` (client) is sampled; otherwise an id starting with 8 hex digits is its own roll
//! (those digits as a number, modulo 10,000, against the percentage × 100), so every hop with the
//! same percentage reaches the same decision from the same id and an unsampled request needs no
//! header of its own; an id without that form is rolled at random, and when that roll says no,
//! `x-b3-sampled: 0` tells the next hops.

/// A 128-bit trace id (a 64-bit B3 id has its high half zero).
pub type TraceId = [u8; 16];
/// A 64-bit span id.
pub type SpanId = [u8; 8];

/// The trace headers of a request, as received (absent: `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Headers<'a> {
    pub traceparent: Option<&'a str>,
    pub b3: Option<&'a str>,
    pub x_b3_traceid: Option<&'a str>,
    pub x_b3_spanid: Option<&'a str>,
    pub x_b3_sampled: Option<&'a str>,
    pub x_b3_flags: Option<&'a str>,
}

/// What the incoming headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// No (valid) trace context.
    None,
    /// A sampling decision without ids (B3's `b3: 0` or `x-b3-sampled` alone).
    Decision(bool),
    /// A parent span: its trace, its id and its sampling decision, if it made one.
    Parent {
        trace_id: TraceId,
        span_id: SpanId,
        sampled: Option<bool>,
        /// The trace id came as 64 bits (B3): written back as 16 hex digits in B3 headers.
        short: bool,
    },
}

/// The trace context this proxy's span has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// This proxy's span (the parent of the next hop's).
    pub span_id: SpanId,
    /// The incoming span, when there was one.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    /// The trace id came as 64 bits.
    pub short: bool,
}

/// What a request's `x-request-id` says about its trace (Envoy's UUID request ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestIdTrace {
    /// A UUID-length id marked traced: trace nibble `9`, `a` or `b`.
    Traced,
    /// Not marked, and its first 8 characters are hex digits: the roll, in `[0, 10000)`.
    Roll(u16),
    /// No such id (empty, shorter, not hex): the roll is random.
    Opaque,
}

/// Envoy's UUID request ids: the trace nibble's position and values.
const TRACE_NIBBLE: usize = 14;
const UUID_LEN: usize = 36;
const NIBBLE_SAMPLED: u8 = b'9';
const NIBBLE_FORCED: u8 = b'a';
const NIBBLE_CLIENT: u8 = b'b';

/// What `id` (the request's `x-request-id`, empty when none) says: see [`RequestIdTrace`].
pub fn request_id_trace(id: &str) -> RequestIdTrace {
    let b = id.as_bytes();
    if b.len() == UUID_LEN
        && matches!(
            b[TRACE_NIBBLE],
            NIBBLE_SAMPLED | NIBBLE_FORCED | NIBBLE_CLIENT
        )
    {
        return RequestIdTrace::Traced;
    }
    let Some(head) = b.get(..8) else {
        return RequestIdTrace::Opaque;
    };
    let mut v: u32 = 0;
    for &c in head {
        let Some(d) = (c as char).to_digit(16) else {
            return RequestIdTrace::Opaque;
        };
        v = v << 4 | d;
    }
    // Below 10,000: fits.
    RequestIdTrace::Roll((v % 10_000) as u16)
}

/// `id` marked sampled (its trace nibble set to `9`), when it has UUID length; `None` otherwise
/// (the id is left as it is).
pub fn mark_sampled(id: &str) -> Option<String> {
    if id.len() != UUID_LEN || !id.is_ascii() {
        return None;
    }
    let mut s = String::with_capacity(UUID_LEN);
    s.push_str(&id[..TRACE_NIBBLE]);
    s.push(NIBBLE_SAMPLED as char);
    s.push_str(&id[TRACE_NIBBLE + 1..]);
    Some(s)
}

/// Whether the decision for a request with these headers and this id is the id's own roll (the
/// headers decide nothing and the id is not marked): then a sampled request's id is marked, so
/// that hops with another percentage keep the decision, as Envoy does.
pub fn rolled_on_request_id(incoming: Incoming, id: RequestIdTrace) -> bool {
    let undecided = matches!(
        incoming,
        Incoming::None | Incoming::Parent { sampled: None, .. }
    );
    undecided && matches!(id, RequestIdTrace::Roll(_))
}

/// How a request's trace goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not sampled, and the headers already say so, or the request id's roll does (a next hop
    /// with the same percentage rolls the same): forwarded unchanged, no span.
    Unsampled,
    /// Not sampled by a random roll and nothing said so: `x-b3-sampled: 0` is added so that
    /// the next hops honour the decision; no span.
    UnsampledRoot,
    /// Sampled: a span with this context; the headers are rewritten to it.
    Sampled(TraceContext),
}

/// Parse a lowercase or uppercase hex string of exactly `N` bytes, not all zero.
fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = d(pair[0])? << 4 | d(pair[1])?;
    }
    (out != [0u8; N]).then_some(out)
}

/// A B3 trace id: 32 or 16 hex digits (the latter padded, `short`).
fn b3_trace_id(s: &str) -> Option<(TraceId, bool)> {
    match s.len() {
        32 => hex::<16>(s).map(|t| (t, false)),
        16 => hex::<8>(s).map(|h| {
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&h);
            (t, true)
        }),
        _ => None,
    }
}

/// B3's sampling states: `1`/`true` sampled, `0`/`false` not, `d` (debug) sampled.
fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// W3C `traceparent`: `version-traceid-parentid-flags`; version `ff` is invalid; version `00`
/// has exactly four fields, a later version may have more after a `-`. Lowercase hex only.
pub fn parse_traceparent(s: &str) -> Option<Incoming> {
    let s = s.trim();
    if s.len() < 55 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (version, rest) = (s.get(..2)?, s.get(2..)?);
    if version == "ff" || hex::<1>(version).is_none() && version != "00" {
        return None;
    }
    if version == "00" && s.len() != 55 || s.len() > 55 && s.as_bytes()[55] != b'-' {
        return None;
    }
    let b = rest.as_bytes();
    if b[0] != b'-' || b[33] != b'-' || b[50] != b'-' {
        return None;
    }
    let trace_id = hex::<16>(&rest[1..33])?;
    let span_id = hex::<8>(&rest[34..50])?;
    let flags = rest
        .get(51..53)
        .filter(|f| f.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|f| u8::from_str_radix(f, 16).ok())?;
    Some(Incoming::Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        short: false,
    })
}

/// B3 single header: `0`, `1`, `d` (a decision alone), or
/// `traceid-spanid[-sampled[-parentspanid]]`.
pub fn parse_b3_single(s: &str) -> Option<Incoming> {
    let s = s.trim();
    if let Some(d) = b3_sampled(s).filter(|_| s.len() == 1) {
        return Some(Incoming::Decision(d));
    }
    let mut parts = s.split('-');
    let (trace_id, short) = b3_trace_id(parts.next()?)?;
    let span_id = hex::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(v) => Some(b3_sampled(v)?),
    };
    if let Some(p) = parts.next() {
        hex::<8>(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Incoming::Parent {
        trace_id,
        span_id,
        sampled,
        short,
    })
}

/// B3 multi headers: `x-b3-traceid` and `x-b3-spanid` together, `x-b3-sampled`, and
/// `x-b3-flags: 1` (debug: sampled).
pub fn parse_b3_multi(h: &Headers<'_>) -> Option<Incoming> {
    let debug = h.x_b3_flags.map(str::trim) == Some("1");
    let sampled = h.x_b3_sampled.and_then(|s| b3_sampled(s.trim()));
    let sampled = if debug { Some(true) } else { sampled };
    let ids = h
        .x_b3_traceid
        .zip(h.x_b3_spanid)
        .and_then(|(t, s)| Some((b3_trace_id(t.trim())?, hex::<8>(s.trim())?)));
    match (ids, sampled) {
        (Some(((trace_id, short), span_id)), sampled) => Some(Incoming::Parent {
            trace_id,
            span_id,
            sampled,
            short,
        }),
        (None, Some(d)) => Some(Incoming::Decision(d)),
        (None, None) => None,
    }
}

/// What the request's headers say, by the precedence above.
pub fn incoming(h: &Headers<'_>) -> Incoming {
    h.traceparent
        .and_then(parse_traceparent)
        .or_else(|| h.b3.and_then(parse_b3_single))
        .or_else(|| parse_b3_multi(h))
        .unwrap_or(Incoming::None)
}

/// The decision for a request: `id` what its `x-request-id` says, `percent` the sampling
/// percentage (0–100) for requests that bring no decision, `roll` a uniform number in `[0, 1)`
/// (used when the id is no roll), `new_trace` and `new_span` fresh random ids (used as needed).
pub fn decide(
    incoming: Incoming,
    id: RequestIdTrace,
    percent: f64,
    roll: f64,
    new_trace: TraceId,
    new_span: SpanId,
) -> Decision {
    decide_lazy(incoming, id, percent, || roll, || (new_trace, new_span))
}

/// [`decide`] drawing what it needs only when it needs it: `roll` when neither the request's
/// headers nor its id decide and `percent` is neither 0 nor 100, `ids` (a new trace id and span
/// id; the trace id is used only for a new trace) when the request is sampled.
pub fn decide_lazy(
    incoming: Incoming,
    id: RequestIdTrace,
    percent: f64,
    roll: impl FnOnce() -> f64,
    ids: impl FnOnce() -> (TraceId, SpanId),
) -> Decision {
    // A marked id is a decision when the headers bring none.
    let incoming = match (incoming, id) {
        (Incoming::None, RequestIdTrace::Traced) => Incoming::Decision(true),
        (
            Incoming::Parent {
                trace_id,
                span_id,
                sampled: None,
                short,
            },
            RequestIdTrace::Traced,
        ) => Incoming::Parent {
            trace_id,
            span_id,
            sampled: Some(true),
            short,
        },
        (i, _) => i,
    };
    // An id's roll is the next hop's too: its "no" needs no header.
    let (roll_of_id, unsampled) = match id {
        RequestIdTrace::Roll(r) => (Some(f64::from(r) / 10_000.0), Decision::Unsampled),
        _ => (None, Decision::UnsampledRoot),
    };
    let by_rate =
        || percent >= 100.0 || percent > 0.0 && roll_of_id.unwrap_or_else(roll) * 100.0 < percent;
    let root = |ids: (TraceId, SpanId)| {
        Decision::Sampled(TraceContext {
            trace_id: ids.0,
            span_id: ids.1,
            parent: None,
            sampled: true,
            short: false,
        })
    };
    match incoming {
        Incoming::Decision(false) => Decision::Unsampled,
        Incoming::Decision(true) => root(ids()),
        Incoming::None => {
            if by_rate() {
                root(ids())
            } else {
                unsampled
            }
        }
        Incoming::Parent {
            trace_id,
            span_id,
            sampled,
            short,
        } => match sampled {
            Some(false) => Decision::Unsampled,
            // Ids without a decision: this proxy decides (the next hops follow it).
            Some(true) => child(trace_id, span_id, short, ids().1),
            None => {
                if by_rate() {
                    child(trace_id, span_id, short, ids().1)
                } else {
                    unsampled
                }
            }
        },
    }
}

/// This proxy's span under an incoming one.
fn child(trace_id: TraceId, parent: SpanId, short: bool, span_id: SpanId) -> Decision {
    Decision::Sampled(TraceContext {
        trace_id,
        span_id,
        parent: Some(parent),
        sampled: true,
        short,
    })
}

/// Lowercase hex of `b`.
pub fn to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 0x0f)] as char);
    }
    s
}

/// The header values a sampled request goes on with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub traceparent: String,
    pub x_b3_traceid: String,
    pub x_b3_spanid: String,
    /// `None`: the header is removed (a root span has no parent).
    pub x_b3_parentspanid: Option<String>,
    pub x_b3_sampled: &'static str,
    /// The single `b3` header's new value (written only when the request had one).
    pub b3: String,
}

impl TraceContext {
    /// The B3 form of the trace id (16 hex digits when it came as 64 bits).
    pub fn b3_trace_id(&self) -> String {
        if self.short {
            to_hex(&self.trace_id[8..])
        } else {
            to_hex(&self.trace_id)
        }
    }

    /// The headers of the next hop: this span is their parent.
    pub fn outgoing(&self) -> Outgoing {
        let flag = if self.sampled { "1" } else { "0" };
        let trace = to_hex(&self.trace_id);
        let span = to_hex(&self.span_id);
        let b3_trace = self.b3_trace_id();
        let parent = self.parent.map(|p| to_hex(&p));
        let b3 = match &parent {
            Some(p) => format!("{b3_trace}-{span}-{flag}-{p}"),
            None => format!("{b3_trace}-{span}-{flag}"),
        };
        Outgoing {
            traceparent: format!("00-{trace}-{span}-0{flag}"),
            x_b3_traceid: b3_trace,
            x_b3_spanid: span,
            x_b3_parentspanid: parent,
            x_b3_sampled: flag,
            b3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S: &str = "00f067aa0ba902b7";
    const NEW_T: TraceId = [9; 16];
    const NEW_S: SpanId = [7; 8];

    fn tid(s: &str) -> TraceId {
        hex::<16>(s).unwrap()
    }
    fn sid(s: &str) -> SpanId {
        hex::<8>(s).unwrap()
    }
    fn parent(sampled: Option<bool>) -> Incoming {
        Incoming::Parent {
            trace_id: tid(T),
            span_id: sid(S),
            sampled,
            short: false,
        }
    }

    #[test]
    fn traceparent_cases() {
        let tp = |s: &str| parse_traceparent(s);
        assert_eq!(tp(&format!("00-{T}-{S}-01")), Some(parent(Some(true))));
        assert_eq!(tp(&format!("00-{T}-{S}-00")), Some(parent(Some(false))));
        // Other flag bits are not the sampled bit.
        assert_eq!(tp(&format!("00-{T}-{S}-02")), Some(parent(Some(false))));
        // A later version may carry more fields; version ff never is valid.
        assert_eq!(
            tp(&format!("01-{T}-{S}-01-extra")),
            Some(parent(Some(true)))
        );
        for bad in [
            format!("ff-{T}-{S}-01"),
            format!("00-{T}-{S}-01-extra"),
            format!("00-{}-{S}-01", "0".repeat(32)),
            format!("00-{T}-{}-01", "0".repeat(16)),
            format!("00-{}-{S}-01", T.to_uppercase()),
            format!("00-{T}-{S}-0x"),
            format!("00-{T}-{S}"),
            format!("00_{T}_{S}_01"),
            format!("zz-{T}-{S}-01"),
            String::new(),
        ] {
            assert_eq!(tp(&bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_single_cases() {
        let b3 = |s: &str| parse_b3_single(s);
        assert_eq!(b3("0"), Some(Incoming::Decision(false)));
        assert_eq!(b3("1"), Some(Incoming::Decision(true)));
        assert_eq!(b3("d"), Some(Incoming::Decision(true)));
        assert_eq!(b3(&format!("{T}-{S}-1")), Some(parent(Some(true))));
        assert_eq!(b3(&format!("{T}-{S}-0")), Some(parent(Some(false))));
        assert_eq!(b3(&format!("{T}-{S}-d-{S}")), Some(parent(Some(true))));
        assert_eq!(b3(&format!("{T}-{S}")), Some(parent(None)));
        let short = "a3ce929d0e0e4736";
        let mut padded = [0u8; 16];
        padded[8..].copy_from_slice(&sid(short));
        assert_eq!(
            b3(&format!("{short}-{S}-1")),
            Some(Incoming::Parent {
                trace_id: padded,
                span_id: sid(S),
                sampled: Some(true),
                short: true
            })
        );
        for bad in [
            format!("{T}-{S}-2"),
            format!("{T}-{S}-1-zz"),
            format!("{T}-{S}-1-{S}-x"),
            T.to_string(),
            "abc-def".to_string(),
            String::new(),
        ] {
            assert_eq!(b3(&bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_cases() {
        let h = |t: Option<&'static str>,
                 s: Option<&'static str>,
                 sampled: Option<&'static str>,
                 flags: Option<&'static str>| Headers {
            x_b3_traceid: t,
            x_b3_spanid: s,
            x_b3_sampled: sampled,
            x_b3_flags: flags,
            ..Default::default()
        };
        assert_eq!(
            parse_b3_multi(&h(Some(T), Some(S), Some("1"), None)),
            Some(parent(Some(true)))
        );
        assert_eq!(
            parse_b3_multi(&h(Some(T), Some(S), Some("0"), None)),
            Some(parent(Some(false)))
        );
        assert_eq!(
            parse_b3_multi(&h(Some(T), Some(S), Some("true"), None)),
            Some(parent(Some(true)))
        );
        // Debug overrides sampled.
        assert_eq!(
            parse_b3_multi(&h(Some(T), Some(S), Some("0"), Some("1"))),
            Some(parent(Some(true)))
        );
        assert_eq!(
            parse_b3_multi(&h(Some(T), Some(S), None, None)),
            Some(parent(None))
        );
        // A decision alone, ids missing or broken.
        assert_eq!(
            parse_b3_multi(&h(None, None, Some("0"), None)),
            Some(Incoming::Decision(false))
        );
        assert_eq!(
            parse_b3_multi(&h(Some(T), None, Some("1"), None)),
            Some(Incoming::Decision(true))
        );
        assert_eq!(parse_b3_multi(&h(Some("xyz"), Some(S), None, None)), None);
        assert_eq!(parse_b3_multi(&h(None, None, None, None)), None);
    }

    #[test]
    fn precedence_traceparent_then_b3_then_multi() {
        let other_t = "11111111111111111111111111111111";
        let tp = format!("00-{T}-{S}-01");
        let single = format!("{other_t}-{S}-0");
        let h = Headers {
            traceparent: Some(&tp),
            b3: Some(&single),
            x_b3_traceid: Some(other_t),
            x_b3_spanid: Some(S),
            x_b3_sampled: Some("0"),
            x_b3_flags: None,
        };
        assert_eq!(incoming(&h), parent(Some(true)));
        let h2 = Headers {
            traceparent: Some("garbage"),
            ..h
        };
        assert!(matches!(
            incoming(&h2),
            Incoming::Parent { sampled: Some(false), trace_id, .. } if trace_id == tid(other_t)
        ));
        let h3 = Headers {
            traceparent: None,
            b3: None,
            x_b3_sampled: Some("1"),
            ..h
        };
        assert_eq!(
            incoming(&h3),
            Incoming::Parent {
                trace_id: tid(other_t),
                span_id: sid(S),
                sampled: Some(true),
                short: false
            }
        );
        assert_eq!(incoming(&Headers::default()), Incoming::None);
    }

    #[test]
    fn decisions_honour_the_incoming_one_else_the_rate() {
        let d = |i: Incoming, pct: f64, roll: f64| {
            decide(i, RequestIdTrace::Opaque, pct, roll, NEW_T, NEW_S)
        };
        // An incoming decision wins over any rate.
        assert_eq!(d(parent(Some(false)), 100.0, 0.0), Decision::Unsampled);
        assert_eq!(
            d(Incoming::Decision(false), 100.0, 0.0),
            Decision::Unsampled
        );
        let child = Decision::Sampled(TraceContext {
            trace_id: tid(T),
            span_id: NEW_S,
            parent: Some(sid(S)),
            sampled: true,
            short: false,
        });
        assert_eq!(d(parent(Some(true)), 0.0, 0.99), child);
        let root = Decision::Sampled(TraceContext {
            trace_id: NEW_T,
            span_id: NEW_S,
            parent: None,
            sampled: true,
            short: false,
        });
        assert_eq!(d(Incoming::Decision(true), 0.0, 0.99), root);
        // No decision: the rate (roll in [0,1) against percent/100).
        assert_eq!(d(Incoming::None, 1.0, 0.0099), root);
        assert_eq!(d(Incoming::None, 1.0, 0.01), Decision::UnsampledRoot);
        assert_eq!(d(Incoming::None, 0.0, 0.0), Decision::UnsampledRoot);
        assert_eq!(d(Incoming::None, 100.0, 0.999), root);
        assert_eq!(d(parent(None), 50.0, 0.2), child);
        assert_eq!(d(parent(None), 50.0, 0.7), Decision::UnsampledRoot);
    }

    /// The unsampled path draws no ids, and no roll when the headers or the percentage decide.
    #[test]
    fn lazy_decisions_draw_only_what_they_use() {
        let no_roll = || -> f64 { panic!("rolled") };
        let no_ids = || -> (TraceId, SpanId) { panic!("ids drawn") };
        let ids = || (NEW_T, NEW_S);
        assert_eq!(
            decide_lazy(Incoming::None, RequestIdTrace::Opaque, 1.0, || 0.5, no_ids),
            Decision::UnsampledRoot
        );
        assert_eq!(
            decide_lazy(Incoming::None, RequestIdTrace::Opaque, 0.0, no_roll, no_ids),
            Decision::UnsampledRoot
        );
        assert_eq!(
            decide_lazy(
                parent(Some(false)),
                RequestIdTrace::Opaque,
                50.0,
                no_roll,
                no_ids
            ),
            Decision::Unsampled
        );
        assert_eq!(
            decide_lazy(
                Incoming::Decision(false),
                RequestIdTrace::Opaque,
                50.0,
                no_roll,
                no_ids
            ),
            Decision::Unsampled
        );
        assert!(matches!(
            decide_lazy(Incoming::None, RequestIdTrace::Opaque, 100.0, no_roll, ids),
            Decision::Sampled(TraceContext {
                trace_id: NEW_T,
                span_id: NEW_S,
                ..
            })
        ));
        assert!(matches!(
            decide_lazy(
                parent(Some(true)),
                RequestIdTrace::Opaque,
                0.0,
                no_roll,
                ids
            ),
            Decision::Sampled(TraceContext {
                span_id: NEW_S,
                parent: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn request_ids_say_traced_roll_or_nothing() {
        use RequestIdTrace::*;
        for (id, want) in [
            // Envoy's trace nibble (position 14): sampled, forced, client.
            ("9f4c1a2b-7d3e-9a1b-8c2d-0123456789ab", Traced),
            ("9f4c1a2b-7d3e-aa1b-8c2d-0123456789ab", Traced),
            ("9f4c1a2b-7d3e-ba1b-8c2d-0123456789ab", Traced),
            // A fresh UUID v4 (nibble 4): its first 8 hex digits, modulo 10,000.
            ("00000000-7d3e-4a1b-8c2d-0123456789ab", Roll(0)),
            ("00001388-7d3e-4a1b-8c2d-0123456789ab", Roll(5000)),
            ("ffffffff-7d3e-4a1b-8c2d-0123456789ab", Roll(7295)),
            ("0000270F-7d3e-4a1b-8c2d-0123456789ab", Roll(9999)),
            // Another nibble (or length) is not a mark; 8 hex digits still roll.
            ("00000063-7d3e-ca1b-8c2d-0123456789ab", Roll(99)),
            ("00000063-9", Roll(99)),
            ("00000063", Roll(99)),
            // Nothing to roll on: a random roll.
            ("", Opaque),
            ("rid-1", Opaque),
            ("0000006", Opaque),
            ("0000006x-7d3e-4a1b-8c2d-0123456789ab", Opaque),
            ("+0000063-7d3e-4a1b-8c2d-0123456789ab", Opaque),
        ] {
            assert_eq!(request_id_trace(id), want, "{id}");
        }
    }

    #[test]
    fn marking_sets_the_nibble_of_uuid_length_ids_only() {
        let id = "00001388-7d3e-4a1b-8c2d-0123456789ab";
        let marked = mark_sampled(id).unwrap();
        assert_eq!(marked, "00001388-7d3e-9a1b-8c2d-0123456789ab");
        assert_eq!(request_id_trace(&marked), RequestIdTrace::Traced);
        assert_eq!(mark_sampled("rid-1"), None);
        assert_eq!(mark_sampled(&format!("{id}0")), None);
        // 36 bytes, not ASCII: left alone.
        assert_eq!(mark_sampled("é0001388-7d3e-4a1b-8c2d-0123456789a"), None);
    }

    /// The id decides when the headers do not: a mark samples, a roll is the id's own (an
    /// unsampled one needs no header: a next hop with the same percentage rolls the same), no
    /// roll is random (and an unsampled one says so to the next hops).
    #[test]
    fn the_request_id_decides_when_the_headers_do_not() {
        use RequestIdTrace::*;
        let d = |i: Incoming, id: RequestIdTrace, pct: f64, roll: f64| {
            decide(i, id, pct, roll, NEW_T, NEW_S)
        };
        let root = Decision::Sampled(TraceContext {
            trace_id: NEW_T,
            span_id: NEW_S,
            parent: None,
            sampled: true,
            short: false,
        });
        let child = Decision::Sampled(TraceContext {
            trace_id: tid(T),
            span_id: NEW_S,
            parent: Some(sid(S)),
            sampled: true,
            short: false,
        });
        // A marked id samples at any percentage; the headers' decision still wins over it.
        assert_eq!(d(Incoming::None, Traced, 0.0, 0.99), root);
        assert_eq!(d(parent(None), Traced, 0.0, 0.99), child);
        assert_eq!(
            d(parent(Some(false)), Traced, 100.0, 0.0),
            Decision::Unsampled
        );
        assert_eq!(
            d(Incoming::Decision(false), Traced, 100.0, 0.0),
            Decision::Unsampled
        );
        // The id's roll, not the random one: r < percent × 100.
        assert_eq!(d(Incoming::None, Roll(99), 1.0, 0.99), root);
        assert_eq!(d(Incoming::None, Roll(100), 1.0, 0.0), Decision::Unsampled);
        assert_eq!(d(Incoming::None, Roll(4999), 50.0, 0.99), root);
        assert_eq!(
            d(Incoming::None, Roll(5000), 50.0, 0.0),
            Decision::Unsampled
        );
        assert_eq!(d(parent(None), Roll(5000), 50.0, 0.0), Decision::Unsampled);
        assert_eq!(d(parent(None), Roll(0), 50.0, 0.99), child);
        assert_eq!(d(Incoming::None, Roll(9999), 100.0, 0.99), root);
        assert_eq!(d(Incoming::None, Roll(0), 0.0, 0.0), Decision::Unsampled);
        // Headers that decide are not overruled by the roll.
        assert_eq!(d(parent(Some(true)), Roll(9999), 0.0, 0.99), child);
        assert_eq!(
            d(parent(Some(false)), Roll(0), 100.0, 0.0),
            Decision::Unsampled
        );
        // No roll in the id: the random one, and an unsampled root says so.
        assert_eq!(d(Incoming::None, Opaque, 1.0, 0.0), root);
        assert_eq!(d(Incoming::None, Opaque, 1.0, 0.5), Decision::UnsampledRoot);
        assert_eq!(d(parent(None), Opaque, 50.0, 0.7), Decision::UnsampledRoot);
        // Only an undecided request rolled on an unmarked id has its id marked when sampled.
        assert!(rolled_on_request_id(Incoming::None, Roll(1)));
        assert!(rolled_on_request_id(parent(None), Roll(1)));
        assert!(!rolled_on_request_id(parent(Some(true)), Roll(1)));
        assert!(!rolled_on_request_id(Incoming::Decision(true), Roll(1)));
        assert!(!rolled_on_request_id(Incoming::None, Traced));
        assert!(!rolled_on_request_id(Incoming::None, Opaque));
    }

    /// The id's roll draws nothing at random, so hops with the same percentage agree on every id;
    /// a hop with a higher percentage samples all that a lower one did; 1 % is 100 of 10,000.
    #[test]
    fn hops_agree_on_the_ids_roll() {
        let no_roll = || -> f64 { panic!("rolled at random") };
        let ids = || (NEW_T, NEW_S);
        let sampled = |r: u16, pct: f64| {
            matches!(
                decide_lazy(Incoming::None, RequestIdTrace::Roll(r), pct, no_roll, ids),
                Decision::Sampled(_)
            )
        };
        let pcts = [0.0, 0.5, 1.0, 10.0, 50.0, 99.99, 100.0];
        for r in 0..10_000 {
            for w in pcts.windows(2) {
                assert!(!sampled(r, w[0]) || sampled(r, w[1]), "{r} {w:?}");
            }
        }
        let k = (0..10_000).filter(|&r| sampled(r, 1.0)).count();
        assert_eq!(k, 100);
    }

    #[test]
    fn outgoing_headers_name_this_span_as_the_parent() {
        let c = TraceContext {
            trace_id: tid(T),
            span_id: sid("b7ad6b7169203331"),
            parent: Some(sid(S)),
            sampled: true,
            short: false,
        };
        let o = c.outgoing();
        assert_eq!(o.traceparent, format!("00-{T}-b7ad6b7169203331-01"));
        assert_eq!(o.x_b3_traceid, T);
        assert_eq!(o.x_b3_spanid, "b7ad6b7169203331");
        assert_eq!(o.x_b3_parentspanid.as_deref(), Some(S));
        assert_eq!(o.x_b3_sampled, "1");
        assert_eq!(o.b3, format!("{T}-b7ad6b7169203331-1-{S}"));
        // Parsing what was written gives this span back as the next hop's parent.
        assert_eq!(
            parse_traceparent(&o.traceparent),
            Some(Incoming::Parent {
                trace_id: c.trace_id,
                span_id: c.span_id,
                sampled: Some(true),
                short: false
            })
        );
        let short = TraceContext {
            trace_id: {
                let mut t = [0u8; 16];
                t[8..].copy_from_slice(&sid(S));
                t
            },
            parent: None,
            short: true,
            ..c
        };
        let o = short.outgoing();
        assert_eq!(o.x_b3_traceid, S);
        assert_eq!(o.x_b3_parentspanid, None);
        assert_eq!(o.b3, format!("{S}-b7ad6b7169203331-1"));
        assert_eq!(
            o.traceparent,
            format!("00-0000000000000000{S}-b7ad6b7169203331-01")
        );
    }
}
