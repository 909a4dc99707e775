"""A Django project for the tests: its views abort tasks through ``aioabort.sync``."""
