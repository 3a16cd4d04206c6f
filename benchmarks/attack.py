"""Attacks (issue 10): one hostile client against the real app, and what an ordinary user sees meanwhile.

Each scenario starts its own ``python app.py`` (``load.start_server``: a free local port, the app's real
defaults: 2 requests per session queued or running, 30 new sessions per address a minute, one model pool
of 2, sessions kept ``GPT2_SESSION_TTL`` = 1,800 s), warms it up with one client, reads the server's RSS
(**before**), samples it twice a second during the attack (**peak**) and reads it when the attack is over
(**after**). Meanwhile a new user (its own ``gradio_client`` session) times a 16-token ``/generate``.

- ``flood``: one session submits ``--flood`` ``/generate`` jobs of 256 tokens at once (``Client.submit``,
  results never read); counts accepted (served) and refused, by message. Target: the new user's
  16-token ``/generate`` answered within 30 s.
- ``abandoned``: ``--abandoned`` sessions each run one 256-token ``/compare`` and one 256-token ``/generate``
  and go away without closing (their sessions live for the TTL). Target: RSS right after at most 300 MB
  above *before* (the warm-up's own session is still alive then, so it is counted in *before*).
  ``--short-ttl S`` also runs it with ``GPT2_SESSION_TTL=S`` and reads RSS again once they expired (with S
  shorter than the run, the first sessions expire during it: only that last reading is the point there).
- ``heavy``: ``--heavy`` concurrent ``/text_probabilities`` of ~1,024 tokens on a random 124M-sized model
  (``GPT2(GPTConfig.preset("gpt2"))`` saved to a temporary folder, served with ``--model`` that folder).
  Target: peak RSS at most 1.5 GB (1,536 MiB here) above *before*. ``--skip-heavy`` leaves it out.

    python benchmarks/attack.py                        # all three, about 6 minutes on 2 vCPUs
    python benchmarks/attack.py --skip-heavy --abandoned 8          # a quick check

Outcomes are counted as in ``load.py``: served, refused (the app's quota or "queue is full": the client
was told), error (any other exception, by message) or lost (no answer within ``--timeout``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import load
from load import MemorySampler, Server, User, close_all, connect, start_server, stop_server

TARGETS = {"flood": ("new user's 16-token /generate", 30.0, "s"),
           "abandoned": ("RSS after - before", 300.0, "MB"),
           "heavy": ("peak RSS - before", 1536.0, "MiB")}
MIB_PER_MB = 1e6 / 2**20  # the targets are in MB; RSS is read in MiB


def ordinary_user(url: str, args: argparse.Namespace, seed: int) -> tuple[User, float | None]:
    """A new session's 16-token /generate, timed from connecting to the final answer (None: not served)."""
    start = time.monotonic()
    user = User(connect(url, args.http_timeout), random.Random(seed), args.timeout)
    made = user.generate(16)
    return user, (time.monotonic() - start) if made is not None else None


