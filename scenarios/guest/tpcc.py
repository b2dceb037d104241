"""A TPC-C-like OLTP workload on SQLite (not an audited TPC-C): the standard transaction mix
(new-order 45 %, payment 43 %, order-status 4 %, delivery 4 %, stock-level 4 %) with uniform
random keys and no think time, one terminal, written as transactions/s for every second.

The base tables (the lab's tpcc.sqlite: warehouse, district, customer, item, stock, orders,
order_line) live on the data disk, which is attached read-only so that its replicas at both sites
stay identical; they are opened immutable. Everything a transaction writes (new orders, order
lines, history, stock and balance changes, deliveries) goes to a side database on the guest's
tmpfs, i.e. into guest memory, and reads merge base and side rows, so the workload both reads the
cached database and dirties memory as a database server does.
Runs inside the guest: Python >= 3.9 standard library only."""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time

from persecond import PerSecond, open_output, percentile

MIX: tuple[tuple[str, int], ...] = (
    ("new_order", 45), ("payment", 43), ("order_status", 4), ("delivery", 4), ("stock_level", 4))
SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS side.orders(o_w_id INT, o_d_id INT, o_id INT, o_c_id INT,
    o_ol_cnt INT, o_carrier INT, PRIMARY KEY(o_w_id, o_d_id, o_id));
CREATE TABLE IF NOT EXISTS side.new_order(no_w_id INT, no_d_id INT, no_o_id INT,
    PRIMARY KEY(no_w_id, no_d_id, no_o_id));
CREATE TABLE IF NOT EXISTS side.order_line(ol_w_id INT, ol_d_id INT, ol_o_id INT,
    ol_number INT, ol_i_id INT, ol_quantity INT, ol_amount REAL,
    PRIMARY KEY(ol_w_id, ol_d_id, ol_o_id, ol_number));
CREATE TABLE IF NOT EXISTS side.stock_delta(w INT, i INT, qty INT, PRIMARY KEY(w, i));
CREATE TABLE IF NOT EXISTS side.district_next(w INT, d INT, next_o_id INT, PRIMARY KEY(w, d));
CREATE TABLE IF NOT EXISTS side.customer_delta(w INT, d INT, c INT, balance REAL,
    PRIMARY KEY(w, d, c));
