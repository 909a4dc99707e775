"""The ASGI entry point: ``uvicorn tests.django_project.asgi:application``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
