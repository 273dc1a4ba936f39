//! Bearer-token authentication for the gateway: validates the JWT in an `Authorization: Bearer`
//! header against the keys from configuration and turns it into a [`Principal`] (who is calling,
//! which owner they act as, which scopes they hold, which client to rate-limit).
//!
//! Only HS256 (shared secrets) and RS256 (public keys, e.g. from Keycloak) are accepted, and each
//! only against keys of its own kind, so a token cannot pick the algorithm that verifies it
//! (algorithm confusion). Keys and validation rules are built once in [`Authenticator::new`];
//! a request costs one header parse and one signature check per configured key of its kind,
//! or, for a token verified recently, one lookup in a bounded cache and the expiry check.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use payu_engine::OwnerId;
use serde::{Deserialize, Serialize};

/// Moves money only out of its own accounts.
pub const SCOPE_CUSTOMER: &str = "payu:customer";
/// Settlement deposits and withdrawals, settlement accounts, account updates.
pub const SCOPE_OPERATOR: &str = "payu:operator";
/// Trusted internal services (the app gateway): may act for any owner.
pub const SCOPE_SYSTEM: &str = "payu:system";
/// Admin endpoints (status, snapshot).
pub const SCOPE_ADMIN: &str = "payu:admin";

/// A bearer token longer than this is refused before any parsing: real tokens are a few KiB.
pub const TOKEN_LENGTH_MAX: usize = 16 * 1024;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
pub const HS256_SECRET_LENGTH_MIN: usize = 32;
/// Clock skew beyond an hour is a broken clock, not skew.
pub const LEEWAY_SECONDS_MAX: u64 = 3600;
/// The file in a data directory that holds the development HS256 secret.
pub const DEV_SECRET_FILE_NAME: &str = "dev-jwt-secret";
/// Random bytes in a development secret (stored hex-encoded, so the secret is twice as long).
const DEV_SECRET_RANDOM_BYTES: usize = 32;
/// Tokens remembered as verified, at most: a client sends the same token until it expires, so
/// its signature (an RSA verification for RS256) is checked once, not on every request. When
/// the cache is full it is emptied and refills from the tokens in use.
pub const VERIFIED_TOKENS_MAX: usize = 4096;

/// A set of the scopes this node knows. Unknown scope names in a token are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);
    pub const CUSTOMER: Scopes = Scopes(1 << 0);
    pub const OPERATOR: Scopes = Scopes(1 << 1);
    pub const SYSTEM: Scopes = Scopes(1 << 2);
    pub const ADMIN: Scopes = Scopes(1 << 3);

    /// Every known scope with its name, in the order [`Scopes::names`] lists them.
    const NAMED: [(Scopes, &'static str); 4] = [
        (Scopes::CUSTOMER, SCOPE_CUSTOMER),
        (Scopes::OPERATOR, SCOPE_OPERATOR),
        (Scopes::SYSTEM, SCOPE_SYSTEM),
        (Scopes::ADMIN, SCOPE_ADMIN),
    ];

    /// Whether every scope of `other` is in `self` (so `contains(Scopes::NONE)` is always true).
    pub const fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    /// Parses a space-separated scope list (the OAuth2 `scope` claim).
    pub fn parse(space_separated: &str) -> Scopes {
        space_separated
            .split_ascii_whitespace()
            .fold(Scopes::NONE, |scopes, name| {
                scopes.union(Scopes::named(name))
            })
    }

    pub fn names(self) -> Vec<&'static str> {
        Scopes::NAMED
            .iter()
            .filter(|(scope, _)| self.contains(*scope))
            .map(|(_, name)| *name)
            .collect()
    }

    fn named(name: &str) -> Scopes {
        Scopes::NAMED
            .iter()
            .find(|(_, known)| *known == name)
            .map_or(Scopes::NONE, |(scope, _)| *scope)
    }
}

/// Who a validated token speaks for.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's `sub`, never empty.
    pub subject: String,
    /// [`owner_of_subject`] of the subject.
    pub owner: OwnerId,
    pub scopes: Scopes,
    /// The `azp` or `client_id` claim if present, else the subject: the scope of rate limits and
    /// idempotency keys.
    pub client_id: String,
}

/// The `auth` section of the node's configuration.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Shared HS256 secrets, each tried in turn: base64 after the prefix "base64:", else the raw
    /// UTF-8 bytes. Each must be at least [`HS256_SECRET_LENGTH_MIN`] bytes.
    pub hs256_secrets: Vec<String>,
    /// RS256 public keys as PEM text ("PUBLIC KEY" or "RSA PUBLIC KEY"), not paths.
    pub rs256_public_keys: Vec<String>,
    /// If set, `iss` must be present and equal to it.
    pub issuer: Option<String>,
    /// If set, `aud` must be present and contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, at most [`LEEWAY_SECONDS_MAX`].
    #[serde(default = "AuthConfig::leeway_seconds_default")]
    pub leeway_seconds: u64,
}

impl AuthConfig {
    fn leeway_seconds_default() -> u64 {
        30
    }
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            hs256_secrets: Vec::new(),
            rs256_public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_seconds: AuthConfig::leeway_seconds_default(),
        }
    }
}

