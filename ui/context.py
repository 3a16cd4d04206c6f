"""What every tab needs: the shared model store, the server-side caps, and the session's model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import gpt2

from . import budget
from .gpu import Gpu, ModelRef
from .inputs import UserError
from .models import ModelStore
from .session import GenerationRecord, Session


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Caps:
    """Limits enforced on the server (the widgets only mirror them). Each can be set by environment
    variable, e.g. ``GPT2_MAX_NEW_TOKENS=512``; the defaults keep a free 2-vCPU Space responsive."""

    max_prompt_chars: int = field(default_factory=lambda: _env_int("GPT2_MAX_PROMPT_CHARS", 20_000))
    max_new_tokens: int = field(default_factory=lambda: _env_int("GPT2_MAX_NEW_TOKENS", 256))
    # Decoding analyses: beams per beam search (returned sequences at most the beams), samples per diversity
    # request, and tokens one diversity request may draw in all (samples x new tokens x sweep points).
    max_beams: int = field(default_factory=lambda: _env_int("GPT2_MAX_BEAMS", 8))
    max_diversity_samples: int = field(default_factory=lambda: _env_int("GPT2_MAX_DIVERSITY_SAMPLES", 16))
    max_diversity_tokens: int = field(default_factory=lambda: _env_int("GPT2_MAX_DIVERSITY_TOKENS", 8192))
    # Positions (rows x tokens) a batched cache may hold: beams or diversity samples x (prompt + new tokens).
    # 8 beams over the whole 1,024-token context: 0.6 GB on GPT-2 124M in fp32. Longer prompts are cropped.
    max_cache_positions: int = field(default_factory=lambda: _env_int("GPT2_MAX_CACHE_POSITIONS", 8192))
    # The Lab's experiments: tokens of a text to attribute (each method runs up to ``steps`` or T passes),
    # integrated-gradients steps, and tokens of a patching prompt (one pass per layer and position).
    max_attribution_tokens: int = field(default_factory=lambda: _env_int("GPT2_MAX_ATTRIBUTION_TOKENS", 256))
    max_attribution_steps: int = field(default_factory=lambda: _env_int("GPT2_MAX_ATTRIBUTION_STEPS", 64))
    max_patch_tokens: int = field(default_factory=lambda: _env_int("GPT2_MAX_PATCH_TOKENS", 64))
    max_train_steps: int = field(default_factory=lambda: _env_int("GPT2_MAX_TRAIN_STEPS", 500))
    max_train_seconds: int = field(default_factory=lambda: _env_int("GPT2_MAX_TRAIN_SECONDS", 180))
    max_upload_bytes: int = field(default_factory=lambda: _env_int("GPT2_MAX_UPLOAD_BYTES", 2_000_000))
    queue_size: int = field(default_factory=lambda: _env_int("GPT2_QUEUE_SIZE", 64))
    # Per-session quotas on that queue (``ui.layout.quotas``): requests a session may have waiting or
    # running (its page's own follow-ups have an allowance of their own), and fine-tunes waiting or running
    # on the whole server (one per session), so one client cannot fill the queue or the fine-tune line.
    max_events_per_session: int = field(default_factory=lambda: _env_int("GPT2_MAX_EVENTS_PER_SESSION", 2))
    max_queued_finetunes: int = field(default_factory=lambda: _env_int("GPT2_MAX_QUEUED_FINETUNES", 4))
    # Every event that may run the model waits in one pool of this size (``ui.layout.wiring.MODEL_POOL``).
    # 2, a free Space's vCPUs: a third job only splits the same cores three ways (each torch job already
    # uses all of them) and adds its memory; a waiting request sees its place. The old name is still read.
    model_concurrency: int = field(default_factory=lambda: _env_int(
        "GPT2_MODEL_CONCURRENCY", _env_int("GPT2_GENERATE_CONCURRENCY", 2)))
    session_ttl_s: int = field(default_factory=lambda: _env_int("GPT2_SESSION_TTL", 1800))
    # Gradio keeps ~200 kB of bookkeeping per browser session until this many exist (its default: 10,000)
    max_sessions: int = field(default_factory=lambda: _env_int("GPT2_MAX_SESSIONS", 2000))
    # New sessions a client address may start in any minute (``ui.layout.sessions``; 0: no limit), so a flood
    # of new session hashes cannot evict active users; a page or a gradio_client Client is one session.
    new_sessions_per_minute: int = field(default_factory=lambda: _env_int("GPT2_NEW_SESSIONS_PER_MINUTE", 30))
    # Behind a proxy (a Hugging Face Space, or ``GPT2_TRUST_FORWARDED=1``) the client's address is the first
    # of ``X-Forwarded-For``; otherwise the header is ignored (any client could write it).
    trust_forwarded: bool = field(default_factory=lambda: os.environ.get("GPT2_TRUST_FORWARDED", "") == "1"
                                  or bool(os.environ.get("SPACE_ID")))
    # Request size (``ui.layout.limits``): every request body at most this many bytes (by default twice
    # the upload cap and 64 KiB: a /finetune with the largest pasted text, even JSON-escaped as \uXXXX,
    # or a multipart upload of the largest file), and files per upload request (the page sends one).
    max_request_bytes: int = field(default_factory=lambda: _env_int(
        "GPT2_MAX_REQUEST_BYTES", 2 * _env_int("GPT2_MAX_UPLOAD_BYTES", 2_000_000) + 65_536))
    max_files_per_upload: int = field(default_factory=lambda: _env_int("GPT2_MAX_FILES_PER_UPLOAD", 1))
    # Upload bytes one client address may send in an hour (0: no limit): uploads need no session, and
    # Gradio keeps them an hour; 50 MB is 25 uploads of the largest file.
    max_upload_bytes_per_hour: int = field(default_factory=lambda: _env_int("GPT2_MAX_UPLOAD_BYTES_PER_HOUR",
                                                                            50_000_000))
    # Memory budgets shared by all sessions, least recently used out (``ui.budget``): bytes of kept per-step
    # logits (the Probabilities tab recomputes a dropped step), full fine-tuned copies held (a dropped one is
    # announced to its session), and seconds a packed download stays on disk after it was last asked for.
    logits_budget_mb: int = field(default_factory=lambda: _env_int("GPT2_LOGITS_BUDGET_MB", budget.DEFAULT_LOGITS_MB))
    max_full_copies: int = field(default_factory=lambda: _env_int("GPT2_MAX_FULL_COPIES", budget.DEFAULT_FULL_COPIES))
    download_ttl_s: int = field(default_factory=lambda: _env_int("GPT2_DOWNLOAD_TTL", budget.DEFAULT_DOWNLOAD_TTL_S))
    # The Attention tab's redraws (``ui.redraw``): MB of queries and keys one session keeps of the text it drew
    # (1,024 tokens of GPT-2 124M: 75 MB; a longer one runs the model per view), and MB all sessions keep.
    max_redraw_mb: int = field(default_factory=lambda: _env_int("GPT2_MAX_REDRAW_MB", 100))
    redraw_budget_mb: int = field(default_factory=lambda: _env_int("GPT2_REDRAW_BUDGET_MB", budget.DEFAULT_REDRAW_MB))


@dataclass
class AppContext:
    store: ModelStore
    default_key: str
    caps: Caps = field(default_factory=Caps)
    gpu: Gpu = field(init=False)

    def __post_init__(self) -> None:
        self.gpu = Gpu(self.store)
        budget.configure(self.caps.logits_budget_mb, self.caps.max_full_copies, self.caps.download_ttl_s,
                         self.caps.redraw_budget_mb)

    def new_session(self) -> Session:
        """A session on the default model, in its default precision (its store key, ``ui.models``)."""
        return Session(model_key=self.store.key(self.default_key))

    def session(self, state: Session | None) -> Session:
        """The session held in a ``gr.State`` (created on first use: a State's value must be copyable)."""
        return state if isinstance(state, Session) else self.new_session()

    def ref(self, session: Session, finetuned: bool | None = None) -> ModelRef:
        """The session's model for a job (see ``ui.gpu``). ``finetuned`` None follows the session's
        base/fine-tuned toggle."""
        want = session.use_finetuned if finetuned is None else finetuned
        if want and session.dropped_note and not session.has_finetuned():  # the server's budget dropped it
            session.use_finetuned = False  # said once; the next request uses the base
            raise UserError(session.dropped_note)
        use = want and session.has_finetuned()
        if use:
            return ModelRef(session.model_key, adapter=session.adapter, model=session.finetuned_model)
        return ModelRef(session.model_key)

    def base(self, key: str) -> gpt2.GPT2:
        """A shared base model, to read its configuration and size: model work goes through ``gpu``."""
        try:
            return self.store.get(key)
        except (KeyError, gpt2.CheckpointError) as e:
            raise UserError(str(e)) from None

    def config(self, ref: ModelRef) -> gpt2.GPTConfig:
        """The configuration of a referenced model."""
        return ref.model.config if ref.model is not None else self.base(ref.key).config

    def record_model(self, session: Session, record: GenerationRecord) -> tuple[ModelRef, str | None]:
        """The model that made ``record``, as far as the session still has it, and a note when it is not
        quite that model. The one policy for every tab: the session may have switched model or toggled
        base/fine-tuned since; a fine-tuned model it no longer has is replaced by its base, and said so."""
        if not record.finetuned:
            return ModelRef(record.model_key), None
        kept = session.adapter is not None or session.finetuned_model is not None
        if kept and session.adapter_base == record.model_key:
            return ModelRef(record.model_key, adapter=session.adapter, model=session.finetuned_model), None
        return ModelRef(record.model_key), (f"Generation #{record.id} came from a fine-tuned {record.model_key} that "
                                            "this session no longer has: showing its base model instead.")
