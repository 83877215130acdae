"""``aescore submit``: run an aescore job on a Ray cluster and exit with the job's own exit code.

    aescore submit --address http://HEAD:8265 [--submission-id ID] -- python -m jobs.nightly --model ... --out ...

``ray job submit`` exits 1 for every failed job, so a scheduler cannot tell a nightly drift
alert (the job's exit 3) from a crash. This submits the same way (Ray's
``JobSubmissionClient``), streams the job's log, and then exits with the entrypoint's exit
code: 0 success, 3 drift alert, 2 bad input or configuration, 1 any other failure (also
when the job was stopped or the code is unknown). The image or working directory must
already hold the project: nothing is uploaded or installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one "error: ..." line and exit 2, as every aescore command
        self.exit(2, f"error: {message} (aescore submit --help)\n")


def _one_line(e: Exception) -> str:
    """A submission error in one line: the job server answers with a whole remote traceback,
    whose last line names the cause (e.g. a submission id that already exists)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog="aescore submit",
                                 description="Run an aescore job on a Ray cluster (whose nodes hold the project) "
                                             "and exit with the job's own exit code.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="exit codes: 0 success, 3 drift alert (nightly), 2 bad input, 1 other failure")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="the cluster's dashboard, e.g. http://aescore-head-svc:8265 (default: RAY_ADDRESS)")
    ap.add_argument("--submission-id", default=None,
                    help="job id (default: aescore-<UTC time>); a second submission with the same id is refused")
    ap.add_argument("--no-logs", action="store_true", help="do not stream the job's log, only wait for its end")
    ap.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- followed by the command to run on the cluster")
    args = ap.parse_args(argv)
    if args.entrypoint[:1] == ["--"]:
        args.entrypoint = args.entrypoint[1:]
    if not args.entrypoint:
        ap.error("no entrypoint: add -- python -m jobs.nightly ...")
    if not args.address:
        ap.error("no cluster address: pass --address or set RAY_ADDRESS")
    return args


async def _stream(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The exit code ``aescore submit`` returns for a finished job."""
    if status == "SUCCEEDED":
        return 0
    return driver_exit_code if driver_exit_code in (2, 3) else 1


def main(argv: list[str] | None = None) -> int:
    """Submit, follow, and return the job's exit code (see the module docstring)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    args = _args(argv)
    sid = args.submission_id or time.strftime("aescore-%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(entrypoint=shlex.join(args.entrypoint), submission_id=sid)
    except ConnectionError as e:  # an unreachable cluster is an outage to retry, not bad input
        print(f"error: could not reach the cluster at {args.address}: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - refused by the cluster (e.g. a repeated --submission-id)
        print(f"error: {args.address} refused the job: {_one_line(e)}", file=sys.stderr)
        return 2
    print(f"submitted {job_id} to {args.address}", flush=True)
    if not args.no_logs:
        asyncio.run(_stream(client, job_id))
    while (info := client.get_job_info(job_id)).status not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                JobStatus.STOPPED):
        time.sleep(2)
    code = exit_code(str(info.status.value), info.driver_exit_code)
    if code:
        what = "drift alert" if code == 3 else str(info.status.value).lower()
        print(f"error: job {job_id} {what} (exit code {info.driver_exit_code}): {info.message}", file=sys.stderr)
    else:
        print(f"job {job_id} succeeded", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
