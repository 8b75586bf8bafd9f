#!/usr/bin/env python3
"""haul benchmark driver (standard library only; started by bench/run).

Owns: making the benchmark data under bench/out/, running every scenario against haul and
its peers in the same run (tools alternate in rounds of a balanced order, one untimed
warm-up each), verifying each tool's output after every run, and writing bench/out/results.json,
bench/chart.svg and BENCHMARKS.md.

Does not own: installing tools, building haul, or starting and stopping nginx; bench/run
does those and passes the port and paths here.

Wall time is measured around the tool with time.perf_counter(); peak RSS comes from
`/usr/bin/time -f '%e %M'` (KiB, reported in MiB). Every run goes through
`timeout --foreground -k 5 SECONDS`. A tool whose output fails verification is reported as failed,
never as fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import html
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

MIB = 1 << 20
GIB = 1 << 30
SCENARIO_IDS = [
    "single-1g",
    "segmented-128m",
    "many-2000x16k",
    "resume-256m",
    "extract-10k",
    "sha256-1g",
    "runtimes-1g",
    "limit-rate-8x24m",
    "modules-500x32k",
]
RESUME_MAX_RUNS = 3
ACCESS_LOG_SETTLE_S = 3.0
# limit-rate-8x24m: the global limit given to both tools ("20M" is 20 MiB/s for haul and for
# aria2c). haul's token bucket starts empty: no burst at the start.
LIMIT_RATE_SPEC = "20M"
LIMIT_RATE = 20 * MIB
# runtimes-1g: haul's runtimes, one process each, compared with the blocking one.
RUNTIMES = ["blocking", "tokio", "smol"]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The data sizes of one benchmark mode."""

    single_bytes: int
    segmented_bytes: int
    many_count: int
    many_file_bytes: int
    resume_bytes: int
    extract_files: int
    extract_total_bytes: int
    limit_count: int
    limit_file_bytes: int
    modules_count: int
    modules_file_bytes: int


FULL_SIZES = Sizes(
    single_bytes=GIB,
    segmented_bytes=128 * MIB,
    many_count=2000,
    many_file_bytes=16 * 1024,
    resume_bytes=256 * MIB,
    extract_files=10_000,
    extract_total_bytes=66_000_000,
    limit_count=8,
    limit_file_bytes=24 * MIB,
    modules_count=500,
    modules_file_bytes=32 * 1024,
)
QUICK_SIZES = Sizes(
    single_bytes=256 * MIB,
    segmented_bytes=32 * MIB,
    many_count=500,
    many_file_bytes=16 * 1024,
    resume_bytes=64 * MIB,
    extract_files=2000,
    extract_total_bytes=13_200_000,
    limit_count=8,
    limit_file_bytes=4 * MIB,
    modules_count=200,
    modules_file_bytes=32 * 1024,
)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def human_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.4g} GiB"
    if n >= MIB:
        return f"{n / MIB:.4g} MiB"
    if n >= 1024:
        return f"{n / 1024:.4g} KiB"
    return f"{int(n)} B"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_digest(root: Path) -> tuple[int, int, str]:
    """(file count, total bytes, digest over sorted relative paths and file contents)."""
    entries = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath, name)
            entries.append((full.relative_to(root).as_posix(), full))
    entries.sort()
    outer = hashlib.sha256()
    total = 0
    for rel, full in entries:
        data = full.read_bytes()
        total += len(data)
        outer.update(rel.encode())
        outer.update(b"\0")
        outer.update(hashlib.sha256(data).digest())
    return len(entries), total, outer.hexdigest()


# A directory tree of more entries than this is retired (renamed into RETIRED) instead of
# deleted while the bench runs, and deleted at its end. After a mass deletion, ext4 without
# a journal scans the freed inodes on every file creation for a minute or more
# (`recently_deleted` in its inode allocator): deleting one run's 2,000 files made the
# next run of every tool 5 to 10 times slower, whatever the tool, so the scenario measured
# that scan instead of the downloads. The whole tree counts: haul load's 500 modules sit two
# levels down (cache/files/), and deleting them slowed the next run (interleaved A/B on
# disk: a cold load 87 ms after such a deletion, 67 ms without; curl 64 and 58 ms).
RETIRE_OVER = 64
# After a mass deletion, the same inode allocator skips every inode freed less than 60 s ago,
# or 360 s ago when the inode table block holding it is dirty, which every new inode written
# into that block makes it: a bench run started right after another one's end (which deletes
# the retired trees) measured that for minutes (the same haul command took 50 ms in one
# directory and 60-110 ms in another of the same file system, where 52% of its samples were
# in `recently_deleted`; curl took 130-200 ms against its usual 55 for 2 minutes after one).
# The time of the last such deletion is kept in this file under the output directory, and
# the next run waits until SETTLE_S seconds have passed since.
DELETED_AT_FILE = ".retired-deleted-at"
SETTLE_S = 370
# many-2000x16k and modules-500x32k run this many times --runs rounds.
SHORT_RUNS_FACTOR = 3
RETIRED: Path | None = None


def tree_has_more_entries(path: Path, limit: int) -> bool:
    """Whether the tree under `path` holds more than `limit` entries (stops counting there)."""
    count = 0
    for _, dirs, files in os.walk(path):
        count += len(dirs) + len(files)
        if count > limit:
            return True
    return False


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        if RETIRED is not None and tree_has_more_entries(path, RETIRE_OVER):
            RETIRED.mkdir(parents=True, exist_ok=True)
            path.rename(RETIRED / f"{path.name}-{time.monotonic_ns()}")
            return
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def delete_retired(retired: Path, marker: Path) -> None:
    """Deletes the retired trees, syncs, and notes the time for `settle`."""
    shutil.rmtree(retired, ignore_errors=True)
    os.sync()
    try:
        marker.write_text(f"{time.time()}\n")
    except OSError:
        pass


def settle(marker: Path) -> None:
    """Waits until SETTLE_S seconds have passed since the last deletion of retired trees."""
    try:
        deleted_at = float(marker.read_text())
    except (OSError, ValueError):
        return
    wait = deleted_at + SETTLE_S - time.time()
    if wait > 0:
        log(f"outputs of many files were deleted {SETTLE_S - wait:.0f} s ago; waiting "
            f"{wait:.0f} s until the file system allocates new inodes at its normal pace")
        time.sleep(wait)


def reset_dir(path: Path) -> None:
    """Empties a download directory (untimed) and flushes dirty pages so runs start alike."""
    remove_path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.sync()


# --- data ---------------------------------------------------------------------------------


