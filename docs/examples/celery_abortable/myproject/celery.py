import os

from celery import Celery

from aioabort.celery import setup

app = Celery(
    "myproject",
    broker=os.environ.get("CELERY_BROKER", "redis://localhost:6379/0"),
    backend=os.environ.get("CELERY_BROKER", "redis://localhost:6379/0"),
    include=["myproject.tasks"],
)
setup(app, os.environ.get("AIOABORT_URL", "sqlite:///aioabort.db"))
