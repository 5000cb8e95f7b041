#!/usr/bin/env python3
"""Clients that write through followers while the leader is killed, and
report how long each one stalled.

Each of N threads writes single-row inserts with its own client session
(client_id, request_number) to one of the given follower ports, retrying a
503/504 or a connection error with the same request number (exactly once on
the server side), 5 ms apart. A write's stall is the time from its first
attempt to its success. The script runs until --seconds pass, then prints one
JSON line: writes, the longest stall and the 99th percentile, in ms.

    stall_clients.py --ports 7100,7200 --clients 32 --seconds 8 --table stall
"""
import argparse
import http.client
import json
import threading
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True, help="client ports of the followers, comma separated")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--table", default="stall")
    parser.add_argument("--run", default=str(int(time.time())), help="run id, keeps client ids unique across runs")
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    stop_at = time.monotonic() + args.seconds
    stalls, lock = [], threading.Lock()
    failures = []

    def client(index):
        port = ports[index % len(ports)]
        number = 0
        connection = None
        while time.monotonic() < stop_at:
            number += 1
            body = json.dumps({
                "statements": [{"sql": f"INSERT INTO {args.table}(client, n) VALUES (?, ?)", "params": [index, number]}],
                "client_id": f"stall-{args.run}-{index}", "request_number": number})
            started = time.monotonic()
            deadline = started + 30
            while True:
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    connection.request("POST", "/v1/execute", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    text = response.read()
                    if response.status == 200:
                        break
                    if response.status not in (503, 504):
                        failures.append(f"client {index} write {number}: {response.status} {text[:200]!r}")
                        return
                except (OSError, http.client.HTTPException):
                    connection = None
                if time.monotonic() > deadline:
                    failures.append(f"client {index} write {number}: no success within 30 s")
                    return
                time.sleep(0.005)
            with lock:
                stalls.append((time.monotonic() - started) * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stalls.sort()
    result = {
        "clients": args.clients, "writes": len(stalls),
        "max_stall_ms": round(stalls[-1], 1) if stalls else None,
        "p99_ms": round(stalls[int(len(stalls) * 0.99) - 1], 1) if stalls else None,
        "failures": failures[:5],
    }
    print(json.dumps(result))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