class DataStore:
    """Makes benchmark inputs once and reuses them across runs (bench/out/data/manifest.json)."""

    def __init__(self, www: Path, data_dir: Path) -> None:
        self.www = www
        self.data_dir = data_dir
        self.manifest_path = data_dir / "manifest.json"
        www.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            self.manifest = {}

    def _save(self) -> None:
        self.manifest_path.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))

    def _cached(self, key: str, params: dict, path: Path) -> dict | None:
        entry = self.manifest.get(key)
        if entry and entry.get("params") == params and path.exists():
            if path.is_file() and path.stat().st_size != entry.get("size"):
                return None
            return entry
        return None

    def random_file(self, name: str, size: int) -> dict:
        """A file of `size` random bytes served from www/NAME: {path, size, sha256}."""
        path = self.www / name
        params = {"kind": "random", "size": size}
        entry = self._cached(name, params, path)
        if entry:
            return entry
        log(f"making {name} ({human_bytes(size)} of random bytes)")
        digest = hashlib.sha256()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MIB))
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        tmp.rename(path)
        entry = {"params": params, "path": str(path), "size": size, "sha256": digest.hexdigest()}
        self.manifest[name] = entry
        self._save()
        return entry

    def many_files(self, dirname: str, count: int, size: int) -> dict:
        """`count` random files of `size` bytes in www/DIRNAME/: {names, count, digest}."""
        path = self.www / dirname
        params = {"kind": "many", "count": count, "size": size}
        entry = self._cached(dirname, params, path)
        if entry:
            return entry
        log(f"making {count} files of {human_bytes(size)} in {dirname}/")
        remove_path(path)
        path.mkdir(parents=True)
        names = [f"f{i:05d}.bin" for i in range(count)]
        for name in names:
            (path / name).write_bytes(os.urandom(size))
        files, total, digest = tree_digest(path)
        entry = {
            "params": params,
            "path": str(path),
            "names": names,
            "count": files,
            "total": total,
            "digest": digest,
        }
        self.manifest[dirname] = entry
        self._save()
        return entry

    def modules(self, dirname: str, count: int, size: int, make_manifest: Path) -> dict:
        """`count` modules of `size` bytes and a signed manifest.json in www/DIRNAME/, made by
        haul's make_manifest example: {path, key, manifest_sha256, modules: [{url, sha256}]}."""
        path = self.www / dirname
        params = {"kind": "modules", "count": count, "size": size}
        entry = self._cached(dirname, params, path)
        if entry and (path / "manifest.json").is_file():
            return entry
        log(f"making {count} modules of {human_bytes(size)} and a signed manifest in {dirname}/")
        remove_path(path)
        proc = subprocess.run([str(make_manifest), str(path), str(count), str(size)],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{make_manifest.name} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
        key = proc.stdout.decode().strip().splitlines()[-1]
        document = json.loads((path / "manifest.json").read_bytes())
        modules = [{"url": m["url"], "sha256": m["sha256"]}
                   for m in document["modules"].values()]
        for m in modules:
            if sha256_file(path / m["url"]) != m["sha256"]:
                raise RuntimeError(f"{m['url']} does not match the manifest's sha256")
        entry = {
            "params": params,
            "path": str(path),
            "key": key,
            "manifest_sha256": sha256_file(path / "manifest.json"),
            "modules": modules,
        }
        self.manifest[dirname] = entry
        self._save()
        return entry

    def archive(self, name: str, files: int, total: int) -> dict:
        """A deflate zip of `files` files (mixed sizes, text and random, nested dirs)."""
        path = self.data_dir / name
        params = {"kind": "zip", "files": files, "total": total, "seed": 20240601}
        entry = self._cached(name, params, path)
        if entry:
            return entry
        log(f"making {name}: {files} files, about {human_bytes(total)}")
        rng = random.Random(params["seed"])
        words = [
            "haul", "install", "extension", "track", "car", "driver", "module", "manifest",
            "signature", "segment", "resume", "verify", "digest", "mirror", "retry", "the",
            "of", "and", "to", "in", "is", "for", "on", "with", "as", "that", "by", "from",
            "{", "}", "=", ";", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "\n",
            "function", "return", "const", "let", "if", "else", "true", "false", "null",
        ]
        text_corpus = " ".join(rng.choice(words) for _ in range(400_000)).encode()
        # Log-normal sizes, a few empty files, scaled to the target total.
        raw = [0.0 if i % 500 == 7 else rng.lognormvariate(8.0, 1.3) for i in range(files)]
        scale = total / sum(raw)
        sizes = [int(r * scale) for r in raw]
        sizes[-1] += total - sum(sizes)
        tmp = path.with_suffix(".tmp")
        expected = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for i, size in enumerate(sizes):
                depth = 1 + i % 3
                parts = [f"pkg{rng.randrange(20):02d}"]
                if depth > 1:
                    parts.append(f"sub{rng.randrange(10)}")
                if depth > 2:
                    parts.append(f"leaf{rng.randrange(5)}")
                compressible = rng.random() < 0.5
                ext = ".txt" if compressible else ".bin"
                rel = "/".join(parts + [f"file{i:05d}{ext}"])
                if compressible:
                    start = rng.randrange(0, len(text_corpus) - size) if size < len(text_corpus) else 0
                    data = (text_corpus * (1 + size // len(text_corpus)))[start : start + size]
                else:
                    data = rng.randbytes(size)
                zf.writestr(rel, data)
                expected.append(rel)
        tmp.rename(path)
        staging = self.data_dir / (name + ".check")
        remove_path(staging)
        with zipfile.ZipFile(path) as zf:
            zf.extractall(staging)
        count, size_sum, digest = tree_digest(staging)
        remove_path(staging)
        entry = {
            "params": params,
            "path": str(path),
            "size": path.stat().st_size,
            "count": count,
            "total": size_sum,
            "digest": digest,
        }
        self.manifest[name] = entry
        self._save()
        return entry


# --- running tools ------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    """One execution of one tool."""

    ok: bool
    wall_s: float
    rss_kib: int | None
    exit_code: int
    error: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        out = {
            "ok": self.ok,
            "wall_s": round(self.wall_s, 4),
            "rss_mib": None if self.rss_kib is None else round(self.rss_kib / 1024, 2),
            "exit_code": self.exit_code,
        }
        if self.error:
            out["error"] = self.error
        out.update(self.extra)
        return out


class Runner:
    """Runs commands under /usr/bin/time and timeout, keeping each run's output in logs/."""

    def __init__(self, logs: Path, timeout_s: int) -> None:
        self.logs = logs
        self.timeout_s = timeout_s
        logs.mkdir(parents=True, exist_ok=True)

    def timed(self, argv: list[str], log_name: str) -> tuple[RunResult, str]:
        """Runs argv; returns the result (ok = exit 0) and its stdout."""
        time_file = self.logs / (log_name + ".time")
        stdout_file = self.logs / (log_name + ".out")
        stderr_file = self.logs / (log_name + ".err")
        full = [
            "/usr/bin/time", "-f", "%e %M", "-o", str(time_file),
            "timeout", "--foreground", "-k", "5", str(self.timeout_s),
        ] + argv
        with open(stdout_file, "wb") as out, open(stderr_file, "wb") as err:
            start = time.perf_counter()
            # A session of its own, so that an interrupt or a hang kills the whole group
            # (time, timeout and the tool); `timeout --foreground` stays in that group.
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            # A blocking wait (Popen.wait(timeout=...) polls in steps of up to 50 ms, which
            # would quantize the wall times); a watchdog thread covers a hung `timeout`.
            watchdog = threading.Timer(self.timeout_s + 30, kill_group, args=(proc,))
            watchdog.start()
            try:
                proc.wait()
            except BaseException:
                kill_group(proc)
                raise
            finally:
                watchdog.cancel()
            wall = time.perf_counter() - start
        rss = None
        try:
            for line in time_file.read_text().splitlines()[::-1]:
                m = re.fullmatch(r"\s*([0-9.]+)\s+([0-9]+)\s*", line)
                if m:
                    rss = int(m.group(2))
                    break
        except OSError:
            pass
        stdout = stdout_file.read_text(errors="replace")
        error = None
        if proc.returncode in (124, -signal.SIGKILL):
            error = f"timed out after {self.timeout_s} s"
        elif proc.returncode != 0:
            error = f"exit {proc.returncode}: {tail(stderr_file)}"
        return RunResult(ok=error is None, wall_s=wall, rss_kib=rss,
                         exit_code=proc.returncode, error=error), stdout


def kill_group(proc: subprocess.Popen) -> None:
    """Kills the process group that `proc` leads (it was started in a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, limit: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    out = " | ".join(lines[-3:])
    return out[-limit:] if out else "(no stderr)"


@dataclasses.dataclass
class Tool:
    """One contender in a scenario."""

    name: str
    argv: list[str]
    is_haul: bool = False
    not_run: str | None = None        # why it was not run
    failed: str | None = None         # why it failed (warm-up or a timed run)
    runs: list[RunResult] = dataclasses.field(default_factory=list)
    display: str | None = None        # command shown in the report, if not argv

    @property
    def command(self) -> str:
        return self.display or shlex.join(self.argv)


class HaulProbe:
    """Finds out, once per subcommand, whether the haul binary can run a scenario."""

    def __init__(self, binary: Path, unavailable: str) -> None:
        self.binary = binary
        self.unavailable = unavailable
        self.help_text: dict[str, tuple[int, str]] = {}

    def reason_not_runnable(self, subcommand: str, flags: list[str]) -> str | None:
        if self.unavailable:
            return self.unavailable
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            return f"no haul binary at {self.binary}"
        if subcommand not in self.help_text:
            try:
                proc = subprocess.run([str(self.binary), subcommand, "--help"],
                                      stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=20)
                text = (proc.stdout + proc.stderr).decode(errors="replace")
                self.help_text[subcommand] = (proc.returncode, text)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.help_text[subcommand] = (-1, str(e))
        code, text = self.help_text[subcommand]
        if code != 0:
            first = text.strip().splitlines()[0] if text.strip() else "no output"
            return f"`haul {subcommand}` is not available (`haul {subcommand} --help` exited {code}: {first[:160]})"
        if not text.strip():
            return f"`haul {subcommand}` is not implemented yet (`haul {subcommand} --help` printed nothing)"
        missing = [f for f in flags if not re.search(r"(?<![\w-])" + re.escape(f) + r"(?![\w-])", text)]
        if missing:
            return f"`haul {subcommand} --help` does not mention {', '.join(missing)}"
        return None


# --- access log ---------------------------------------------------------------------------


class AccessLog:
    """Reads the nginx access log ("$request $status $body_bytes_sent")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size

    def requests_since(self, offset: int, uri: str) -> list[tuple[int, int]]:
        """(status, body bytes) of each request for `uri` logged after `offset`."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            parts = line.rsplit(" ", 2)
            if len(parts) != 3:
                continue
            request, status, sent = parts
            fields = request.split(" ")
            if len(fields) >= 2 and fields[1] == uri:
                try:
                    out.append((int(status), int(sent)))
                except ValueError:
                    continue
        return out

    def settled_requests(self, offset: int, uri: str, at_least: int) -> list[tuple[int, int]]:
        """Waits (briefly) until nginx has logged at least `at_least` body bytes for `uri`
        and the log stopped growing, then returns the requests."""
        deadline = time.monotonic() + ACCESS_LOG_SETTLE_S
        last_size = -1
        while True:
            size = self.offset()
            reqs = self.requests_since(offset, uri)
            if size == last_size and sum(b for _, b in reqs) >= at_least:
                return reqs
            if time.monotonic() > deadline:
                return reqs
            last_size = size
            time.sleep(0.1)


# --- scenarios ----------------------------------------------------------------------------


@dataclasses.dataclass
class ScenarioResult:
    id: str
    title: str
    description: str
    tools: list[Tool]
    runs_per_tool: int
    extra_columns: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # The ratio columns: haul's median / each peer's (the default), or, with
    # ratio_per_reference, each tool's median / the reference's (the is_haul tool).
    ratio_header: str = "haul/peer"
    ratio_per_reference: bool = False
    # The chart: each peer's wall ratio (chart_key None), or the median of the extra column
    # chart_key of every tool that ran (haul included), where 1.0 also means "on target".
    chart_key: str | None = None
    chart_caption: str = "haul/peer"


def round_order(n: int, i: int) -> list[int]:
    """The order of `n` tools in round `i`: a Williams design (0, 1, n-1, 2, n-2, ... shifted
    by i), in which over n rounds (2n when n is odd, the second n mirrored) each tool runs
    right after each other tool equally often, and first equally often."""
    if n <= 0:
        return []
    base = [0]
    low, high = 1, n - 1
    while len(base) < n:
        base.append(low)
        low += 1
        if len(base) < n:
            base.append(high)
            high -= 1
    order = [(i + k) % n for k in base]
    if n % 2 == 1 and (i // n) % 2 == 1:
        order.reverse()
    return order


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK_SIZES if args.quick else FULL_SIZES
        self.out = Path(args.out_dir)
        self.repo = Path(args.repo_dir)
        self.www = self.out / "www"
        self.dl = Path(args.dl_dir) if args.dl_dir else self.out / "dl"
        self.data = DataStore(self.www, self.out / "data")
        self.runner = Runner(self.out / "logs", args.timeout)
        self.access_log = AccessLog(Path(args.access_log))
        self.base = f"http://127.0.0.1:{args.port}"
        self.haul = Path(args.haul)
        self.probe = HaulProbe(self.haul, args.haul_unavailable)
        self.runs = args.runs
        # The small-file scenarios' runs take a fraction of a second, where the machine's
        # noise weighs most: three times the rounds, for a paired ratio worth reading.
        self.short_runs = args.runs * SHORT_RUNS_FACTOR
        self.examples = Path(args.examples_dir)
        self.examples_unavailable = {
            "compare_runtimes": args.compare_runtimes_unavailable,
            "make_manifest": args.make_manifest_unavailable,
        }

    def example(self, name: str) -> tuple[Path, str | None]:
        """The path of one of haul's example programs and why it cannot run, if it cannot."""
        path = self.examples / name
        reason = self.examples_unavailable.get(name) or None
        if reason is None and not (path.is_file() and os.access(path, os.X_OK)):
            reason = f"no {name} example at {path}"
        return path, reason

    # The generic loop: warm-up of each tool, then rounds (round_order) with verification.
    def alternate(
        self,
        scenario: str,
        tools: list[Tool],
        runs: int,
        execute: Callable[[Tool, str], RunResult],
    ) -> None:
        active = [t for t in tools if t.not_run is None]
        for tool in active:
            log(f"{scenario}: warm-up {tool.name}")
            result = execute(tool, f"{scenario}.{tool.name}.warmup")
            if not result.ok:
                tool.failed = f"warm-up run failed: {result.error}"
                log(f"{scenario}: {tool.name} {tool.failed}")
        active = [t for t in active if t.failed is None]
        for i in range(runs):
            # Rounds in a balanced order (see `round_order`): a tool's run can leave the file
            # system slower for the next one (aria2c deletes a control file per download, and
            # the inode allocator then scans for a while; a cold haul load right after aria2c
            # took 70 ms, right after curl 62, while curl took 52 after either), so every tool
            # follows every other one equally often.
            for tool in (active[k] for k in round_order(len(active), i)):
                result = execute(tool, f"{scenario}.{tool.name}.{i + 1}")
                tool.runs.append(result)
                state = "ok" if result.ok else f"FAILED: {result.error}"
                log(f"{scenario}: run {i + 1}/{runs} {tool.name}: {result.wall_s:.3f} s {state}")
        for tool in active:
            bad = [r for r in tool.runs if not r.ok]
            if bad:
                tool.failed = f"{len(bad)} of {len(tool.runs)} timed runs failed: {bad[0].error}"

    def haul_tool(self, name: str, subcommand: str, flags: list[str], argv: list[str]) -> Tool:
        tool = Tool(name=name, argv=[str(self.haul)] + argv, is_haul=True,
                    display="haul " + shlex.join(argv))
        tool.not_run = self.probe.reason_not_runnable(subcommand, flags)
        return tool

    @staticmethod
    def peer(name: str, argv: list[str]) -> Tool:
        tool = Tool(name=name, argv=argv)
        if shutil.which(argv[0]) is None:
            tool.not_run = f"{argv[0]} is not installed"
        return tool

    def download_runner(self, out_dir: Path, verify: Callable[[], str | None]):
        def execute(tool: Tool, log_name: str) -> RunResult:
            reset_dir(out_dir)
            result, _ = self.runner.timed(tool.argv, log_name)
            if result.ok:
                problem = verify()
                if problem:
                    result.ok, result.error = False, f"verification: {problem}"
            return result
        return execute

    @staticmethod
    def file_check(path: Path, sha256: str, size: int) -> Callable[[], str | None]:
        def verify() -> str | None:
            if not path.is_file():
                return f"{path.name} missing"
            actual = path.stat().st_size
            if actual != size:
                return f"{path.name} has {actual} bytes, want {size}"
            if sha256_file(path) != sha256:
                return f"{path.name} sha256 mismatch"
            return None
        return verify

    # 1. single-1g
    def single(self) -> ScenarioResult:
        size = self.sizes.single_bytes
        src = self.data.random_file(f"single-{size // MIB}m.bin", size)
        url = f"{self.base}/plain/{Path(src['path']).name}"
        out_dir = self.dl / "single"
        out = out_dir / "out.bin"
        tools = [
            self.haul_tool("haul", "get", ["-o", "--sha256", "--quiet"],
                           ["get", url, "-o", str(out), "--sha256", src["sha256"], "--quiet"]),
            self.peer("curl", ["curl", "-s", "-o", str(out), url]),
            # haul's file is on disk when it exits (fsync before the rename); curl's is in the
            # page cache. This peer makes curl's file durable too, for a like-for-like time.
            self.peer("curl+sync", ["sh", "-c", 'curl -s -o "$1" "$2" && sync "$1"', "sh",
                                    str(out), url]),
            self.peer("wget2", ["wget2", "-q", "-O", str(out), url]),
            self.peer("aria2c", ["aria2c", "-q", "-d", str(out_dir), "-o", out.name,
                                 "--allow-overwrite=true", "--file-allocation=none", url]),
        ]
        self.alternate("single-1g", tools, self.runs,
                       self.download_runner(out_dir, self.file_check(out, src["sha256"], size)))
        remove_path(out_dir)
        return ScenarioResult(
            "single-1g", f"One {human_bytes(size)} file, one connection",
            f"{human_bytes(size)} of random bytes from nginx at full speed (sendfile) over "
            "127.0.0.1, written to bench/out/dl; each output's sha256 is checked after each run. "
            "haul also verifies the sha256 itself (--sha256); the peers do not. haul fsyncs the "
            "file before renaming it into place; curl+sync is curl followed by `sync FILE`, the "
            "same durability.",
            tools, self.runs)

    # 2. segmented-128m
    def segmented(self) -> ScenarioResult:
        size = self.sizes.segmented_bytes
        src = self.data.random_file(f"segmented-{size // MIB}m.bin", size)
        uri = f"/seg/{Path(src['path']).name}"
        url = self.base + uri
        out_dir = self.dl / "segmented"
        out = out_dir / "out.bin"
        tools = [
            self.haul_tool("haul", "get", ["-o", "--segments", "--quiet"],
                           ["get", url, "-o", str(out), "--segments", "16", "--quiet"]),
            self.peer("aria2c", ["aria2c", "-x16", "-s16", "-k1M", "-q", "-d", str(out_dir),
                                 "-o", out.name, "--allow-overwrite=true",
                                 "--file-allocation=none", url]),
        ]
        download = self.download_runner(out_dir, self.file_check(out, src["sha256"], size))

        def execute(tool: Tool, log_name: str) -> RunResult:
            start = self.access_log.offset()
            result = download(tool, log_name)
            reqs = self.access_log.settled_requests(start, uri, size if result.ok else 0)
            result.extra["requests"] = len(reqs)
            result.extra["served_mib"] = round(sum(b for _, b in reqs) / MIB, 2)
            return result

        self.alternate("segmented-128m", tools, self.runs, execute)
        remove_path(out_dir)
        return ScenarioResult(
            "segmented-128m",
            f"One {human_bytes(size)} file, 16 segments, "
            f"{human_bytes(self._rate(self.args.segment_rate))}/s per connection",
            f"nginx limits each connection to {human_bytes(self._rate(self.args.segment_rate))}/s "
            f"(limit_rate "
            f"{self.args.segment_rate}), so one connection would need "
            f"{size / self._rate(self.args.segment_rate):.1f} s; 16 parallel ranges should "
            "need about 1/16 of that.",
            tools, self.runs,
            extra_columns=[("requests", "requests"), ("served_mib", "served MiB")])

    @staticmethod
    def _rate(spec: str) -> int:
        units = {"k": 1024, "m": MIB, "g": GIB}
        return int(spec[:-1]) * units[spec[-1].lower()] if spec[-1].isalpha() else int(spec)

    # 3. many-2000x16k
    def many(self) -> ScenarioResult:
        count, fsize = self.sizes.many_count, self.sizes.many_file_bytes
        src = self.data.many_files(f"many-{count}x{fsize // 1024}k", count, fsize)
        src_name = Path(src["path"]).name
        out_dir = self.dl / "many"
        lists = self.out / "lists"
        lists.mkdir(parents=True, exist_ok=True)
        urls = [f"{self.base}/plain/{src_name}/{n}" for n in src["names"]]
        aria_list = lists / "many.aria2.txt"
        aria_list.write_text("".join(
            f"{u}\n  dir={out_dir}\n  out={n}\n" for u, n in zip(urls, src["names"])))
        curl_cfg = lists / "many.curl.txt"
        curl_cfg.write_text("".join(
            f'url = "{u}"\noutput = "{out_dir / n}"\n' for u, n in zip(urls, src["names"])))
        url_list = lists / "many.urls.txt"
        url_list.write_text("".join(u + "\n" for u in urls))
        # haul without its syncs, as a peer: what the durability costs haul, and haul's
        # time on the same terms as curl's (files in the page cache when it exits).
        no_sync = self.haul_tool("haul --no-sync", "get", ["-j", "-i", "--quiet", "--no-sync"],
                                 ["get", "-j", "16", "-i", str(aria_list), "--quiet",
                                  "--no-sync"])
        no_sync.is_haul = False
        tools = [
            self.haul_tool("haul", "get", ["-j", "-i", "--quiet"],
                           ["get", "-j", "16", "-i", str(aria_list), "--quiet"]),
            no_sync,
            self.peer("curl", ["curl", "--parallel", "--parallel-max", "16", "-s",
                               "-K", str(curl_cfg)]),
            # haul's files are on disk when it exits (each commit synced, in groups); curl's
            # are in the page cache. This peer syncs curl's file system once at the end, the
            # cheapest way to the same durability (though no file is safe before that end).
            self.peer("curl+sync", ["sh", "-c", 'curl --parallel --parallel-max 16 -s -K "$1" '
                                    '&& sync -f "$2"', "sh", str(curl_cfg), str(out_dir)]),
            self.peer("wget2", ["wget2", "--max-threads", "16", "-q", "-i", str(url_list),
                                "-P", str(out_dir)]),
            self.peer("aria2c", ["aria2c", "-j16", "-i", str(aria_list), "-q"]),
        ]

        def verify() -> str | None:
            files, total, digest = tree_digest(out_dir)
            if files != src["count"] or total != src["total"]:
                return f"{files} files / {total} bytes, want {src['count']} / {src['total']}"
            if digest != src["digest"]:
                return "file names or contents differ from the source"
            return None

        self.alternate("many-2000x16k", tools, self.short_runs,
                       self.download_runner(out_dir, verify))
        remove_path(out_dir)
        return ScenarioResult(
            "many-2000x16k", f"{count} files of {human_bytes(fsize)}, 16 at a time",
            f"{count} small files from nginx, 16 concurrent transfers; each run's output "
            "directory must hold exactly the source files (names and contents). haul syncs "
            "every file before renaming it into place (in groups); curl+sync is curl "
            "followed by one `sync -f` of the output's file system. haul --no-sync is haul "
            "without those syncs (still verified and renamed atomically): like curl, its "
            "files are in the page cache when it exits.",
            tools, self.short_runs)

    # 4. resume-256m
    def resume(self) -> ScenarioResult:
        size = self.sizes.resume_bytes
        src = self.data.random_file(f"resume-{size // MIB}m.bin", size)
        uri = f"/resume/{Path(src['path']).name}"
        url = self.base + uri
        out_dir = self.dl / "resume"
        out = out_dir / Path(src["path"]).name
        half = size // 2
        sig = getattr(signal, "SIG" + self.args.resume_signal)
        runs = min(self.runs, RESUME_MAX_RUNS)
        tools = [
            self.haul_tool("haul", "get", ["-o", "--sha256", "--quiet"],
                           ["get", url, "-o", str(out), "--sha256", src["sha256"], "--quiet"]),
            self.peer("curl", ["curl", "-s", "-C", "-", "-o", str(out), url]),
            # -P, not -O: with -O, `wget2 -c` starts again from byte 0 (1.99.1).
            self.peer("wget2", ["wget2", "-q", "-c", "-P", str(out_dir), url]),
            self.peer("aria2c", ["aria2c", "-q", "-c", "-d", str(out_dir), "-o", out.name,
                                 "--file-allocation=none", url]),
        ]
        partial_of = {
            "haul": [out.with_name(out.name + ".haul-part"), out],
            "curl": [out],
            "wget2": [out],
            "aria2c": [out],
        }

        def partial_size(tool: Tool) -> int:
            best = 0
            for p in partial_of[tool.name]:
                try:
                    best = max(best, p.stat().st_size)
                except OSError:
                    pass
            return best

        def interrupted_attempt(tool: Tool, log_name: str) -> tuple[str | None, int]:
            """Starts the tool, stops it with the signal once the partial holds half."""
            err_path = self.runner.logs / (log_name + ".first.err")
            with open(err_path, "wb") as err:
                # Its own process group, signalled as a whole (as Ctrl-C would be).
                proc = subprocess.Popen(tool.argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err,
                                        start_new_session=True)
                deadline = time.monotonic() + self.args.timeout
                try:
                    while proc.poll() is None:
                        if partial_size(tool) >= half:
                            os.killpg(proc.pid, sig)
                            break
                        if time.monotonic() > deadline:
                            return "first attempt timed out before reaching half", 0
                        time.sleep(0.005)
                    else:
                        return ("first attempt ended (exit "
                                f"{proc.returncode}) before it could be interrupted"), 0
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        pass
                finally:
                    # Nothing of the first attempt may outlive it (a stray child would
                    # write into the file while the resume runs).
                    kill_group(proc)
                    proc.wait()
                    time.sleep(0.05)
            return None, partial_size(tool)

        check = self.file_check(out, src["sha256"], size)

        def execute(tool: Tool, log_name: str) -> RunResult:
            reset_dir(out_dir)
            start = self.access_log.offset()
            problem, at_interrupt = interrupted_attempt(tool, log_name)
            if problem:
                return RunResult(ok=False, wall_s=0.0, rss_kib=None, exit_code=-1, error=problem)
            result, _ = self.runner.timed(tool.argv, log_name)
            if result.ok:
                problem = check()
                if problem:
                    result.ok, result.error = False, f"verification: {problem}"
            reqs = self.access_log.settled_requests(start, uri, size if result.ok else 0)
            served = sum(b for _, b in reqs)
            result.extra.update({
                "partial_mib_at_interrupt": round(at_interrupt / MIB, 2),
                "requests": len(reqs),
                "served_mib": round(served / MIB, 2),
                "refetched_mib": round((served - size) / MIB, 2),
            })
            return result

        self.alternate("resume-256m", tools, runs, execute)
        remove_path(out_dir)
        return ScenarioResult(
            "resume-256m",
            f"Resume a {human_bytes(size)} download interrupted half way "
            f"({human_bytes(self._rate(self.args.resume_rate))}/s per connection)",
            f"Each run: start the tool, send SIG{self.args.resume_signal} once its partial file "
            f"(haul: OUT.haul-part; the others: OUT) holds {human_bytes(half)}, then run the "
            "same command again (curl -C -, wget2 -c, aria2c -c; haul: unchanged). wget2 "
            "writes to -P DIR, not -O OUT, because `wget2 -c -O OUT` restarts from byte 0. Time and "
            "RSS are those of the resume run. 'refetched' = bytes nginx served for the file "
            "over both attempts (access log) minus its size, i.e. bytes fetched twice; it "
            "includes what was in flight in socket buffers at the interrupt. "
            f"{runs} timed runs per tool.",
            tools, runs,
            extra_columns=[("refetched_mib", "refetched MiB"),
                           ("partial_mib_at_interrupt", "partial MiB at interrupt"),
                           ("requests", "requests")])

    # 5. extract-10k
    def extract(self) -> ScenarioResult:
        files, total = self.sizes.extract_files, self.sizes.extract_total_bytes
        src = self.data.archive(f"extract-{files}.zip", files, total)
        archive = src["path"]
        out_dir = self.dl / "extract"
        tools = [
            self.haul_tool("haul", "extract", ["-d", "--quiet"],
                           ["extract", archive, "-d", str(out_dir), "--quiet"]),
            self.peer("unzip", ["unzip", "-q", "-o", archive, "-d", str(out_dir)]),
        ]

        def execute(tool: Tool, log_name: str) -> RunResult:
            remove_path(out_dir)  # haul may want to create the directory itself
            os.sync()
            result, _ = self.runner.timed(tool.argv, log_name)
            if result.ok:
                count, size_sum, digest = tree_digest(out_dir) if out_dir.is_dir() else (0, 0, "")
                if (count, size_sum) != (src["count"], src["total"]):
                    result.ok, result.error = False, (
                        f"verification: {count} files / {size_sum} bytes, want "
                        f"{src['count']} / {src['total']}")
                elif digest != src["digest"]:
                    result.ok, result.error = False, "verification: contents differ"
            return result

        self.alternate("extract-10k", tools, self.runs, execute)
        remove_path(out_dir)
        return ScenarioResult(
            "extract-10k",
            f"Extract a zip of {src['count']} files ({human_bytes(src['total'])})",
            f"A deflate zip ({human_bytes(src['size'])}) made with Python's zipfile: log-normal "
            "file sizes, half text (compressible), half random, in nested directories. The "
            "output directory is removed before each run; each run's tree is compared file "
            "by file with the source.",
            tools, self.runs)

    # 6. sha256-1g
    def hashing(self) -> ScenarioResult:
        size = self.sizes.single_bytes
        src = self.data.random_file(f"single-{size // MIB}m.bin", size)
        path = src["path"]
        tools = [
            self.haul_tool("haul", "hash", [], ["hash", path]),
            self.peer("openssl", ["openssl", "dgst", "-sha256", path]),
            self.peer("sha256sum", ["sha256sum", path]),
        ]

        def execute(tool: Tool, log_name: str) -> RunResult:
            result, stdout = self.runner.timed(tool.argv, log_name)
            if result.ok and src["sha256"] not in stdout.lower():
                result.ok, result.error = False, "verification: expected digest not in output"
            return result

        self.alternate("sha256-1g", tools, self.runs, execute)
        return ScenarioResult(
            "sha256-1g", f"SHA-256 of a {human_bytes(size)} file",
            "The file is in the page cache (it was just made or served); the digest must "
            "appear in the tool's output.",
            tools, self.runs)

    # 7. runtimes-1g
    def runtimes(self) -> ScenarioResult:
        size = self.sizes.single_bytes
        src = self.data.random_file(f"single-{size // MIB}m.bin", size)
        url = f"{self.base}/plain/{Path(src['path']).name}"
        out_dir = self.dl / "runtimes"
        out = out_dir / "download.bin"
        binary, reason = self.example("compare_runtimes")
        tools = []
        for which in RUNTIMES:
            argv = [str(binary), url, "--sha256", src["sha256"], "--rounds", "1",
                    "--only", which, "--dir", str(out_dir), "--keep"]
            tool = Tool(name=f"haul-{which}", argv=argv, is_haul=which == "blocking",
                        not_run=reason, display=shlex.join(
                            [os.path.relpath(binary, self.repo)] + argv[1:]))
            tools.append(tool)
        check = self.file_check(out, src["sha256"], size)
        line = re.compile(r"^round 1 (\w+): (\d+) bytes in ([0-9.]+) s .*sha256 ([0-9a-f]{64})$",
                          re.MULTILINE)

        def execute(tool: Tool, log_name: str) -> RunResult:
            reset_dir(out_dir)
            result, stdout = self.runner.timed(tool.argv, log_name)
            if not result.ok:
                return result
            m = line.search(stdout)
            want = tool.name.removeprefix("haul-")
            if not m or m.group(1).lower() != want:
                problem = f"no 'round 1 {want.capitalize()}: ...' line in the output"
            elif int(m.group(2)) != size or m.group(4) != src["sha256"]:
                problem = f"reported {m.group(2)} bytes, sha256 {m.group(4)[:16]}…"
            else:
                problem = check()
                result.extra["download_s"] = float(m.group(3))
            if problem:
                result.ok, result.error = False, f"verification: {problem}"
            return result

        self.alternate("runtimes-1g", tools, self.runs, execute)
        remove_path(out_dir)
        return ScenarioResult(
            "runtimes-1g", f"One {human_bytes(size)} file on each of haul's runtimes",
            f"single-1g's file ({human_bytes(size)}, full speed, one connection) downloaded "
            "with SHA-256 verification by haul's library on each runtime, one process per run: "
            "runtime-tokio/examples/compare_runtimes.rs with --only blocking, tokio or smol. "
            "The reference is haul-blocking; the ratio columns are each runtime's median / "
            "haul-blocking's (the bar: each within 10%, i.e. at most 1.10×). The file is "
            "checked after each run (size and sha256) and the digest the example reports "
            "must match. 'download s' is the time the example measured around the download "
            "itself (without process start and runtime set-up).",
            tools, self.runs,
            extra_columns=[("download_s", "download s")],
            ratio_header="runtime/blocking", ratio_per_reference=True,
            chart_caption="runtime/blocking")

    # 8. limit-rate-8x24m
    def limit_rate(self) -> ScenarioResult:
        count, fsize = self.sizes.limit_count, self.sizes.limit_file_bytes
        src = self.data.many_files(f"limit-{count}x{fsize // MIB}m", count, fsize)
        src_name = Path(src["path"]).name
        total = src["total"]
        out_dir = self.dl / "limit"
        lists = self.out / "lists"
        lists.mkdir(parents=True, exist_ok=True)
        urls = [f"{self.base}/plain/{src_name}/{n}" for n in src["names"]]
        aria_list = lists / "limit.aria2.txt"
        aria_list.write_text("".join(
            f"{u}\n  dir={out_dir}\n  out={n}\n" for u, n in zip(urls, src["names"])))
        tools = [
            self.haul_tool("haul", "get", ["-j", "--limit-rate", "-d", "--quiet"],
                           ["get", "-j", str(count), "--limit-rate", LIMIT_RATE_SPEC,
                            "-d", str(out_dir), "--quiet"] + urls),
            # aria2c takes several URIs on its command line as mirrors of one file: -i.
            self.peer("aria2c", ["aria2c", "-q", f"-j{count}",
                                 f"--max-overall-download-limit={LIMIT_RATE_SPEC}",
                                 "--file-allocation=none", "-i", str(aria_list)]),
        ]
        # The report shows the first and last URL only.
        tools[0].display = ("haul " + shlex.join(["get", "-j", str(count), "--limit-rate",
                                                   LIMIT_RATE_SPEC, "-d", str(out_dir),
                                                   "--quiet", urls[0]])
                            + f" … {shlex.quote(urls[-1])}  # {count} URLs")
        # A tool running exactly at the limit needs total/limit seconds.
        expected = {"haul": total / LIMIT_RATE, "aria2c": total / LIMIT_RATE}

        def verify() -> str | None:
            files, got, digest = tree_digest(out_dir)
            if files != src["count"] or got != total:
                return f"{files} files / {got} bytes, want {src['count']} / {total}"
            if digest != src["digest"]:
                return "file names or contents differ from the source"
            return None

        download = self.download_runner(out_dir, verify)

        def execute(tool: Tool, log_name: str) -> RunResult:
            result = download(tool, log_name)
            if result.ok and result.wall_s > 0:
                want = expected[tool.name]
                result.extra.update({
                    "rate_mib_s": round(total / result.wall_s / MIB, 3),
                    "rate_vs_limit": round(total / result.wall_s / LIMIT_RATE, 4),
                    "expected_s": round(want, 3),
                    "on_target": round(want / result.wall_s, 4),
                    "deviation_pct": round((want / result.wall_s - 1) * 100, 2),
                })
            return result

        self.alternate("limit-rate-8x24m", tools, self.runs, execute)
        remove_path(out_dir)
        limit_text = f"{human_bytes(LIMIT_RATE)}/s"
        return ScenarioResult(
            "limit-rate-8x24m",
            f"{count} files of {human_bytes(fsize)} under one {limit_text} limit",
            f"{count} files ({human_bytes(total)} in all) from nginx at full speed, all "
            f"{count} at once, with one global limit of {limit_text} "
            f"(haul --limit-rate {LIMIT_RATE_SPEC}; aria2c "
            f"--max-overall-download-limit={LIMIT_RATE_SPEC}; curl's --limit-rate is per "
            "transfer, so curl is not a peer here). 'MiB/s' = total bytes / wall time; "
            "'rate ÷ limit' = that / the limit. 'expected s' = the time at exactly the limit: "
            f"total / limit = {total / LIMIT_RATE:.2f} s for both (haul's token bucket starts "
            "empty: no burst at the start). 'deviation %' = expected / wall − 1: the rate "
            "against the limit (negative: below the limit; the bar for haul: within ±5%). "
            "Every run's files are compared with the source. The chart shows expected / wall "
            "for both tools (1.0 = exactly at the limit). haul runs at its default --priority "
            "normal, which leaves 20% of the bucket to more urgent classes until a job has "
            "waited a second, so its first read waits about 0.2 s; that and the fixed costs "
            "(start, connections, the final fsync) weigh heavily on a small total (--quick).",
            tools, self.runs,
            extra_columns=[("rate_mib_s", "MiB/s"), ("rate_vs_limit", "rate ÷ limit"),
                           ("expected_s", "expected s"), ("deviation_pct", "deviation %")],
            chart_key="on_target", chart_caption="rate ÷ limit")

    # 9. modules-500x32k
    def modules(self) -> ScenarioResult:
        count, fsize = self.sizes.modules_count, self.sizes.modules_file_bytes
        sid = "modules-500x32k"
        dirname = f"modules-{count}x{fsize // 1024}k"
        title = f"Load {count} signed modules of {human_bytes(fsize)} (cold cache)"
        out_dir = self.dl / "modules"
        cache = out_dir / "cache"
        make_manifest, reason = self.example("make_manifest")
        src = None
        if reason is None:
            try:
                src = self.data.modules(dirname, count, fsize, make_manifest)
            except (OSError, ValueError, KeyError, RuntimeError,
                    subprocess.TimeoutExpired) as e:
                reason = f"could not make the modules: {e}"
                log(f"{sid}: {reason}")
        manifest_url = f"{self.base}/plain/{dirname}/manifest.json"
        key = src["key"] if src else "bench:ed25519:HEX"
        modules = src["modules"] if src else []
        file_urls = [("manifest.json", manifest_url)] + [
            (m["url"], f"{self.base}/plain/{dirname}/{m['url']}") for m in modules]
        lists = self.out / "lists"
        lists.mkdir(parents=True, exist_ok=True)
        curl_cfg = lists / "modules.curl.txt"
        curl_cfg.write_text("".join(
            f'url = "{u}"\noutput = "{out_dir / n}"\n' for n, u in file_urls))
        aria_list = lists / "modules.aria2.txt"
        aria_list.write_text("".join(f"{u}\n  dir={out_dir}\n  out={n}\n" for n, u in file_urls))
        tools = [
            self.haul_tool("haul", "load", ["--app", "--manifest", "--key", "--cache", "--json"],
                           ["load", "--app", "bench", "--manifest", manifest_url, "--key", key,
                            "--cache", str(cache), "--json"]),
            self.peer("curl", ["curl", "--parallel", "--parallel-max", "16", "-s",
                               "-K", str(curl_cfg)]),
            # haul's modules and index are on disk when it returns; curl's files are in the
            # page cache. For reference, as in many-2000x16k: curl and one `sync -f` at the end.
            self.peer("curl+sync", ["sh", "-c", 'curl --parallel --parallel-max 16 -s -K "$1" '
                                    '&& sync -f "$2"', "sh", str(curl_cfg), str(out_dir)]),
            self.peer("aria2c", ["aria2c", "-j16", "-i", str(aria_list), "-q"]),
        ]
        if reason:
            for tool in tools:
                tool.not_run = tool.not_run or reason

        def verify_haul(stdout: str) -> str | None:
            try:
                report = json.loads(stdout)
                loaded = {m["sha256"] for m in report["modules"]}
            except (ValueError, KeyError, TypeError) as e:
                return f"--json output not understood: {e}"
            want = {m["sha256"] for m in modules}
            if loaded != want:
                return f"--json lists {len(loaded)} modules, {len(loaded ^ want)} differ"
            # The cache holds each module under its sha256, and the manifest itself too.
            files = cache / "files"
            stored = {p.name for p in files.iterdir()} if files.is_dir() else set()
            missing = want - stored
            if missing:
                return f"{len(missing)} modules missing from the cache"
            for digest in sorted(stored):
                if digest not in want and digest != src["manifest_sha256"]:
                    return f"cache file {digest[:16]}… is neither a module nor the manifest"
                if sha256_file(files / digest) != digest:
                    return f"cache file {digest[:16]}… does not match its name"
            return None

        def verify_files() -> str | None:
            names = sorted(p.name for p in out_dir.iterdir())
            if len(names) != len(file_urls):
                return f"{len(names)} files, want {len(file_urls)}"
            if sha256_file(out_dir / "manifest.json") != src["manifest_sha256"]:
                return "manifest.json differs from the source"
            for m in modules:
                path = out_dir / m["url"]
                if not path.is_file() or sha256_file(path) != m["sha256"]:
                    return f"{m['url']} missing or its sha256 differs"
            return None

        def execute(tool: Tool, log_name: str) -> RunResult:
            reset_dir(out_dir)  # haul creates the (fresh) cache inside it
            result, stdout = self.runner.timed(tool.argv, log_name)
            if result.ok:
                problem = verify_haul(stdout) if tool.is_haul else verify_files()
                if problem:
                    result.ok, result.error = False, f"verification: {problem}"
            return result

        self.alternate(sid, tools, self.short_runs, execute)
        remove_path(out_dir)
        return ScenarioResult(
            sid, title,
            f"{count} modules of {human_bytes(fsize)} and their Ed25519-signed manifest, made "
            "once by cli/examples/make_manifest.rs (module i depends on module (i−1)/2), served "
            "by nginx at full speed. haul load starts with an empty --cache each run (a cold "
            "load): it fetches and verifies the manifest's signature, fetches the modules 16 at "
            "a time (its default --concurrency), checks each one's sha256 and stores it in the "
            "cache (files/SHA256 plus index.sqlite), durably. curl (--parallel-max 16) and "
            "aria2c (-j16) fetch the same files (manifest and modules) without any checks; "
            "curl+sync is curl followed by one `sync -f` of the output's file system. "
            "Verification: "
            "haul's --json report must list every module, and its cache must hold every "
            "module (and nothing but the modules and the manifest), each under its sha256; "
            "the peers' files are compared with the manifest's sha256 of each module. The "
            "bar: haul/curl at most 1.00×.",
            tools, self.short_runs)

    def run(self, ids: list[str]) -> list[ScenarioResult]:
        table = {
            "single-1g": self.single,
            "segmented-128m": self.segmented,
            "many-2000x16k": self.many,
            "resume-256m": self.resume,
            "extract-10k": self.extract,
            "sha256-1g": self.hashing,
            "runtimes-1g": self.runtimes,
            "limit-rate-8x24m": self.limit_rate,
            "modules-500x32k": self.modules,
        }
        results = []
        for sid in ids:
            started = time.monotonic()
            log(f"--- {sid}")
            results.append(table[sid]())
            log(f"--- {sid} took {time.monotonic() - started:.1f} s")
        return results


# --- statistics and report ----------------------------------------------------------------


def summarize(tool: Tool, extra_keys: list[str]) -> dict:
    ok_runs = [r for r in tool.runs if r.ok]
    summary: dict = {
        "tool": tool.name,
        "command": tool.command,
        "is_haul": tool.is_haul,
        "status": "not run" if tool.not_run else ("failed" if tool.failed else "ok"),
        "reason": tool.not_run or tool.failed,
        "runs": [r.to_json() for r in tool.runs],
    }
    if summary["status"] == "ok" and ok_runs:
        walls = [r.wall_s for r in ok_runs]
        summary["median_wall_s"] = statistics.median(walls)
        summary["min_wall_s"] = min(walls)
        summary["max_wall_s"] = max(walls)
        rss = [r.rss_kib for r in ok_runs if r.rss_kib is not None]
        summary["median_rss_mib"] = statistics.median(rss) / 1024 if rss else None
        for key in extra_keys:
            values = [r.extra[key] for r in ok_runs if key in r.extra]
            summary["median_" + key] = statistics.median(values) if values else None
    return summary


def paired_ratio(num_runs: list[dict], den_runs: list[dict], seed: str) -> dict | None:
    """The median of per-round ratios num/den (round i of each tool ran back to back, so a
    slow phase of the machine weighs on both), with a 95% bootstrap interval of that median
    (2,000 resamples, seeded by `seed`: the same runs give the same interval)."""
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(num_runs, den_runs)
              if a.get("ok") and b.get("ok") and a["wall_s"] > 0 and b["wall_s"] > 0]
    if not ratios:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(2000))
    return {"median": statistics.median(ratios), "lo": medians[49], "hi": medians[1949],
            "rounds": len(ratios)}


def scenario_json(s: ScenarioResult) -> dict:
    extra_keys = [k for k, _ in s.extra_columns]
    if s.chart_key and s.chart_key not in extra_keys:
        extra_keys.append(s.chart_key)
    tools = [summarize(t, extra_keys) for t in s.tools]
    haul = next((t for t in tools if t["is_haul"]), None)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    for t in tools:
        if t["is_haul"] or haul is None or haul["status"] != "ok" or t["status"] != "ok":
            continue
        seed = f"{s.id}/{t['tool']}"
        if s.ratio_per_reference:
            t["ratio_wall"] = ratio(t["median_wall_s"], haul["median_wall_s"])
            t["ratio_rss"] = ratio(t.get("median_rss_mib"), haul.get("median_rss_mib"))
            t["paired_wall"] = paired_ratio(t["runs"], haul["runs"], seed)
        else:
            t["ratio_wall"] = ratio(haul["median_wall_s"], t["median_wall_s"])
            t["ratio_rss"] = ratio(haul.get("median_rss_mib"), t.get("median_rss_mib"))
            t["paired_wall"] = paired_ratio(haul["runs"], t["runs"], seed)
    if s.chart_key:
        # Every tool that ran, haul included, on the scenario's own scale.
        bars = [{"tool": t["tool"], "value": t.get("median_" + s.chart_key),
                 "status": t["status"]} for t in tools if t["status"] != "not run"]
    else:
        bars = [{"tool": t["tool"], "value": t.get("ratio_wall"), "status": t["status"]}
                for t in tools if not t["is_haul"]]
    return {
        "id": s.id,
        "title": s.title,
        "description": s.description,
        "runs_per_tool": s.runs_per_tool,
        "extra_columns": s.extra_columns,
        "ratio_header": s.ratio_header,
        "chart": {"caption": s.chart_caption, "per_tool": bool(s.chart_key), "bars": bars},
        "tools": tools,
    }


def mount_of(path: Path) -> str:
    """The mount point and file system type `path` is on (from /proc/mounts), e.g. "/ (ext4)"."""
    target = os.path.realpath(path)
    best = ("?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0] if best[0] != "?" else ""):
                best = (point, fields[2])
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


def machine_info(out: Path, repo: Path, nginx: str, dl: Path) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    disk = shutil.disk_usage(out)

    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            text = (p.stdout or p.stderr).decode(errors="replace").strip()
            return text.splitlines()[0] if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"

    def git(*argv: str) -> str:
        try:
            p = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, timeout=20)
            return p.stdout.decode().strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1024 * 1024), 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "disk_free_gib": round(disk.free / GIB, 1),
        "downloads_dir": str(dl),
        "downloads_fs": mount_of(dl.parent if not dl.exists() else dl),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "curl": first_line(["curl", "--version"]),
            "wget2": first_line(["wget2", "--version"]),
            "aria2c": first_line(["aria2c", "--version"]),
            "nginx": first_line([nginx, "-v"]),
            "unzip": first_line(["unzip", "-v"]),
            "openssl": first_line(["openssl", "version"]),
            "sha256sum": first_line(["sha256sum", "--version"]),
            "python": sys.version.split()[0],
        },
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def fmt_paired(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['median']:.2f}× [{p['lo']:.2f}–{p['hi']:.2f}]"


