"""The session's kept generations as the Attention and Probabilities tabs pick them.

A picker's first choice, ``LATEST``, follows the newest generation: after a new one it shows that one.
A generation the user chose stays chosen while the session keeps it.
"""

from __future__ import annotations

from .. import inputs
from ..inputs import LATEST, UserError
from ..session import MAX_RECORDS, GenerationRecord, Session
from ..updates import Update, update

LATEST_LABEL = "the latest (follows new generations)"
NO_GENERATION = "No generation yet: generate a text in the Generate tab first, then inspect it here."


def choices(session: Session) -> list[tuple[str, int | str]]:
    """Picker choices: the latest, then every kept generation, newest first."""
    return [(LATEST_LABEL, LATEST), *((r.label, r.id) for r in reversed(session.records))]


def find(session: Session, value) -> GenerationRecord:
    """The chosen generation (``LATEST``, None or "": the newest), or a ``UserError`` saying what to do."""
    if not session.records:
        raise UserError(NO_GENERATION)
    rid = inputs.record_id(value)
    record = session.record(rid)
    if record is None:
        kept = ", ".join(f"#{r.id}" for r in session.records)
        raise UserError(f"Generation #{rid} is no longer kept (a session keeps its last {MAX_RECORDS}: {kept}); "
                        "pick one from the list.")
    return record


def is_kept(session: Session, value) -> bool:
    """Whether ``value`` names the latest or a generation the session still keeps."""
    try:
        return inputs.record_id(value) is None or session.record(inputs.record_id(value)) is not None
    except UserError:
        return False


def picker(session: Session, current) -> Update:
    """The picker refreshed (after a generation, or when its tab opens): the user's choice while it is
    kept, else the latest."""
    return update(choices=choices(session), value=current if is_kept(session, current) else LATEST)
