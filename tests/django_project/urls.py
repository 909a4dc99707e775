"""The routes of the test Django project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("health", views.health),
    path("tasks/<str:name>/queue", views.queue),
    path("tasks/<str:task_id>/abort", views.abort),
    path("tasks/<str:task_id>/abort-async", views.abort_async),
    path("tasks/<str:task_id>/state-async", views.state_blocking_in_async),
]
