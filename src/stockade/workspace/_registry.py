"""Blueprints kept in the store (table ``blueprints``), validated on the way in and out."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from stockade.core.errors import AlreadyExists, InvalidInput, NotFound
from stockade.store import BlueprintRow, Store

from ._blueprint import Blueprint, resolve

__all__ = ["BlueprintRegistry"]


class BlueprintRegistry:
    """Add, read, resolve and remove blueprints."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, blueprint: Blueprint, *, replace: bool = False) -> None:
        """Store ``blueprint``; its whole template chain must resolve (a missing parent or a
        cycle is refused before anything is written)."""
        existing = {b.name: b for b in await self.list()}
        if blueprint.name in existing and not replace:
            raise AlreadyExists("blueprint", blueprint.name, detail="give --replace to update it")
        resolve(blueprint.name, {**existing, blueprint.name: blueprint})
        document = blueprint.to_document()
        async with self.store.transaction() as session:
            row = (
                await session.execute(
                    select(BlueprintRow).where(BlueprintRow.name == blueprint.name)
                )
            ).scalar_one_or_none()
            if row is None:
                session.add(BlueprintRow(name=blueprint.name, document=document))
            else:
                row.document = document
                row.updated_at = datetime.now(UTC)

    async def list(self) -> list[Blueprint]:
        async with self.store.transaction(readonly=True) as session:
            rows = (
                await session.execute(select(BlueprintRow).order_by(BlueprintRow.name))
            ).scalars()
            return [Blueprint.model_validate(row.document) for row in rows]

    async def get(self, name: str) -> Blueprint:
        for blueprint in await self.list():
            if blueprint.name == name:
                return blueprint
        raise NotFound("blueprint", name)

    async def resolved(self, name: str) -> Blueprint:
        """``name`` with its templates merged in."""
        known = {b.name: b for b in await self.list()}
        if name not in known:
            raise NotFound("blueprint", name)
        return resolve(name, known)

    async def remove(self, name: str) -> None:
        """Remove ``name``; refused while another blueprint names it as its template."""
        known = {b.name: b for b in await self.list()}
        if name not in known:
            raise NotFound("blueprint", name)
        children = sorted(b.name for b in known.values() if b.template == name)
        if children:
            raise InvalidInput("template", f"{name!r} is the template of {', '.join(children)}")
        async with self.store.transaction() as session:
            row = (
                await session.execute(select(BlueprintRow).where(BlueprintRow.name == name))
            ).scalar_one()
            await session.delete(row)
