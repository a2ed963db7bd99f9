//! Who may use admin operations (scale, reload, model load and unload,
//! shared memory, listing predictions by a client's request id), whatever
//! the protocol. With `server.admin_token` set, a caller needs
//! `Authorization: Bearer <token>`; with none, loopback callers pass, and
//! only those that carry no forwarding header: behind a reverse proxy on the
//! same host every client's TCP peer is loopback, so the peer alone proves
//! nothing there.

use crate::error::ApiError;

/// Who asks for an admin route, whatever the protocol: its
/// `Authorization` value, its TCP peer, and the first forwarding header
/// (HTTP) or metadata key (gRPC) it carries.
pub struct Caller<'a> {
    pub authorization: Option<&'a str>,
    pub peer: Option<std::net::SocketAddr>,
    pub forwarded: Option<&'static str>,
}

/// The admin check of HTTP and gRPC alike.
pub fn check_admin(token: Option<&str>, caller: &Caller) -> Result<(), ApiError> {
    match token {
        Some(token) => {
            let given = caller
                .authorization
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    ApiError::Unauthorized("admin routes need Authorization: Bearer <token>".into())
                })?;
            if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized("the admin token is wrong".into()))
            }
        }
        None => {
            let loopback = caller
                .peer
                .is_some_and(|a| a.ip().to_canonical().is_loopback());
            if !loopback {
                return Err(ApiError::Forbidden(
                    "admin routes answer loopback clients only while server.admin_token is unset"
                        .into(),
                ));
            }
            match caller.forwarded {
                Some(forwarded) => Err(ApiError::Forbidden(format!(
                    "this request came through a proxy ({forwarded} header): admin routes \
                     behind a proxy need server.admin_token to be set"
                ))),
                None => Ok(()),
            }
        }
    }
}

/// Headers a proxy adds: their presence means the TCP peer is the proxy,
/// not the client.
pub const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(ip: &str) -> Caller<'static> {
        Caller {
            authorization: None,
            peer: Some(format!("{ip}:4242").parse().unwrap()),
            forwarded: None,
        }
    }

    #[test]
    fn without_a_token_only_loopback_clients_pass() {
        assert!(check_admin(None, &from("127.0.0.1")).is_ok());
        assert!(check_admin(None, &from("[::1]")).is_ok());
        let err = check_admin(None, &from("10.1.2.3")).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)));
    }

    #[test]
    fn without_a_token_a_proxied_loopback_request_is_refused() {
        for header in FORWARDING_HEADERS {
            let proxied = Caller {
                forwarded: Some(header),
                ..from("127.0.0.1")
            };
            match check_admin(None, &proxied) {
                Err(ApiError::Forbidden(why)) => {
                    assert!(why.contains("server.admin_token"), "{why}")
                }
                other => panic!("{header}: {other:?}"),
            }
        }
        let with_token = Caller {
            forwarded: Some("x-forwarded-for"),
            authorization: Some("Bearer s3cret"),
            ..from("127.0.0.1")
        };
        assert!(
            check_admin(Some("s3cret"), &with_token).is_ok(),
            "a token works through a proxy"
        );
    }

    #[test]
    fn with_a_token_the_bearer_must_match_from_anywhere() {
        let token = Some("s3cret");
        assert!(matches!(
            check_admin(token, &from("10.1.2.3")),
            Err(ApiError::Unauthorized(_))
        ));
        let wrong = Caller {
            authorization: Some("Bearer nope"),
            ..from("10.1.2.3")
        };
        assert!(matches!(
            check_admin(token, &wrong),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(
            check_admin(token, &from("127.0.0.1")).is_err(),
            "a token binds loopback too"
        );
        let right = Caller {
            authorization: Some("Bearer s3cret"),
            ..from("10.1.2.3")
        };
        assert!(check_admin(token, &right).is_ok());
    }
}
