"""Dependencies of the routes, as ``Annotated`` types: the render service (ready or not), the
settings and metrics, and GET requests' query parameters validated like bodies.

The API key is not a dependency: ``middleware.ApiKeyGuard`` checks it before FastAPI reads or
parses anything, which a dependency cannot do (FastAPI parses a JSON body before it solves the
dependencies).

Every dependency is ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency
in its thread pool, and on a small CPU each such hop costs a fraction of a millisecond of every
request (three of them were a third of the service's overhead over the model at one client).
None of them blocks, so they run on the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from .errors import NotReady
from .metrics import ServiceMetrics
from .render_service import RenderService
from .schemas import OrbitRequest, RenderRequest, parse_query
from .settings import ServiceSettings

Model = TypeVar("Model", bound=BaseModel)


async def get_service(request: Request) -> RenderService:
    """The app's render service (created with the app, loaded by its lifespan)."""
    return request.app.state.service


async def ready_service(service: Annotated[RenderService, Depends(get_service)]) -> RenderService:
    """The render service once its models are loaded and warm; 503 before that."""
    if not service.ready:
        raise NotReady()
    return service


async def get_settings(service: Annotated[RenderService, Depends(get_service)]) -> ServiceSettings:
    return service.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def validate(model: type[Model], values: dict[str, Any], location: str) -> Model:
    """``model`` from ``values``; errors are FastAPI's 422, located at ``location``."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            error = dict(error)
            error["loc"] = (location, *error["loc"])
            error.pop("ctx", None)
            errors.append(error)
        raise RequestValidationError(errors) from None


async def render_query(request: Request) -> RenderRequest:
    """GET /render's query parameters as a RenderRequest (vectors comma-separated)."""
    return validate(RenderRequest, parse_query(dict(request.query_params)), "query")


async def orbit_query(request: Request) -> OrbitRequest:
    """GET /orbit's query parameters as an OrbitRequest."""
    return validate(OrbitRequest, parse_query(dict(request.query_params)), "query")


Service = Annotated[RenderService, Depends(get_service)]
ReadyService = Annotated[RenderService, Depends(ready_service)]
Settings = Annotated[ServiceSettings, Depends(get_settings)]
Metrics = Annotated[ServiceMetrics, Depends(get_metrics)]
RenderQuery = Annotated[RenderRequest, Depends(render_query)]
OrbitQuery = Annotated[OrbitRequest, Depends(orbit_query)]
