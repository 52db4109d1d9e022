"""The lab: the reference layout as local processes, probes, the demo, drills and comparisons.

Beside the daemon (`controller/`), never inside it: the lab imports the daemon's model,
parsers and adapters, the daemon never imports the lab (checked by tests/test_structure.py).
The shipped HAProxy/Sentinel/Redis files reach it as package data (`lab.shipped`).
"""
