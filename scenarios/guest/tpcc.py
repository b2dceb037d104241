"""A TPC-C-like OLTP workload on SQLite (not an audited TPC-C): the standard transaction mix
(new-order 45 %, payment 43 %, order-status 4 %, delivery 4 %, stock-level 4 %) with uniform
random keys and no think time, one terminal, written as transactions/s for every second.

The database (the lab's tpcc.sqlite: warehouse, district, customer, item, stock, orders,
order_line) lives on the VM's data disk, a writable qcow2 overlay on the scenario's base image.
Transactions update it in place, as a database server does: SQLite in WAL mode with
synchronous=FULL, so every commit is fsync'ed. After each commit the rows it inserted (an order
and its lines, a payment's history row) are journaled (writejournal.py), so that after a
migration the guest agent can check every committed transaction is there.
Runs inside the guest: Python >= 3.9 standard library only."""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time

from persecond import PerSecond, open_output, percentile
from writejournal import JOURNAL_DIR, WriteJournal

MIX: tuple[tuple[str, int], ...] = (
    ("new_order", 45), ("payment", 43), ("order_status", 4), ("delivery", 4), ("stock_level", 4))
# What the base image lacks: TPC-C's new-order queue and payment history, and the carrier column.
EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS new_order(no_w_id INT, no_d_id INT, no_o_id INT,
    PRIMARY KEY(no_w_id, no_d_id, no_o_id));
CREATE TABLE IF NOT EXISTS history(h_id INTEGER PRIMARY KEY, h_c_w_id INT, h_c_d_id INT,
    h_c_id INT, h_amount REAL, h_date REAL);
