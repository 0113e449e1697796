//! Request bodies: JSON only, one value, every problem of its fields named at once.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::PartialSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Schema, SchemaType, Type};

use crate::error::AppError;
use crate::error::FieldCheck;
use crate::text::has_control_character;

/// A JSON body. Another content type (or none) is 415: a form or `text/plain` body is what a
/// cross-site page can send without a preflight. Malformed JSON, data after the value, wrong
/// types and unknown fields are 400 problems naming the field; a body over the limit is 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + PartialSchema, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        require_json(request.headers())?;
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A body that may be left out (empty, or only whitespace: the default), else a JSON body
/// under the same rules as `JsonBody`.
pub async fn optional_json<T: DeserializeOwned + PartialSchema + Default, S: Send + Sync>(
    request: Request,
    state: &S,
) -> Result<T, AppError> {
    let headers = request.headers().clone();
    let bytes = read_body(request, state).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    require_json(&headers)?;
    parse_json(&bytes)
}

async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, AppError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge
            } else {
                AppError::BadRequest("The request body could not be read.".into())
            }
        })
}

/// `application/json`, or a `+json` type (`application/merge-patch+json`), any parameters.
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), AppError> {
    let media_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    match media_type {
        Some(media_type)
            if media_type == "application/json"
                || (media_type.starts_with("application/") && media_type.ends_with("+json")) =>
        {
            Ok(())
        }
        _ => Err(AppError::UnsupportedMediaType),
    }
}

pub fn parse_json<T: DeserializeOwned + PartialSchema>(bytes: &[u8]) -> Result<T, AppError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return AppError::BadRequest(format!("The body is not valid JSON: {inner}"));
        }
        // serde stops at the first problem; the schema names them all.
        if let Ok(value) = serde_json::from_slice::<Value>(bytes)
            && let Err(problems) = schema_problems(&T::schema(), &value).finish()
        {
            return problems;
        }
        // serde's message names the expected type; its position suffix is noise here.
        let message = inner.to_string();
        let message = message.split(" at line").next().unwrap_or_default();
        for (prefix, what) in [
            ("unknown field `", "unknown field"),
            ("missing field `", "is required"),
        ] {
            if let Some(rest) = message.strip_prefix(prefix) {
                let field = rest.split('`').next().unwrap_or_default();
                return AppError::field(field, what);
            }
        }
        if path == "." {
            AppError::BadRequest(format!("The body has the wrong shape: {message}"))
        } else {
            AppError::field(&path, message)
        }
    })?;
    // One JSON value and nothing after it: `{"a":1}{"a":2}` is not a body to guess about.
    deserializer
        .end()
        .map_err(|_| AppError::BadRequest("The body has data after its JSON value.".into()))?;
    refuse_control_characters(bytes)?;
    Ok(value)
}

/// No text reaches the rules or a database with a control character in it (PostgreSQL
/// cannot even store NUL), except the line breaks and tabs of free text. JSON can carry them
/// only as `\u` escapes, so a body without one is let through without a second look.
fn refuse_control_characters(bytes: &[u8]) -> Result<(), AppError> {
    if !bytes.windows(2).any(|pair| pair == b"\\u") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    let mut check = FieldCheck::new();
    find_control_characters(&value, "", &mut check);
    check.finish()
}

fn find_control_characters(value: &Value, path: &str, check: &mut FieldCheck) {
    let field = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(text) if has_control_character(text) => {
            let name = if path.is_empty() { "." } else { path };
            check.add(name, "must not contain control characters");
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                find_control_characters(item, &field(&index.to_string()), check);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                if has_control_character(key) {
                    check.add(".", "a field name must not contain control characters");
                }
                find_control_characters(item, &field(key), check);
            }
        }
        _ => {}
    }
}

