"""``echorag chat``: ask a running server in Korean, streamed token by token, with the
passages the answer cites; interactive, one question, or one per stdin line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import httpx

from echorag.cli.common import CommandError, call, client, error_text
from echorag.cli.output import add_json_flag, print_table, shorten


def stream_chat(http: httpx.Client, body: dict, on_token: Callable[[str], None]) -> dict:
    """``POST /chat/stream`` (server-sent events): ``on_token`` gets each piece as it
    arrives; returns the full ``/chat`` response carried by the ``done`` event."""
    try:
        with http.stream("POST", "/chat/stream", json=body) as response:
            if response.is_error:
                response.read()
                raise CommandError(f"POST /chat/stream failed ({response.status_code}): {error_text(response)}")
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
        answer = call(http, "POST", "/chat", json=body) if args.no_stream else stream_chat(http, body, lambda _: None)
        print(json.dumps(answer, ensure_ascii=False), flush=True)
        return answer
    if args.no_stream:
        answer = call(http, "POST", "/chat", json=body)
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
    health = call(http, "GET", "/health")
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


def register(sub) -> None:
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
