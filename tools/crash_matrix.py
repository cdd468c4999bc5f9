"""The crash matrix as a script: `python tools/crash_matrix.py --kills 100 --seed 7`.

The same scenario as tests/system/test_reliability.py (tests/crash_scenario.py), with as many
SIGKILLs as asked, against a real `formforge serve` on 127.0.0.1 and a fresh data dir.
Prints kills survived, uploads, bytes lost (must be 0) and offsets that went backwards;
exits 0 only when nothing was lost and every check held.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the scenario lives in the tests package

from tests.conftest import ServerProcess, clean_environ  # noqa: E402
from tests.crash_scenario import CrashMatrix, CrashPlan  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    parser.add_argument("--big-mib", type=int, default=48, help="size of the processed file")
    parser.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="formforge-crash-"))
    server = ServerProcess(data_dir=work / "data", args=[], env=clean_environ(), cwd=work)
    plan = CrashPlan(kills=args.kills, seed=args.seed, big_size=args.big_mib * 1024 * 1024)
    try:
        server.start()
        print(f"server {server.url}, data dir {server.data_dir}", flush=True)
        report = CrashMatrix(server, work, plan).run(log=lambda line: print(line, flush=True))
    except RuntimeError as error:  # the server did not come back after a kill
        print(f"error: {error}\n{server.log_tail()}", file=sys.stderr)
        return 2
    finally:
        server.kill()
        if server.proc is not None and server.proc.stdout is not None:
            server.proc.stdout.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
