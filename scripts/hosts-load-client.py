#!/usr/bin/env python3
"""A writing client for scripts/hosts-test.sh's rolling restart.

Writes one row per request through the cluster's client API with a session
(client_id, request_number): one request outstanding, and a failed attempt
(connection refused or reset, 503, 504, 409 request_in_progress) is retried
with the SAME request number on the next node, so a write the cluster applied
but could not acknowledge is answered from the session table instead of
applied twice. Runs until --stop-file exists (at most --max-seconds), then
reads every row back with a strong query and writes a JSON report:
acknowledged and missing request numbers, failed attempts, total seconds in
which writes failed and the longest such stretch. Exit 0 when it could
check; the caller judges the report.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

RETRYABLE_CONFLICTS = {"request_in_progress"}


def post(address, path, body, timeout):
    """POSTs JSON; returns (status, parsed body or None). Raises OSError on connection failures."""
    request = urllib.request.Request(
        f"http://{address}{path}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"null")
        except ValueError:
            return error.code, None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("addresses", nargs="+", help="client API addresses host:port")
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--timeout", type=float, default=6)
    args = parser.parse_args()

    client_id = f"hosts-test-{uuid.uuid4()}"
    addresses = args.addresses
    node = 0
    deadline = time.monotonic() + args.max_seconds

    def execute(statements, number):
        """Retries one request with the same number until acknowledged; returns (ok, failed attempts)."""
        nonlocal node
        attempts_failed = 0
        while time.monotonic() < deadline:
            body = {"statements": statements, "client_id": client_id, "request_number": number}
            try:
                status, reply = post(addresses[node], "/v1/execute", body, args.timeout)
            except OSError:
                status, reply = None, None
            if status == 200:
                return True, attempts_failed
            code = (reply or {}).get("error", {}).get("code") if isinstance(reply, dict) else None
            if status == 409 and code not in RETRYABLE_CONFLICTS:
                print(f"request {number} refused for good: {status} {reply}", flush=True)
                return False, attempts_failed
            attempts_failed += 1
            node = (node + 1) % len(addresses)
            time.sleep(0.1)
        return False, attempts_failed

    number = 1
    ok, _ = execute([{"sql": "CREATE TABLE IF NOT EXISTS load_writes (client TEXT, n INTEGER, PRIMARY KEY (client, n))"}], number)
    if not ok:
        print("could not create the table", flush=True)
        return 1
    acknowledged = []
    failed_attempts = 0
    failed_seconds = 0.0
    longest = 0.0
    while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
        number += 1
        started = time.monotonic()
        ok, failures = execute([{"sql": "INSERT INTO load_writes (client, n) VALUES (?, ?)", "params": [client_id, number]}], number)
        failed_attempts += failures
        if failures:
            # Writes failed from the first failed attempt until this answer.
            stretch = time.monotonic() - started
            failed_seconds += stretch
            longest = max(longest, stretch)
        if not ok:
            break
        acknowledged.append(number)
        if len(acknowledged) % 200 == 1:
            print(f"acknowledged {len(acknowledged)} writes", flush=True)

    present = None
    while time.monotonic() < deadline + 60 and present is None:
        try:
            status, reply = post(addresses[node], "/v1/query",
                                 {"sql": "SELECT n FROM load_writes WHERE client = ?", "params": [client_id],
                                  "consistency": "strong"}, args.timeout)
            if status == 200:
                present = {row[0] for row in reply["rows"]}
                break
        except OSError:
            pass
        node = (node + 1) % len(addresses)
        time.sleep(0.2)
    if present is None:
        print("could not read the rows back", flush=True)
        return 1
    report = {
        "client_id": client_id,
        "acknowledged": acknowledged,
        "missing": [n for n in acknowledged if n not in present],
        "failed_attempts": failed_attempts,
        "failed_seconds": round(failed_seconds, 3),
        "longest_outage_seconds": round(longest, 3),
    }
    with open(args.report, "w") as out:
        json.dump(report, out)
    print(f"acknowledged {len(acknowledged)} writes in total; {len(report['missing'])} missing; "
          f"writes failed for {report['failed_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
