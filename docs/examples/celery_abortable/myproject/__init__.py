# Celery's project layout: the app is made when the project is imported.
from .celery import app as celery_app

__all__ = ["celery_app"]
