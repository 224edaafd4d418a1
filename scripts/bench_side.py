"""The Python end of scripts/bench-harness.ts: a side of a benchmark served over JSON lines.

The harness starts the script with the side's environment (threads, allocator), sends one
request per line on stdin and reads one reply per line on stdout, as the Node side
processes do over IPC:

  {"id": 1, "type": "setup", "spec": {"factory": NAME, "options": {...}}}  ->  {"id": 1, "describe": "..."}
  {"id": 2, "type": "step", "repeat": K}      ->  {"id": 2, "ms": per call, "phases": {name: ms}}
  {"id": 3, "type": "output"}                 ->  {"id": 3, "output": [numbers]}

A factory takes the options and returns an object with `step()` (which may return a dict
of phase milliseconds), and optionally `output()` and `describe`.
"""
import json
import sys
import time
import traceback


def serve_side(factories):
    side = None
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        reply = {"id": request["id"]}
        try:
            if request["type"] == "setup":
                spec = request["spec"]
                side = factories[spec["factory"]](spec.get("options") or {})
                reply["describe"] = getattr(side, "describe", None)
            elif request["type"] == "step":
                repeat = int(request["repeat"])
                phases = {}
                started = time.perf_counter()
                for _ in range(repeat):
                    for name, ms in (side.step() or {}).items():
                        phases[name] = phases.get(name, 0.0) + ms / repeat
                reply["ms"] = (time.perf_counter() - started) * 1e3 / repeat
                reply["phases"] = phases
            else:
                reply["output"] = side.output() if hasattr(side, "output") else None
        except Exception:  # the parent reports it, with the side's traceback
            reply["error"] = traceback.format_exc()
        out.write(json.dumps(reply) + "\n")
        out.flush()
