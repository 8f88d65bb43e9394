"""``echorag users``: users and their keys (``ECHORAG_AUTH_MODE=api_keys``), and erasing
or exporting one user's data. Admin commands: they send the admin token."""

from __future__ import annotations

import json
from pathlib import Path

from echorag.cli.common import CommandError, call, client
from echorag.cli.output import add_json_flag, print_json, print_table, when


def _key_lines(issued: dict) -> None:
    user = issued["user"]
    print(f"user:    {user['id']} ({user['name']})")
    print(f"api key: {issued['api_key']}")
    print("shown once: only its hash is stored. The user sends it as Authorization: Bearer <key>"
          " (or ECHORAG_API_KEY for `echorag chat`).")


def cmd_users(args) -> None:
    with client(args) as http:
        if args.action == "add":
            issued = call(http, "POST", "/admin/users", json={"name": args.target})
            print_json(issued) if args.json else _key_lines(issued)
        elif args.action == "key":
            issued = call(http, "POST", f"/admin/users/{args.target}/keys")
            print_json(issued) if args.json else _key_lines(issued)
        elif args.action == "list":
            listing = call(http, "GET", "/admin/users")
            if args.json:
                print_json(listing)
                return
            rows = [[u["id"], u["name"], when(u["created_at"]),
                     sum(k["revoked_at"] is None for k in u["keys"]), len(u["keys"])] for u in listing["users"]]
            print_table(["id", "name", "created", "valid keys", "keys"], rows)
        elif args.action == "revoke":
            params = {"key_id": args.key_id} if args.key_id else None
            user = call(http, "POST", f"/admin/users/{args.target}/revoke", params=params)
            print_json(user) if args.json else print(f"revoked: {args.key_id or 'every key'} of {user['id']}")
        elif args.action == "delete":
            if not args.yes:
                raise CommandError(f"this deletes every stored turn of {args.target} and their keys; add --yes")
            report = call(http, "DELETE", f"/admin/users/{args.target}")
            if args.json:
                print_json(report)
            else:
                print(f"deleted {report['subject']}: {report['conversations']} turns ({report['pending']} not yet "
                      f"trained), {report['vectors']} remembered turns, {report['backups']} in backups, "
                      f"{report['exported']} exported lines, {report['keys_revoked']} keys")
        elif args.action == "export":
            data = call(http, "GET", f"/admin/users/{args.target}/conversations")
            text = json.dumps(data, ensure_ascii=False, indent=2)
            if args.out:
                Path(args.out).write_text(text + "\n", encoding="utf-8")
                print(f"{data['count']} turns of {args.target} → {args.out}")
            else:
                print(text)


def register(sub) -> None:
    p = sub.add_parser("users", help="users and their keys, erase or export a user's data (admin)")
    p.add_argument("action", choices=["add", "list", "key", "revoke", "delete", "export"],
                   help="add NAME | list | key ID (one more key) | revoke ID [--key-id K] | delete ID --yes | export ID")
    p.add_argument("target", nargs="?", help="the new user's name (add), else the user's id")
    p.add_argument("--key-id", help="revoke only this key (default: every key of the user)")
    p.add_argument("--yes", action="store_true", help="confirm a deletion")
    p.add_argument("--out", help="export: write to this file instead of stdout")
    add_json_flag(p)

    def run(args) -> None:
        if args.action != "list" and not args.target:
            raise CommandError(f"users {args.action} needs a {'name' if args.action == 'add' else 'user id'}")
        cmd_users(args)

    p.set_defaults(func=run)
