"""The API's OpenAPI description (``/openapi.json``): the bodies it answers with, the errors each
route really gives, and the bearer key of the TCP listener.

The models here are for the schema only (handlers return plain dicts, shaped by ``model.py`` and
``errors.py``), so that clients can be generated from it. FastAPI's own 422 is taken out: validation
errors leave as 400 (see ``api.py``). A 405 (a method a path does not take) is declared nowhere: it
answers no operation of the schema, and a client generated from it never sends such a request.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from .. import __version__


class OpenAIFile(BaseModel):
    object: Literal["file"] = "file"
    id: str = Field(description="file- and 32 hex digits")
    bytes: int
    created_at: int = Field(description="Unix seconds")
    expires_at: int | None = Field(description="Unix seconds; null for files that do not expire")
    filename: str
    purpose: str


class OpenAIFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFile]
    has_more: bool
    first_id: str = Field(description="the first id of data, or an empty string")
    last_id: str = Field(description="the last id of data (the next page's after=), or an empty string")


class OpenAIFileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="the parameter at fault, if one is")
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS = {
    400: "Malformed or out-of-range input (the parameter at fault is error.param)",
    401: "Missing or wrong bearer key",
    404: "No such file",
    502: "The storage (S3 or the metadata database) failed",
    503: "The storage could not be reached, or the metadata database stayed busy",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that answers with these error statuses."""
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


CONTENT: dict[int | str, dict[str, Any]] = {
    200: {"description": "The file's bytes, streamed; Content-Disposition names the file",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


def install(app: FastAPI, bearer_key: bool) -> None:
    """Make ``app.openapi()`` (served at ``app.openapi_url``) the schema described above; with
    ``bearer_key``, every operation needs ``Authorization: Bearer`` and may answer 401."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=__version__, description=app.description,
                                 routes=app.routes)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
                    if bearer_key:
                        operation["responses"]["401"] = {
                            "description": ERRORS[401],
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
            components = schema.setdefault("components", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(unused, None)
            if bearer_key:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
