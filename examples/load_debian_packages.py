#!/usr/bin/env python3
"""Load the Debian package index (`apt-cache dumpavail`) into Kimberlite.

Real data nobody here wrote: about 63,000 package records. Each batch of
records becomes one `POST /v1/execute` (one log entry, applied atomically)
with a client session (`client_id`, `request_number`), so a retry after a
failover (503 no_leader, 504 outcome_unknown, a dropped connection) is
applied exactly once. Batches go to any node; followers forward to the
leader.

Usage:
  apt-cache dumpavail | examples/load_debian_packages.py --nodes 127.0.0.1:7000,127.0.0.1:7100,127.0.0.1:7200
  examples/load_debian_packages.py --queries --nodes ...   # print the example queries from every node
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

SCHEMA = """CREATE TABLE IF NOT EXISTS packages(
    id INTEGER PRIMARY KEY,
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    architecture TEXT NOT NULL,
    section TEXT,
    priority TEXT,
    maintainer TEXT,
    installed_size_kb INTEGER,
    size_bytes INTEGER,
    depends TEXT,
    homepage TEXT,
    description TEXT,
    UNIQUE(package, version, architecture))"""

COLUMNS = ["package", "version", "architecture", "section", "priority", "maintainer",
           "installed_size_kb", "size_bytes", "depends", "homepage", "description"]

QUERIES = [
    ("Largest packages (installed size)",
     "SELECT package, version, installed_size_kb FROM packages ORDER BY installed_size_kb DESC, package LIMIT 10"),
    ("Packages per maintainer",
     "SELECT maintainer, count(*) AS packages FROM packages GROUP BY maintainer ORDER BY packages DESC, maintainer LIMIT 10"),
    ("Sections",
     "SELECT section, count(*) AS packages, sum(installed_size_kb) AS installed_kb FROM packages "
     "GROUP BY section ORDER BY packages DESC, section LIMIT 15"),
    ("Total", "SELECT count(*) AS packages, count(DISTINCT package) AS names, sum(size_bytes) AS bytes FROM packages"),
]


def parse_records(stream):
    """Yields dicts of one package record each (RFC 822 style stanzas)."""
    record, key = {}, None
    for raw in stream:
        line = raw.rstrip("\n")
        if not line.strip():
            if record:
                yield record
            record, key = {}, None
            continue
        if line[0] in " \t":
            if key:
                record[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        record[key] = value.strip()
    if record:
        yield record


def to_row(record):
    def integer(name):
        try:
            return int(record.get(name, ""))
        except ValueError:
            return None
    description = record.get("Description", "").split("\n", 1)[0]
    return [record.get("Package"), record.get("Version"), record.get("Architecture", "all"),
            record.get("Section"), record.get("Priority"), record.get("Maintainer"),
            integer("Installed-Size"), integer("Size"), record.get("Depends"), record.get("Homepage"), description]


class Client:
    """Posts JSON to the nodes in turn, moving on when one cannot answer."""

    def __init__(self, nodes, timeout=10.0):
        self.nodes = nodes
        self.current = 0
        self.timeout = timeout
        self.retries = 0

    def post(self, path, body, node=None):
        target = node or self.nodes[self.current % len(self.nodes)]
        request = urllib.request.Request(f"http://{target}{path}", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except ValueError:
                return error.code, {"error": {"code": "http", "message": payload.decode(errors="replace")}}
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            return 0, {"error": {"code": "unreachable", "message": str(error)}}

    def execute(self, statements, client_id=None, request_number=None, deadline_s=120):
        """Executes with retries until accepted; same request number every time."""
        body = {"statements": statements}
        if client_id is not None:
            body["client_id"] = client_id
            body["request_number"] = request_number
        deadline = time.monotonic() + deadline_s
        delay = 0.05
        while True:
            status, reply = self.post("/v1/execute", body)
            if status == 200:
                return reply
            code = reply.get("error", {}).get("code")
            if status in (0, 503, 504) or code in ("no_leader", "outcome_unknown", "unreachable"):
                self.retries += 1
                self.current += 1  # try the next node
                if time.monotonic() > deadline:
                    raise SystemExit(f"load: gave up on request {request_number}: {status} {reply}")
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            raise SystemExit(f"load: request {request_number} refused: {status} {json.dumps(reply)}")

    def query(self, sql, node, consistency="strong"):
        status, reply = self.post("/v1/query", {"sql": sql, "consistency": consistency}, node=node)
        if status != 200:
            raise SystemExit(f"query on {node} failed: {status} {json.dumps(reply)}")
        return reply


def batches(rows, max_rows, max_bytes):
    """Groups rows into multi-row INSERTs under the statement size limit."""
    batch, size = [], 0
    for row in rows:
        row_size = sum(len(str(value or "")) for value in row) + 16 * len(row)
        if batch and (len(batch) >= max_rows or size + row_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


def insert_statement(batch):
    placeholders = ",".join(["(" + ",".join(["?"] * len(COLUMNS)) + ")"] * len(batch))
    params = [value for row in batch for value in row]
    return {"sql": f"INSERT INTO packages({','.join(COLUMNS)}) VALUES {placeholders}", "params": params}


def load(client, stream, batch_rows, max_bytes, progress):
    records = [to_row(r) for r in parse_records(stream) if r.get("Package") and r.get("Version")]
    unique = {}
    for row in records:
        unique.setdefault((row[0], row[1], row[2]), row)
    rows = list(unique.values())
    client_id = f"debian-loader-{uuid.uuid4()}"
    client.execute([{"sql": SCHEMA}], client_id, 1)
    started = time.monotonic()
    number = 1
    loaded = 0
    for batch in batches(rows, batch_rows, max_bytes):
        number += 1
        client.execute([insert_statement(batch)], client_id, number)
        loaded += len(batch)
        if progress and number % 25 == 0:
            print(f"  loaded {loaded}/{len(rows)} rows", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    return {"records": len(records), "unique_records": len(rows), "loaded": loaded, "batches": number - 1,
            "retries": client.retries, "seconds": round(elapsed, 2), "rows_per_second": round(loaded / elapsed) if elapsed else None}


def print_table(columns, rows):
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for index, row in enumerate(cells):
        print("  " + "  ".join(value.ljust(widths[i])[:80] for i, value in enumerate(row)))
        if index == 0:
            print("  " + "  ".join("-" * min(w, 80) for w in widths))


def run_queries(client, nodes):
    """Prints each example query once and checks every node gives the same answer."""
    agree = True
    for title, sql in QUERIES:
        answers = [client.query(sql, node, "strong")["rows"] for node in nodes]
        print(f"\n{title}:")
        reply = client.query(sql, nodes[0])
        print_table(reply["columns"], reply["rows"])
        if any(answer != answers[0] for answer in answers):
            agree = False
            print(f"  !! nodes disagree on: {title}")
    return agree


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="127.0.0.1:7000,127.0.0.1:7100,127.0.0.1:7200",
                        help="client API addresses, comma separated")
    parser.add_argument("--batch", type=int, default=250, help="rows per log entry")
    parser.add_argument("--max-statement-bytes", type=int, default=700_000,
                        help="split batches to stay under the server's max_record_size (default 1MB)")
    parser.add_argument("--input", default="-", help="dumpavail output (default: standard input)")
    parser.add_argument("--queries", action="store_true", help="only run the example queries")
    parser.add_argument("--quiet", action="store_true")
    arguments = parser.parse_args()
    nodes = [n.strip() for n in arguments.nodes.split(",") if n.strip()]
    client = Client(nodes)
    if not arguments.queries:
        stream = sys.stdin if arguments.input == "-" else open(arguments.input, encoding="utf-8", errors="replace")
        summary = load(client, stream, arguments.batch, arguments.max_statement_bytes, not arguments.quiet)
        print(json.dumps(summary))
        return
    if not run_queries(client, nodes):
        raise SystemExit("nodes disagree")


if __name__ == "__main__":
    main()
