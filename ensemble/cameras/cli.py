"""``blur-detect cameras``: check IP cameras and streams for focus loss, once or in a watch loop.

    blur-detect cameras CONFIG [--once | --watch SECONDS [--rounds N]] [--report FILE] [--events FILE]
                               [--snapshots DIR] [--format table|json|csv|nagios] [--state FILE]
                               [--baseline K] [--drop PCT] [--confirm N] [--timeout S]
                               [--threshold P] [--scale screen|native|auto] [--reset-baseline NAME]
                               [--model DIR] [--workers N]

Output: the report of each round goes to stdout, or replaces ``--report FILE`` whole (atomically). An event line
goes to stderr when a camera changes state, and only then (also appended to ``--events FILE`` as JSON), so a cron
job whose report goes to a file prints, and mails, only on a change. Errors are one ``error:`` line on stderr.
``--watch`` reads CONFIG again before a round when the file has changed; a config that is unusable then is one
``warning:`` line, and the cameras loaded before are still checked.

Exit status (``--once``, or the last round of ``--watch --rounds N``), the same as a Nagios plugin's: 0 every
camera CLEAR; 1 some DEGRADED, BLURRY or INVALID (WARNING); 2 some UNREACHABLE (CRITICAL; wins over 1); 3 the
config, the command line, the state file or the model is unusable (UNKNOWN). ``--watch`` stopped by Ctrl-C exits
130, by SIGTERM (``systemctl stop``) 0.

This module is the only one of ``ensemble.cameras`` that prints or writes files. It imports nothing heavy at
module level, so that ``blur-detect --help`` stays instant.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from typing import Optional

from ..cli_common import DEFAULT_SCALE, add_scale_argument, make_output_dir, native_problem

EXIT_CLEAR, EXIT_WARNING, EXIT_UNREACHABLE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

WATCH_LIMITS = (1.0, 86400.0)
"""Seconds between the starts of two rounds with --watch: at least 1 s, at most a day."""


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bounded(kind, low, high, what):
    def parse(text: str):
        raw = text.strip().rstrip("%") if what == "percentage" else text.strip()
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range ({low:g} to {high:g})")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli_common import probability_arg

    p.description = ("Check IP cameras and video streams for focus loss. Each check grabs a frame within a timeout, "
                     "scores it with the ensemble, and compares it with the camera's own baseline.")
    p.epilog = ("States: CLEAR; BLURRY (blur probability >= threshold); DEGRADED (focus score more than --drop "
                "below the camera's baseline); INVALID (black, uniform or frozen frame); UNREACHABLE (timeout, "
                "refused, HTTP error, bad credentials, no frame). Exit status with --once: 0 all clear, 1 some "
                "degraded, blurry or invalid, 2 some unreachable, 3 config or usage error (as Nagios: OK, WARNING, "
                "CRITICAL, UNKNOWN).")
    p.add_argument("config", metavar="CONFIG",
                   help="YAML (.yaml/.yml) or CSV (.csv) list of cameras: name, url and optional credentials "
                        "(names of environment variables), threshold, drop, confirm, frames, frame_interval, "
                        "timeout, scale")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="check every camera once and exit (the default)")
    mode.add_argument("--watch", type=_bounded(float, *WATCH_LIMITS, "number"), metavar="SECONDS",
                      help=f"check every SECONDS ({WATCH_LIMITS[0]:g} to {WATCH_LIMITS[1]:g}) until stopped; a round "
                           "that overruns is followed by the next one at once, never by a backlog. An edited CONFIG "
                           "is read again before the next round (an unusable one is a warning and changes nothing)")
    p.add_argument("--rounds", type=_bounded(int, 1, 10**9, "number"), metavar="N",
                   help="with --watch: stop after N rounds and exit with the last round's status (default: never)")
    p.add_argument("-f", "--format", choices=("table", "json", "csv", "nagios"), default="table",
                   help="report format: table (aligned, with a summary line), json (object with counts and one "
                        "record per camera), csv (one row per camera), nagios (one status line with performance "
                        "data) (default: table)")
    p.add_argument("-o", "--report", metavar="FILE",
                   help="write each round's report to FILE, replacing it atomically (default: stdout)")
    p.add_argument("--events", metavar="FILE",
                   help="also append each state change to FILE as one JSON line (event lines always go to stderr)")
    p.add_argument("--snapshots", metavar="DIR",
                   help="keep the last frame of each camera as DIR/<camera>.jpg, with DIR/<camera>.blurmap.png "
                        "beside it")
    p.add_argument("--state", metavar="FILE",
                   help="state file: baselines, last frames' hashes, last states (default: CONFIG's name with "
                        ".state.json, in CONFIG's folder)")
    p.add_argument("--baseline", type=_bounded(int, 1, 1000, "number"), default=10, metavar="K",
                   help="the baseline is the median focus score of the last K healthy checks; it is in use once "
                        "3 are known (default: 10)")
    p.add_argument("--drop", type=_bounded(float, 1, 99, "percentage"), default=50.0, metavar="PCT",
                   help="DEGRADED when the focus score is more than PCT%% below the baseline; a camera's 'drop' "
                        "overrides it (default: 50)")
    p.add_argument("--confirm", type=_bounded(int, 1, 100, "number"), default=1, metavar="N",
                   help="report a camera's new state only once N checks in a row have found it, so that a camera "
                        "flapping between two states does not alert every time; a camera's 'confirm' overrides "
                        "it (default: 1, at once)")
    p.add_argument("--timeout", type=_bounded(float, 0.5, 600, "number"), default=10.0, metavar="S",
                   help="seconds to grab one camera's frames; a camera's 'timeout' overrides it (default: 10)")
    p.add_argument("-t", "--threshold", type=probability_arg, metavar="P",
                   help="blur probability (0-1 or a percentage) from which a camera is BLURRY; a camera's "
                        "'threshold' overrides it (default: the model's, usually 0.5)")
    add_scale_argument(p, what="each camera's frame", note="; a camera's 'scale' in the config overrides it")
    p.add_argument("--reset-baseline", action="append", default=[], metavar="NAME",
                   help="forget the baseline of camera NAME (or 'all') before checking, after a camera was "
                        "refocused or moved on purpose; may be repeated")
    p.add_argument("--model", metavar="DIR", help="folder holding model/ and final_model/ (default: the shipped model)")
    p.add_argument("-j", "--workers", type=_bounded(int, 1, 256, "number"), metavar="N",
                   help="frames scored at the same time (default: the number of cores); grabs all run at once")

    def error(message: str):
        # A usage mistake means "could not check": UNKNOWN (3) to a monitoring system, not UNREACHABLE (2).
        p.print_usage(sys.stderr)
        p.exit(EXIT_CONFIG, f"{p.prog}: error: {message}\n")

    p.error = error


class _Terminated(BaseException):
    """SIGTERM arrived (``systemctl stop``, ``kill``): stop like Ctrl-C, but as a requested, clean stop."""


def run(args: argparse.Namespace) -> int:
    from ..scan import one_line
    from .config import ConfigError, load_config, scrub
    from .state import StateFile, StateLocked, default_state_path

    parser: argparse.ArgumentParser = args._parser
    if args.rounds and args.watch is None:
        parser.error("--rounds needs --watch")
    for option, path in (("--report", args.report), ("--events", args.events), ("--state", args.state)):
        if path:
            if os.path.isdir(path):
                parser.error(f"{option}: {path} is a folder")
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                parser.error(f"{option}: folder {os.path.dirname(path) or '.'} does not exist")
    if args.snapshots and os.path.exists(args.snapshots) and not os.path.isdir(args.snapshots):
        parser.error(f"--snapshots: {args.snapshots} exists and is not a folder")

    from .grab import quiet_native_logs

    quiet_native_logs()  # before anything opens a video: FFmpeg's messages may quote a URL with its password
    stamp = _stamp(args.config)  # before reading it: an edit made meanwhile is picked up by --watch
    try:
        cameras = load_config(args.config)
    except ConfigError as err:
        _err(f"error: {err}")
        return EXIT_CONFIG
    secrets = sorted({s for c in cameras for s in c.secrets()}, key=len, reverse=True)

    def say(message: str) -> None:  # every stderr line from here on; reports are scrubbed the same way
        _err(scrub(message, secrets))

    names = {c.name for c in cameras}
    resets = list(dict.fromkeys(args.reset_baseline))
    if "all" in resets and "all" not in names:
        resets = sorted(names)
    unknown = [n for n in resets if n not in names]
    if unknown:
        say(f"error: --reset-baseline: no camera named {unknown[0]!r} in {args.config}")
        return EXIT_CONFIG

    store = StateFile(args.state or default_state_path(args.config))
    try:
        store.lock()
    except StateLocked as err:
        say(f"error: {err}")
        return EXIT_CONFIG
    except OSError as err:
        say(f"error: --state: cannot write beside {store.path}: {err.strerror or err}")
        return EXIT_CONFIG
    try:
        states, warning = store.load()
        if warning:
            say(f"warning: {warning}")
        if args.snapshots:
            problem = make_output_dir(args.snapshots)
            if problem:
                say(problem)
                return EXIT_CONFIG

        from ..detector import BlurDetector

        try:
            # Checks run side by side in threads, so each ONNX call keeps to one core.
            detector = BlurDetector.load(args.model, threads=1, threshold=args.threshold).check()
        except Exception as err:  # noqa: BLE001 - a missing or corrupt model is one line, never a traceback
            say(f"error: cannot load the model ({args.model or 'the shipped model'}): {one_line(err)}")
            return EXIT_CONFIG

        from .monitor import Monitor, Settings

        settings = Settings(baseline_size=args.baseline, drop=args.drop / 100.0, timeout=args.timeout,
                            threshold=detector.threshold, confirm=args.confirm, workers=args.workers or 0,
                            scale=args.scale or DEFAULT_SCALE)
        problem = scale_problem(cameras, settings, detector)
        if problem:
            say(f"error: {problem}")
            return EXIT_CONFIG
        monitor = Monitor(cameras, detector, states, settings)
        monitor.reset_baseline(resets)
        session = _Session(args, monitor, store, say, secrets, stamp)
        if args.watch is None:
            return session.once()
        return session.watch(args.watch, args.rounds)
    finally:
        store.unlock()


def scale_problem(cameras, settings, detector) -> Optional[str]:
    """Why the cameras cannot be judged at the scales they ask for (one line: the first camera at native scale,
    when the model has no native-scale meta-network), or None."""
    for camera in cameras:
        if (camera.scale or settings.scale) == "native":
            where = f"camera {camera.name!r}: scale native" if camera.scale else "--scale native"
            return native_problem(detector, where)
    return None


def _stamp(path: str) -> Optional[tuple[int, int, int]]:
    """What tells an edited file apart (modification time, size, inode: an editor may replace the file), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class _Session:
    """Runs rounds and does all their output: report, event lines, events file, snapshots, state file.

    ``secrets`` is the list that ``say`` scrubs from every line; a reloaded config adds its own to it in place.
    """

    def __init__(self, args, monitor, store, say, secrets, config_stamp):
        from .snapshots import snapshot_stems

        self.args, self.monitor, self.store, self.say, self.secrets = args, monitor, store, say, secrets
        self.config_stamp = config_stamp
        self.stems = snapshot_stems(c.name for c in monitor.cameras)
        self._snapshot_errors: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- one round ----------------------------------------------------------------------------------------------
    def round(self, cancel: threading.Event) -> int:
        from .config import scrub
        from .monitor import exit_status
        from .report import event_json, event_line, render

        self._snapshot_errors.clear()
        done = self.monitor.run_round(cancel, on_check=self._snapshot if self.args.snapshots else None)
        for name, reason in self._snapshot_errors.items():
            self.say(f"error: {name}: cannot save the snapshot: {reason}")
        stream = self.args.watch is not None and not self.args.report  # many reports, one after another, on stdout
        self._write_report(scrub(render(done, self.args.format, stream), self.secrets))
        # Events before the state is saved: a crash in between repeats an alert rather than losing it.
        for event in done.events:
            self.say(event_line(event))
        if done.events and self.args.events:
            self._append_events([scrub(event_json(e), self.secrets) for e in done.events])
        try:
            self.store.save(self.monitor.states)
        except OSError as err:
            self.say(f"error: cannot write the state file {self.store.path}: {err.strerror or err}")
        return exit_status(done.checks)

    def _snapshot(self, check) -> None:  # runs in the checking threads: pictures are drawn in parallel
        from ..scan import one_line
        from .snapshots import save_snapshot

        if check.frame is None:
            return
        try:
            save_snapshot(check, self.args.snapshots, self.stems[check.camera.name],
                          self.monitor.detector.analysis_side)
        except Exception as err:  # noqa: BLE001 - reported by the main thread after the round
            with self._lock:
                self._snapshot_errors[check.camera.name] = one_line(err)

    def _write_report(self, text: str) -> None:
        from ..cli_common import write_output

        if self.args.report:
            try:
                write_output(self.args.report, text)
            except OSError as err:
                self.say(f"error: cannot write {self.args.report}: {err.strerror or err}")
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def _append_events(self, lines: list[str]) -> None:
        try:
            with open(self.args.events, "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())  # an alert that was printed is on disk too
        except OSError as err:
            self.say(f"error: cannot append to {self.args.events}: {err.strerror or err}")

    def reload_config(self) -> None:
        """Read CONFIG again if it changed since it was last read; keep the cameras in use if it is unusable."""
        from .config import ConfigError, load_config
        from .snapshots import snapshot_stems

        stamp = _stamp(self.args.config)
        if stamp == self.config_stamp:
            return
        self.config_stamp = stamp  # an unusable version is reported once, not every round
        try:
            cameras = load_config(self.args.config)
        except ConfigError as err:
            n = len(self.monitor.cameras)
            self.say(f"warning: {err}; still checking the {n} camera{'' if n == 1 else 's'} loaded before")
            return
        problem = scale_problem(cameras, self.monitor.settings, self.monitor.detector)
        if problem:
            n = len(self.monitor.cameras)
            self.say(f"warning: {self.args.config}: {problem}; still checking the {n} camera{'' if n == 1 else 's'} "
                     "loaded before")
            return
        before = {c.name: c for c in self.monitor.cameras}
        after = {c.name: c for c in cameras}
        # Old secrets stay: a grab that outlived its round may still report with them.
        self.secrets[:] = sorted(set(self.secrets) | {s for c in cameras for s in c.secrets()}, key=len,
                                 reverse=True)
        self.monitor.set_cameras(cameras)
        self.stems = snapshot_stems(after)
        parts = [f"{what}: {', '.join(names)}" for what, names in (
            ("added", [n for n in after if n not in before]),
            ("removed", [n for n in before if n not in after]),
            ("changed", [n for n in after if n in before and after[n] != before[n]])) if names]
        self.say(f"config reloaded: {len(cameras)} camera{'' if len(cameras) == 1 else 's'}"
                 + (f" ({'; '.join(parts)})" if parts else ""))

    # -- modes --------------------------------------------------------------------------------------------------
    def once(self) -> int:
        from .grab import Cancelled

        try:
            return self.round(threading.Event())
        except (KeyboardInterrupt, Cancelled):
            self.say("interrupted: nothing was saved")
            return EXIT_INTERRUPTED

    def watch(self, interval: float, rounds: Optional[int]) -> int:
        from ..scan import one_line
        from .grab import Cancelled

        previous = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum, frame):
                raise _Terminated()

            previous = signal.signal(signal.SIGTERM, on_term)
        status, done = EXIT_CLEAR, 0
        next_start = time.monotonic()
        try:
            while True:
                try:
                    if done:
                        self.reload_config()
                    status = self.round(threading.Event())
                except (KeyboardInterrupt, _Terminated, Cancelled):
                    raise
                except Exception as err:  # noqa: BLE001 - --watch survives anything one round does
                    self.say(f"error: round failed: {type(err).__name__}: {one_line(err)}")
                    status = EXIT_CONFIG
                done += 1
                if rounds and done >= rounds:
                    return status
                next_start += interval
                now = time.monotonic()
                if next_start < now:
                    next_start = now  # the round overran: go on at once, and do not try to catch up
                time.sleep(next_start - now)
        except (KeyboardInterrupt, Cancelled):
            self.say(f"interrupted after {done} round{'' if done == 1 else 's'}")
            return EXIT_INTERRUPTED
        except _Terminated:
            self.say(f"stopped after {done} round{'' if done == 1 else 's'}")
            return EXIT_CLEAR
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
