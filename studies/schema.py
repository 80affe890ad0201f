"""The OpenAPI schema says exactly what the API answers (drf-spectacular's AutoSchema, extended).

- Every list operation answers the paginated envelope `{"count","next","previous","results"}` with
  its `page` parameter (the views paginate by hand, so they name no `pagination_class`).
- Every error answer is documented with its body: 400 (field → messages, or `detail`), 401 and 403
  (`detail`; 403 for a role that may not call the operation), 404 for an unknown or hidden id,
  409 for a request the object's state refuses, 429 for the token endpoint's lockout, 415 for
  a body in a media type the operation does not read.
"""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny

DETAIL_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "what went wrong, for a person"}},
    "required": ["detail"],
}
VALIDATION_SCHEMA = {
    "type": "object",
    "description": (
        "Field name (or `non_field_errors`) → the messages about it; a list field's messages are "
        "keyed by item position. A request that could not be read at all answers `detail`."
    ),
    "additionalProperties": {
        "anyOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": {}},
            {"type": "string"},
        ]
    },
}
ERROR_DESCRIPTIONS = {
    "400": "The request is malformed or breaks a rule; nothing was changed.",
    "401": "No valid credentials: log in or send `Authorization: Token …`.",
    "403": "Your role may not do this.",
    "404": "No such object, or not one you may see (on a list: no such page).",
    "409": "The object's state does not allow this now.",
    "415": "The body is in a media type this operation does not read.",
    "429": "Too many failed logins for this account from this address; try again later.",
}
# Operations (path suffix, method) whose services refuse a request in the object's current state.
# The viewer's pixel data answers 409 when a stored upload no longer decodes.
CONFLICT_OPERATIONS = {
    ("/reviews/", "POST"),
    ("/images/", "POST"),
    ("/complete/", "POST"),
    ("/body-part/", "POST"),
    ("/pixels", "GET"),
    ("/pixels.u16", "GET"),
}


class ApiSchema(AutoSchema):
    """AutoSchema with the paginated envelope on lists and every error answer documented."""

    def _get_paginator(self):
        # Our list views paginate with PageNumberPagination (studies.apis._paginated).
        return PageNumberPagination() if self.method == "GET" else None

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            responses.setdefault(code, self._error_response(code))
        return responses

    def _error_codes(self) -> list[str]:
        codes = []
        anonymous = all(isinstance(p, AllowAny) for p in self.view.get_permissions())
        takes_body = self.method in ("POST", "PUT", "PATCH")
        if takes_body or self._is_list_view():
            codes.append("400")
        if not anonymous:
            codes += ["401", "403"]
        if "{" in self.path or self._is_list_view():
            codes.append("404")  # an unknown id; on a list, a `page` past the end
        if any(
            self.path.endswith(suffix) and self.method == method for suffix, method in CONFLICT_OPERATIONS
        ):
            codes.append("409")
        if takes_body:
            codes.append("415")
        if anonymous and takes_body:
            codes.append("429")  # the token endpoint's lockout (django-axes)
        return codes

    def _error_response(self, code: str) -> dict[str, Any]:
        name, schema = (
            ("ValidationError", VALIDATION_SCHEMA) if code == "400" else ("ErrorDetail", DETAIL_SCHEMA)
        )
        component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=schema)
        self.registry.register_on_missing(component)
        return {
            "content": {"application/json": {"schema": component.ref}},
            "description": ERROR_DESCRIPTIONS[code],
        }
