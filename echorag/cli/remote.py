"""Commands that talk to a running server over HTTP (``--url``; the admin token comes from
``ECHORAG_ADMIN_TOKEN`` or the local data dir).

Output is for people by default (aligned ``key: value`` lines and tables; Korean text
passes through) and JSON with ``--json``. Errors are a ``CommandError``: one line on
stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from echorag.cli.common import CommandError, call, client

# -- output -------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def shorten(text: Any, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    if display_width(text) <= limit:
        return text
    out = ""
    for char in text:
        if display_width(out + char) > limit - 1:
            break
        out += char
    return out + "…"


def print_kv(rows: Iterable[tuple[str, Any]], indent: int = 0) -> None:
    rows = [(k, v) for k, v in rows if v is not None]
    width = max((display_width(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(" " * indent + pad(key + ":", width + 1) + " " + str(value))


def print_table(headers: list[str], rows: list[list[Any]], indent: int = 0) -> None:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(pad(c, w) for c, w in zip(row, widths)).rstrip()
        print(" " * indent + line)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def when(timestamp: float | None) -> str:
    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"


def loss(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def on_off(value: bool) -> str:
    return "on" if value else "off"


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")


# -- HTTP ---------------------------------------------------------------------------------


def api(http: httpx.Client, method: str, path: str, **kwargs) -> Any:
    """``common.call`` with a hint when the server wants an admin token we do not have."""
    try:
        return call(http, method, path, **kwargs)
    except CommandError as exc:
        if "(401)" in str(exc) and "authorization" not in http.headers:
            raise CommandError(
                f"{exc} -- no admin token found: set ECHORAG_ADMIN_TOKEN "
                "(or run this where the server's data dir is)"
            ) from None
        raise


def _error_text(response: httpx.Response) -> str:
    try:
        return response.json().get("error", response.text)
    except ValueError:
        return response.text


# -- chat ---------------------------------------------------------------------------------


def stream_chat(http: httpx.Client, body: dict, on_token: Callable[[str], None]) -> dict:
    """``POST /chat/stream`` (server-sent events): ``on_token`` gets each piece as it
    arrives; returns the full ``/chat`` response carried by the ``done`` event."""
    try:
        with http.stream("POST", "/chat/stream", json=body) as response:
            if response.is_error:
                response.read()
                raise CommandError(f"POST /chat/stream failed ({response.status_code}): {_error_text(response)}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # "event:" names repeat the data's "event" field; blank lines end events
                event = json.loads(line[5:])
                if event["event"] == "token":
                    on_token(event["text"])
                elif event["event"] == "done":
                    return event["response"]
                elif event["event"] == "error":
                    raise CommandError(f"the server could not answer: {event.get('error')}")
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach EchoRAG at {http.base_url}: {exc}") from None
    raise CommandError("the answer stream ended before it was complete")


def print_sources(answer: dict) -> None:
    results = answer.get("search_results") or []
    if not results:
        print("출처: 없음")
        return
    print("출처:")
    rows = []
    for n, r in enumerate(results, 1):
        source = r["metadata"].get("doc_id", r["id"]) if r["collection"] == "documents" else "이전 대화"
        rows.append([f"[{n}]", source, f"{r['score']:.3f}", shorten(r["text"], 60)])
    print_table(["", "source", "score", "text"], rows, indent=2)


def ask(http: httpx.Client, args, message: str) -> dict:
    """One question: streamed to the terminal (or one JSON line with ``--json``)."""
    body = {"message": message, "session_id": args.session} | ({"user_id": args.user} if args.user else {})
    if args.adapter:
        body["adapter_version"] = args.adapter
    if args.json:
        answer = api(http, "POST", "/chat", json=body) if args.no_stream else stream_chat(http, body, lambda _: None)
        print(json.dumps(answer, ensure_ascii=False), flush=True)
        return answer
    if args.no_stream:
        answer = api(http, "POST", "/chat", json=body)
        print(answer["response"])
    else:
        answer = stream_chat(http, body, lambda piece: print(piece, end="", flush=True))
        print()
    if not args.no_sources:
        print_sources(answer)
    total = sum(answer.get("timing", {}).values())
    print(f"({answer['model']} · {answer['adapter_version']} · {total:.2f}s)\n", flush=True)
    return answer


def cmd_chat(args) -> None:
    with client(args) as http:
        # Chat sends the user key (api_keys mode), never the admin token.
        http.headers.pop("Authorization", None)
        if key := args.key or os.environ.get("ECHORAG_API_KEY"):
            http.headers["Authorization"] = f"Bearer {key}"
        if not args.session:  # a new private session, issued by the server
            try:
                args.session = call(http, "POST", "/sessions")["session_id"]
            except CommandError as exc:
                if "(401)" in str(exc):
                    raise CommandError(f"{exc} -- this server needs a user key: set ECHORAG_API_KEY or pass --key") from None
                raise
        if args.message:  # one-shot: echorag chat "질문"
            ask(http, args, " ".join(args.message))
        elif not sys.stdin.isatty():  # one question per line: echo "질문" | echorag chat
            for line in sys.stdin:
                if line.strip():
                    ask(http, args, line.strip())
        else:
            repl(http, args)


def repl(http: httpx.Client, args) -> None:
    health = api(http, "GET", "/health")
    demo = " (데모 모델)" if health["demo_model"] else " (문서 인용)" if health["model_kind"] == "extractive" else ""
    print(f"EchoRAG {health['model']}{demo} · 어댑터 {health['adapter_version']} · 세션 {args.session}")
    print("질문을 입력하세요. 끝내려면 빈 줄, /exit 또는 Ctrl-D.\n")
    while True:
        try:
            message = input("질문> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if message in ("", "/exit", "/quit", "exit", "quit"):
            return
        try:
            ask(http, args, message)
        except CommandError as exc:  # keep the conversation going after one failed answer
            print(f"echorag: error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(중단됨)")


# -- status -------------------------------------------------------------------------------


def cmd_status(args) -> None:
    with client(args) as http:
        health = api(http, "GET", "/health")
        mlops = api(http, "GET", "/mlops/status")
    if args.json:
        print_json({"health": health, "mlops": mlops})
        return
    model = health["model"] + (" (demo model)" if health["demo_model"] else "")
    print_kv([
        ("server", f"{args.url} ({health['status']}, up {duration(health['uptime_s'])})"),
        ("model", f"{model}, {health['model_kind']} on {health['device']}"),
        ("adapter", health["adapter_version"]),
        ("embedder", health["embedder"]),
        ("documents", f"{health['documents']} chunks, {health['memory']} remembered turns"),
    ])
    c, t, m, p = mlops["collector_stats"], mlops["training_status"], mlops["models_info"], mlops["performance_metrics"]
    filtered = ", ".join(f"{k} {v}" for k, v in sorted(c["filtered"].items())) or "none"
    if t["is_training"]:
        training = f"training (run {t['run_id']})" + (", one more run pending" if t["pending"] else "")
    else:
        training = t["status"]
        if t["retry_scheduled"]:
            training += f", retry at {when(t['retry_at'])}"
        if t["stalled"]:
            training += ", retries gave up (a new batch or `echorag finetune` restarts)"
    last = t["last_run"]
    print("\nlearning loop")
    print_kv([
        ("collection", f"{c['total_collected']} turns stored (👍 {c['liked']}, 👎 {c['disliked']}), "
                       f"filtered: {filtered}; collection {on_off(c['collection_enabled'])}"),
        ("new data", f"{t['new_data_count']} / batch {t['batch_size']} (watermark {c['trained_watermark']}, "
                     f"auto trigger {on_off(t['auto_trigger'])}, fine-tuning {on_off(t['finetune_enabled'])})"),
        ("training", training),
        ("last run", None if last is None else f"#{last['run_id']} {last['outcome']}"
                                               f"{' ' + last['version'] if last['version'] else ''}, "
                                               f"{when(last['ended_at'] or last['started_at'])}"),
        ("versions", f"{m['current_version']} active; {m['total_versions']} trained "
                     f"(latest {m['latest_version'] or '-'}, {m['promoted']} promoted, {m['rejected']} rejected)"),
        ("runs", f"{p['runs_succeeded']}/{p['runs_total']} succeeded, avg training "
                 f"{duration(p['average_training_time_s'])}"),
        ("last error", mlops["events_summary"]["last_error"]),
    ], indent=2)
    latest = mlops["events_summary"]["latest"]
    if latest:
        print("\nrecent events")
        print_table(["time", "type", "message"],
                    [[when(e["created_at"]), e["type"], shorten(e["message"], 70)] for e in latest], indent=2)


# -- training -----------------------------------------------------------------------------


def follow_run(http: httpx.Client, run_id: int, poll_s: float) -> dict:
    """Show the run's progress (a tqdm bar on stderr) until it ends; returns its history row."""
    bar = tqdm(desc=f"run {run_id}", unit="step", file=sys.stderr, dynamic_ncols=True)
    try:
        while True:
            progress = api(http, "GET", "/mlops/training-progress")
            if progress["run_id"] != run_id or progress["status"] != "training":
                break  # ended (a pending follow-up run may already have started)
            if progress["total_steps"] and bar.total != progress["total_steps"]:
                bar.total = progress["total_steps"]
            bar.n = progress["step"]
            postfix = {"stage": progress["message"]}
            if progress["loss"] is not None:
                postfix["loss"] = f"{progress['loss']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
            time.sleep(poll_s)
        if bar.total:
            bar.n = bar.total  # the last steps may fall between two polls
        bar.refresh()
    finally:
        bar.close()
    for run in api(http, "GET", "/mlops/training-history", params={"limit": 100})["runs"]:
        if run["run_id"] == run_id:
            return run
    raise CommandError(f"run {run_id} is not in the training history")


