"""The server's OpenAPI document is a valid OpenAPI 3.1 document (checked by an independent
validator), and every path it lists is answered by the server."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError


def test_the_openapi_document_validates_against_the_3_1_schema(ums) -> None:
    document = httpx.get(f"{ums.url}/api/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    try:
        validate(document)
    except OpenAPIValidationError as error:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"invalid OpenAPI 3.1 document: {error}") from error
    assert len(document["paths"]) >= 30
    assert "Problem" in document["components"]["schemas"]
