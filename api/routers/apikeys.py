"""API keys: create (shown once), list, revoke. Admin scope only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, Field

from api.deps import WRITE_ERRORS, RegistryDep, SettingsDep
from api.registry import ApiKey
from api.security import Admin
from contract.cities import CITY_SLUG_PATTERN

router = APIRouter(prefix="/v1/apikeys", tags=["api keys"], responses=WRITE_ERRORS)


class KeyIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[\w .,@()-]+$")]
    scope: Literal["read", "admin"]
    city: Annotated[str | None, Field(pattern=CITY_SLUG_PATTERN, description="admin keys only: manage this city only")] = None


class KeyOut(BaseModel):
    id: str
    name: str
    scope: str
    city: str | None
    created: datetime
    revoked: datetime | None


class KeyCreated(KeyOut):
    key: str  # the token, shown this once


def _out(k: ApiKey) -> KeyOut:
    return KeyOut(id=k.id, name=k.name, scope=k.scope, city=k.city, created=k.created, revoked=k.revoked)


@router.post("", response_model=KeyCreated, status_code=201)
def create_key(body: KeyIn, key: Admin, registry: RegistryDep, settings: SettingsDep) -> KeyCreated:
    """A new key; its token is returned now and never again (only a hash is kept)."""
    if key.city is not None:
        raise HTTPException(403, "a city-bound admin key cannot create keys")
    if body.city is not None and body.city not in settings.cities:
        raise HTTPException(400, f"unknown city {body.city!r}")
    new, token = registry.create_key(body.name, body.scope, body.city)
    return KeyCreated(**_out(new).model_dump(), key=token)


@router.get("", response_model=list[KeyOut])
def list_keys(key: Admin, registry: RegistryDep) -> list[KeyOut]:
    """Keys (never their tokens); a city-bound admin key sees only its city's keys."""
    return [_out(k) for k in registry.api_keys() if key.city is None or k.city == key.city]


@router.delete("/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")], key: Admin, registry: RegistryDep) -> Response:
    """Revoke a key: it is refused from the next call on."""
    if key.city is not None:
        raise HTTPException(403, "a city-bound admin key cannot revoke keys")
    if not registry.revoke_key(key_id):
        raise HTTPException(404, "no such active key")
    return Response(status_code=204)
