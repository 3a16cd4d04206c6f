"""The terminal UI: ``python -m gpt2 generate | score | chat``.

This is the only module that prints; the library reports through return values and ``logging``.
User errors (bad flags, unknown models, unreadable files) end as ``error: <message>`` on stderr with
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from . import prompts
from .generation import Step, generate
from .inspection import score
from .model import GPT2
from .quant import QUANTIZATIONS
from .sampling import SamplingParams
from .search import BeamParams, beam_search
from .tokenizer import EOT_ID, encode, get_tokenizer
from .weights import CheckpointError

# The model the repo trains itself (training/) when it is there, else the smallest official GPT-2.
# Resolved against the repo root, not the working directory, so it works wherever the CLI is run from.
_LOCAL_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "shakespeare-small"
DEFAULT_MODEL = str(_LOCAL_CHECKPOINT) if _LOCAL_CHECKPOINT.is_dir() else "gpt2"

GENERATE_MAX_NEW_TOKENS = 64
CHAT_MAX_NEW_TOKENS = 128  # replies are worth a little more room than a one-off continuation
DTYPES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16")

Write = Callable[[str], None]
GenerateFn = Callable[[GPT2, Sequence[int], SamplingParams], Iterable[Step]]


# ---------------------------------------------------------------------------------------------- parsing


def _model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id (gpt2, gpt2-medium, ..., owner/name) or checkpoint directory "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: CUDA if available)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights' dtype, or with --quantize the activations' (default: bf16/fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--quantize", default=None, choices=QUANTIZATIONS,
                   help="int8: weight-only int8, a quarter of fp32's memory and the fastest on a CPU")
    p.add_argument("-v", "--verbose", action="store_true", help="show progress logs (downloads, cropping)")
    return p


def _sampling_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"tokens to generate (default: {GENERATE_MAX_NEW_TOKENS}; chat: {CHAT_MAX_NEW_TOKENS})")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off (default)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats; 1 = off")
    g.add_argument("--min-p", type=float, default=0.0,
                   help="keep tokens at least P times as likely as the top one; 0 = off (default)")
    g.add_argument("--typical-p", type=float, default=1.0, help="locally typical sampling mass; 1 = off (default)")
    g.add_argument("--epsilon-cutoff", type=float, default=0.0,
                   help="drop tokens below probability E; 0 = off (default)")
    g.add_argument("--eta-cutoff", type=float, default=0.0,
                   help="entropy-dependent cutoff (eta sampling); 0 = off (default)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="never repeat an n-gram of this size (the prompt counts); 0 = off (default)")
    g.add_argument("--seed", type=int, default=None, help="fix the random draws (same seed, same text)")
    g.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop before this string (repeatable)")
    g.add_argument("--no-stop-at-eos", dest="stop_at_eos", action="store_false",
                   help="keep going past <|endoftext|> (generate; chat always stops there)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the three subcommands."""
    parser = argparse.ArgumentParser(prog="python -m gpt2", description="Run a GPT-2 model from the terminal.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,score,chat}")
    model, sampling = _model_options(), _sampling_options()

    gen = sub.add_parser("generate", parents=[model, sampling], help="continue a prompt, streaming the text")
    gen.add_argument("--prompt", required=True, help="text to continue ('' starts from <|endoftext|>)")
    gen.add_argument("--json", action="store_true",
                     help="print one JSON object {prompt_ids, token_ids, text, finish_reason} at the end "
                          "(beam search adds its score)")
    beam = gen.add_argument_group("beam search (instead of sampling; prints the best sequence at the end)")
    beam.add_argument("--num-beams", type=int, default=1, help="> 1 runs beam search (default: 1, sampling)")
    beam.add_argument("--length-penalty", type=float, default=1.0,
                      help="scores are logprob / length ** L; > 0 favours longer sequences (default: 1.0)")
    beam.add_argument("--early-stopping", default="false", choices=("true", "false", "never"),
                      help="as transformers: true stops at num-beams finished sequences (default: false)")
    gen.set_defaults(func=cmd_generate)

    sc = sub.add_parser("score", parents=[model], help="per-token log-probs and perplexity of a text")
    src = sc.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to score")
    src.add_argument("--file", help="a UTF-8 file to score ('-' reads stdin)")
    sc.add_argument("--json", action="store_true", help="print {tokens, token_ids, logprobs, ranks, perplexity}")
    sc.set_defaults(func=cmd_score)

    chat = sub.add_parser("chat", parents=[model, sampling], help="interactive chat in the instruction format",
                          description=_chat_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.set_defaults(func=cmd_chat)
    return parser


def _chat_help() -> str:
    return (
        "Each message becomes one turn of the instruction template the model is fine-tuned with "
        "(gpt2/prompts.py):\n\n"
        "    ### Instruction:\n    <your message>\n\n    ### Response:\n    <reply><|endoftext|>\n\n"
        "Earlier turns are sent along (the oldest are dropped when the context is full). A reply ends at "
        "<|endoftext|>\nor at the next '### ' header. Ctrl-C stops a reply; Ctrl-D, 'exit' or 'quit' quits."
    )


def sampling_params(args: argparse.Namespace, default_max_new_tokens: int) -> SamplingParams:
    """The sampling flags as ``SamplingParams`` (which validates them and names any bad one)."""
    max_new = default_max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, max_new_tokens=max_new, seed=args.seed,
        stop=tuple(args.stop), stop_at_eos=args.stop_at_eos, min_p=args.min_p, typical_p=args.typical_p,
        epsilon_cutoff=args.epsilon_cutoff, eta_cutoff=args.eta_cutoff, no_repeat_ngram_size=args.no_repeat_ngram_size,
    )


