"""Views that queue and abort aioabort tasks: sync views call ``aioabort.sync`` directly,
async views through asgiref's ``sync_to_async`` (a blocking call on the server's event loop
is refused, as the last view shows)."""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse

import aioabort
import aioabort.sync

#: One per server process (its URL from AIOABORT_URL); opened at its first call.
aborts = aioabort.sync.App()


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def queue(request: HttpRequest, name: str) -> JsonResponse:
    """Queue a task by name (this project never imports it)."""
    kwargs = json.loads(request.body or b"{}")
    handle = aborts.send_task(name, kwargs=kwargs)
    return JsonResponse({"id": handle.id}, status=202)


def abort(request: HttpRequest, task_id: str) -> JsonResponse:
    """A sync view: the sync App's calls block this view's thread, never the server's loop."""
    handle = aborts.handle(task_id)
    asked = handle.abort(reason=request.POST.get("reason", "stopped from a sync view"), by="django")
    return JsonResponse({"aborted": asked, "state": handle.state().value})


async def abort_async(request: HttpRequest, task_id: str) -> JsonResponse:
    """An async view: the blocking call goes to a thread."""
    handle = aborts.handle(task_id)
    reason = request.POST.get("reason", "stopped from an async view")
    asked = await sync_to_async(handle.abort)(reason=reason, by="django-async")
    return JsonResponse({"aborted": asked})


async def state_blocking_in_async(request: HttpRequest, task_id: str) -> JsonResponse:
    """The mistake: a blocking call made on the event loop is refused with a clear error."""
    try:
        state = aborts.handle(task_id).state()
    except aioabort.BlockingCallInEventLoop as exc:
        return JsonResponse({"error": str(exc)}, status=500)
    return JsonResponse({"state": state.value})
