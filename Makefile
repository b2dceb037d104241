# Developer shortcuts. The venv comes from scripts/setup.sh.
PY := .venv/bin/python

.PHONY: snapshots screenshots test-ui

# Re-accept the console's SVG snapshots (review snapshot_report.html / git diff first).
snapshots:
	$(PY) -m pytest -q tests/ui/test_snapshots.py --snapshot-update

# screenshots/*.svg of every screen, from replays of the real lab recordings in recordings/.
screenshots:
	$(PY) scripts/screenshots.py

# The console's fast tests (no lab): pilot tests, snapshots, records, prediction, replay.
test-ui:
	$(PY) -m pytest -q -m "not lab" tests/ui tests/test_records.py tests/test_predict.py \
		tests/test_replay.py tests/test_compare.py tests/test_screenshots_script.py
