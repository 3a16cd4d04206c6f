"""Many users (issue 5): N concurrent ``gradio_client`` sessions against the real app for a fixed time.
``--attack`` runs the attacks of issue 10 instead (``attack.py``: a flooding session, abandoned sessions,
heavy analyses; its own options follow).

For each N (a lone user first, as the baseline, then each ``--users`` value) the script starts
``python app.py`` as its own server process on a free local port, with ``GPT2_SESSION_TTL`` set to
``--ttl`` seconds, and then:

1. warms it up with one client (every endpoint below, a few times) and waits until that client's session
   has expired: the server's RSS then is **before**;
2. runs N users, each a separate ``gradio_client.Client`` (its own session), for ``--seconds``: every
   user loops ``/generate`` (streamed, ``--new-tokens`` tokens, sampled, a random seed) then one inspection
   of what it just made, in turn ``/step_probabilities``, ``/attention`` (source "a generation") and
   ``/text_probabilities``. RSS is sampled twice a second: **during** is the peak (and the mean);
3. waits until every session has expired (``--ttl`` after its last request, plus ``--margin``), samples
   **after**, and checks with one request per user that its session really was freed (its generations
   are gone) before closing the clients.

Each request ends one way: *served*; *refused* (the queue said it is full: the client was told);
*error* (any other exception, counted by message); or *lost* (no answer within ``--timeout``). So
``served + refused + errors + lost = attempted``. Latency is per request, submit to final answer (a
whole streamed generation), and p50/p95 are compared with the lone user's.

Why a fresh server per N: every N gets its own before/after memory, not the leftovers of the previous
run. Why wait with the clients still connected: gradio frees a ``gr.State`` ``time_to_live`` seconds
after it was last *written*, checked every second (``gradio/state_holder.py``, ``route_utils._delete_state``),
and calls the app's ``delete_callback`` (``Session.close``). A session whose heartbeat disconnected (a
closed tab, ``Client.close()``) is instead kept for ``STATE_TTL_WHEN_CLOSED`` = 3600 s, whatever the TTL,
so closing the clients before the TTL would keep everything for an hour.

    python benchmarks/load.py --users 4 16 32                  # 60 s per N, TTL 30 s: about 13 minutes
    python benchmarks/load.py --users 2 4 --seconds 15 --ttl 10 --margin 5     # a quick check
    GPT2_QUEUE_SIZE=8 python benchmarks/load.py --users 32     # other caps pass through to the server

The clients run on the same machine as the server and take CPU too (shown as "client CPU"). The server's
output goes to a log file per N in a temporary folder (printed at the start); exceptions there other than
the app's own messages to the user are reported at the end. Ctrl-C stops the server and prints the runs
that finished.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import httpx
from gradio_client import Client
from gradio_client.exceptions import AppError
from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["ROMEO:\nBut soft, what light", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "The meaning of life is", "Once upon a time, in a land far away,", "KING HENRY:\nOnce more unto"]
INSPECTIONS = ("/step_probabilities", "/attention", "/text_probabilities")
ENDPOINTS = ("/generate", *INSPECTIONS)
STATUSES = ("served", "refused", "error", "lost")
REFUSED_PAUSE_S = 1.0  # a user told the queue is full waits this long before the next request
NO_GENERATION = "No generation yet"  # what an expired (fresh) session says when asked for its generation
STOP = threading.Event()  # set on Ctrl-C: the users stop after their current request


# ---------------------------------------------------------------- machine and server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (VmRSS), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (0 if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> float:
        value = rss_mib(self.pid)
        if value is None:
            raise RuntimeError(f"the server exited (code {self.proc.poll()}); log: {self.log}")
        return value

    def log_problems(self) -> list[str]:
        """Exceptions in the server log, except the app's own ``gr.Error`` messages (they reach the client and
        are counted there, e.g. the expiry check's "No generation yet"), and ERROR log lines."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        problems, in_traceback = [], False
        for line in text.splitlines():
            if line.startswith("Traceback"):
                in_traceback = True
            elif in_traceback and line[:1].strip() and not line.startswith(("During handling", "The above")):
                in_traceback = False  # the exception line that ends the traceback
                if not line.startswith("gradio.exceptions.Error"):
                    problems.append(line)
            elif line.startswith("ERROR"):
                problems.append(line)
        return problems