def fmt_num(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if abs(x) < 10:
            return f"{x:.3g}"
        return f"{x:.1f}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def write_markdown(path: Path, results: dict, chart_rel: str) -> None:
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        "# haul benchmarks",
        "",
        "<!-- Generated by bench/run; do not edit by hand. -->",
        "",
        f"haul against its peers, measured in the same run on the same machine. "
        f"Generated {meta['date']} by:",
        "",
        "```",
        meta["command"],
        "```",
        "",
    ]
    if meta["quick"]:
        lines += [
            f"> **Quick mode** (`--quick`): reduced sizes ({meta['sizes_text']}), "
            f"{meta['runs']} timed runs per tool (resume: {min(meta['runs'], RESUME_MAX_RUNS)}). "
            "Scenario ids keep their full-size names. Run `bench/run` without `--quick` "
            "for the real numbers.",
            "",
        ]
    if meta["only"]:
        lines += [f"> Only these scenarios were run: {', '.join(meta['only'])}.", ""]
    lines += [
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS / kernel | {m['os']} / {m['kernel']} |",
        f"| disk free (bench/out) | {m['disk_free_gib']} GiB |",
        f"| downloads written to | `{m.get('downloads_dir', '?')}` on {m.get('downloads_fs', '?')} |",
        f"| load average at start / end | {' '.join(map(str, m['loadavg_at_start']))} / "
        f"{' '.join(map(str, meta['loadavg_at_end']))} |",
        f"| git commit | `{m['git_commit']}`{' (with uncommitted changes)' if m['git_dirty'] else ''} |",
        f"| haul | `{meta['haul_binary']}` {meta['haul_version']} |",
    ]
    for name, version in m["versions"].items():
        lines.append(f"| {name} | {version} |")
    lines += [
        "",
        "## Method",
        "",
        "- A private nginx (`worker_processes 1`, `sendfile on`) on 127.0.0.1 serves files "
        "from bench/out/www; downloads go to bench/out/dl on the same disk and are removed "
        "(then `sync`) before every run. A directory of more than 64 files is renamed aside "
        "instead and deleted when the bench ends: on this kind of file system (ext4 without "
        "a journal) a mass deletion slows every file creation for a minute or more after it, "
        f"whatever the tool; a run starts only {SETTLE_S} s or more after the last one's "
        "deletion. The page cache is not dropped.",
        f"- Per scenario: one untimed warm-up run of each tool, then {meta['runs']} timed "
        "runs per tool, alternating tools in rounds of a balanced order (a Williams design: "
        "each tool runs right after each other one equally often, since a run can slow the "
        "next tool's). Every run is limited by "
        f"`timeout {meta['timeout_s']}`. The two small-file scenarios (many-2000x16k, "
        f"modules-500x32k; runs of a fraction of a second) run {SHORT_RUNS_FACTOR}× as many "
        "rounds.",
        "- Wall time: measured around the command (Python `perf_counter`); peak RSS: "
        "`/usr/bin/time -f '%e %M'` (max resident set, MiB).",
        "- Every run's output is verified (sha256 of the file, or every extracted/downloaded "
        "file compared with the source, or the digest in the tool's output). A tool with "
        "a failed run is reported as failed, without times.",
        "- **haul/peer** = haul's median / the peer's median: below 1.00× haul is faster "
        "(or smaller), above 1.00× it is slower (or larger). In `runtimes-1g` the peers are "
        "haul's other runtimes and the ratio is **runtime/blocking** = that runtime's "
        "median / haul-blocking's.",
        "- **paired (95% CI)**: round by round, haul's run divided by the peer's run of the "
        "same round (they ran back to back, so a slow phase of the machine weighs on both); "
        "the median of those ratios and, in brackets, a 95% bootstrap interval of it (2,000 "
        "resamples). A bar of \"at least as fast\" is met beyond doubt when the interval ends "
        "at or below 1.00×, missed beyond doubt when it starts above; with few runs the "
        "interval is wide.",
        "",
        "## Summary",
        "",
        f"![haul/peer median wall-time ratio per scenario]({chart_rel})",
        "",
        "Bars: haul's median wall time divided by each peer's (lower is better for haul; "
        "the line marks 1.0); under each scenario, what its bars show: in `runtimes-1g` "
        "each runtime's median over haul-blocking's, in `limit-rate-8x24m` each tool's "
        "rate against the limit (expected time / wall time; 1.0 = exactly at the limit).",
        "",
    ]
    for s in results["scenarios"]:
        lines += [f"## `{s['id']}`: {s['title']}", "", s["description"], ""]
        extra = s["extra_columns"]
        rh = s.get("ratio_header", "haul/peer")
        header = ["tool", "median s", "min–max s", "median peak RSS MiB",
                  f"{rh} wall", "paired (95% CI)", f"{rh} RSS"] + [label for _, label in extra]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
        notes = []
        for t in s["tools"]:
            name = f"**{t['tool']}**" if t["is_haul"] else t["tool"]
            if t["status"] != "ok":
                mark = f"[{len(notes) + 1}]"
                notes.append(f"{mark} {t['tool']}: {t['status']}: {t['reason']}")
                row = [name, f"{t['status']} {mark}", "–", "–", "–", "–", "–"] + ["–"] * len(extra)
            else:
                row = [
                    name,
                    fmt_s(t["median_wall_s"]),
                    f"{fmt_s(t['min_wall_s'])}–{fmt_s(t['max_wall_s'])}",
                    fmt_num(t["median_rss_mib"]),
                    "1.00× (ref)" if t["is_haul"] else fmt_ratio(t.get("ratio_wall")),
                    "–" if t["is_haul"] else fmt_paired(t.get("paired_wall")),
                    "1.00× (ref)" if t["is_haul"] else fmt_ratio(t.get("ratio_rss")),
                ] + [fmt_num(t.get("median_" + key)) for key, _ in extra]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Commands:", "", "```"]
        lines += [t["command"] for t in s["tools"]]
        lines += ["```", ""]
        if notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    lines += [
        "## Files",
        "",
        "- Raw numbers, every run: `bench/out/results.json` (not committed).",
        "- Each run's stdout, stderr and `/usr/bin/time` output: `bench/out/logs/`.",
        "",
    ]
    path.write_text("\n".join(lines))


