//! OpenID Connect discovery, pure: where an issuer's discovery document is, and the `jwks_uri`
//! it names. Used by `authn` (a rule with neither `jwks` nor `jwksUri`) and `jwks` (the fetch).

/// The OpenID discovery document of `issuer`: `<issuer>/.well-known/openid-configuration`
/// (Istio's resolver trims a trailing `/` first); `Err` when the issuer is not an `https://`
/// URL (OpenID Connect Discovery requires one).
pub fn discovery_url(issuer: &str) -> Result<String, String> {
    let base = issuer.trim_end_matches('/');
    let ok = base
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
    if !ok {
        return Err(format!(
            "the rule has neither jwks nor jwksUri, and its issuer {issuer:?} is not an https:// URL to read an OpenID discovery document from"
        ));
    }
    Ok(format!("{base}/.well-known/openid-configuration"))
}

/// The `jwks_uri` of an OpenID discovery document (JSON); it must be `https://`.
pub fn jwks_uri_of(discovery: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(discovery)
        .map_err(|e| format!("the discovery document is not JSON: {e}"))?;
    match v.get("jwks_uri") {
        Some(serde_json::Value::String(u)) if u.starts_with("https://") => Ok(u.clone()),
        Some(serde_json::Value::String(u)) => Err(format!(
            "the discovery document's jwks_uri {u:?} is not an https:// URL"
        )),
        Some(_) => Err("the discovery document's jwks_uri is not a string".into()),
        None => Err("the discovery document has no jwks_uri".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_documents() {
        assert_eq!(
            discovery_url("https://idp.example/").as_deref(),
            Ok("https://idp.example/.well-known/openid-configuration")
        );
        assert_eq!(
            discovery_url("https://idp.example/realms/a").as_deref(),
            Ok("https://idp.example/realms/a/.well-known/openid-configuration")
        );
        for bad in [
            "testing@secure.istio.io",
            "http://idp.example",
            "https://",
            "",
        ] {
            let e = discovery_url(bad).unwrap_err();
            assert!(e.contains("is not an https:// URL"), "{bad}: {e}");
        }
        let cases = [
            (
                r#"{"issuer":"https://i","jwks_uri":"https://i/keys"}"#,
                Ok("https://i/keys".to_string()),
            ),
            (
                r#"{"jwks_uri":"http://i/keys"}"#,
                Err(
                    "the discovery document's jwks_uri \"http://i/keys\" is not an https:// URL"
                        .to_string(),
                ),
            ),
            (
                r#"{"jwks_uri":7}"#,
                Err("the discovery document's jwks_uri is not a string".to_string()),
            ),
            (
                r#"{"issuer":"https://i"}"#,
                Err("the discovery document has no jwks_uri".to_string()),
            ),
        ];
        for (doc, want) in cases {
            assert_eq!(jwks_uri_of(doc), want, "{doc}");
        }
        assert!(jwks_uri_of("<html>")
            .unwrap_err()
            .starts_with("the discovery document is not JSON"));
    }
}