CREATE TABLE IF NOT EXISTS side.history(w INT, d INT, c INT, amount REAL, t REAL);
"""


class Terminal:
    def __init__(self, db: sqlite3.Connection, rng: random.Random) -> None:
        self.db = db
        self.rng = rng
        q = db.execute
        self.warehouses = q("SELECT max(w_id) FROM warehouse").fetchone()[0]
        self.items = q("SELECT max(i_id) FROM item").fetchone()[0]
        self.customers = q("SELECT max(c_id) FROM customer WHERE c_w_id=1 AND c_d_id=1"
                           ).fetchone()[0]

    def _wdc(self) -> tuple[int, int, int]:
        return (self.rng.randint(1, self.warehouses), self.rng.randint(1, 10),
                self.rng.randint(1, self.customers))

    def _next_order_id(self, w: int, d: int) -> int:
        row = self.db.execute("SELECT next_o_id FROM side.district_next WHERE w=? AND d=?",
                              (w, d)).fetchone()
        if row:
            return row[0]
        return self.db.execute("SELECT d_next_o_id FROM district WHERE d_w_id=? AND d_id=?",
                               (w, d)).fetchone()[0]

    def new_order(self) -> None:
        w, d, c = self._wdc()
        q = self.db.execute
        q("SELECT c_last, c_balance FROM customer WHERE c_w_id=? AND c_d_id=? AND c_id=?",
          (w, d, c)).fetchone()
        o_id = self._next_order_id(w, d)
        q("INSERT OR REPLACE INTO side.district_next VALUES(?,?,?)", (w, d, o_id + 1))
        lines = self.rng.randint(5, 15)
        q("INSERT INTO side.orders VALUES(?,?,?,?,?,NULL)", (w, d, o_id, c, lines))
        q("INSERT INTO side.new_order VALUES(?,?,?)", (w, d, o_id))
        for n in range(1, lines + 1):
            i = self.rng.randint(1, self.items)
            qty = self.rng.randint(1, 10)
            price = q("SELECT i_price FROM item WHERE i_id=?", (i,)).fetchone()[0]
            stock = q("SELECT s_quantity, s_data FROM stock WHERE s_w_id=? AND s_i_id=?",
                      (w, i)).fetchone()[0]
            delta = q("SELECT qty FROM side.stock_delta WHERE w=? AND i=?", (w, i)).fetchone()
            left = stock + (delta[0] if delta else 0) - qty
            if left < 10:
                left += 91
            q("INSERT OR REPLACE INTO side.stock_delta VALUES(?,?,?)", (w, i, left - stock))
            q("INSERT INTO side.order_line VALUES(?,?,?,?,?,?,?)",
              (w, d, o_id, n, i, qty, qty * price))

    def payment(self) -> None:
        w, d, c = self._wdc()
        amount = round(self.rng.uniform(1, 5000), 2)
        q = self.db.execute
        q("SELECT w_name FROM warehouse WHERE w_id=?", (w,)).fetchone()
        q("SELECT d_name FROM district WHERE d_w_id=? AND d_id=?", (w, d)).fetchone()
        base = q("SELECT c_balance, c_data FROM customer WHERE c_w_id=? AND c_d_id=? AND c_id=?",
                 (w, d, c)).fetchone()[0]
        delta = q("SELECT balance FROM side.customer_delta WHERE w=? AND d=? AND c=?",
                  (w, d, c)).fetchone()
        q("INSERT OR REPLACE INTO side.customer_delta VALUES(?,?,?,?)",
          (w, d, c, (delta[0] if delta else 0.0) - amount))
        q("INSERT INTO side.history VALUES(?,?,?,?,?)", (w, d, c, amount + 0 * base, time.time()))

    def order_status(self) -> None:
        w, d, _c = self._wdc()
        o_id = self.rng.randint(1, self._next_order_id(w, d) - 1)
        q = self.db.execute
        for table in ("order_line", "side.order_line"):
            q(f"SELECT ol_i_id, ol_amount FROM {table} WHERE ol_w_id=? AND ol_d_id=? "
              "AND ol_o_id=?", (w, d, o_id)).fetchall()

    def delivery(self) -> None:
        w = self.rng.randint(1, self.warehouses)
        q = self.db.execute
        for d in range(1, 11):
            row = q("SELECT min(no_o_id) FROM side.new_order WHERE no_w_id=? AND no_d_id=?",
                    (w, d)).fetchone()
            if row[0] is None:
                continue
            q("DELETE FROM side.new_order WHERE no_w_id=? AND no_d_id=? AND no_o_id=?",
              (w, d, row[0]))
            q("UPDATE side.orders SET o_carrier=? WHERE o_w_id=? AND o_d_id=? AND o_id=?",
              (self.rng.randint(1, 10), w, d, row[0]))
            q("SELECT sum(ol_amount) FROM side.order_line WHERE ol_w_id=? AND ol_d_id=? "
              "AND ol_o_id=?", (w, d, row[0])).fetchone()

    def stock_level(self) -> None:
        w, d, _c = self._wdc()
        nxt = self._next_order_id(w, d)
        q = self.db.execute
        items = set()
        for table in ("order_line", "side.order_line"):
            items.update(r[0] for r in q(
                f"SELECT ol_i_id FROM {table} WHERE ol_w_id=? AND ol_d_id=? "
                "AND ol_o_id BETWEEN ? AND ?", (w, d, nxt - 20, nxt - 1)))
        threshold = self.rng.randint(10, 20)
        low = 0
        for i in items:
            row = q("SELECT s_quantity FROM stock WHERE s_w_id=? AND s_i_id=?", (w, i)).fetchone()
            if row and row[0] < threshold:
                low += 1


def open_database(base: str, side: str) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{base}?immutable=1", uri=True, isolation_level=None)
    db.execute("ATTACH DATABASE ? AS side", (side,))
    db.execute("PRAGMA side.journal_mode=MEMORY")
    db.execute("PRAGMA side.synchronous=OFF")
    db.executescript(SIDE_SCHEMA)
    return db


def tx_summary(counts: dict[str, float], latencies: list[float]) -> dict[str, float]:
    return {"tx": sum(v for k, v in counts.items() if k in dict(MIX)),
            "latency_ms_p95": 1000 * percentile(latencies, 0.95)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True, help="the TPC-C-shaped SQLite database (read-only)")
    p.add_argument("--side", default="/tmp/tpcc-side.sqlite", help="where writes go (tmpfs)")
    p.add_argument("--out", default="-")
    p.add_argument("--duration", type=float, default=0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    db = open_database(args.db, args.side)
    term = Terminal(db, rng)
    names = [name for name, _w in MIX]
    weights = [w for _name, w in MIX]
    meter = PerSecond(open_output(args.out), tx_summary)

    def step() -> None:
        name = rng.choices(names, weights)[0]
        t0 = time.monotonic()
        db.execute("BEGIN")
        getattr(term, name)()
        db.execute("COMMIT")
        meter.add(name, 1, latency=time.monotonic() - t0)

    return meter.run_until_stopped(step, args.duration)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