# Sampling-only flags (as ``SamplingParams`` fields) that beam search has no use for, and beam-only flags.
_SAMPLING_ONLY = ("temperature", "top_k", "top_p", "repetition_penalty", "min_p", "typical_p", "epsilon_cutoff",
                  "eta_cutoff", "seed", "stop_at_eos")
_BEAM_ONLY = {"length_penalty": 1.0, "early_stopping": "false"}


def beam_params(args: argparse.Namespace, sampling: SamplingParams) -> BeamParams | None:
    """The beam-search flags as ``BeamParams`` (validated, naming any bad one), or None for sampling.
    A flag that only the other mode uses is an error rather than silently ignored."""
    early = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    params = BeamParams(num_beams=args.num_beams, max_new_tokens=sampling.max_new_tokens,
                        length_penalty=args.length_penalty, early_stopping=early,
                        no_repeat_ngram_size=sampling.no_repeat_ngram_size)
    if args.num_beams == 1:
        unused = [k for k, default in _BEAM_ONLY.items() if getattr(args, k) != default]
        if unused:
            raise ValueError(f"--{unused[0].replace('_', '-')} applies to beam search: add --num-beams N (N > 1)")
        return None
    unused = [k for k in _SAMPLING_ONLY if getattr(sampling, k) != getattr(SamplingParams(), k)]
    if unused:
        raise ValueError(f"--{unused[0].replace('_', '-')} applies to sampling, not beam search (--num-beams > 1); "
                         "beam search takes --max-new-tokens, --length-penalty, --early-stopping, "
                         "--no-repeat-ngram-size and --stop")
    return params


def load_model(args: argparse.Namespace) -> GPT2:
    """The model named by ``--model`` on ``--device`` in ``--dtype`` (``--quantize``d)."""
    return GPT2.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)


# --------------------------------------------------------------------------------------------- generate


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()  # stream: show each piece as soon as it is decoded


