//! The access log's line: one per HTTP request and per gRPC inference call
//! at `info` under the target `gantry::access`, with the protocol, method,
//! path, status, model, duration, bytes in and out, request id and trace
//! id; in JSON mode these are the object's fields. A gRPC call's method is
//! `POST` (as gRPC sends it), its path the RPC's
//! (`/inference.GRPCInferenceService/ModelInfer`) and its status the HTTP
//! status its outcome maps from, as the stats count it. `log.level` (or
//! `RUST_LOG`) with `gantry::access=warn` turns it off. The HTTP edge
//! writes it from a middleware (`crate::api::access_log`), the gRPC edge
//! from its inference call.

/// The target access lines are logged under.
pub const TARGET: &str = "gantry::access";

/// The trace id of a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2
/// hex>`), when it is one: lower-case hex, not all zeros.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

/// What one access line says.
pub struct Line<'a> {
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub model: Option<&'a str>,
    pub duration_ms: f64,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

/// Logs one access line (absent values are left out of the line). Values
/// Gantry vouches for (the protocol, an HTTP method token, a model name, a
/// checked request id and trace id) are written as they are (`Display`:
/// `Debug` would escape each character); the path is the client's, so it
/// stays quoted and escaped, and cannot forge fields in a text line.
pub fn line(l: Line<'_>) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    if crate::access_format::write(&l) {
        return;
    }
    event(&l);
}

/// Logs `l` as a `tracing` event (see [`line`]).
pub(crate) fn event(l: &Line<'_>) {
    tracing::info!(
        target: TARGET,
        protocol = %l.protocol,
        method = %l.method,
        path = l.path,
        status = l.status,
        model = l.model.map(display),
        duration_ms = (l.duration_ms * 1000.0).round() / 1000.0,
        bytes_in = l.bytes_in,
        bytes_out = l.bytes_out,
        request_id = l.request_id.map(display),
        trace_id = l.trace_id.map(display),
        "access"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        assert_eq!(
            trace_id(&format!("01-{id}-00f067aa0ba902b7-01-x")),
            Some(id)
        );
        for bad in [
            "",
            "00",
            &format!("00-{id}-00f067aa0ba902b7"),
            &format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            &format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            &format!("00-{id}-0000000000000000-01"),
            &format!("ff-{id}-00f067aa0ba902b7-01"),
            &format!("00-{id}-00f067aa0ba902b7-01-extra"),
            &format!("00-{id}x-00f067aa0ba902b7-01"),
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }
}