def classify(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "served", ""
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    lower = message.lower()
    refused = any(s in lower for s in ("queue is full", "waiting or running", "too many", "at most"))
    return ("refused" if refused else "error"), message


def warm(server: Server, args: argparse.Namespace) -> tuple[User, float]:
    """One client: a 16-token /generate twice (the second timed: the quiet latency)."""
    user = User(connect(server.url, args.http_timeout), random.Random(0), args.timeout)
    user.generate(16)
    start = time.monotonic()
    if user.generate(16) is None:
        raise RuntimeError(f"warm-up failed: {user.outcomes[-1].message}")
    return user, time.monotonic() - start


def flood(args: argparse.Namespace, log_dir: Path) -> dict:
    server = start_server(args, log_dir, "flood", lift_session_limit=False)
    clients = []
    try:
        quiet_user, quiet = warm(server, args)
        clients.append(quiet_user)
        row = {"scenario": "flood", "before": server.rss(), "quiet": quiet}
        attacker = User(connect(server.url, args.http_timeout), random.Random(1), args.timeout)
        clients.append(attacker)
        with MemorySampler(server.pid) as sampler:
            t0 = time.monotonic()
            jobs = [attacker.client.submit("ROMEO:", 256, 0.8, 40, 1.0, 1.0, i, "", api_name="/generate")
                    for i in range(args.flood)]
            submitted = time.monotonic() - t0
            victim, latency = ordinary_user(server.url, args, 2)
            clients.append(victim)
            concurrent.futures.wait(jobs, timeout=args.timeout)
        outcomes = Counter()
        messages = Counter()
        for job in jobs:
            status, message = classify(job.exception(timeout=0)) if job.done() else ("lost", "not done")
            outcomes[status] += 1
            if message:
                messages[f"attacker: {message}"] += 1
        messages.update(f"new user: {o.status}: {o.message}" for o in victim.outcomes if o.message)
        row |= {"peak": max(sampler.samples, default=row["before"]), "after": server.rss(), "latency": latency,
                "attack": f"{args.flood} submitted in {submitted:.2f} s: {outcomes['served']} served, "
                          f"{outcomes['refused']} refused, {outcomes['error']} errors, {outcomes['lost']} lost",
                "messages": messages, "log_problems": server.log_problems()}
        return row
    finally:
        stop_server(server)
        close_all(clients)


def abandoned(args: argparse.Namespace, log_dir: Path, ttl: int | None = None) -> dict:
    """``--abandoned`` sessions, 4 at a time, each a /compare and a /generate of 256 tokens, never closed."""
    name = "abandoned" if ttl is None else f"abandoned-ttl{ttl}"
    run_args = argparse.Namespace(**{**vars(args), "ttl": ttl or args.ttl})
    server = start_server(run_args, log_dir, name, lift_session_limit=False)
    users: list[User] = []
    try:
        quiet_user, quiet = warm(server, args)
        quiet_user.call("/compare", "ROMEO:", 256, 0.8, 40, 1.0, 1.0, 1.2, 0, 1.0, 1.0, 0, "")
        users.append(quiet_user)
        row = {"scenario": name, "before": server.rss(), "quiet": quiet}

        def one(i: int) -> User:
            user = User(connect(server.url, args.http_timeout), random.Random(100 + i), args.timeout)
            user.call("/compare", "ROMEO:", 256, 0.8, 40, 1.0, 1.0, 1.2, 0, 1.0, 1.0, i, "")
            user.call("/generate", "ROMEO:", 256, 0.8, 40, 1.0, 1.0, i, "")
            return user

        with MemorySampler(server.pid) as sampler, concurrent.futures.ThreadPoolExecutor(4) as pool:
            t0 = time.monotonic()
            futures = [pool.submit(one, i) for i in range(args.abandoned)]
            time.sleep(1.0)  # the new user arrives while the sessions are working
            victim, latency = ordinary_user(server.url, args, 3)
            users.append(victim)
            for f in futures:
                users.append(f.result())
            elapsed = time.monotonic() - t0
        outcomes = Counter(o.status for u in users[2:] for o in u.outcomes)
        row |= {"peak": max(sampler.samples, default=row["before"]), "after": server.rss(), "latency": latency,
                "attack": f"{args.abandoned} sessions in {elapsed:.0f} s: {outcomes['served']} requests served, "
                          f"{outcomes['refused']} refused, {outcomes['error']} errors, {outcomes['lost']} lost",
                "messages": Counter(f"{o.endpoint}: {o.status}: {o.message}" for u in users for o in u.outcomes
                                    if o.message),
                "log_problems": server.log_problems()}
        if ttl is not None:
            time.sleep(ttl + args.margin)
            row["expired"] = server.rss()
        return row
    finally:
        stop_server(server)
        close_all(users)


def heavy_model(folder: Path) -> Path:
    """A random 124M-sized GPT-2 saved as a checkpoint (``--model`` takes the folder)."""
    sys.path.insert(0, str(load.ROOT))
    import torch

    import gpt2

    torch.manual_seed(0)
    return gpt2.GPT2(gpt2.GPTConfig.preset("gpt2")).save_pretrained(folder / "gpt2-random")


def long_text(rng: random.Random, tokens: int = 1100) -> str:
    """~``tokens`` GPT-2 tokens of English-like words (one token each, most of them), far below 20,000 chars."""
    words = ("the of and to in that it was he for on are with as his they be at one have this from or had by "
             "word but what some we can out other were all there when up use your how said an each she which do "
             "their time if will way about many then them write would like so these her long make thing see him "
             "two has look more day could go come did number sound no most people my over know water than call "
             "first who may down side been now find").split()
    return " ".join(rng.choice(words) for _ in range(tokens)).capitalize() + "."


def heavy(args: argparse.Namespace, log_dir: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="gpt2-attack-model-"))
    try:
        server = start_server(args, log_dir, "heavy", lift_session_limit=False, model=str(heavy_model(folder)))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    users: list[User] = []
    try:
        quiet_user, quiet = warm(server, args)
        quiet_user.call("/text_probabilities", long_text(random.Random(0), 64))
        users.append(quiet_user)
        row = {"scenario": "heavy", "before": server.rss(), "quiet": quiet}

        def one(i: int) -> User:
            user = User(connect(server.url, args.http_timeout), random.Random(200 + i), args.timeout)
            user.call("/text_probabilities", long_text(user.rng))
            return user

        with MemorySampler(server.pid) as sampler, concurrent.futures.ThreadPoolExecutor(args.heavy) as pool:
            t0 = time.monotonic()
            futures = [pool.submit(one, i) for i in range(args.heavy)]
            time.sleep(2.0)  # the analyses are queued or running
            victim, latency = ordinary_user(server.url, args, 4)
            users.append(victim)
            for f in futures:
                users.append(f.result())
            elapsed = time.monotonic() - t0
        served = [o.seconds for u in users[2:] for o in u.outcomes if o.status == "served"]
        outcomes = Counter(o.status for u in users[2:] for o in u.outcomes)
        row |= {"peak": max(sampler.samples, default=row["before"]), "after": server.rss(), "latency": latency,
                "attack": f"{args.heavy} analyses in {elapsed:.0f} s: {outcomes['served']} served "
                          f"(slowest {max(served, default=float('nan')):.0f} s), {outcomes['refused']} refused, "
                          f"{outcomes['error']} errors, {outcomes['lost']} lost",
                "messages": Counter(f"{o.endpoint}: {o.status}: {o.message}" for u in users for o in u.outcomes
                                    if o.message),
                "log_problems": server.log_problems()}
        return row
    finally:
        stop_server(server)
        close_all(users)
        shutil.rmtree(folder, ignore_errors=True)  # ~500 MB of random weights


