//! Bearer tokens for a local node: signed HS256 with the secret the node keeps in its data
//! directory (`<dir>/dev-jwt-secret`), exactly as `payu token` does, so the tool needs no other
//! credentials. A deployment with a real identity provider passes `--token` instead.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The file the node keeps its development secret in (gateway `auth::DEV_SECRET_FILE_NAME`).
pub const DEV_SECRET_FILE_NAME: &str = "dev-jwt-secret";
/// RFC 7518 §3.2: an HS256 key is at least 256 bits; the node refuses shorter secrets too.
const HS256_SECRET_BYTES_MIN: usize = 32;
/// Operators open settlement accounts and make deposits; the system scope moves money
/// between any customers' accounts.
pub const LOADTEST_SCOPES: &[&str] = &["payu:operator", "payu:system"];

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
}

/// Reads `<data_dir>/dev-jwt-secret` (the node creates it on first start).
pub fn read_dev_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(DEV_SECRET_FILE_NAME);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (has the node been started on this data directory?)",
            path.display()
        )
    })?;
    let secret = text.trim_ascii().to_vec();
    if secret.len() < HS256_SECRET_BYTES_MIN {
        bail!(
            "{} holds {} bytes; an HS256 secret needs {HS256_SECRET_BYTES_MIN}",
            path.display(),
            secret.len()
        );
    }
    Ok(secret)
}

/// A token for `subject` with `scopes`, valid for `ttl` from now.
pub fn mint(
    secret: &[u8],
    subject: &str,
    scopes: &[&str],
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let claims = Claims {
        sub: subject,
        scope: scopes.join(" "),
        iat: now,
        exp: now.saturating_add(ttl.as_secs().max(1)),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .context("signing the token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_with_the_same_secret_only() {
        // The node checks the signature, exp and the scope claim; all three must round-trip.
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let token = mint(
            &secret,
            "payu-loadtest",
            LOADTEST_SCOPES,
            Duration::from_secs(60),
        )
        .expect("mint");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(&secret),
            &validation,
        )
        .expect("verifies");
        assert_eq!(decoded.claims["scope"], "payu:operator payu:system");
        assert_eq!(decoded.claims["sub"], "payu-loadtest");
        let other = jsonwebtoken::DecodingKey::from_secret(b"another secret, also 32 bytes long!");
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &other, &validation).is_err());
    }

    #[test]
    fn a_short_or_missing_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_dev_secret(dir.path()).is_err(), "missing file");
        std::fs::write(dir.path().join(DEV_SECRET_FILE_NAME), "short\n").expect("write");
        assert!(read_dev_secret(dir.path()).is_err(), "too short");
        std::fs::write(
            dir.path().join(DEV_SECRET_FILE_NAME),
            format!("{}\n", "ab".repeat(32)),
        )
        .expect("write");
        assert_eq!(read_dev_secret(dir.path()).expect("read").len(), 64);
    }
}
