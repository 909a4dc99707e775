"""Django's ASGI handler with aioabort's pure ASGI middleware (a one-file Django project).

docs/web.md shows this file as it is, and tests/test_web_servers.py serves it with uvicorn.

    pip install aioabort django uvicorn
    AIOABORT_URL=sqlite:///aioabort.db uvicorn docs.examples.django_asgi:application

Django's handler runs each view in a task of its own and cancels it when the client
disconnects, so the middleware delivers an abort that way (``abort_as_disconnect=True``).
It does not speak the ASGI lifespan protocol, so the App opens on the first request
(``lazy_open=True``).
"""

from __future__ import annotations

import asyncio
import os

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "only-for-this-example"),
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
)

from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

import aioabort
from aioabort.web import AbortMiddleware

aborts = aioabort.App(os.environ.get("AIOABORT_URL", "sqlite:///aioabort.db"))


async def render(request: HttpRequest) -> JsonResponse:
    """A long request: ``await aborts.handle(request_id).abort()`` from anywhere stops it."""
    await asyncio.sleep(float(request.GET.get("seconds", "30")))
    return JsonResponse({"rendered": "yes"})


async def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("render", render), path("health", health)]

application = AbortMiddleware(
    get_asgi_application(),
    aborts=aborts,
    exclude=("/health",),
    lazy_open=True,
    abort_as_disconnect=True,
)