def verdict(row: dict) -> str:
    what, limit, unit = TARGETS[row["scenario"].split("-")[0]]
    if row["scenario"] == "flood":
        value = row["latency"]
    else:
        value = (row["after"] if row["scenario"].startswith("abandoned") else row["peak"]) - row["before"]
        if unit == "MB":
            value /= MIB_PER_MB
    if value is None:
        return f"{what}: not served: target NOT met"
    return f"{what}: {value:.1f} {unit} (target ≤ {limit:g} {unit}): {'met' if value <= limit else 'NOT met'}"


def print_results(rows: list[dict]) -> None:
    print(f"\nload average after the run: {load.load_average()}\n")
    print("| scenario | attack | new user's 16-token /generate (s) | quiet (s) | RSS before (MiB) | peak | after | "
          "after TTL expiry |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        latency = "not served" if r["latency"] is None else f"{r['latency']:.1f}"
        expired = f"{r['expired']:.0f}" if "expired" in r else "–"
        print(f"| {r['scenario']} | {r['attack']} | {latency} | {r['quiet']:.2f} | {r['before']:.0f} | "
              f"{r['peak']:.0f} | {r['after']:.0f} | {expired} |")
    print()
    for r in rows:
        print(f"{r['scenario']}: {verdict(r)}")
        for message, count in r["messages"].most_common(6):
            print(f"  {count}× {message}")
        if r["log_problems"]:
            print(f"  the server log has {len(r['log_problems'])} error(s), e.g. {r['log_problems'][0][:200]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=70, help="/generate jobs the flooding session submits")
    ap.add_argument("--abandoned", type=int, default=24, help="sessions that go away without closing")
    ap.add_argument("--heavy", type=int, default=8, help="concurrent 1,024-token /text_probabilities")
    ap.add_argument("--skip-heavy", action="store_true", help="leave out the 124M-model scenario")
    ap.add_argument("--only", choices=("flood", "abandoned", "heavy"), nargs="+", help="run only these")
    ap.add_argument("--short-ttl", type=int, default=0, help="also run 'abandoned' with this GPT2_SESSION_TTL")
    ap.add_argument("--ttl", type=int, default=1800, help="GPT2_SESSION_TTL (the app's default: 1800)")
    ap.add_argument("--margin", type=float, default=5, help="seconds past --short-ttl before RSS is read")
    ap.add_argument("--model", default="shakespeare-small", help="model of the flood and abandoned scenarios")
    ap.add_argument("--timeout", type=float, default=300, help="seconds after which a request counts as lost")
    ap.add_argument("--http-timeout", type=float, default=60)
    ap.add_argument("--startup-timeout", type=float, default=180)
    args = ap.parse_args()
    load.signal.signal(load.signal.SIGTERM, load.interrupt)

    print(f"date:    {load.datetime.date.today()}")
    print(f"machine: {load.cpu_model()}, {load.os.cpu_count()} cores; load average {load.load_average()}")
    print(f"gradio {load.version('gradio')}, gradio_client {load.version('gradio_client')}, "
          f"torch {load.version('torch')}")
    log_dir = Path(tempfile.mkdtemp(prefix="gpt2-attack-"))
    print(f"server logs: {log_dir}")
    chosen = args.only or ["flood", "abandoned"] + ([] if args.skip_heavy else ["heavy"])
    rows = []
    try:
        for name in chosen:
            print(f"\n{name}: starting the server", flush=True)
            rows.append({"flood": flood, "abandoned": abandoned, "heavy": heavy}[name](args, log_dir))
            print(f"  {rows[-1]['attack']}; {verdict(rows[-1])}", flush=True)
            if name == "abandoned" and args.short_ttl:
                print(f"\nabandoned with GPT2_SESSION_TTL={args.short_ttl}", flush=True)
                rows.append(abandoned(args, log_dir, ttl=args.short_ttl))
                print(f"  {rows[-1]['attack']}; {verdict(rows[-1])}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted (the server was stopped)")
        if rows:
            print_results(rows)
        sys.exit(130)
    print_results(rows)


if __name__ == "__main__":
    main()
