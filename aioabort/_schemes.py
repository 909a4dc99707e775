"""What a URL scheme names (a store's or a notifier's class, imported when first used) and how
it is loaded: the driver first, so a missing one names the extra to install."""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from ._errors import InvalidURL, MissingDriver


class Scheme(NamedTuple):
    target: str  # "module:ClassName", imported when the scheme is first used
    extra: str | None  # the aioabort extra that installs its driver
    driver: str | None  # the driver's module, checked first for a clear MissingDriver


def load(scheme: str, entry: Scheme, *, what: str, driver_is: str, base: type) -> Any:
    """The class ``entry`` names for ``scheme://`` URLs, a subclass of ``base``.

    :param what: "store" or "notifier", for the messages; ``driver_is``: what its driver is
        called in them ("driver", "package").
    :raises MissingDriver: when the driver's module is not installed (names the extra).
    :raises InvalidURL: when the target is not a subclass of ``base``.
    """
    target, extra, driver = entry
    if driver is not None:
        try:
            importlib.import_module(driver)
        except ImportError as exc:
            hint = f'pip install "aioabort[{extra}]"' if extra else f"pip install {driver}"
            raise MissingDriver(
                f"the {scheme} {what} needs the {driver} {driver_is}, which is not installed: "
                f"{hint}"
            ) from exc
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise InvalidURL(
            f"{target} (registered for {scheme}://) is not an aioabort {base.__name__}"
        )
    return cls