def _err(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue ``--prompt``: stream it (prompt first), or print one JSON object with ``--json``."""
    params = sampling_params(args, GENERATE_MAX_NEW_TOKENS)
    beam = beam_params(args, params)
    model = load_model(args)
    prompt_ids = encode(args.prompt)
    if beam is not None:
        return _beam_generate(args, model, prompt_ids, beam, params.stop)
    token_ids: list[int] = []
    pieces: list[str] = []
    finish_reason = None
    if not args.json:
        _out(args.prompt)
    for step in generate(model, prompt_ids, params):
        if step.notice:
            _err(f"[{step.notice}]\n")
        token_ids.append(step.token_id)
        pieces.append(step.text)
        finish_reason = step.finish_reason
        if not args.json:
            _out(step.text)
    if args.json:
        result = {"prompt_ids": prompt_ids, "token_ids": token_ids, "text": "".join(pieces),
                  "finish_reason": finish_reason}
        print(json.dumps(result))
    else:
        _out("\n")
    return 0


def _beam_generate(args: argparse.Namespace, model: GPT2, prompt_ids: list[int], params: BeamParams,
                   stops: Sequence[str]) -> int:
    """Beam search: print the prompt and the best sequence's text (cut before the first ``--stop`` string)."""
    res = beam_search(model, prompt_ids, params)
    if res.notice:
        _err(f"[{res.notice}]\n")
    ids = res.sequences[0]
    eos = bool(ids) and ids[-1] == EOT_ID
    text = get_tokenizer().decode(ids[:-1] if eos else ids)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    finish_reason = "stop" if cut >= 0 else "eos" if eos else "length"
    text = text[:cut] if cut >= 0 else text
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "token_ids": ids, "text": text, "finish_reason": finish_reason,
                          "score": res.scores[0]}))
    else:
        _out(args.prompt + text + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ score


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        text = args.text
    elif args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {args.file}: {e}") from None
    if not text:
        raise ValueError("nothing to score: the text is empty")
    return text


def cmd_score(args: argparse.Namespace) -> int:
    """Print how well the model predicts each token of a text, and its perplexity."""
    text = _read_text(args)
    model = load_model(args)
    s = score(model, encode(text))
    if args.json:
        print(json.dumps({
            "tokens": s.labels, "token_ids": s.token_ids, "logprobs": [float(x) for x in s.logprobs],
            "ranks": [int(r) for r in s.ranks], "perplexity": s.perplexity,
        }))
        return 0
    width = max(12, *(len(label) for label in s.labels))
    print(f"{'pos':>5}  {'token':<{width}}  {'logprob':>9}  {'rank':>6}")
    for i, (label, lp, rank) in enumerate(zip(s.labels, s.logprobs, s.ranks, strict=True)):
        print(f"{i:>5}  {label:<{width}}  {lp:>9.4f}  {rank:>6}")
    print(f"tokens: {len(s.token_ids)}")
    print(f"mean logprob: {float(s.logprobs.mean()):.6f}")
    print(f"perplexity: {s.perplexity:.6f}")
    return 0


# ------------------------------------------------------------------------------------------------- chat

QUIT_WORDS = ("exit", "quit")


def chat_banner(model_name: str) -> str:
    """What the user sees first: the turn format and how to stop and quit."""
    return (
        f"Chatting with {model_name}. Each message is sent as one turn of the instruction format:\n"
        "    ### Instruction:\n    <your message>\n\n    ### Response:\n"
        "    <reply, ending at <|endoftext|> or the next '### ' header>\n"
        "Ctrl-C stops a reply; Ctrl-D, 'exit' or 'quit' quits.\n"
    )


def _stream_reply(steps: Iterable[Step], write: Write, warn: Write) -> str:
    """Write a reply as it is generated; returns it. A KeyboardInterrupt ends it early, keeping the part
    written so far (the generator is closed so its KV cache is freed right away)."""
    shown: list[str] = []
    it = iter(steps)
    try:
        for step in it:
            if step.notice:
                warn(f"[{step.notice}]\n")
            text = step.text if shown else step.text.lstrip()  # the response header already ends the line
            if text:
                shown.append(text)
                write(text)
    except KeyboardInterrupt:
        warn("\n[reply stopped]")
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    write("\n")
    return "".join(shown)


def chat_loop(
    model: GPT2,
    params: SamplingParams,
    *,
    input_fn: Callable[[str], str] = input,
    write: Write = _out,
    warn: Write = _err,
    generate_fn: GenerateFn = generate,
    model_name: str = "the model",
) -> list[tuple[str, str]]:
    """Read messages until EOF, Ctrl-C at the prompt, ``exit`` or ``quit``; answer each one in the
    instruction format of ``gpt2.prompts``. Returns the (possibly cropped) history of (user, reply)."""
    params = prompts.chat_params(params)
    reserve = prompts.reply_room(params.max_new_tokens, model.config.block_size)
    history: list[tuple[str, str]] = []
    write(chat_banner(model_name))
    while True:
        try:
            message = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        if message.lower() in QUIT_WORDS:
            return history
        if not message:
            continue
        # a lone message still too long for the context is cropped by generate(), with a notice
        ids, dropped = prompts.fit_history(history, message, model.config.block_size, reserve)
        if dropped:
            del history[:dropped]
            warn(f"[dropped the {dropped} oldest turn(s) to fit the context]\n")
        write("gpt2> ")
        reply = _stream_reply(generate_fn(model, ids, params), write, warn)
        history.append((message, prompts.clean_reply(reply)))


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat; always ends with exit code 0."""
    params = sampling_params(args, CHAT_MAX_NEW_TOKENS)
    model = load_model(args)
    chat_loop(model, params, model_name=args.model)
    return 0


# ------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m gpt2``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # model text on a non-UTF-8 terminal must not crash the CLI
    try:
        return args.func(args)
    except (CheckpointError, ValueError) as e:  # unknown model, bad flag values: the message says what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C during generate/score: stop quietly, as shells expect
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `... | head`: the reader left; silence the flush at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

