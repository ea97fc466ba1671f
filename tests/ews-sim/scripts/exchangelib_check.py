"""Independent check of the EWS simulator with exchangelib (PyPI), a widely used EWS client.

Usage: exchangelib_check.py SPEC.json  — SPEC holds url, user, password, auth ("basic" or
"ntlm"; NTLM through requests_ntlm/pyspnego) and, per mailbox, the expected folders (path below the top of the information store → the source files, one item's
MIME each). For every mailbox, with impersonation: walk the folder tree, count
items per folder, fetch the MIME of every item and compare it with the source, and sync the
Inbox (full sync, then an incremental one that must be empty). Prints a JSON report; exits 1
on any mismatch, naming it.
"""

import hashlib
import json
import sys
from collections import Counter

from exchangelib import (
    BASIC,
    IMPERSONATION,
    NTLM,
    Account,
    Build,
    Configuration,
    Credentials,
    Version,
)


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> int:
    spec = json.load(open(sys.argv[1], encoding="utf-8"))
    config = Configuration(
        service_endpoint=spec["url"],
        credentials=Credentials(spec["user"], spec["password"]),
        auth_type={"basic": BASIC, "ntlm": NTLM}[spec.get("auth", "basic")],
        version=Version(build=Build(15, 1, 2507, 0)),
        max_connections=4,
    )
    report = {"mailboxes": {}, "problems": []}
    problems = report["problems"]
    for address, expected in spec["mailboxes"].items():
        account = Account(
            primary_smtp_address=address,
            config=config,
            autodiscover=False,
            access_type=IMPERSONATION,
        )
        top = account.msg_folder_root
        prefix = top.absolute.rstrip("/") + "/"
        seen = {}
        for folder in top.walk():
            path = folder.absolute[len(prefix):] if folder.absolute.startswith(prefix) else folder.absolute
            hashes = Counter()
            count = 0
            for item in folder.all().only("mime_content"):
                count += 1
                mime = item.mime_content
                if isinstance(mime, str):
                    mime = mime.encode("utf-8")
                hashes[hashlib.sha256(mime or b"").hexdigest()] += 1
            if folder.total_count is not None and folder.total_count != count:
                problems.append(f"{address}/{path}: TotalCount {folder.total_count} but {count} items listed")
            seen[path] = (count, hashes)
        for path, want in expected.items():
            got = seen.get(path)
            if got is None:
                problems.append(f"{address}: folder {path!r} not found by exchangelib (saw {sorted(seen)})")
            elif got[1] != Counter(sha256_file(f) for f in want):
                problems.append(
                    f"{address}/{path}: {got[0]} items, MIME differs from the source ({len(want)} expected)"
                )
        for path, (count, _) in seen.items():
            if path not in expected and count:
                problems.append(f"{address}/{path}: {count} unexpected items")
        # Sync the Inbox: a full sync lists every item once; an incremental one then nothing.
        inbox = account.inbox
        creates = sum(1 for change, _ in inbox.sync_items(only_fields=["id", "changekey"]) if change == "create")
        again = sum(1 for _ in inbox.sync_items(only_fields=["id", "changekey"]))
        inbox_path = inbox.absolute[len(prefix):]
        want_inbox = len(expected.get(inbox_path, []))
        if creates != want_inbox:
            problems.append(f"{address}: Inbox sync created {creates}, expected {want_inbox}")
        if again != 0:
            problems.append(f"{address}: second Inbox sync reported {again} changes")
        report["mailboxes"][address] = {
            "folders": len(seen),
            "items": sum(c for c, _ in seen.values()),
            "inbox_sync_creates": creates,
            "inbox_second_sync_changes": again,
        }
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
