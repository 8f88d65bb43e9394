"""Commands about a running server (``--url``; the admin token comes from
``ECHORAG_ADMIN_TOKEN`` or the local data dir): its status, adding documents, and the
learning loop's runs, events, exports, settings and backups.

Output is for people by default (aligned ``key: value`` lines and tables; Korean text
passes through) and JSON with ``--json``. Errors are a ``CommandError``: one line on
stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from echorag.cli.common import CommandError, call, client
from echorag.cli.output import add_json_flag, duration, loss, on_off, print_json, print_kv, print_table, shorten, when

# -- status -------------------------------------------------------------------------------


def cmd_status(args) -> None:
    with client(args) as http:
        health = call(http, "GET", "/health")
        mlops = call(http, "GET", "/mlops/status")
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
            progress = call(http, "GET", "/mlops/training-progress")
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
    for run in call(http, "GET", "/mlops/training-history", params={"limit": 100})["runs"]:
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
        started = call(http, "POST", "/mlops/finetune", json=body)
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
        change = call(http, "POST", "/mlops/rollback", json=body)
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
        found = call(http, "GET", "/mlops/events", params=params)
    if args.json:
        print_json(found)
    elif not found["events"]:
        print("no events" + (f" of type {args.type}" if args.type else ""))
    else:
        rows = [[e["id"], when(e["created_at"]), e["type"], e["message"]] for e in reversed(found["events"])]
        print_table(["id", "time", "type", "message"], rows)


def cmd_export(args) -> None:
    with client(args) as http:
        exported = call(http, "POST", "/mlops/export", json={"inline": True})
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
            current = call(http, "POST", "/mlops/settings", json=changes)
        else:
            current = call(http, "GET", "/mlops/status")["settings"]
    if args.json:
        print_json(current)
        return
    if changes:
        print("updated: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    print_kv((name, on_off(value) if isinstance(value, bool) else value) for name, value in current.items())


def cmd_restore(args) -> None:
    with client(args) as http:
        if not args.backup:
            listed = call(http, "GET", "/mlops/backups")
        else:
            restored = call(http, "POST", "/mlops/restore", json={"backup": args.backup})
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
