"""``audit verify``: check the chain and the signed heads, name the first row that is wrong.

Rows are read in chain order (keyset pages, constant memory). Each row is checked against

1. the signed heads (where one covers it): its content digest must be the one signed for its
   position. A mismatch is classified by looking one step ahead: when the row matches the *next*
   signed digest, the signed row before it was **removed**; when the *next* row matches this
   position's digest, this row was **inserted**; otherwise it was **altered**. This catches a
   rewrite even when every later hash was recomputed;
2. the chain: ids are consecutive, ``prev_hash`` is the previous row's hash, ``hash`` is the
   recomputed chain hash, and at each head's last row the chain hash is the signed one.

Signed positions past the newest row mean the newest rows were **removed**. Rows after the
newest head are only chain-checked (they are reported as not yet signed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from stockade.core.events import AuditHead
from stockade.store import AuditEventRow, Store

from ._heads import DIGEST_BYTES, head_digests, read_heads, verify_head
from ._schema import GENESIS, AuditRecord, chain_hash

__all__ = ["VerifyReport", "verify_store"]

_PAGE = 5000


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify_store`."""

    ok: bool
    rows: int
    """Rows read before the first problem (all of them when ok)."""
    heads: int
    """Signed heads checked."""
    signed_through: int
    """The newest row a signed head covers (0: none)."""
    problem: str | None = None
    """One line naming the first row found altered, removed or inserted."""
    row: int | None = None
    """That row's position in the chain."""

    @property
    def unsigned(self) -> int:
        """Rows after the newest signed head."""
        return max(self.rows - self.signed_through, 0) if self.ok else 0


@dataclass(frozen=True, slots=True)
class _Expected:
    position: int
    digest: bytes
    last_of_head: str | None
    """The signed chain hash when this position is a head's last row."""


class _Peekable:
    def __init__(self, items: Iterator[_Expected]) -> None:
        self._items = items
        self._next: list[_Expected] = []

    def peek(self) -> _Expected | None:
        if not self._next:
            item = next(self._items, None)
            if item is None:
                return None
            self._next.append(item)
        return self._next[0]

    def pop(self) -> _Expected | None:
        item = self.peek()
        if item is not None:
            self._next.pop()
        return item


async def _rows(store: Store) -> AsyncIterator[tuple[int, str, str, AuditRecord]]:
    after = -(2**62)
    columns = [c for c in AuditEventRow.__table__.c]
    while True:
        async with store.transaction(readonly=True) as session:
            page = (
                (
                    await session.execute(
                        select(*columns)
                        .where(AuditEventRow.id > after)
                        .order_by(AuditEventRow.id)
                        .limit(_PAGE)
                    )
                )
                .mappings()
                .all()
            )
        for row in page:
            yield int(row["id"]), str(row["prev_hash"]), str(row["hash"]), AuditRecord.from_row(row)
        if len(page) < _PAGE:
            return
        after = int(page[-1]["id"])


class _Problem(Exception):
    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row
        self.message = message


def _checked_heads(heads_file: Path, public: Ed25519PublicKey) -> list[AuditHead]:
    """The heads of the file, each signed by ``public`` and contiguous; _Problem otherwise."""
    heads: list[AuditHead] = []
    last = 0
    for number, head in read_heads(heads_file):
        where = f"{heads_file}:{number}"
        if not verify_head(head, public):
            raise _Problem(head.first, f"signed head at {where} has a bad signature or key")
        if head.first != last + 1 or head.last < head.first:
            row = min(head.first, last + 1)
            raise _Problem(
                row,
                f"row {row}: signed heads are not contiguous at {where} "
                f"(rows {head.first}..{head.last} after {last}): the store was rolled back",
            )
        head_digests(head)  # the right number of digests
        heads.append(head)
        last = head.last
    return heads


def _expected(heads: list[AuditHead]) -> Iterator[_Expected]:
    for head in heads:
        for offset, digest in enumerate(head_digests(head)):
            position = head.first + offset
            yield _Expected(position, digest, head.chain_hash if position == head.last else None)


async def verify_store(store: Store, heads_file: Path, public: Ed25519PublicKey) -> VerifyReport:
    """Check every row of the store's chain against itself and the signed heads."""
    rows = 0
    try:
        checked = _checked_heads(heads_file, public)
    except _Problem as problem:
        return VerifyReport(False, 0, 0, 0, problem.message, problem.row)
    heads = len(checked)
    signed_through = checked[-1].last if checked else 0
    expected = _Peekable(_expected(checked))
    prev_id, prev_hash = 0, GENESIS
    stream = _rows(store)
    pending: tuple[int, str, str, AuditRecord] | None = None
    try:
        while True:
            current = pending if pending is not None else await anext(stream, None)
            pending = None
            if current is None:
                break
            row_id, row_prev, row_hash, record = current
            digest = record.digest()
            want = expected.pop()
            if want is not None and bytes.fromhex(digest)[:DIGEST_BYTES] != want.digest:
                after = expected.peek()
                if after is not None and bytes.fromhex(digest)[:DIGEST_BYTES] == after.digest:
                    raise _Problem(want.position, f"row {want.position} removed")
                pending = await anext(stream, None)
                if pending is not None and (
                    bytes.fromhex(pending[3].digest())[:DIGEST_BYTES] == want.digest
                ):
                    raise _Problem(row_id, f"row {row_id} inserted: it is not in the signed record")
                raise _Problem(
                    want.position,
                    f"row {want.position} altered: its content differs from the signed record",
                )
            if want is not None and row_id != want.position:
                raise _Problem(want.position, f"row {want.position} renumbered (found id {row_id})")
            if row_id != prev_id + 1:
                raise _Problem(prev_id + 1, f"row {prev_id + 1} removed (next row is {row_id})")
            if row_prev != prev_hash:
                raise _Problem(
                    row_id,
                    f"row {row_id} inserted or altered: it does not chain to row {prev_id}",
                )
            if chain_hash(row_prev, row_id, digest) != row_hash:
                raise _Problem(row_id, f"row {row_id} altered: its content does not match its hash")
            if want is not None and want.last_of_head is not None and row_hash != want.last_of_head:
                raise _Problem(row_id, f"row {row_id}: chain hash differs from its signed head")
            prev_id, prev_hash = row_id, row_hash
            rows += 1
        missing = expected.pop()
        if missing is not None:
            raise _Problem(
                missing.position,
                f"rows {missing.position}..{signed_through} removed: signed, no longer stored",
            )
    except _Problem as problem:
        return VerifyReport(False, rows, heads, signed_through, problem.message, problem.row)
    return VerifyReport(True, rows, heads, signed_through)
