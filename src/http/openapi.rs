//! Completing the OpenAPI document: the answers every operation can give besides its own
//! (problems for a bad body, a missing token, a limit, an outage) are added here once, from
//! what the operation declares, so the document lists every status and content type the
//! service really sends (checked by the Schemathesis run of `.ci/run`).

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Content, Header, OpenApi, Ref, RefOr, Response};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Adds the common problem answers to every operation, and gives each problem answer the
/// content type it is sent with.
pub struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                complete(path, operation);
            }
        }
    }
}

fn complete(path: &str, operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    for response in responses.values_mut() {
        if let RefOr::T(response) = response {
            send_problems_as_problem_json(response);
        }
    }
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let has = |place: ParameterIn| {
        parameters
            .iter()
            .any(|parameter| parameter.parameter_in == place)
    };
    let secured = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let exempt_from_limits = matches!(path, "/health" | "/ready" | "/metrics");
    let mut add = |status: &str, description: &str, retry_after: bool| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(problem(description, retry_after)));
    };
    if operation.request_body.is_some() {
        add(
            "400",
            "The body is not valid JSON or a field is invalid",
            false,
        );
        add("413", "The body is larger than 1 MiB", false);
        add("415", "The body is not sent as application/json", false);
    }
    if has(ParameterIn::Query) {
        add("400", "A query parameter is invalid", false);
    }
    if has(ParameterIn::Path) {
        add("404", "Nothing is at this path", false);
    }
    if secured {
        add(
            "401",
            "The access token is missing, invalid or expired, or its session ended",
            false,
        );
        if [
            "/api/users",
            "/api/labs",
            "/api/audit-logs",
            "/api/security",
        ]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        {
            add("403", "The caller may not do this", false);
        }
    }
    if !exempt_from_limits {
        add("429", "Rate limited or the client IP is blocked", true);
    }
    add(
        "503",
        "The database or the hashing threads are saturated or unreachable",
        true,
    );
}

fn problem(description: &str, retry_after: bool) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        PROBLEM_JSON.to_string(),
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    if retry_after {
        response.headers.insert(
            "Retry-After".to_string(),
            Header::new(utoipa::openapi::ObjectBuilder::new().schema_type(
                utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::Type::Integer),
            )),
        );
    }
    response
}

/// A response declared with the `Problem` body is sent as `application/problem+json`.
fn send_problems_as_problem_json(response: &mut Response) {
    let is_problem = |content: &Content| matches!(&content.schema, Some(RefOr::Ref(reference)) if reference.ref_location.ends_with("/Problem"));
    if let Some(content) = response.content.get("application/json")
        && is_problem(content)
        && let Some(content) = response.content.shift_remove("application/json")
    {
        response.content.insert(PROBLEM_JSON.to_string(), content);
    }
}