"""
# Rows never rewritten once committed (delivery only sets o_carrier): what the journal names.
ORDER_LINES = ("SELECT ol_number, ol_i_id, ol_amount FROM order_line WHERE ol_w_id=? AND "
               "ol_d_id=? AND ol_o_id=? ORDER BY ol_number")
ORDER = "SELECT o_c_id, o_ol_cnt FROM orders WHERE o_w_id=? AND o_d_id=? AND o_id=?"
HISTORY = "SELECT h_c_w_id, h_c_d_id, h_c_id, h_amount FROM history WHERE h_id=?"


class Terminal:
    """One terminal. Each transaction notes what it inserted in `self.wrote` (query, args,
    rows) for the journal, which gets it once the commit returned."""

    def __init__(self, db: sqlite3.Connection, rng: random.Random) -> None:
        self.db = db
        self.rng = rng
        self.wrote: list[tuple[str, tuple, list]] = []
        q = db.execute
        self.warehouses = q("SELECT max(w_id) FROM warehouse").fetchone()[0]
        self.items = q("SELECT max(i_id) FROM item").fetchone()[0]
        self.customers = q("SELECT max(c_id) FROM customer WHERE c_w_id=1 AND c_d_id=1"
                           ).fetchone()[0]

    def _wdc(self) -> tuple[int, int, int]:
        return (self.rng.randint(1, self.warehouses), self.rng.randint(1, 10),
                self.rng.randint(1, self.customers))

    def new_order(self) -> None:
        w, d, c = self._wdc()
        q = self.db.execute
        q("SELECT c_last, c_balance FROM customer WHERE c_w_id=? AND c_d_id=? AND c_id=?",
          (w, d, c)).fetchone()
        o_id = q("SELECT d_next_o_id FROM district WHERE d_w_id=? AND d_id=?",
                 (w, d)).fetchone()[0]
        q("UPDATE district SET d_next_o_id=? WHERE d_w_id=? AND d_id=?", (o_id + 1, w, d))
        count = self.rng.randint(5, 15)
        q("INSERT INTO orders(o_w_id, o_d_id, o_id, o_c_id, o_ol_cnt) VALUES(?,?,?,?,?)",
          (w, d, o_id, c, count))
        q("INSERT INTO new_order VALUES(?,?,?)", (w, d, o_id))
        lines = []
        for n in range(1, count + 1):
            i = self.rng.randint(1, self.items)
            qty = self.rng.randint(1, 10)
            price = q("SELECT i_price FROM item WHERE i_id=?", (i,)).fetchone()[0]
            stock = q("SELECT s_quantity FROM stock WHERE s_w_id=? AND s_i_id=?",
                      (w, i)).fetchone()[0]
            left = stock - qty if stock - qty >= 10 else stock - qty + 91
            q("UPDATE stock SET s_quantity=? WHERE s_w_id=? AND s_i_id=?", (left, w, i))
            q("INSERT INTO order_line VALUES(?,?,?,?,?,?,?)",
              (w, d, o_id, n, i, qty * price, f"S_DIST_{d:02d}"))
            lines.append((n, i, qty * price))
        self.wrote.append((ORDER, (w, d, o_id), [(c, count)]))
        self.wrote.append((ORDER_LINES, (w, d, o_id), lines))

    def payment(self) -> None:
        w, d, c = self._wdc()
        amount = round(self.rng.uniform(1, 5000), 2)
        q = self.db.execute
        q("UPDATE warehouse SET w_ytd=w_ytd+? WHERE w_id=?", (amount, w))
        q("SELECT d_name FROM district WHERE d_w_id=? AND d_id=?", (w, d)).fetchone()
        q("UPDATE customer SET c_balance=c_balance-? WHERE c_w_id=? AND c_d_id=? AND c_id=?",
          (amount, w, d, c))
        h_id = q("INSERT INTO history(h_c_w_id, h_c_d_id, h_c_id, h_amount, h_date) "
                 "VALUES(?,?,?,?,?)", (w, d, c, amount, time.time())).lastrowid
        self.wrote.append((HISTORY, (h_id,), [(w, d, c, amount)]))

    def order_status(self) -> None:
        w, d, _c = self._wdc()
        q = self.db.execute
        nxt = q("SELECT d_next_o_id FROM district WHERE d_w_id=? AND d_id=?",
                (w, d)).fetchone()[0]
        q(ORDER_LINES, (w, d, self.rng.randint(1, nxt - 1))).fetchall()

    def delivery(self) -> None:
        w = self.rng.randint(1, self.warehouses)
        q = self.db.execute
        for d in range(1, 11):
            row = q("SELECT min(no_o_id) FROM new_order WHERE no_w_id=? AND no_d_id=?",
                    (w, d)).fetchone()
            if row[0] is None:
                continue
            q("DELETE FROM new_order WHERE no_w_id=? AND no_d_id=? AND no_o_id=?", (w, d, row[0]))
            q("UPDATE orders SET o_carrier=? WHERE o_w_id=? AND o_d_id=? AND o_id=?",
              (self.rng.randint(1, 10), w, d, row[0]))
            q("SELECT sum(ol_amount) FROM order_line WHERE ol_w_id=? AND ol_d_id=? "
              "AND ol_o_id=?", (w, d, row[0])).fetchone()

    def stock_level(self) -> None:
        w, d, _c = self._wdc()
        q = self.db.execute
        nxt = q("SELECT d_next_o_id FROM district WHERE d_w_id=? AND d_id=?",
                (w, d)).fetchone()[0]
        items = {r[0] for r in q("SELECT ol_i_id FROM order_line WHERE ol_w_id=? AND ol_d_id=? "
                                 "AND ol_o_id BETWEEN ? AND ?", (w, d, nxt - 20, nxt - 1))}
        threshold = self.rng.randint(10, 20)
        low = 0
        for i in items:
            row = q("SELECT s_quantity FROM stock WHERE s_w_id=? AND s_i_id=?", (w, i)).fetchone()
            if row and row[0] < threshold:
                low += 1


def open_database(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a commit returns once the WAL is fsync'ed
    db.executescript(EXTRA_SCHEMA)
    columns = [r[1] for r in db.execute("PRAGMA table_info(orders)")]
    if "o_carrier" not in columns:
        db.execute("ALTER TABLE orders ADD COLUMN o_carrier INT")
    return db


def tx_summary(counts: dict[str, float], latencies: list[float]) -> dict[str, float]:
    return {"tx": sum(v for k, v in counts.items() if k in dict(MIX)),
            "latency_ms_p95": 1000 * percentile(latencies, 0.95)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True, help="the TPC-C-shaped SQLite database")
    p.add_argument("--journal", default=JOURNAL_DIR + "/tpcc.jsonl",
                   help="where committed rows are journaled")
    p.add_argument("--out", default="-")
    p.add_argument("--duration", type=float, default=0)
    p.add_argument("--seed", type=int, default=0, help="0: a new seed each run")
    args = p.parse_args(argv)
    # Runs add to one database: a fixed seed would insert the same history rows each run.
    rng = random.Random(args.seed or None)
    db = open_database(args.db)
    journal = WriteJournal(args.journal)
    term = Terminal(db, rng)
    names = [name for name, _w in MIX]
    weights = [w for _name, w in MIX]
    meter = PerSecond(open_output(args.out), tx_summary)

    def step() -> None:
        name = rng.choices(names, weights)[0]
        t0 = time.monotonic()
        term.wrote.clear()
        db.execute("BEGIN IMMEDIATE")
        try:
            getattr(term, name)()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        for sql, qargs, rows in term.wrote:  # durable now: journal it
            journal.rows_committed(args.db, sql, list(qargs), rows)
        meter.add(name, 1, latency=time.monotonic() - t0)

    try:
        return meter.run_until_stopped(step, args.duration)
    finally:
        journal.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