def start_server(args: argparse.Namespace, log_dir: Path, n_users: int | str, *, lift_session_limit: bool = True,
                 model: str | None = None) -> Server:
    """``python app.py --model ...`` on a free port with the session TTL set; returns once it answers.
    ``n_users`` names the log (a number, or a scenario's name); ``benchmarks/attack.py`` keeps the per-address
    session limit (``lift_session_limit=False``) and may pass another ``model``."""
    port = free_port()
    # Every simulated user comes from 127.0.0.1: no per-address limit on new sessions (unless set here)
    lifted = {"GPT2_NEW_SESSIONS_PER_MINUTE": "0"} if lift_session_limit else {}
    env = {**lifted, **os.environ, "GPT2_SESSION_TTL": str(args.ttl),
           "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = log_dir / (f"server-{n_users}-users.log" if isinstance(n_users, int) else f"server-{n_users}.log")
    with log.open("w") as out:  # the child keeps its own copy of the descriptor; Ctrl-C reaches us, not it
        proc = subprocess.Popen([sys.executable, "app.py", "--model", model or args.model], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}/", log)
    try:
        wait_ready(server, args.startup_timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = "\n".join(server.log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"the server exited with code {server.proc.returncode}:\n{tail}")
        try:
            if httpx.get(server.url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s; log: {server.log}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


class MemorySampler:
    """Samples a process's RSS every ``interval`` seconds on a background thread, between start and stop."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            value = rss_mib(self.pid)
            if value is not None:
                self.samples.append(value)
            if value is None or self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- one user


@dataclass
class Outcome:
    endpoint: str
    status: str  # one of STATUSES
    seconds: float
    message: str = ""


@dataclass
class User:
    """One simulated user: its own client (session), random generator and the outcomes of its requests."""

    client: Client | None
    rng: random.Random
    timeout: float
    outcomes: list[Outcome] = field(default_factory=list)
    last_done: float = 0.0  # time.monotonic() when its last request finished

    def call(self, endpoint: str, *inputs: object) -> object | None:
        """One request; its outcome is recorded, and its result returned when it was served."""
        start, job = time.monotonic(), None
        try:
            job = self.client.submit(*inputs, api_name=endpoint)
            result = job.result(timeout=self.timeout)
            status, message = "served", ""
        except concurrent.futures.TimeoutError:
            job.cancel()  # only result() times out, so the job exists
            result, status, message = None, "lost", f"no answer within {self.timeout:.0f} s"
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            result, message = None, f"{type(e).__name__}: {str(e)[:160]}"
            status = "refused" if "queue is full" in message.lower() else "error"
            if status == "refused":
                time.sleep(REFUSED_PAUSE_S)  # as a person would, rather than hammer a full queue
        self.last_done = time.monotonic()
        self.outcomes.append(Outcome(endpoint, status, self.last_done - start, message))
        return result

    def generate(self, new_tokens: int) -> tuple[str, str, int] | None:
        """A streamed generation: (prompt, text, tokens made), or None when it was not served."""
        prompt = self.rng.choice(PROMPTS)
        result = self.call("/generate", prompt, new_tokens, 0.8, 40, 1.0, 1.0, self.rng.randrange(2**31), "")
        if result is None:
            return None
        text, stats, _view = result
        tokens = re.search(r"\*\*(\d+) tokens\*\*", stats)
        return prompt, text, int(tokens.group(1)) if tokens else 0

    def inspect(self, kind: str, prompt: str, text: str, tokens: int) -> None:
        """Look at the generation just made (the session's latest record)."""
        if kind == "/step_probabilities" and tokens:
            self.call(kind, None, self.rng.randrange(tokens), 0.8, 40, 1.0, 1.0)
        elif kind == "/attention" and tokens:  # text, source, record, layer, head, view, query, step
            self.call(kind, "", "a generation", None, 0, 0, "one head", self.rng.randrange(32), tokens - 1)
        else:  # also when the generation stopped at once (nothing kept to inspect)
            self.call("/text_probabilities", prompt + text)

    def run(self, deadline: float, new_tokens: int, max_cycles: int | None = None) -> None:
        """Generate then inspect, in turn, until ``deadline`` (a request started before it finishes)."""
        cycle = 0
        while time.monotonic() < deadline and (max_cycles is None or cycle < max_cycles) and not STOP.is_set():
            made = self.generate(new_tokens)
            if made is not None and time.monotonic() < deadline:
                self.inspect(INSPECTIONS[cycle % len(INSPECTIONS)], *made)
            cycle += 1

    def session_alive(self) -> bool:
        """Whether the server still holds this user's generations (asks for its latest one)."""
        try:
            self.client.predict(None, 0, 0.8, 40, 1.0, 1.0, api_name="/step_probabilities")
        except AppError as e:
            if NO_GENERATION in str(e):
                return False
            raise
        return True


def connect(url: str, http_timeout: float) -> Client:
    # httpx's default 5 s timeout on the join POST would turn a busy server into client-side errors
    return Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": http_timeout})


def close_all(users: list[User]) -> None:
    for user in users:
        if user.client is not None:
            user.client.close()
            for pool in (user.client.executor, user.client.helper_executor, user.client.stream_executor):
                pool.shutdown(wait=False, cancel_futures=True)


def run_users(users: list[User], url: str, args: argparse.Namespace) -> float:
    """The users connect (in parallel), start together and loop for ``args.seconds``; returns the seconds
    from the start until the last request finished. Their clients stay open (see the module docstring)."""
    start: list[float] = []
    ready = threading.Barrier(len(users) + 1, action=lambda: start.append(time.monotonic()))  # before release

    def work(user: User) -> None:
        try:
            user.client = connect(url, args.http_timeout)
        except Exception as e:  # noqa: BLE001 - counted as a request that failed
            user.outcomes.append(Outcome("connect", "error", 0.0, f"{type(e).__name__}: {str(e)[:160]}"))
        try:
            ready.wait()
        except threading.BrokenBarrierError:  # interrupted, or others took too long to connect
            return
        if user.client is not None:
            user.run(start[0] + args.seconds, args.new_tokens)

    threads = [threading.Thread(target=work, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=60 + 2 * len(users))
        for t in threads:
            while t.is_alive():  # a timed join keeps Ctrl-C responsive
                t.join(timeout=0.5)
    except BaseException:
        STOP.set()
        ready.abort()
        raise
    return max([u.last_done for u in users] + [start[0] + 1e-3]) - start[0]


def wait_expiry(users: list[User], ttl: float, margin: float) -> None:
    """Sleep until every user's session is older than the TTL since its last request, plus a margin."""
    last = max((u.last_done for u in users), default=time.monotonic())
    time.sleep(max(0.0, last + ttl + margin - time.monotonic()))


def alive_sessions(users: list[User]) -> int | None:
    """How many users' sessions still hold their generations (None if the check itself failed)."""
    try:
        return sum(u.session_alive() for u in users if u.client is not None)
    except Exception as e:  # noqa: BLE001 - the check is a diagnostic; report and go on
        print(f"  (session check failed: {type(e).__name__}: {e})")
        return None


# ---------------------------------------------------------------- one N


def warm_up(server: Server, args: argparse.Namespace) -> dict:
    """Every endpoint a few times, then wait for that session to expire: RSS before."""
    user = User(connect(server.url, args.http_timeout), random.Random(0), args.timeout)
    try:
        user.run(float("inf"), args.new_tokens, max_cycles=2 * len(INSPECTIONS))
        failed = [o for o in user.outcomes if o.status != "served"]
        if failed:
            raise RuntimeError(f"warm-up request failed: {failed[0].endpoint}: {failed[0].message}")
        wait_expiry([user], args.ttl, args.margin)
        return {"before": server.rss(), "warm_alive": alive_sessions([user])}
    finally:
        close_all([user])


def scenario(n: int, args: argparse.Namespace, log_dir: Path) -> dict:
    print(f"\nN = {n}: starting the server", flush=True)
    server = start_server(args, log_dir, n)
    try:
        row = {"users": n, "started": server.rss()}
        print(f"  warming up, then waiting {args.ttl + args.margin:.0f} s for that session to expire", flush=True)
        row |= warm_up(server, args)
        print(f"  {n} user(s) for {args.seconds:.0f} s (RSS before: {row['before']:.0f} MiB)", flush=True)
        cpu0, client_cpu0 = cpu_seconds(server.pid), time.process_time()
        users = [User(None, random.Random(1000 * n + i), args.timeout) for i in range(n)]
        try:
            with MemorySampler(server.pid) as sampler:
                elapsed = run_users(users, server.url, args)
            row |= {"elapsed": elapsed, "end": server.rss(), "peak": max(sampler.samples, default=row["before"]),
                    "mean": statistics.fmean(sampler.samples) if sampler.samples else row["before"],
                    "server_cpu": (cpu_seconds(server.pid) - cpu0) / elapsed,
                    "client_cpu": (time.process_time() - client_cpu0) / elapsed}
            print(f"  load done in {elapsed:.1f} s; waiting {args.ttl + args.margin:.0f} s after the last "
                  "request for the sessions to expire", flush=True)
            wait_expiry(users, args.ttl, args.margin)
            row |= {"after": server.rss(), "alive": alive_sessions(users)}
        finally:
            close_all(users)
        row |= summarise([o for u in users for o in u.outcomes], row["elapsed"])
        row["log_problems"] = server.log_problems()
        return row
    finally:
        stop_server(server)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(outcomes: list[Outcome], elapsed: float) -> dict:
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    served = [o.seconds for o in outcomes if o.status == "served"]
    per_endpoint = {e: [o.seconds for o in outcomes if o.status == "served" and o.endpoint == e] for e in ENDPOINTS}
    messages = Counter(f"{o.status}: {o.endpoint}: {o.message}" for o in outcomes if o.message)
    return {"attempted": len(outcomes), **counts, "p50": percentile(served, 50), "p95": percentile(served, 95),
            "rps": counts["served"] / elapsed if elapsed > 0 else float("nan"),
            "endpoints": {e: (len(v), percentile(v, 50), percentile(v, 95)) for e, v in per_endpoint.items()},
            "messages": messages}


# ---------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b and a == a and b == b else "–"


def print_header(args: argparse.Namespace) -> None:
    print(f"date:    {datetime.date.today()}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    print(f"gradio {version('gradio')}, gradio_client {version('gradio_client')}, torch {version('torch')}, "
          f"python {platform.python_version()}")
    print(f"load:    {load_average()} (1-min load average before the run; other processes skew latencies)")
    caps = {k: v for k, v in os.environ.items()  # settings the server inherits that change the figures
            if k.startswith(("GPT2_", "MALLOC_", "OMP_", "MKL_")) and k not in ("GPT2_SESSION_TTL", "GPT2_MODEL")}
    print(f"server:  python app.py --model {args.model}, one fresh server per N; GPT2_SESSION_TTL={args.ttl:g} s "
          f"(sessions expire {args.ttl:g} s after their last request; memory 'after' is read {args.margin:g} s "
          f"later){''.join(f', {k}={v}' for k, v in sorted(caps.items()))}")
    print(f"users:   each its own gradio_client session for {args.seconds:g} s: /generate ({args.new_tokens} new "
          f"tokens, streamed) then one of {', '.join(INSPECTIONS)} in turn; a request not answered within "
          f"{args.timeout:g} s counts as lost")


def print_results(rows: list[dict]) -> None:
    lone = rows[0]
    print(f"\nload average after the run: {load_average()}\n")
    print("| users | attempted | served | refused | errors | lost | req/s | p50 (s) | p95 (s) | p50 / lone | "
          "p95 / lone | server CPU | client CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['users']} | {r['attempted']} | {r['served']} | {r['refused']} | {r['error']} | {r['lost']} | "
              f"{r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {ratio(r['p50'], lone['p50'])} | "
              f"{ratio(r['p95'], lone['p95'])} | {100 * r['server_cpu']:.0f}% | {100 * r['client_cpu']:.0f}% |")
    print("\n| users | RSS started (MiB) | before | during: peak | during: mean | end of load | after expiry | "
          "after / before | sessions left after expiry |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        alive = "?" if r["alive"] is None else f"{r['alive']} of {r['users']}"
        print(f"| {r['users']} | {r['started']:.0f} | {r['before']:.0f} | {r['peak']:.0f} | {r['mean']:.0f} | "
              f"{r['end']:.0f} | {r['after']:.0f} | {ratio(r['after'], r['before'])} | {alive} |")
    print("\n| endpoint | " + " | ".join(f"N={r['users']}: served, p50 / p95 (s)" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for e in ENDPOINTS:
        cells = [f"{r['endpoints'][e][0]}, {r['endpoints'][e][1]:.2f} / {r['endpoints'][e][2]:.2f}" for r in rows]
        print(f"| {e} | " + " | ".join(cells) + " |")
    print_problems(rows)


def print_problems(rows: list[dict]) -> None:
    for r in rows:
        total = r["served"] + r["refused"] + r["error"] + r["lost"]
        if total != r["attempted"]:
            print(f"BUG in the benchmark: N={r['users']}: outcomes add up to {total}, not {r['attempted']}")
        for message, count in r["messages"].most_common():
            print(f"N={r['users']}: {count}× {message}")
        if r["log_problems"]:
            print(f"N={r['users']}: the server log has {len(r['log_problems'])} error(s), e.g. "
                  f"{r['log_problems'][0][:200]!r}")
        if r["warm_alive"] or r["alive"]:
            print(f"N={r['users']}: WARNING: session(s) still alive after the TTL: warm-up {r['warm_alive']}, "
                  f"users {r['alive']}")


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[4, 16, 32], help="N values; a lone user runs first")
    ap.add_argument("--seconds", type=float, default=60, help="how long the users keep sending requests")
    ap.add_argument("--ttl", type=int, default=30, help="GPT2_SESSION_TTL for the server, whole seconds")
    ap.add_argument("--margin", type=float, default=10, help="seconds past the TTL before memory 'after' is read")
    ap.add_argument("--model", default=os.environ.get("GPT2_MODEL", "shakespeare-small"),
                    help="app.py --model (default: the bundled checkpoint)")
    ap.add_argument("--new-tokens", type=int, default=24, help="max_new_tokens of each /generate")
    ap.add_argument("--timeout", type=float, default=300, help="seconds after which a request counts as lost")
    ap.add_argument("--http-timeout", type=float, default=60,
                    help="gradio_client's HTTP timeout, seconds (its own 5 s is short for a busy server)")
    ap.add_argument("--startup-timeout", type=float, default=180)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, interrupt)  # stop the server on kill too

    print_header(args)
    log_dir = Path(tempfile.mkdtemp(prefix="gpt2-load-"))
    print(f"server logs: {log_dir}")
    rows = []
    try:
        for n in dict.fromkeys([1, *args.users]):  # the lone user first: the baseline
            rows.append(scenario(n, args, log_dir))
    except KeyboardInterrupt:
        print("\ninterrupted (the server was stopped)" + ("; the runs that finished:" if rows else ""))
        if rows:
            print_results(rows)
        sys.exit(130)
    print_results(rows)


if __name__ == "__main__":
    if "--attack" in sys.argv[1:]:  # the attack mode (issue 10) lives in attack.py, which uses this module
        sys.argv.remove("--attack")
        from attack import main as attack

        attack()
    else:
        main()
