"""Deterministic contents for scenario data disks (the same bytes on every machine).

- html: static pages of pseudo-random prose in a two-level directory tree (/www/NN/page-N.html).
- sqlite: a TPC-C-shaped SQLite database (/db/tpcc.sqlite): warehouse, district, customer, item,
  stock, orders, order_line, sized by the number of warehouses it takes to reach the target.
Both are generated from a seeded PRNG, fast enough for `lab up` (pages are built from slices of
one pre-made text block rather than word by word)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

_PROSE = (
    "page cache teleport migration wide area network replica disk block guest kernel memory "
    "tokyo osaka libvirt qemu stream restore clean dirty anonymous free host site operator "
    "latency bandwidth downtime precopy iteration checksum extent inode folio mapping ext4"
)
WORDS = tuple(_PROSE.split())


def _text_block(rng: random.Random, size: int) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def fill_html(root: Path, mib: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    block = _text_block(rng, 1 << 20)
    target = mib << 20
    written = 0
    i = 0
    while written < target:
        d = root / "www" / f"{i // 256:02d}"
        if i % 256 == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(8 << 10, 96 << 10)
        start = rng.randrange(0, len(block) - size)
        body = block[start:start + size]
        page = (f"<!doctype html><html><head><title>page {i}</title></head><body>"
                f"<h1>page {i}</h1><p>{body}</p></body></html>\n")
        (d / f"page-{i}.html").write_text(page)
        written += len(page)
        i += 1


def fill_sqlite(root: Path, mib: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    block = _text_block(rng, 1 << 20)

    def text(n: int) -> str:
        s = rng.randrange(0, len(block) - n)
        return block[s:s + n]

    (root / "db").mkdir(parents=True, exist_ok=True)
    path = root / "db" / "tpcc.sqlite"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=4096;"
        "CREATE TABLE warehouse(w_id INTEGER PRIMARY KEY, w_name TEXT, w_ytd REAL);"
        "CREATE TABLE district(d_w_id INT, d_id INT, d_name TEXT, d_next_o_id INT,"
        " PRIMARY KEY(d_w_id, d_id));"
        "CREATE TABLE customer(c_w_id INT, c_d_id INT, c_id INT, c_last TEXT, c_balance REAL,"
        " c_data TEXT, PRIMARY KEY(c_w_id, c_d_id, c_id));"
        "CREATE TABLE item(i_id INTEGER PRIMARY KEY, i_name TEXT, i_price REAL, i_data TEXT);"
        "CREATE TABLE stock(s_w_id INT, s_i_id INT, s_quantity INT, s_data TEXT,"
        " PRIMARY KEY(s_w_id, s_i_id));"
        "CREATE TABLE orders(o_w_id INT, o_d_id INT, o_id INT, o_c_id INT, o_ol_cnt INT,"
        " PRIMARY KEY(o_w_id, o_d_id, o_id));"
        "CREATE TABLE order_line(ol_w_id INT, ol_d_id INT, ol_o_id INT, ol_number INT,"
        " ol_i_id INT, ol_amount REAL, ol_dist_info TEXT,"
        " PRIMARY KEY(ol_w_id, ol_d_id, ol_o_id, ol_number));"
    )
    items = 100_000
    db.executemany("INSERT INTO item VALUES(?,?,?,?)",
                   ((i, text(20), rng.random() * 100, text(50)) for i in range(1, items + 1)))
    db.commit()
    # Measured: items ~10 MB once, then ~38 MB a warehouse (stock, customers, orders, lines).
    warehouses = max(1, (mib - 10) // 38)
    for w in range(1, warehouses + 1):
        db.execute("INSERT INTO warehouse VALUES(?,?,?)", (w, text(10), 300000.0))
        db.executemany("INSERT INTO stock VALUES(?,?,?,?)",
                       ((w, i, rng.randrange(10, 100), text(50)) for i in range(1, items + 1)))
        for d in range(1, 11):
            db.execute("INSERT INTO district VALUES(?,?,?,?)", (w, d, text(10), 3001))
            db.executemany(
                "INSERT INTO customer VALUES(?,?,?,?,?,?)",
                ((w, d, c, text(16), -10.0, text(300)) for c in range(1, 3001)))
            db.executemany("INSERT INTO orders VALUES(?,?,?,?,?)",
                           ((w, d, o, rng.randrange(1, 3001), 10) for o in range(1, 3001)))
            db.executemany(
                "INSERT INTO order_line VALUES(?,?,?,?,?,?,?)",
                ((w, d, o, n, rng.randrange(1, items + 1), rng.random() * 100, text(24))
                 for o in range(1, 3001) for n in range(1, 11)))
        db.commit()
    db.close()
