"""Profiles: named sets of hyper-parameters layered over the production defaults.

Every tunable is a `dg.Config` field whose default is the production value. A profile
(`configs/<name>.yaml`, chosen by `OSSA_PROFILE`, default `tiny`) overrides some of them; the
override becomes the field's default in the Dagster schema, so the launchpad, the UI's
Materialize button, sensors and the CLI all see the same values, and any run can still
override a field in its run config.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

PROFILE_DIR = Path(__file__).parent
DEFAULT_PROFILE = "tiny"

T = TypeVar("T")


def active_profile_name() -> str:
    return os.environ.get("OSSA_PROFILE", DEFAULT_PROFILE)


@functools.cache
def load_profile(name: str) -> dict[str, dict[str, Any]]:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ValueError(f"OSSA_PROFILE={name!r}: no {path.name}; known profiles: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile is a mapping of section -> field values")
    return data


def profiled(cls: type[T], section: str, profile: str | None = None) -> type[T]:
    """Return `cls` with the profile's values for `section` as field defaults."""
    import pydantic

    if section == INFORMATIONAL:
        raise ValueError(f"{INFORMATIONAL!r} is not a config section")
    values = load_profile(profile or active_profile_name()).get(section) or {}
    fields = cls.model_fields  # type: ignore[attr-defined]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"profile section {section!r} sets unknown fields {unknown} of {cls.__name__}"
        )
    if not values:
        return cls
    # validate the whole section once, so a typo'd type fails at definition load, not mid-run
    cls(**values)  # type: ignore[call-arg]
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
        "__annotations__": {},
        "__qualname__": cls.__qualname__,
    }
    for name, value in values.items():
        info = fields[name]
        namespace["__annotations__"][name] = info.annotation
        namespace[name] = pydantic.Field(default=value, description=info.description)
    return type(cls.__name__, (cls,), namespace)  # type: ignore[return-value]


INFORMATIONAL = "informational_checks"  # profile section: "<asset key>:<check>" -> why it cannot gate


def informational_checks(profile: str | None = None) -> dict[str, str]:
    """Checks the profile reports without gating on them, each with the reason.

    A blocking check that cannot fail is worse than none: it says "passed" about nothing. Where
    a profile's models cannot reach a meaningful level (tiny models write no valid document),
    the profile lists the check here and it runs as a non-blocking check that says why.
    """
    found = load_profile(profile or active_profile_name()).get(INFORMATIONAL) or {}
    if not isinstance(found, dict) or not all(isinstance(v, str) and v for v in found.values()):
        raise ValueError(f"profile section {INFORMATIONAL!r} maps '<asset>:<check>' to a reason")
    return dict(found)
