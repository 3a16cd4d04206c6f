"""The session's kept generations as the Attention and Probabilities tabs pick them, and the tree that
branches make of them.

A picker's first choice, ``LATEST``, follows the newest generation: after a new one it shows that one.
A generation the user chose stays chosen while the session keeps it. A branch (``ui.logic.branch``) is
listed under the generation it came from, indented, with the step and the token it was forced to; a
session keeps only its last ``MAX_RECORDS``, so a branch may outlive its parent: it then says so.
"""

from __future__ import annotations

from collections.abc import Iterator

import gpt2

from .. import inputs
from ..inputs import LATEST, UserError
from ..session import MAX_RECORDS, GenerationRecord, Session
from ..updates import Update, update

LATEST_LABEL = "the latest (follows new generations)"
NO_GENERATION = "No generation yet: generate a text in the Generate tab first, then inspect it here."
INDENT = "\u2003"  # an em space: a picker's list keeps it (ordinary spaces collapse in HTML)


def token_text(token: int) -> str:
    """A token as labels quote it: its text, spaces and line breaks shown (``'␣the'``)."""
    return repr(gpt2.token_display([token])[0])


def kept(session: Session, record_id: int | None) -> GenerationRecord | None:
    """The kept record ``record_id`` (None: none), without counting it as used (``Session.record`` does:
    listing a tree is no use of its logits)."""
    return next((r for r in session.records if r.id == record_id), None) if record_id is not None else None


def origin(session: Session, record: GenerationRecord) -> str:
    """Where a branch came from: "from #3 at step 5: '␣the'" (its parent may no longer be kept); "" for a
    generation that is no branch."""
    if record.parent is None:
        return ""
    gone = "" if kept(session, record.parent) is not None else " (no longer kept)"
    return f"from #{record.parent}{gone} at step {record.branch_step}: {token_text(record.forced_token)}"


def label(session: Session, record: GenerationRecord, depth: int = 0) -> str:
    """A picker's label: ``record.label``; a branch's is indented ``depth`` levels under its parent and
    says where it came from first."""
    if record.parent is None:
        return record.label
    number, _, rest = record.label.partition(" · ")
    return f"{INDENT * depth}↳ {number} {origin(session, record)} · {rest}"


def children(session: Session, record_id: int) -> list[GenerationRecord]:
    """The kept branches of generation ``record_id``, oldest first."""
    return [r for r in session.records if r.parent == record_id]


def _walk(session: Session, record: GenerationRecord, depth: int = 0) -> Iterator[tuple[GenerationRecord, int]]:
    """``record`` and its kept branches, depth first (oldest first), with their depths."""
    yield record, depth
    for child in children(session, record.id):
        yield from _walk(session, child, depth + 1)


def tree(session: Session) -> Iterator[tuple[GenerationRecord, int]]:
    """Every kept generation with its depth: trees newest first, each parent followed by its branches.
    A tree's root is no branch, or a branch whose parent is no longer kept."""
    roots = [r for r in session.records if kept(session, r.parent) is None]
    for root in reversed(roots):
        yield from _walk(session, root)


def choices(session: Session) -> list[tuple[str, int | str]]:
    """Picker choices: the latest, then every kept generation as a tree (newest trees first)."""
    return [(LATEST_LABEL, LATEST), *((label(session, r, depth), r.id) for r, depth in tree(session))]


def ancestors(session: Session, record: GenerationRecord) -> list[GenerationRecord]:
    """The kept generations ``record`` branched from, its parent first (up to one no longer kept)."""
    chain: list[GenerationRecord] = []
    parent = kept(session, record.parent)
    while parent is not None and parent is not record and parent not in chain:
        chain.append(parent)
        parent = kept(session, parent.parent)
    return chain


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~"})


def _md(text: str) -> str:
    """``text`` shown as it is in Markdown (its markup characters escaped, on one line)."""
    return " ".join(text.split()).translate(_MARKDOWN)


def lineage(session: Session, record: GenerationRecord) -> tuple[str, Update]:
    """``record``'s tree of branches: Markdown (its parent chain, then the tree as a nested list, this
    one in bold) and a "go to" radio's update (every member of the tree, this one selected; hidden while
    the tree is this one alone)."""
    chain = [record, *ancestors(session, record)]
    members = list(_walk(session, chain[-1]))
    if len(members) == 1:
        where = f" It branched {_md(origin(session, record))}." if record.parent is not None else ""
        return (f"**Branches**: none yet.{where} Pick a candidate below and “Continue from this token”.",
                update(choices=[(f"#{record.id}", record.id)], value=record.id, visible=False))
    lines = []
    for r, depth in members:
        start = gpt2.get_tokenizer().decode(r.token_ids[:8])
        text = _md(f"#{r.id} {origin(session, r)} · {len(r.token_ids)} tokens · “{start}…”".replace("  ", " "))
        lines.append("  " * depth + "- " + (f"**{text}** ← this one" if r is record else text))
    path = " → ".join(f"#{r.id}" for r in reversed(chain))
    head = f"**Branches** · lineage {path} · {len(children(session, record.id))} branch(es) from this one"
    radio = update(choices=[(f"{INDENT * d}{'↳ ' if d else ''}#{r.id}", r.id) for r, d in members], value=record.id,
                   visible=True)
    return head + "\n\n" + "\n".join(lines), radio


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