def describe_run(run: dict) -> str:
    metrics, version = run["metrics"], run["version"]
    losses = f"held-out loss {loss(metrics.get('active_loss'))} → {loss(metrics.get('candidate_loss'))}"
    took = duration(run["duration_s"])
    if run["outcome"] == "promoted":
        return f"run {run['run_id']} promoted: {version} is now active ({losses}, {took})"
    if run["outcome"] == "rejected":
        return (f"run {run['run_id']} rejected by the gate: {version} is kept but not active "
                f"({losses}; {metrics.get('gate_reason', '')})")
    if run["outcome"] == "empty":
        return f"run {run['run_id']}: nothing to train (the new turns were all 👎 or deleted)"
    return f"run {run['run_id']} {run['outcome']}"


def cmd_finetune(args) -> None:
    body = {"force": args.force, "backup_existing": not args.no_backup}
    with client(args) as http:
        started = api(http, "POST", "/mlops/finetune", json=body)
        if not started["started"] or not args.wait:
            if args.json:
                print_json(started)
            elif started["started"]:
                print(f"training started: run {started['run_id']} on turns "
                      f"{started['from_seq'] + 1}–{started['to_seq']} (follow it with --wait or `echorag status`)")
            else:
                print(f"not started: {started['message']}")
            return
        run = follow_run(http, started["run_id"], args.poll)
    if args.json:
        print_json(run)
    if run["status"] == "failed":
        raise CommandError(f"run {run['run_id']} {run['outcome']}: {run['error']} "
                           "(its data stays pending; `echorag status` shows the retry)")
    if not args.json:
        print(describe_run(run))