/// Every field of a body object that its schema refuses: required and missing, of the wrong
/// JSON type, or unknown. Empty when the schema has nothing to say (not an object schema).
fn schema_problems(schema: &RefOr<Schema>, value: &Value) -> FieldCheck {
    let mut check = FieldCheck::new();
    let RefOr::T(Schema::Object(object)) = schema else {
        return check;
    };
    let Value::Object(fields) = value else {
        return check;
    };
    for name in &object.required {
        if !fields.contains_key(name) {
            check.add(name, "is required");
        }
    }
    for (name, field) in fields {
        let Some(property) = object.properties.get(name) else {
            check.add(name, "unknown field");
            continue;
        };
        if let RefOr::T(Schema::Object(property)) = property
            && let Some(expected) = type_mismatch(&property.schema_type, field)
        {
            check.add(name, format!("must be {expected}"));
        }
    }
    check
}

/// What the value should have been, when its JSON type is not one the schema allows.
fn type_mismatch(allowed: &SchemaType, value: &Value) -> Option<String> {
    let types: &[Type] = match allowed {
        SchemaType::Type(single) => std::slice::from_ref(single),
        SchemaType::Array(several) => several,
        SchemaType::AnyValue => return None,
    };
    let fits = |kind: &Type| match kind {
        Type::Object => value.is_object(),
        Type::String => value.is_string(),
        Type::Integer => value.is_i64() || value.is_u64(),
        Type::Number => value.is_number(),
        Type::Boolean => value.is_boolean(),
        Type::Array => value.is_array(),
        Type::Null => value.is_null(),
    };
    if types.iter().any(fits) {
        return None;
    }
    let names: Vec<&str> = types
        .iter()
        .map(|kind| match kind {
            Type::Object => "an object",
            Type::String => "a string",
            Type::Integer => "an integer",
            Type::Number => "a number",
            Type::Boolean => "a boolean",
            Type::Array => "an array",
            Type::Null => "null",
        })
        .collect();
    Some(names.join(" or "))
}

/// A JSON answer no browser or proxy may keep: tokens, secrets, recovery codes.
pub fn no_store(body: impl serde::Serialize) -> axum::response::Response {
    use axum::http::HeaderValue;
    use axum::http::header::{CACHE_CONTROL, PRAGMA};
    use axum::response::IntoResponse;
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Sends an export's chunks into a streamed response body.
pub struct BodySink(pub tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl crate::audit::query::ChunkSink for BodySink {
    async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.0
            .send(Ok(Bytes::from(bytes)))
            .await
            .map_err(|_| anyhow::anyhow!("the client went away"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        count: i64,
        flag: Option<bool>,
    }

    fn problems(body: &str) -> crate::error::FieldErrors {
        match parse_json::<Sample>(body.as_bytes()) {
            Err(AppError::Validation(errors)) => errors,
            other => panic!("expected a validation problem, got {other:?}"),
        }
    }

    #[test]
    fn every_missing_wrong_or_unknown_field_is_named_at_once() {
        let errors = problems("{}");
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            ["count", "name"],
            "{errors:?}"
        );
        let errors = problems(r#"{"name": 5, "count": "x", "flag": 1, "extra": true}"#);
        assert_eq!(errors["name"], ["must be a string"]);
        assert_eq!(errors["count"], ["must be an integer"]);
        assert_eq!(errors["flag"], ["must be a boolean or null"]);
        assert_eq!(errors["extra"], ["unknown field"]);
    }

    #[test]
    fn control_characters_are_refused_before_anything_reads_them() {
        let errors = problems(r#"{"name": "al\u0000ice", "count": 1}"#);
        assert_eq!(errors["name"], ["must not contain control characters"]);
        let errors = problems(r#"{"name": "a\u001b[31m", "count": 1}"#);
        assert_eq!(errors["name"], ["must not contain control characters"]);
        assert!(parse_json::<Sample>(br#"{"name": "line\none\ttab \u00e9", "count": 1}"#).is_ok());
    }

    #[test]
    fn one_value_and_nothing_after_it() {
        assert!(parse_json::<Sample>(br#"{"name": "a", "count": 1}"#).is_ok());
        for body in [
            r#"{"name": "a", "count": 1}{"name": "b", "count": 2}"#,
            r#"{"name": "a", "count": 1} x"#,
        ] {
            assert!(
                matches!(
                    parse_json::<Sample>(body.as_bytes()),
                    Err(AppError::BadRequest(_))
                ),
                "{body}"
            );
        }
    }
}
