//! docs/openapi.json, which the node serves verbatim at GET /openapi.json, must describe exactly
//! the routes the node serves (`api::ROUTES`) and name every stable error code the gateway and
//! the engine can answer with.

use std::collections::BTreeSet;

use payu_engine::RejectCode;
use payu_gateway::api::{OPENAPI_JSON, ROUTES};
use payu_gateway::auth::AuthError;
use serde_json::Value;

/// The sources whose `Problem` codes the document must list (scanned as text).
const SOURCES: [(&str, &str); 2] = [
    ("gateway/src/api.rs", include_str!("../src/api.rs")),
    ("gateway/src/wire.rs", include_str!("../src/wire.rs")),
];

/// The operation keys of an OpenAPI path item.
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The shortest code the source scan collects (every code is longer; "IDR" is not a code).
const CODE_LENGTH_MIN: usize = 5;

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("docs/openapi.json is valid JSON")
}

/// Every (METHOD, path) the document describes.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"]
        .as_object()
        .expect("the document has a `paths` object");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("each path item is an object");
        for method in item
            .keys()
            .filter(|key| HTTP_METHODS.contains(&key.as_str()))
        {
            routes.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    routes
}

/// Every string value anywhere in the document (object keys excluded).
fn string_values(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            out.insert(text.clone());
        }
        Value::Array(items) => items.iter().for_each(|item| string_values(item, out)),
        Value::Object(members) => members.values().for_each(|item| string_values(item, out)),
        _ => {}
    }
}

/// SCREAMING_SNAKE string literals of at least `CODE_LENGTH_MIN` characters: in api.rs and
/// wire.rs these are the codes handed to `Problem` constructors. Names passed to `env!` and HTTP
/// method names (the ROUTES table) are not codes.
fn screaming_literals(source: &str) -> BTreeSet<&str> {
    let mut literals = BTreeSet::new();
    for (quote, _) in source.match_indices('"') {
        let rest = &source[quote + 1..];
        let length = rest
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        let literal = &rest[..length];
        let closed = rest.as_bytes().get(length) == Some(&b'"');
        let starts_with_letter = literal
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase());
        let is_method = HTTP_METHODS
            .iter()
            .any(|method| method.eq_ignore_ascii_case(literal));
        if closed
            && length >= CODE_LENGTH_MIN
            && starts_with_letter
            && !is_method
            && !source[..quote].ends_with("env!(")
        {
            literals.insert(literal);
        }
    }
    literals
}

/// Every `AuthError`; the match stops this from compiling when a variant is added, so a new
/// 401 code cannot go undocumented.
fn auth_errors() -> [AuthError; 8] {
    let all = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::BadSignature,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::UnsupportedAlgorithm,
    ];
    for error in all {
        match error {
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::BadSignature
            | AuthError::WrongIssuer
            | AuthError::WrongAudience
            | AuthError::UnsupportedAlgorithm => {}
        }
    }
    all
}

#[test]
fn the_document_is_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"]
        .as_str()
        .expect("`openapi` is a version string");
    assert!(
        version.starts_with("3.1."),
        "docs/openapi.json must be OpenAPI 3.1, not {version}"
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
}

#[test]
fn the_document_describes_exactly_the_routes_served() {
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");
    let documented = documented_routes(&document());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "routes in api::ROUTES missing from docs/openapi.json: {undocumented:?}; \
         routes in docs/openapi.json that api::ROUTES does not serve: {not_served:?}"
    );
}

#[test]
fn every_error_code_is_documented() {
    let mut strings = BTreeSet::new();
    string_values(&document(), &mut strings);
    let mut missing = Vec::new();
    for (file, source) in SOURCES {
        let codes = screaming_literals(source);
        for code in codes {
            if !strings.contains(code) {
                missing.push(format!("{code} ({file})"));
            }
        }
    }
    for code in RejectCode::ALL.iter().map(|code| code.code()) {
        if !strings.contains(code) {
            missing.push(format!("{code} (RejectCode)"));
        }
    }
    for code in auth_errors().map(AuthError::code) {
        if !strings.contains(code) {
            missing.push(format!("{code} (AuthError)"));
        }
    }
    assert!(
        missing.is_empty(),
        "error codes missing from docs/openapi.json: {missing:?}"
    );
}

#[test]
fn the_source_scan_finds_the_gateway_codes() {
    // Guards the scan itself: if it stopped finding codes, the test above would pass vacuously.
    let api = screaming_literals(SOURCES[0].1);
    let wire = screaming_literals(SOURCES[1].1);
    for code in [
        "IDEMPOTENCY_KEY_REQUIRED",
        "RATE_LIMITED",
        "RING_FULL",
        "READ_MODEL_BEHIND",
    ] {
        assert!(api.contains(code), "{code} not found in api.rs");
    }
    for code in [
        "MALFORMED_JSON",
        "AMOUNT_TOO_PRECISE",
        "UNSUPPORTED_CURRENCY",
    ] {
        assert!(wire.contains(code), "{code} not found in wire.rs");
    }
    assert!(!api.contains("CARGO_PKG_VERSION") && !api.contains("PATCH"));
}

#[test]
fn every_local_reference_resolves() {
    let doc = document();
    let mut unresolved = Vec::new();
    let mut stack = vec![&doc];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(members) => {
                if let Some(Value::String(target)) = members.get("$ref") {
                    let found = target
                        .strip_prefix('#')
                        .is_some_and(|pointer| doc.pointer(pointer).is_some());
                    if !found {
                        unresolved.push(target.clone());
                    }
                }
                stack.extend(members.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(unresolved.is_empty(), "unresolved $refs: {unresolved:?}");
}

#[test]
fn money_moving_posts_require_an_idempotency_key() {
    // Opening accounts and pockets and PATCH take an optional key; every other POST moves money.
    let optional = [
        ("POST", "/v1/accounts"),
        ("POST", "/v1/accounts/{id}/pockets"),
        ("PATCH", "/v1/accounts/{id}"),
    ];
    let doc = document();
    for (method, path) in ROUTES {
        let operation = &doc["paths"][*path][method.to_ascii_lowercase()];
        let key = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|parameter| match parameter["$ref"].as_str() {
                Some(target) => target
                    .strip_prefix('#')
                    .and_then(|pointer| doc.pointer(pointer))
                    .unwrap_or(parameter),
                None => parameter,
            })
            .find(|parameter| parameter["name"] == "Idempotency-Key");
        let required = key.map(|parameter| parameter["required"] == true);
        let expected = match (*method, optional.contains(&(*method, *path))) {
            (_, true) => Some(false),
            ("POST", false) => Some(true),
            _ => None,
        };
        assert_eq!(
            required, expected,
            "{method} {path}: Idempotency-Key should be {expected:?} (Some(true): required)"
        );
    }
}