PALETTE = {
    "haul": "#edc948",
    "curl": "#4e79a7",
    "wget2": "#f28e2b",
    "aria2c": "#59a14f",
    "unzip": "#b07aa1",
    "openssl": "#e15759",
    "sha256sum": "#76b7b2",
    "haul-tokio": "#9c755f",
    "haul-smol": "#ff9da7",
}


def write_chart(path: Path, results: dict) -> None:
    """A hand-written SVG bar chart, one group of bars per scenario: haul/peer median
    wall-time ratio, or the scenario's own ratio (runtime/blocking, rate ÷ limit), whose
    caption is written under the scenario id."""
    scenarios = results["scenarios"]
    n = max(1, len(scenarios))
    left, right, top, bottom = 60, 90, 50, 135
    width = max(900, left + right + 115 * n)
    height = 445
    plot_w = width - left - right
    plot_h = height - top - bottom
    ratios = [b["value"] for s in scenarios for b in s["chart"]["bars"]
              if b["value"] is not None]
    clip = 4.0
    y_max = max([2.0] + [min(r, clip) * 1.1 for r in ratios])

    def y_of(v: float) -> float:
        return top + plot_h - min(v, y_max) / y_max * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
        "haul / peer median wall time (lower is better for haul)</text>",
        f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">'
        f"{html.escape(results['meta']['date'])}"
        f"{' · quick mode' if results['meta']['quick'] else ''}</text>",
    ]
    # Grid and y axis.
    step = 0.5 if y_max <= 3 else 1.0
    v = 0.0
    while v <= y_max + 1e-9:
        y = y_of(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                   'stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}×</text>')
        v += step
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
               f'y2="{top + plot_h}" stroke="#333"/>')
    # Bars.
    slot = plot_w / n
    shown_tools: list[str] = []
    for i, s in enumerate(scenarios):
        x0 = left + i * slot
        chart = s["chart"]
        bars = chart["bars"]
        haul = next((t for t in s["tools"] if t["is_haul"]), None)
        label_y = top + plot_h + 62
        out.append(f'<text x="{x0 + slot / 2:.1f}" y="{label_y}" text-anchor="middle" '
                   f'font-weight="bold" font-size="11">{html.escape(s["id"])}</text>')
        out.append(f'<text x="{x0 + slot / 2:.1f}" y="{label_y + 14}" text-anchor="middle" '
                   f'font-size="10" fill="#555">{html.escape(chart["caption"])}</text>')
        if not chart["per_tool"] and (haul is None or haul["status"] != "ok"):
            who = haul["tool"] if haul else "haul"
            status = f"{who} not run" if haul is None or haul["status"] == "not run" \
                else f"{who} failed"
            out.append(f'<text x="{x0 + slot / 2:.1f}" y="{top + plot_h * 0.3:.1f}" '
                       f'text-anchor="middle" fill="#999" font-size="11">'
                       f'{html.escape(status)}</text>')
            continue
        bar_w = min(34.0, (slot - 16) / max(1, len(bars)))
        start = x0 + (slot - bar_w * len(bars)) / 2
        for j, bar in enumerate(bars):
            bx = start + j * bar_w
            name = bar["tool"]
            color = PALETTE.get(name, "#999")
            r = bar["value"]
            if r is None:
                out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{top + plot_h - 4:.1f}" '
                           f'text-anchor="middle" font-size="10" fill="#999">'
                           f'{html.escape(bar["status"])}</text>')
            else:
                if name not in shown_tools:
                    shown_tools.append(name)
                y = y_of(min(r, clip))
                out.append(f'<rect x="{bx + 2:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" '
                           f'height="{top + plot_h - y:.1f}" fill="{color}">'
                           f'<title>{html.escape(name)}: {r:.2f}×</title></rect>')
                shown = f"{r:.2f}" + ("+" if r > clip else "")
                out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{y - 3:.1f}" '
                           f'text-anchor="middle" font-size="10">{shown}</text>')
            tx, ty = bx + bar_w / 2 + 3, top + plot_h + 12
            out.append(f'<text x="{tx:.1f}" y="{ty}" text-anchor="end" font-size="10" '
                       f'fill="#555" transform="rotate(-40 {tx:.1f} {ty})">'
                       f'{html.escape(name)}</text>')
    # Parity line.
    y1 = y_of(1.0)
    out.append(f'<line x1="{left}" y1="{y1:.1f}" x2="{left + plot_w}" y2="{y1:.1f}" '
               'stroke="#c00" stroke-width="1.5" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{left + plot_w + 6}" y="{y1 + 4:.1f}" text-anchor="start" '
               'fill="#c00">1.0 = parity</text>')
    # Legend: the tools with a bar, in palette order.
    lx = left
    ly = height - 28
    for name, color in PALETTE.items():
        if name not in shown_tools:
            continue
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{html.escape(name)}</text>')
        lx += 28 + 7 * len(name)
    out.append(f'<text x="{left}" y="{height - 8}" fill="#555" font-size="10">'
               f"Bars above {clip:.0f}× are clipped. Scenarios without bars: haul not run "
               "or failed (see BENCHMARKS.md). Under each id: what its bars show.</text>")
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main() -> int:
    global RETIRED
    ap = argparse.ArgumentParser(description="haul benchmark driver; use bench/run")
    ap.add_argument("--repo-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--access-log", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--resume-signal", default="TERM", choices=["TERM", "INT", "KILL"])
    ap.add_argument("--resume-rate", default="64m")
    ap.add_argument("--segment-rate", default="8m")
    ap.add_argument("--haul", required=True)
    ap.add_argument("--haul-unavailable", default="")
    ap.add_argument("--examples-dir", default="",
                    help="where haul's example programs are (default: REPO/target/release/examples)")
    ap.add_argument("--compare-runtimes-unavailable", default="")
    ap.add_argument("--make-manifest-unavailable", default="")
    ap.add_argument("--command", default="bench/run")
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--dl-dir", default="")
    args = ap.parse_args()
    if not args.examples_dir:
        args.examples_dir = str(Path(args.repo_dir) / "target" / "release" / "examples")

    ids = [i for i in args.only.split(",") if i] if args.only else list(SCENARIO_IDS)
    unknown = [i for i in ids if i not in SCENARIO_IDS]
    if unknown:
        log(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIO_IDS)}")
        return 2
    ids = [i for i in SCENARIO_IDS if i in ids]

    out = Path(args.out_dir)
    repo = Path(args.repo_dir)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    need = (sizes.single_bytes * 3 + sizes.segmented_bytes * 2 + sizes.resume_bytes * 2
            + sizes.extract_total_bytes * 3 + sizes.limit_count * sizes.limit_file_bytes * 2
            + sizes.modules_count * sizes.modules_file_bytes * 3 + 512 * MIB)
    free = shutil.disk_usage(out).free
    if free < need:
        log(f"not enough disk space under {out}: {human_bytes(free)} free, "
            f"about {human_bytes(need)} needed")
        return 1

    started = time.monotonic()
    machine = machine_info(out, repo, args.nginx,
                           Path(args.dl_dir) if args.dl_dir else out / "dl")
    bench = Bench(args)
    haul_version = ""
    if not args.haul_unavailable and Path(args.haul).is_file():
        try:
            p = subprocess.run([args.haul, "--version"], capture_output=True, timeout=10,
                               stdin=subprocess.DEVNULL)
            haul_version = p.stdout.decode(errors="replace").strip().splitlines()[0] \
                if p.returncode == 0 and p.stdout.strip() else ""
        except (OSError, subprocess.TimeoutExpired, IndexError):
            haul_version = ""
    # Beside the downloads (a rename does not cross file systems).
    RETIRED = bench.dl / ".retired"
    deleted_at = out / DELETED_AT_FILE
    if RETIRED.exists():
        delete_retired(RETIRED, deleted_at)  # left by an interrupted run
    settle(deleted_at)
    scenarios = bench.run(ids)
    retired, RETIRED = RETIRED, None
    delete_retired(retired, deleted_at)
    remove_path(bench.dl)

    sizes_text = (f"single {human_bytes(sizes.single_bytes)}, segmented "
                  f"{human_bytes(sizes.segmented_bytes)}, {sizes.many_count} × "
                  f"{human_bytes(sizes.many_file_bytes)} files, resume "
                  f"{human_bytes(sizes.resume_bytes)}, archive of {sizes.extract_files} files "
                  f"(~{human_bytes(sizes.extract_total_bytes)}), hash "
                  f"{human_bytes(sizes.single_bytes)}, runtimes "
                  f"{human_bytes(sizes.single_bytes)}, limit-rate {sizes.limit_count} × "
                  f"{human_bytes(sizes.limit_file_bytes)}, {sizes.modules_count} modules of "
                  f"{human_bytes(sizes.modules_file_bytes)}")
    results = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": args.command,
            "quick": args.quick,
            "only": ids if args.only else [],
            "runs": args.runs,
            "timeout_s": args.timeout,
            "sizes": dataclasses.asdict(sizes),
            "sizes_text": sizes_text,
            "resume_signal": args.resume_signal,
            "resume_rate": args.resume_rate,
            "segment_rate": args.segment_rate,
            "haul_binary": os.path.relpath(args.haul, repo) if args.haul.startswith(str(repo)) else args.haul,
            "haul_version": haul_version or "(no --version output)",
            "machine": machine,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "duration_s": round(time.monotonic() - started, 1),
        },
        "scenarios": [scenario_json(s) for s in scenarios],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    chart = repo / "bench" / "chart.svg"
    write_chart(chart, results)
    write_markdown(repo / "BENCHMARKS.md", results, "bench/chart.svg")
    log(f"done in {results['meta']['duration_s']} s: bench/out/results.json, bench/chart.svg, "
        "BENCHMARKS.md")
    for s in results["scenarios"]:
        for t in s["tools"]:
            if t["status"] == "ok":
                ratio = t.get("ratio_wall")
                extra = f"  {s['ratio_header']} {ratio:.2f}x" if ratio else ""
                if t.get("paired_wall"):
                    extra += f" (paired {fmt_paired(t['paired_wall'])})"
                if t.get("median_deviation_pct") is not None:
                    extra += (f"  {t['median_rate_mib_s']:.2f} MiB/s, deviation "
                              f"{t['median_deviation_pct']:+.1f}%")
                log(f"  {s['id']:16} {t['tool']:10} {fmt_s(t['median_wall_s']):>8} s{extra}")
            else:
                log(f"  {s['id']:16} {t['tool']:10} {t['status']}: {t['reason']}")
    return 0


class Terminated(Exception):
    """SIGTERM or SIGINT arrived; unwinding kills the tool that is running."""


def _on_signal(signum, _frame) -> None:
    # One is enough: bench/run's trap may send SIGTERM right after a Ctrl-C.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated(signal.Signals(signum).name)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        sys.exit(main())
    except Terminated as e:
        log(f"stopped by {e}")
        sys.exit(143)