/// Secrets stay out of logs: only their count is shown.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secrets",
                &format_args!("[{} redacted]", self.hs256_secrets.len()),
            )
            .field("rs256_public_keys", &self.rs256_public_keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

/// Why a request is not authenticated. [`AuthError::code`] is the stable problem+json code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    UnsupportedAlgorithm,
}

impl AuthError {
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::BadSignature
            | AuthError::UnsupportedAlgorithm => "UNAUTHENTICATED",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::NotYetValid => "TOKEN_NOT_YET_VALID",
            AuthError::WrongIssuer => "TOKEN_WRONG_ISSUER",
            AuthError::WrongAudience => "TOKEN_WRONG_AUDIENCE",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            AuthError::Missing => "an Authorization: Bearer token is required",
            AuthError::Malformed => {
                "the bearer token is not a well-formed JWT with a subject and an expiry"
            }
            AuthError::Expired => "the bearer token has expired",
            AuthError::NotYetValid => "the bearer token is not valid yet (nbf)",
            AuthError::BadSignature => {
                "the bearer token's signature does not verify against any configured key"
            }
            AuthError::WrongIssuer => "the bearer token is not from the configured issuer",
            AuthError::WrongAudience => "the bearer token is not meant for this service (aud)",
            AuthError::UnsupportedAlgorithm => {
                "the bearer token's algorithm is not accepted by this node (HS256 or RS256 with a configured key)"
            }
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for AuthError {}

/// Validates bearer tokens. Built once from configuration, shared by all handlers.
pub struct Authenticator {
    hs256_keys: Vec<DecodingKey>,
    hs256_validation: Validation,
    rs256_keys: Vec<DecodingKey>,
    rs256_validation: Validation,
    leeway_seconds: u64,
    /// Tokens that passed every check, by their full text (a changed byte is another key).
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

/// What a cached token still needs checked on each use: its time bounds.
struct Verified {
    principal: Principal,
    times: TokenTimes,
}

/// A token's `exp` and `nbf` claims, in Unix seconds.
#[derive(Clone, Copy)]
struct TokenTimes {
    expires_at: u64,
    not_before: Option<u64>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256_keys", &self.hs256_keys.len())
            .field("rs256_keys", &self.rs256_keys.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Fails on a secret that is too short or not base64, a PEM that is not an RSA public key,
    /// an empty issuer or audience, a leeway beyond [`LEEWAY_SECONDS_MAX`], or no key at all.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        if config.leeway_seconds > LEEWAY_SECONDS_MAX {
            return Err(format!(
                "auth.leeway_seconds is {}, at most {LEEWAY_SECONDS_MAX} is allowed",
                config.leeway_seconds
            ));
        }
        if config.issuer.as_deref() == Some("") {
            return Err("auth.issuer is empty: omit it to accept any issuer".to_owned());
        }
        if config.audience.as_deref() == Some("") {
            return Err("auth.audience is empty: omit it to accept any audience".to_owned());
        }
        let hs256_keys = config
            .hs256_secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| {
                hs256_key(secret).map_err(|error| format!("auth.hs256_secrets[{index}]: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rs256_keys = config
            .rs256_public_keys
            .iter()
            .enumerate()
            .map(|(index, pem)| {
                rs256_key(pem).map_err(|error| format!("auth.rs256_public_keys[{index}]: {error}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if hs256_keys.is_empty() && rs256_keys.is_empty() {
            return Err(
                "auth: no key configured (set hs256_secrets or rs256_public_keys)".to_owned(),
            );
        }
        Ok(Authenticator {
            hs256_keys,
            hs256_validation: validation(Algorithm::HS256, config),
            rs256_keys,
            rs256_validation: validation(Algorithm::RS256, config),
            leeway_seconds: config.leeway_seconds,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// `header` is the whole Authorization header value, e.g. "Bearer eyJ...".
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        self.authenticate_at(header, unix_seconds())
    }

    /// [`Authenticator::authenticate`] at `now` (Unix seconds). A token verified before is
    /// answered from the cache after the same time checks jsonwebtoken makes (`exp` and `nbf`
    /// with the leeway); any other token is verified in full, and cached if it passes.
    fn authenticate_at(&self, header: Option<&str>, now: u64) -> Result<Principal, AuthError> {
        let token = bearer_token(header)?;
        if let Some(cached) = self.cached(token, now) {
            return cached;
        }
        let (principal, times) = self.verify(token)?;
        if let Some(times) = times {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= VERIFIED_TOKENS_MAX {
                verified.clear();
            }
            let principal = principal.clone();
            verified.insert(token.into(), Verified { principal, times });
        }
        Ok(principal)
    }

    fn cached(&self, token: &str, now: u64) -> Option<Result<Principal, AuthError>> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let entry = verified.get(token)?;
        let leeway = self.leeway_seconds;
        Some(if entry.times.expires_at.saturating_add(leeway) < now {
            Err(AuthError::Expired)
        } else if entry
            .times
            .not_before
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            Err(AuthError::NotYetValid)
        } else {
            Ok(entry.principal.clone())
        })
    }

    /// Checks the signature and every claim. Also returns `exp` and `nbf` when they are plain
    /// integers, which is when the token may be cached.
    fn verify(&self, token: &str) -> Result<(Principal, Option<TokenTimes>), AuthError> {
        let (keys, validation) = match token_algorithm(token)? {
            Algorithm::HS256 => (&self.hs256_keys, &self.hs256_validation),
            Algorithm::RS256 => (&self.rs256_keys, &self.rs256_validation),
            _ => return Err(AuthError::UnsupportedAlgorithm),
        };
        if keys.is_empty() {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        // The signature is checked before any claim, so only a key that verifies it can turn the
        // answer into Expired, WrongIssuer, ...: an unknown signer learns nothing more.
        for key in keys {
            match jsonwebtoken::decode::<TokenClaims>(token, key, validation) {
                Ok(data) => {
                    let times = data.claims.times();
                    return Ok((principal_of(data.claims)?, times));
                }
                Err(error) => match auth_error_of(error.kind()) {
                    AuthError::BadSignature => continue,
                    other => return Err(other),
                },
            }
        }
        Err(AuthError::BadSignature)
    }
}

fn hs256_key(secret: &str) -> Result<DecodingKey, String> {
    let bytes = match secret.strip_prefix("base64:") {
        Some(encoded) => STANDARD
            .decode(encoded.trim())
            .map_err(|error| format!("not valid base64 after \"base64:\": {error}"))?,
        None => secret.as_bytes().to_vec(),
    };
    if bytes.len() < HS256_SECRET_LENGTH_MIN {
        return Err(format!(
            "an HS256 secret must be at least {HS256_SECRET_LENGTH_MIN} bytes, this one is {}",
            bytes.len()
        ));
    }
    Ok(DecodingKey::from_secret(&bytes))
}

fn rs256_key(pem: &str) -> Result<DecodingKey, String> {
    let pem = pem.trim();
    // jsonwebtoken would take the first bit string of a private key as if it were the public
    // key; a private key here is a configuration mistake (and a leak) worth naming.
    let is_public = pem.starts_with("-----BEGIN PUBLIC KEY-----")
        || pem.starts_with("-----BEGIN RSA PUBLIC KEY-----");
    if !is_public {
        return Err(
            "expected a PEM public key (\"BEGIN PUBLIC KEY\" or \"BEGIN RSA PUBLIC KEY\")"
                .to_owned(),
        );
    }
    DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|error| format!("not an RSA public key in PEM: {error}"))
}

fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // jsonwebtoken otherwise rejects every token that names an audience.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    // RFC 7235: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.len() > TOKEN_LENGTH_MAX {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The `alg` of a token's header. jsonwebtoken cannot parse a header naming an algorithm it
/// does not know (e.g. "none"), so that case is told apart from garbage by hand.
fn token_algorithm(token: &str) -> Result<Algorithm, AuthError> {
    match jsonwebtoken::decode_header(token) {
        Ok(header) => Ok(header.alg),
        Err(_) => Err(unparsed_header_error(token)),
    }
}

fn unparsed_header_error(token: &str) -> AuthError {
    let Some((encoded_header, _)) = token.split_once('.') else {
        return AuthError::Malformed;
    };
    let Ok(header) = URL_SAFE_NO_PAD.decode(encoded_header) else {
        return AuthError::Malformed;
    };
    match serde_json::from_slice::<serde_json::Value>(&header) {
        Ok(serde_json::Value::Object(fields)) => match fields.get("alg") {
            Some(serde_json::Value::String(alg)) if alg != "HS256" && alg != "RS256" => {
                AuthError::UnsupportedAlgorithm
            }
            _ => AuthError::Malformed,
        },
        _ => AuthError::Malformed,
    }
}

fn auth_error_of(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::UnsupportedAlgorithm
        }
        _ => AuthError::Malformed,
    }
}

/// The claims this node reads; `exp`, `nbf`, `iss` and `aud` are checked by jsonwebtoken.
#[derive(Deserialize)]
struct TokenClaims {
    sub: Option<String>,
    scope: Option<ScopeClaim>,
    scp: Option<ScopeClaim>,
    scopes: Option<ScopeClaim>,
    azp: Option<String>,
    client_id: Option<String>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
}

impl TokenClaims {
    /// `exp` and `nbf` as integers, or `None` if either is another kind of number (which
    /// jsonwebtoken accepts): such a token is verified in full every time.
    fn times(&self) -> Option<TokenTimes> {
        let expires_at = self.exp.as_ref()?.as_u64()?;
        let not_before = match &self.nbf {
            None => None,
            Some(nbf) => Some(nbf.as_u64()?),
        };
        Some(TokenTimes {
            expires_at,
            not_before,
        })
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Issuers spell scopes as a space-separated string or as an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn scopes(&self) -> Scopes {
        match self {
            ScopeClaim::Text(text) => Scopes::parse(text),
            ScopeClaim::List(names) => names.iter().fold(Scopes::NONE, |scopes, name| {
                scopes.union(Scopes::parse(name))
            }),
        }
    }
}

fn principal_of(claims: TokenClaims) -> Result<Principal, AuthError> {
    let subject = claims
        .sub
        .filter(|subject| !subject.is_empty())
        .ok_or(AuthError::Malformed)?;
    let scopes = [&claims.scope, &claims.scp, &claims.scopes]
        .into_iter()
        .flatten()
        .fold(Scopes::NONE, |scopes, claim| scopes.union(claim.scopes()));
    let client_id = claims
        .azp
        .filter(|azp| !azp.is_empty())
        .or(claims.client_id.filter(|client_id| !client_id.is_empty()))
        .unwrap_or_else(|| subject.clone());
    Ok(Principal {
        owner: owner_of_subject(&subject),
        subject,
        scopes,
        client_id,
    })
}

/// The owner id for a subject: a UUID subject (36 characters, hyphenated 8-4-4-4-12, hex digits
/// in any case) is its 128-bit value, so KYC ids map to themselves; anything else (including
/// UUIDs in braces or without hyphens) is the xxh3-128 hash of the subject's UTF-8 bytes.
/// This mapping is stable: owner ids are stored in the journal.
pub fn owner_of_subject(subject: &str) -> OwnerId {
    match uuid_value(subject) {
        Some(value) => OwnerId(value),
        None => OwnerId(xxhash_rust::xxh3::xxh3_128(subject.as_bytes())),
    }
}

/// A hyphenated 8-4-4-4-12 UUID (any case) as its 128-bit value; anything else is `None`.
pub fn uuid_value(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if matches!(index, 8 | 13 | 18 | 23) {
            if byte != b'-' {
                return None;
            }
            continue;
        }
        let digit = char::from(byte).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Mints an HS256 token (for `payu token` and tests): claims `sub`, `scope` (space-separated),
/// `iat`, `exp` = now + `ttl` (whole seconds, at least one), and `iss`/`aud` if given.
pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    scopes: &[&str],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    if secret.len() < HS256_SECRET_LENGTH_MIN {
        return Err(format!(
            "an HS256 secret must be at least {HS256_SECRET_LENGTH_MIN} bytes"
        ));
    }
    if subject.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    if ttl.as_secs() == 0 {
        return Err("the token's lifetime must be at least one second".to_owned());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| format!("the clock is before 1970: {error}"))?
        .as_secs();
    let claims = MintedClaims {
        sub: subject,
        scope: scopes.join(" "),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
        iss: issuer,
        aud: audience,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|error| format!("signing the token: {error}"))
}

/// The development secret of a data directory (which must exist): reads `<dir>/dev-jwt-secret`,
/// or on first use creates it from 32 random bytes, hex-encoded, mode 0600. Returns the bytes
/// used as the HS256 secret (the hex text's bytes, surrounding whitespace ignored).
///
/// Creation writes and fsyncs a temporary file, then publishes it with a hard link, which (unlike
/// a rename) never replaces a file another process published first: two first uses racing each
/// other both end up with the same secret.
pub fn load_or_create_dev_secret(data_dir: &Path) -> io::Result<Vec<u8>> {
    let path = data_dir.join(DEV_SECRET_FILE_NAME);
    match read_dev_secret(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        result => return result,
    }
    let mut random = [0u8; DEV_SECRET_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|error| {
        io::Error::other(format!("no random bytes for the dev secret: {error}"))
    })?;
    let secret: String = random.iter().map(|byte| format!("{byte:02x}")).collect();

    let temporary = data_dir.join(format!(
        ".{DEV_SECRET_FILE_NAME}.{}.tmp",
        std::process::id()
    ));
    write_synced_private(&temporary, secret.as_bytes())?;
    let published = fs::hard_link(&temporary, &path);
    fs::remove_file(&temporary)?;
    match published {
        Ok(()) => {
            fs::File::open(data_dir)?.sync_all()?;
            Ok(secret.into_bytes())
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read_dev_secret(&path),
        Err(error) => Err(error),
    }
}

fn read_dev_secret(path: &Path) -> io::Result<Vec<u8>> {
    let text = fs::read(path)?;
    let secret = text.trim_ascii();
    if secret.len() < HS256_SECRET_LENGTH_MIN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes, an HS256 secret needs at least {HS256_SECRET_LENGTH_MIN}",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret.to_vec())
}

fn write_synced_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created; a stale file left by a crashed process with
    // the same pid may have any mode.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "test-secret-0123456789abcdef-0123456789abcdef";
    const OTHER_SECRET: &str = "another-secret-0123456789abcdef-0123456789ab";
    const RSA_PRIVATE_PEM: &str = include_str!("../tests/keys/rs256-test-private.pem");
    const RSA_PUBLIC_PEM: &str = include_str!("../tests/keys/rs256-test-public.pem");
    const UUID_SUBJECT: &str = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";

    fn hs256_config() -> AuthConfig {
        AuthConfig {
            hs256_secrets: vec![SECRET.to_owned()],
            ..AuthConfig::default()
        }
    }

    fn rs256_config() -> AuthConfig {
        AuthConfig {
            rs256_public_keys: vec![RSA_PUBLIC_PEM.to_owned()],
            ..AuthConfig::default()
        }
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("signed")
    }

    fn sign_hs256(secret: &str, claims: &serde_json::Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret.as_bytes()),
            claims,
        )
    }

    fn sign_rs256(claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test private key");
        sign(Algorithm::RS256, &key, claims)
    }

    fn claims(subject: &str) -> serde_json::Value {
        json!({ "sub": subject, "scope": SCOPE_CUSTOMER, "exp": unix_seconds() + 600 })
    }

    fn accepted(config: &AuthConfig, token: &str) -> Principal {
        authenticate(config, token).expect("token accepted")
    }

    fn refused(config: &AuthConfig, token: &str) -> AuthError {
        authenticate(config, token).expect_err("token refused")
    }

    fn authenticate(config: &AuthConfig, token: &str) -> Result<Principal, AuthError> {
        Authenticator::new(config)
            .expect("valid test config")
            .authenticate(Some(&format!("Bearer {token}")))
    }

    /// A token whose header is `header_json`, with the given claims and signature bytes.
    fn token_with_header(
        header_json: &str,
        claims: &serde_json::Value,
        signature: &[u8],
    ) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn a_cached_token_still_expires_and_a_changed_one_is_verified_again() {
        // Proves the verified-token cache answers a repeated token only within its time
        // bounds (exp plus leeway, as jsonwebtoken checks it), and that any other token text
        // (a forged signature on the same claims) is checked in full.
        let auth = Authenticator::new(&hs256_config()).expect("valid test config");
        let now = unix_seconds();
        let expires_at = now + 10;
        let token = sign_hs256(
            SECRET,
            &json!({ "sub": "alice", "scope": SCOPE_CUSTOMER, "exp": expires_at }),
        );
        let header = format!("Bearer {token}");
        let first = auth
            .authenticate_at(Some(&header), now)
            .expect("fresh token");
        assert_eq!(auth.verified.lock().expect("lock").len(), 1);
        let leeway = hs256_config().leeway_seconds;
        let last_second = auth
            .authenticate_at(Some(&header), expires_at + leeway)
            .expect("within the leeway");
        assert_eq!(last_second.subject, first.subject);
        assert_eq!(last_second.client_id, first.client_id);
        assert_eq!(
            auth.authenticate_at(Some(&header), expires_at + leeway + 1)
                .expect_err("expired"),
            AuthError::Expired
        );
        let (signed, _) = token.rsplit_once('.').expect("three parts");
        let forged = format!("Bearer {signed}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(
            auth.authenticate_at(Some(&forged), now)
                .expect_err("forged signature"),
            AuthError::BadSignature
        );
        assert_eq!(auth.verified.lock().expect("lock").len(), 1);
    }

    #[test]
    fn the_verified_token_cache_stays_bounded() {
        // Proves the cache never holds more than VERIFIED_TOKENS_MAX tokens.
        let auth = Authenticator::new(&hs256_config()).expect("valid test config");
        for n in 0..VERIFIED_TOKENS_MAX + 10 {
            let token = sign_hs256(SECRET, &claims(&format!("user-{n}")));
            auth.authenticate(Some(&format!("Bearer {token}")))
                .expect("valid token");
            assert!(auth.verified.lock().expect("lock").len() <= VERIFIED_TOKENS_MAX);
        }
    }

    #[test]
    fn hs256_token_yields_principal() {
        // Proves a good HS256 token gives the subject, owner, scopes and client id it carries.
        let token = sign_hs256(
            SECRET,
            &json!({
                "sub": UUID_SUBJECT,
                "scope": "payu:customer payu:admin openid",
                "exp": unix_seconds() + 600,
            }),
        );
        let principal = accepted(&hs256_config(), &token);
        assert_eq!(principal.subject, UUID_SUBJECT);
        assert_eq!(
            principal.owner,
            OwnerId(0x3f2504e0_4f89_11d3_9a0c_0305e82c3301)
        );
        assert_eq!(principal.scopes, Scopes::CUSTOMER.union(Scopes::ADMIN));
        assert!(!principal.scopes.contains(Scopes::OPERATOR));
        assert_eq!(principal.client_id, UUID_SUBJECT);
    }

    #[test]
    fn minted_token_round_trips() {
        // Proves mint_hs256 produces what authenticate accepts, issuer and audience included.
        let config = AuthConfig {
            issuer: Some("payu-dev".to_owned()),
            audience: Some("payu-core".to_owned()),
            ..hs256_config()
        };
        let token = mint_hs256(
            SECRET.as_bytes(),
            "ops-bot",
            &[SCOPE_OPERATOR, SCOPE_SYSTEM],
            Duration::from_secs(60),
            Some("payu-dev"),
            Some("payu-core"),
        )
        .expect("minted");
        let principal = accepted(&config, &token);
        assert_eq!(principal.subject, "ops-bot");
        assert_eq!(principal.owner, owner_of_subject("ops-bot"));
        assert_eq!(principal.scopes.names(), vec![SCOPE_OPERATOR, SCOPE_SYSTEM]);
        assert!(mint_hs256(b"short", "x", &[], Duration::from_secs(60), None, None).is_err());
        assert!(
            mint_hs256(
                SECRET.as_bytes(),
                "",
                &[],
                Duration::from_secs(60),
                None,
                None
            )
            .is_err()
        );
        assert!(mint_hs256(SECRET.as_bytes(), "x", &[], Duration::ZERO, None, None).is_err());
    }

    #[test]
    fn scope_claim_spellings_and_client_id() {
        // Proves `scope` (string), `scp` and `scopes` (arrays) are all read, and the client id
        // comes from `azp`, then `client_id`, then the subject.
        let exp = unix_seconds() + 600;
        let config = hs256_config();
        let scp = sign_hs256(
            SECRET,
            &json!({ "sub": "a", "exp": exp, "scp": [SCOPE_OPERATOR, "unknown"], "azp": "app-1" }),
        );
        let principal = accepted(&config, &scp);
        assert_eq!(principal.scopes, Scopes::OPERATOR);
        assert_eq!(principal.client_id, "app-1");

        let scopes = sign_hs256(
            SECRET,
            &json!({ "sub": "a", "exp": exp, "scopes": [SCOPE_SYSTEM], "client_id": "app-2" }),
        );
        let principal = accepted(&config, &scopes);
        assert_eq!(principal.scopes, Scopes::SYSTEM);
        assert_eq!(principal.client_id, "app-2");

        let none = sign_hs256(SECRET, &json!({ "sub": "a", "exp": exp }));
        let principal = accepted(&config, &none);
        assert_eq!(principal.scopes, Scopes::NONE);
        assert!(principal.scopes.names().is_empty());
        assert_eq!(principal.client_id, "a");
    }

    #[test]
    fn scopes_parse_and_names() {
        // Proves the bit set parses known names, ignores unknown ones and lists names in order.
        let scopes = Scopes::parse("  payu:admin x payu:customer\tpayu:system ");
        assert_eq!(
            scopes.names(),
            vec![SCOPE_CUSTOMER, SCOPE_SYSTEM, SCOPE_ADMIN]
        );
        assert!(scopes.contains(Scopes::ADMIN.union(Scopes::SYSTEM)));
        assert!(!scopes.contains(Scopes::OPERATOR.union(Scopes::ADMIN)));
        assert!(scopes.contains(Scopes::NONE));
        assert_eq!(Scopes::parse(""), Scopes::NONE);
    }

    #[test]
    fn expired_and_not_yet_valid() {
        // Proves exp in the past beyond the leeway is Expired, within it is accepted, and nbf in
        // the future beyond the leeway is NotYetValid.
        let config = hs256_config();
        let now = unix_seconds();
        let expired = sign_hs256(SECRET, &json!({ "sub": "a", "exp": now - 3600 }));
        assert_eq!(refused(&config, &expired), AuthError::Expired);
        let within_leeway = sign_hs256(SECRET, &json!({ "sub": "a", "exp": now - 5 }));
        assert!(authenticate(&config, &within_leeway).is_ok());
        let early = sign_hs256(
            SECRET,
            &json!({ "sub": "a", "exp": now + 7200, "nbf": now + 3600 }),
        );
        assert_eq!(refused(&config, &early), AuthError::NotYetValid);
        assert_eq!(AuthError::Expired.code(), "TOKEN_EXPIRED");
        assert_eq!(AuthError::NotYetValid.code(), "TOKEN_NOT_YET_VALID");
    }

    #[test]
    fn required_claims() {
        // Proves a token without exp, without sub, or with an empty sub is Malformed.
        let config = hs256_config();
        let exp = unix_seconds() + 600;
        for claims in [
            json!({ "sub": "a" }),
            json!({ "exp": exp }),
            json!({ "sub": "", "exp": exp }),
            json!({ "sub": 7, "exp": exp }),
        ] {
            let token = sign_hs256(SECRET, &claims);
            assert_eq!(refused(&config, &token), AuthError::Malformed, "{claims}");
        }
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        // Proves a token signed with another secret is BadSignature, even when expired, and that
        // every configured secret is tried.
        let config = hs256_config();
        let token = sign_hs256(OTHER_SECRET, &claims("a"));
        assert_eq!(refused(&config, &token), AuthError::BadSignature);
        let expired = sign_hs256(
            OTHER_SECRET,
            &json!({ "sub": "a", "exp": unix_seconds() - 3600 }),
        );
        assert_eq!(refused(&config, &expired), AuthError::BadSignature);
        let both = AuthConfig {
            hs256_secrets: vec![SECRET.to_owned(), OTHER_SECRET.to_owned()],
            ..AuthConfig::default()
        };
        assert!(authenticate(&both, &token).is_ok());
        assert_eq!(AuthError::BadSignature.code(), "UNAUTHENTICATED");
    }

    #[test]
    fn base64_secret() {
        // Proves a "base64:" secret is decoded before use.
        let config = AuthConfig {
            hs256_secrets: vec![format!("base64:{}", STANDARD.encode(SECRET))],
            ..AuthConfig::default()
        };
        let token = sign_hs256(SECRET, &claims("a"));
        assert!(authenticate(&config, &token).is_ok());
    }

    #[test]
    fn unsupported_algorithms() {
        // Proves alg none, HS384 and RS384 are refused as UnsupportedAlgorithm, whatever the
        // signature.
        let config = hs256_config();
        let none = token_with_header(r#"{"alg":"none","typ":"JWT"}"#, &claims("a"), b"");
        assert_eq!(refused(&config, &none), AuthError::UnsupportedAlgorithm);
        let none_upper = token_with_header(r#"{"alg":"None"}"#, &claims("a"), b"");
        assert_eq!(
            refused(&config, &none_upper),
            AuthError::UnsupportedAlgorithm
        );
        let hs384 = sign(
            Algorithm::HS384,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &claims("a"),
        );
        assert_eq!(refused(&config, &hs384), AuthError::UnsupportedAlgorithm);
        let rs384 = sign(
            Algorithm::RS384,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test private key"),
            &claims("a"),
        );
        assert_eq!(
            refused(&rs256_config(), &rs384),
            AuthError::UnsupportedAlgorithm
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        // Proves a missing or blank header is Missing, and a non-Bearer scheme or garbage token
        // is Malformed.
        let authenticator = Authenticator::new(&hs256_config()).expect("valid test config");
        let token = sign_hs256(SECRET, &claims("a"));
        assert_eq!(
            authenticator.authenticate(None).expect_err("refused"),
            AuthError::Missing
        );
        assert_eq!(
            authenticator.authenticate(Some("  ")).expect_err("refused"),
            AuthError::Missing
        );
        for header in [
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            format!("Basic {token}"),
            format!("Bearer{token}"),
            token.clone(),
            "Bearer garbage".to_owned(),
            "Bearer a.b.c".to_owned(),
            "Bearer ...".to_owned(),
            format!("Bearer {}", "x".repeat(TOKEN_LENGTH_MAX + 1)),
            format!("Bearer {token}x"),
        ] {
            let error = authenticator
                .authenticate(Some(&header))
                .expect_err("refused");
            assert!(
                matches!(error, AuthError::Malformed | AuthError::BadSignature),
                "{header}: {error:?}"
            );
        }
        assert_eq!(
            authenticator
                .authenticate(Some("Bearer garbage"))
                .expect_err("refused"),
            AuthError::Malformed
        );
        assert_eq!(
            authenticator
                .authenticate(Some(&format!("Basic {token}")))
                .expect_err("refused"),
            AuthError::Malformed
        );
        assert!(
            authenticator
                .authenticate(Some(&format!("bearer  {token}")))
                .is_ok()
        );
        assert_eq!(AuthError::Missing.code(), "UNAUTHENTICATED");
    }

    #[test]
    fn issuer_and_audience() {
        // Proves a configured issuer and audience must be present and match; aud may be a list.
        let config = AuthConfig {
            issuer: Some("https://keycloak.example/realms/payu".to_owned()),
            audience: Some("payu-core".to_owned()),
            ..hs256_config()
        };
        let exp = unix_seconds() + 600;
        let iss = "https://keycloak.example/realms/payu";
        let good = sign_hs256(
            SECRET,
            &json!({ "sub": "a", "exp": exp, "iss": iss, "aud": ["account", "payu-core"] }),
        );
        assert!(authenticate(&config, &good).is_ok());
        let cases = [
            (
                json!({ "sub": "a", "exp": exp, "iss": "other", "aud": "payu-core" }),
                AuthError::WrongIssuer,
            ),
            (
                json!({ "sub": "a", "exp": exp, "aud": "payu-core" }),
                AuthError::WrongIssuer,
            ),
            (
                json!({ "sub": "a", "exp": exp, "iss": iss, "aud": "account" }),
                AuthError::WrongAudience,
            ),
            (
                json!({ "sub": "a", "exp": exp, "iss": iss }),
                AuthError::WrongAudience,
            ),
        ];
        for (claims, expected) in cases {
            let token = sign_hs256(SECRET, &claims);
            assert_eq!(refused(&config, &token), expected, "{claims}");
        }
        // Without a configured audience a token naming one is still accepted.
        let with_aud = sign_hs256(
            SECRET,
            &json!({ "sub": "a", "exp": exp, "aud": "anything" }),
        );
        assert!(authenticate(&hs256_config(), &with_aud).is_ok());
        assert_eq!(AuthError::WrongIssuer.code(), "TOKEN_WRONG_ISSUER");
        assert_eq!(AuthError::WrongAudience.code(), "TOKEN_WRONG_AUDIENCE");
    }

    #[test]
    fn rs256_token_yields_principal() {
        // Proves an RS256 token signed with the test key verifies against its public key, and a
        // tampered signature does not.
        let token = sign_rs256(&json!({
            "sub": "merchant-7",
            "scp": [SCOPE_SYSTEM],
            "azp": "app-gateway",
            "exp": unix_seconds() + 600,
        }));
        let principal = accepted(&rs256_config(), &token);
        assert_eq!(principal.subject, "merchant-7");
        assert_eq!(principal.scopes, Scopes::SYSTEM);
        assert_eq!(principal.client_id, "app-gateway");

        let (message, signature) = token.rsplit_once('.').expect("three parts");
        let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        signature[0] ^= 1;
        let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&signature));
        assert_eq!(refused(&rs256_config(), &tampered), AuthError::BadSignature);
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // Proves an RS256 token never verifies against an HS256 secret, and an HS256 token
        // "signed" with the RSA public key never verifies against that key.
        let rs256 = sign_rs256(&claims("a"));
        let error = refused(&hs256_config(), &rs256);
        assert!(
            matches!(
                error,
                AuthError::UnsupportedAlgorithm | AuthError::BadSignature
            ),
            "{error:?}"
        );

        let forged = sign_hs256(RSA_PUBLIC_PEM, &claims("a"));
        let error = refused(&rs256_config(), &forged);
        assert_eq!(error, AuthError::UnsupportedAlgorithm);
        let both = AuthConfig {
            hs256_secrets: vec![SECRET.to_owned()],
            ..rs256_config()
        };
        assert_eq!(refused(&both, &forged), AuthError::BadSignature);
        // A header claiming RS256 over an HMAC made with the node's own secret is not accepted.
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims("a").to_string())
        );
        let hmac = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .expect("HMAC computed");
        let relabelled = format!("{message}.{hmac}");
        assert_eq!(refused(&both, &relabelled), AuthError::BadSignature);
        assert_eq!(
            refused(&hs256_config(), &relabelled),
            AuthError::UnsupportedAlgorithm
        );
    }

    #[test]
    fn configuration_errors() {
        // Proves new() refuses no keys, bad PEMs, private keys, short secrets, bad base64, empty
        // issuer or audience, and an absurd leeway.
        let bad_configs = [
            AuthConfig::default(),
            AuthConfig {
                rs256_public_keys: vec!["not a pem".to_owned()],
                ..hs256_config()
            },
            AuthConfig {
                rs256_public_keys: vec![RSA_PRIVATE_PEM.to_owned()],
                ..AuthConfig::default()
            },
            AuthConfig {
                rs256_public_keys: vec![
                    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
                ],
                ..AuthConfig::default()
            },
            AuthConfig {
                hs256_secrets: vec!["short".to_owned()],
                ..AuthConfig::default()
            },
            AuthConfig {
                hs256_secrets: vec!["base64:!!!".to_owned()],
                ..AuthConfig::default()
            },
            AuthConfig {
                issuer: Some(String::new()),
                ..hs256_config()
            },
            AuthConfig {
                audience: Some(String::new()),
                ..hs256_config()
            },
            AuthConfig {
                leeway_seconds: LEEWAY_SECONDS_MAX + 1,
                ..hs256_config()
            },
        ];
        for config in bad_configs {
            assert!(Authenticator::new(&config).is_err(), "{config:?}");
        }
        assert!(Authenticator::new(&rs256_config()).is_ok());
    }

    #[test]
    fn config_defaults_and_redaction() {
        // Proves the serde default leeway is 30 s and Debug does not print secrets.
        let config: AuthConfig =
            serde_json::from_str(r#"{"hs256_secrets":["s3cr3t"]}"#).expect("valid json");
        assert_eq!(config.leeway_seconds, 30);
        assert_eq!(AuthConfig::default().leeway_seconds, 30);
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn owner_of_subject_uuid_and_hash() {
        // Proves UUID subjects map to their value in any case, and others to a pinned xxh3-128.
        assert_eq!(
            owner_of_subject(UUID_SUBJECT),
            owner_of_subject(&UUID_SUBJECT.to_lowercase())
        );
        assert_eq!(
            owner_of_subject("00000000-0000-0000-0000-000000000001"),
            OwnerId(1)
        );
        assert_eq!(
            owner_of_subject("ffffffff-ffff-ffff-ffff-ffffffffffff"),
            OwnerId(u128::MAX)
        );
        for not_uuid in [
            "merchant-7",
            "3F2504E04F8911D39A0C0305E82C3301",
            "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}",
            "3F2504E0-4F89-11D3-9A0C-0305E82C330G",
            "3F2504E0-4F8911-D3-9A0C-0305E82C3301",
        ] {
            assert_eq!(
                owner_of_subject(not_uuid),
                OwnerId(xxhash_rust::xxh3::xxh3_128(not_uuid.as_bytes())),
                "{not_uuid}"
            );
        }
        // Pinned: owner ids are journaled, so the hash must never change. The empty input is the
        // xxHash reference test vector, so this is the standard XXH3 and not a look-alike.
        assert_eq!(
            xxhash_rust::xxh3::xxh3_128(b""),
            0x99aa06d3_014798d8_6001c324_468d497f
        );
        assert_eq!(owner_of_subject("merchant-7"), OwnerId(PINNED_MERCHANT_7));
    }

    /// xxh3-128 of "merchant-7", as computed when owner ids were first journaled.
    const PINNED_MERCHANT_7: u128 = 0xc8a39b9d_bd4d06c0_a69bf13a_8d16f429;

    #[test]
    fn dev_secret_created_once_private() {
        // Proves the dev secret is created with mode 0600, read back identically, and usable.
        let dir = tempfile::tempdir().expect("temp dir");
        let first = load_or_create_dev_secret(dir.path()).expect("dev secret");
        assert_eq!(first.len(), 2 * DEV_SECRET_RANDOM_BYTES);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        let path = dir.path().join(DEV_SECRET_FILE_NAME);
        let mode = fs::metadata(&path)
            .expect("secret file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).expect("secret file"), first);
        let second = load_or_create_dev_secret(dir.path()).expect("dev secret");
        assert_eq!(first, second);
        assert_eq!(
            fs::read_dir(dir.path()).expect("temp dir").count(),
            1,
            "temp file left behind"
        );

        let other_dir = tempfile::tempdir().expect("temp dir");
        assert_ne!(
            load_or_create_dev_secret(other_dir.path()).expect("dev secret"),
            first
        );

        let secret = String::from_utf8(first.clone()).expect("hex is UTF-8");
        let config = AuthConfig {
            hs256_secrets: vec![secret],
            ..AuthConfig::default()
        };
        let token = mint_hs256(
            &first,
            "dev",
            &[SCOPE_ADMIN],
            Duration::from_secs(60),
            None,
            None,
        )
        .expect("minted");
        assert_eq!(accepted(&config, &token).scopes, Scopes::ADMIN);

        fs::write(&path, "short\n").expect("secret file");
        let error = load_or_create_dev_secret(dir.path()).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
