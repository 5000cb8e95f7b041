#!/usr/bin/env python3
"""Write latency with and without a projection checkpoint running
(scripts/checkpoint-bench.sh).

N threads write single-row inserts to the leader's client port, each with its
own client session (client_id, request_number), pausing --pause-ms after
every reply (0: as fast as they can). A 503/504 or a lost connection (a view
change) is retried with the same request number, 5 ms apart, for at most
30 s; a write's latency runs from its first attempt to its success.

While they write, the main thread runs --rounds rounds of: a window of
--quiet-seconds with no checkpoint, then a checkpoint forced on every
--backup-ports operations port at once (POST /backup, which answers once the
checkpoint is taken; the backup is released again with DELETE /backup/<id>),
then --settle-seconds that count for neither. A write counts for the window
in which it started: "quiet", or "checkpoint" (from the first POST /backup
sent until the last answer). Prints one JSON line: per window the writes,
p50, p99 and max latency in ms and how many writes needed a retry; and each
checkpoint's op, bytes and seconds (wall time of the POST, and the node's own
kmb_checkpoint_duration_seconds).

    checkpoint_clients.py --port 17000 --backup-ports 19091,19092,19093 --table bench
"""
import argparse
import http.client
import json
import re
import threading
import time


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = max(0, min(len(sorted_values) - 1, int(len(sorted_values) * fraction + 0.999999) - 1))
    return round(sorted_values[index], 2)


def request(port, method, path, timeout, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def checkpoint_seconds_total(port):
    """The node's kmb_checkpoint_duration_seconds sum and count."""
    status, text = request(port, "GET", "/metrics", 5)
    if status != 200:
        raise SystemExit(f"GET /metrics on {port}: {status}")
    text = text.decode()
    found = {}
    for name in ("sum", "count"):
        match = re.search(rf"^kmb_checkpoint_duration_seconds_{name} ([0-9.e+-]+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True, help="the leader's client port")
    parser.add_argument("--backup-ports", required=True, help="operations ports to checkpoint on, comma separated")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pause-ms", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-seconds", type=float, default=2)
    parser.add_argument("--quiet-seconds", type=float, default=5)
    parser.add_argument("--settle-seconds", type=float, default=3)
    parser.add_argument("--checkpoint-timeout", type=float, default=300, help="longest wait for one POST /backup")
    parser.add_argument("--table", default="bench")
    parser.add_argument("--run", default=str(int(time.time())), help="run id, keeps client ids unique across runs")
    args = parser.parse_args()
    backup_ports = [int(p) for p in args.backup_ports.split(",")]

    stop = threading.Event()
    lock = threading.Lock()
    samples = []          # (started, latency ms, retried)
    failures = []

    def client(index):
        connection = None
        number = 0
        while not stop.is_set():
            number += 1
            body = json.dumps({
                "statements": [{"sql": f"INSERT INTO {args.table}(k, v) VALUES (?, ?)",
                                "params": [f"{args.run}-{index}-{number}", f"value-{number}"]}],
                "client_id": f"checkpoint-{args.run}-{index}", "request_number": number})
            started = time.monotonic()
            attempts = 0
            while True:
                attempts += 1
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
                    connection.request("POST", "/v1/execute", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    text = response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as error:
                    connection, status, text = None, None, repr(error).encode()
                if status == 200:
                    break
                # No leader for a moment (a view change), or an outcome the
                # server could not tell: the same request number again, which
                # the server applies exactly once.
                if status not in (None, 503, 504) or time.monotonic() - started > 30:
                    failures.append(f"client {index} write {number}: {status} {text[:200]!r}")
                    stop.set()
                    return
                time.sleep(0.005)
            elapsed = (time.monotonic() - started) * 1000
            with lock:
                samples.append((started, elapsed, attempts > 1))
            if args.pause_ms > 0:
                time.sleep(args.pause_ms / 1000)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()

    quiet_windows, checkpoint_windows, checkpoints = [], [], []

    def checkpoint_on(port, into):
        before = checkpoint_seconds_total(port)
        started = time.monotonic()
        try:
            status, text = request(port, "POST", "/backup", args.checkpoint_timeout)
        except (OSError, http.client.HTTPException) as error:
            into.update(port=port, error=repr(error))
            return
        finished = time.monotonic()
        if status != 200:
            into.update(port=port, error=f"{status} {text[:200]!r}")
            return
        plan = json.loads(text)
        after = checkpoint_seconds_total(port)
        into.update(port=port, started=started, finished=finished, op=plan["checkpoint"]["op"],
                    bytes=plan["checkpoint"]["bytes"], wall_seconds=round(finished - started, 3),
                    server_seconds=round(after[0] - before[0], 3) if after[1] > before[1] else None)
        request(port, "DELETE", f"/backup/{plan['backupID']}", 10)

    try:
        stop.wait(args.warmup_seconds)
        for _ in range(args.rounds):
            if stop.is_set():
                break
            quiet_start = time.monotonic()
            stop.wait(args.quiet_seconds)
            quiet_windows.append((quiet_start, time.monotonic()))
            results = [{} for _ in backup_ports]
            takers = [threading.Thread(target=checkpoint_on, args=(port, result), daemon=True)
                      for port, result in zip(backup_ports, results)]
            for taker in takers:
                taker.start()
            for taker in takers:
                taker.join(args.checkpoint_timeout + 30)
            errors = [r for r in results if "error" in r or "started" not in r]
            if errors:
                failures.append(f"checkpoint failed or timed out: {errors}")
                break
            checkpoint_windows.append((min(r["started"] for r in results), max(r["finished"] for r in results)))
            checkpoints.append([{k: r[k] for k in ("port", "op", "bytes", "wall_seconds", "server_seconds")}
                                for r in results])
            stop.wait(args.settle_seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(35)

    def within(windows):
        return [(latency, retried) for started, latency, retried in samples if any(a <= started < b for a, b in windows)]

    def summary(found):
        values = sorted(latency for latency, _ in found)
        return {"writes": len(values), "p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99),
                "max_ms": round(values[-1], 2) if values else None,
                "retried": sum(1 for _, retried in found if retried)}

    result = {
        "clients": args.clients, "pause_ms": args.pause_ms,
        "quiet": summary(within(quiet_windows)),
        "checkpoint": summary(within(checkpoint_windows)),
        "quiet_seconds": round(sum(b - a for a, b in quiet_windows), 2),
        "checkpoint_seconds": round(sum(b - a for a, b in checkpoint_windows), 2),
        "checkpoints": checkpoints,
        "failures": failures[:5],
    }
    print(json.dumps(result))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