def cmd_rollback(args) -> None:
    body = {"version": args.version} if args.version else {}
    with client(args) as http:
        change = api(http, "POST", "/mlops/rollback", json=body)
    if args.json:
        print_json(change)
    else:
        print(f"active adapter: {change['active']} (was {change['previous']})")


# -- data ---------------------------------------------------------------------------------


def cmd_events(args) -> None:
    params: dict[str, Any] = {"limit": args.limit}
    if args.type:
        params["event_type"] = args.type
    with client(args) as http:
        found = api(http, "GET", "/mlops/events", params=params)
    if args.json:
        print_json(found)
    elif not found["events"]:
        print("no events" + (f" of type {args.type}" if args.type else ""))
    else:
        rows = [[e["id"], when(e["created_at"]), e["type"], e["message"]] for e in reversed(found["events"])]
        print_table(["id", "time", "type", "message"], rows)


def cmd_export(args) -> None:
    with client(args) as http:
        exported = api(http, "POST", "/mlops/export", json={"inline": True})
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(exported["jsonl"], encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {out}: {exc}") from None
        if args.json:
            print_json({"count": exported["count"], "path": str(out)})
        else:
            print(f"exported {exported['count']} training examples to {out}")
    else:  # JSONL on stdout, for a pipe; the count on stderr
        sys.stdout.write(exported["jsonl"])
        print(f"exported {exported['count']} training examples", file=sys.stderr)


# Runtime settings: (API field, flag, type, help). Booleans take on/off.
SETTINGS_FLAGS = [
    ("batch_size", "--batch-size", int, "new turns that start a run"),
    ("auto_trigger", "--auto-trigger", bool, "start runs by themselves (on/off)"),
    ("collection_enabled", "--collection", bool, "store conversations (on/off)"),
    ("finetune_enabled", "--finetune", bool, "fine-tuning at all, manual runs too (on/off)"),
    ("epochs", "--epochs", int, "epochs per run"),
    ("learning_rate", "--learning-rate", float, "LoRA learning rate"),
    ("gate_tolerance", "--gate-tolerance", float, "promote a candidate up to this much worse (0.02 = 2%%)"),
    ("max_attempts", "--max-attempts", int, "tries per slice of data"),
    ("retry_backoff_s", "--retry-backoff", float, "seconds before the first retry"),
    ("replay_fraction", "--replay-fraction", float, "earlier turns mixed in per new turn"),
    ("holdout_fraction", "--holdout-fraction", float, "new turns held out for the gate"),
    ("seed", "--seed", int, "data split and replay seed"),
]


def parse_on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(text)  # argparse reports "invalid parse_on_off value"


parse_on_off.__name__ = "on/off"  # what argparse names in its error message


def cmd_settings(args) -> None:
    changes = {name: getattr(args, name) for name, *_ in SETTINGS_FLAGS if getattr(args, name) is not None}
    with client(args) as http:
        if changes:
            current = api(http, "POST", "/mlops/settings", json=changes)
        else:
            current = api(http, "GET", "/mlops/status")["settings"]
    if args.json:
        print_json(current)
        return
    if changes:
        print("updated: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    print_kv((name, on_off(value) if isinstance(value, bool) else value) for name, value in current.items())


def cmd_restore(args) -> None:
    with client(args) as http:
        if not args.backup:
            listed = api(http, "GET", "/mlops/backups")
        else:
            restored = api(http, "POST", "/mlops/restore", json={"backup": args.backup})
    if not args.backup:
        if args.json:
            print_json(listed)
        elif not listed["backups"]:
            print(f"no conversation backups in {listed['directory']} "
                  "(DELETE /mlops/conversations?backup=true writes one)")
        else:
            rows = [[b["name"], "?" if b["turns"] is None else b["turns"], f"{b['size_bytes'] / 1024:.0f} KiB",
                     when(b["created_at"])] for b in listed["backups"]]
            print_table(["backup", "turns", "size", "created"], rows)
            print("\nrestore one with: echorag restore NAME", file=sys.stderr)
        return
    if args.json:
        print_json(restored)
        return
    print(f"restored {restored['restored']} conversations from {restored['backup']}")
    print_kv([
        ("already trained", f"{restored['already_trained']} (kept below the watermark, not trained again)"),
        ("pending", f"{restored['pending']} (never trained: the next run trains them)"),
        ("already present", restored["skipped"]),
        ("collected now", f"{restored['total_collected']} turns, {restored['new_data_count']} new"
                          + (", a run is queued" if restored["training_queued"] else "")),
    ], indent=2)


# -- ingestion ----------------------------------------------------------------------------


def cmd_ingest(args) -> None:
    from echorag.documents import read_documents, sample_path

    paths = list(args.paths) + ([sample_path()] if args.sample else [])
    if not paths:
        raise CommandError("give files or folders to ingest, or --sample")
    try:
        documents = read_documents(paths)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if not documents:
        raise CommandError("no non-empty documents found")
    ids, chunks = [], 0
    with client(args) as http, tqdm(total=len(documents), desc="ingesting", unit="doc") as bar:
        for start in range(0, len(documents), args.batch_size):
            part = documents[start : start + args.batch_size]
            result = call(http, "POST", "/documents", json={"documents": part})
            ids += result["ids"]
            chunks += result["chunks"]
            bar.update(len(part))
    print(json.dumps({"documents": len(ids), "chunks": chunks, "total_documents": result["total_documents"]}))


def register(sub) -> None:
    p = sub.add_parser("ingest", help="index .txt/.md/.jsonl files or folders into a running server")
    p.add_argument("paths", nargs="*")
    p.add_argument("--sample", action="store_true", help="also ingest the bundled Korean sample knowledge base")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("chat", help="chat in Korean (interactive; or one question, or one per stdin line)")
    p.add_argument("message", nargs="*", help="ask this one question and exit")
    p.add_argument("--session", help="a session id the server issued (default: a new private one)")
    p.add_argument("--user", help="a label only (the server never finds data by it)")
    p.add_argument("--key", help="user key for api_keys mode (default: $ECHORAG_API_KEY)")
    p.add_argument("--adapter", help="pin an adapter version (v2, base); default: the active one")
    p.add_argument("--no-stream", action="store_true", help="POST /chat instead of streaming")
    p.add_argument("--no-sources", action="store_true", help="do not list the retrieved passages")
    add_json_flag(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("status", help="health, model, adapter and the learning loop at a glance")
    add_json_flag(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("finetune", help="start a fine-tuning run now (admin)")
    p.add_argument("--force", action="store_true", help="train on the new turns even below the batch size")
    p.add_argument("--no-backup", action="store_true", help="do not back up the active adapter first")
    p.add_argument("--wait", action="store_true", help="follow the run with a progress bar until it ends")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between progress checks (--wait)")
    add_json_flag(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("rollback", help="serve an earlier adapter version (admin)")
    p.add_argument("version", nargs="?", help="v3 or base (default: the previously active version)")
    add_json_flag(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("events", help="the learning loop's event log, oldest first (admin)")
    p.add_argument("--type", help="only this event type, e.g. training_succeeded")
    p.add_argument("--limit", type=int, default=20, help="the latest N events (default: %(default)s)")
    add_json_flag(p)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("export", help="the training dataset as JSONL (admin)")
    p.add_argument("--out", help="write to this file (default: stdout)")
    add_json_flag(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("settings", help="show the learning loop's runtime settings, or change them (admin)")
    for name, flag, kind, help_text in SETTINGS_FLAGS:
        p.add_argument(flag, dest=name, type=parse_on_off if kind is bool else kind, help=help_text,
                       metavar="on/off" if kind is bool else kind.__name__.upper())
    add_json_flag(p)
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("restore", help="list conversation backups, or restore one (admin)")
    p.add_argument("backup", nargs="?", help="a backup name from the list (no name: list them)")
    add_json_flag(p)
    p.set_defaults(func=cmd_restore)
