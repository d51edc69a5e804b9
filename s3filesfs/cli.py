"""The ``s3filesfs`` command: a thin click layer over FileService.

The only module that imports click. Each command parses arguments, calls the service and prints:
human tables by default, OpenAI JSON with ``--json``. Errors are turned into exit codes in exactly
one place (``Cli.invoke``): 0 ok, 1 the user can fix it, 2 usage, 3 storage failure, 4 a bug,
130 interrupted, 141 a command that changes the store finished but its output was cut short,
128+N an upload stopped by signal N (SIGTERM, SIGHUP) after aborting what it had sent.
"""

import codecs
import contextlib
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path

import click

from . import __version__, config, logs, stdio, user_units
from .access import Identity
from .daemon.client import DaemonClient, status_lines  # stdlib-only: no watchdog or uvicorn here
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_OUTPUT_LOST,
    InvalidRequest,
    NotStaged,
    S3FilesError,
    Stopped,
    UserError,
    internal_error,
)
from .files import ORPHAN_GRACE, open_service
from .fs import records as staged_records  # no mfusepy: the mount's staged uploads, for status and retry
from .model import LIST_LIMIT_MAX, PURPOSES, is_file_id
from .runtime_dir import ensure_private, is_private
from .stopping import stopped_by
from .upkeep import HEAD_WORKERS, UPLOAD_GRACE, Action
from .upkeep import rebuild as rebuild_from_bucket
from .upkeep import repair as repair_store

log = logging.getLogger(__name__)

PROGRESS_THRESHOLD = 8 * 1024 * 1024  # show a bar for uploads and downloads of this size or more
# Commands that change the store: when their reader goes away they still finish, and exit 141.
# (`rebuild --apply` and `check --repair` say so at run time, in ctx.meta["changes_store"].)
CHANGES_STORE = {"upload", "rm", "gc", "retry"}


class Cli(click.Group):
    def invoke(self, ctx: click.Context):
        stdio.install()  # a reader that goes away (`| head`) costs output, never work
        try:
            result = super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Aborted!", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (S3FilesError, Stopped) as exc:
            click.echo(f"error: {logs.redact(exc.message)}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:  # a bug: say so plainly, with the traceback when asked
            if ctx.find_root().params.get("debug"):
                click.echo(logs.redact(traceback.format_exc()), err=True, nl=False)
            click.echo(f"error: {logs.redact(internal_error(exc).message)} (run with --debug for details)",
                       err=True)
            ctx.exit(4)
        changed = ctx.invoked_subcommand in CHANGES_STORE or ctx.meta.get("changes_store")
        if changed and stdio.stdout_lost():
            # The work is done, but not every line reporting it reached the reader.
            ctx.exit(EXIT_OUTPUT_LOST)
        return result


class State:
    """What the group options decide; commands build the service only when they need it."""

    def __init__(self, config_path, flags, verbosity=logs.NORMAL):
        self.config_path = config_path
        self.flags = flags
        self.verbosity = verbosity
        self._settings = None
        self._service = None

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            settings = config.load(self.config_path, self.flags)
            # Wherever the secrets came from (file, environment, boto3's own variables), no log
            # line or message may show them.
            key_envs = [settings.api_api_key_env or "", *(key.env for key in settings.api_keys)]
            logs.protect(settings.aws_secret_access_key, settings.aws_session_token, settings.metadata_store_password,
                         os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN"),
                         os.environ.get("PGPASSWORD"), *(os.environ.get(name) for name in key_envs if name))
            log.debug("settings from %s: %s backend, database %s", settings.source, settings.backend,
                      settings.database)
            self._settings = settings
        return self._settings

    @property
    def service(self):
        """The FileService, its bucket not yet checked (for what needs only the database)."""
        if self._service is None:
            self._service = open_service(self.settings)
        return self._service

    @property
    def store(self):
        """The FileService with its bucket checked (once per process): a missing bucket or
        refused credentials fail every command that works on files, even one the database
        alone could answer. It sees every row: for the maintenance commands."""
        service = self.service
        _ = service.blobs
        return service

    def identity(self, show_all: bool = False) -> Identity:
        """Who a command acts as: the configured identity (``--principal``/``--attribute``), seeing
        every file with ``--all``."""
        identity = self.settings.identity
        return identity.with_full_view() if show_all else identity

    def caller(self, show_all: bool = False):
        """``store`` acting as ``identity(show_all)``: what ls, info, cat, rm and upload use."""
        return self.store.acting_as(self.identity(show_all))


pass_state = click.make_pass_decorator(State)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="s3filesfs")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="S3FILESFS_CONFIG",
              help="Config file (default ~/.config/s3filesfs/config.yaml); a Llama Stack run.yaml works too.")
@click.option("--bucket", "bucket_name", help="S3 bucket (overrides the config file).")
@click.option("--endpoint-url", help="S3 endpoint, for MinIO and other S3-compatible servers.")
@click.option("--region", help="AWS region of the bucket.")
@click.option("--prefix", help="Key prefix inside the bucket.")
@click.option("--db-path", type=click.Path(dir_okay=False), help="SQLite metadata database.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Local data folder (embedded store).")
@click.option("-q", "--quiet", is_flag=True, help="Log only errors (the daemon and the mount too).")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (INFO).")
@click.option("--debug", is_flag=True, help="Log debug output and show tracebacks (HTTP libraries stay at INFO).")
@click.option("--debug-http", is_flag=True, envvar="S3FILESFS_DEBUG_HTTP",
              help="Also log the HTTP libraries' debug output (botocore, urllib3, ...); credentials redacted.")
@click.option("--principal", "identity_principal", metavar="NAME",
              help="Act as this principal: files written are owned by it, and only files it may see are shown "
                   "(default: identity.principal; none: public files only).")
@click.option("--attribute", "identity_attributes", multiple=True, metavar="CATEGORY=VALUE",
              help="An attribute of the principal (roles, teams, projects, namespaces), e.g. teams=ml; repeatable.")
@click.pass_context
def main(ctx, config_path, quiet, verbose, debug, debug_http, **flags):
    """Put files into an OpenAI-style Files store on S3 (or the embedded local store)."""
    if quiet and (verbose or debug):
        raise click.UsageError("-q/--quiet cannot be combined with -v/--verbose or --debug")
    verbosity = logs.DEBUG if debug else logs.VERBOSE if verbose else logs.QUIET if quiet else logs.NORMAL
    logs.setup(verbosity, http_debug=debug_http)
    flags["identity_attributes"] = flags["identity_attributes"] or None  # not given: the config's
    ctx.obj = State(config_path, flags, verbosity)


# --- output helpers ------------------------------------------------------------------------


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def _when(timestamp) -> str:
    return "never" if timestamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _checked_id(value: str) -> str:
    """``value`` if it is shaped like a file id; else a clear error rather than "not found"."""
    if not is_file_id(value):
        raise InvalidRequest(f"'{value}' is not a file id (ids are 'file-' and 32 hex digits; "
                             "`s3filesfs ls` lists them)", "file_id")
    return value


def _looks_binary(data: bytes) -> bool:
    """NUL bytes or bytes that are not UTF-8 (a multibyte character cut at the end is fine)."""
    sample = data[:8192]
    if b"\0" in sample:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


def _print_table(files) -> None:
    rows = [(f.id, _human_size(f.bytes), _when(f.created_at), _when(f.visible_expires_at), f.purpose, f.filename)
            for f in files]
    header = ("ID", "SIZE", "CREATED", "EXPIRES", "PURPOSE", "FILENAME")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


ALL_OPTION = click.option("--all", "show_all", is_flag=True,
                          help="Operator view: every file, whoever owns it (not only those this identity may see).")


# --- commands --------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--purpose", "-p", required=True, type=click.Choice(PURPOSES), help="What the files are for.")
@click.option("--expires-after", type=int, metavar="SECONDS",
              help="Expire this many seconds after creation (3600..2592000).")
@click.option("--filename", help="Name to store (default: the file's own name; required for '-').")
@click.option("--json", "as_json", is_flag=True, help="Print OpenAI file objects as JSON.")
@pass_state
def upload(state, paths, purpose, expires_after, filename, as_json):
    """Upload files. Use '-' to read standard input.

    Prints one line per file: on a terminal its id, size, purpose and name; into a pipe or a file
    just its id (FILE_ID=$(s3filesfs upload ...)). If the reader goes away early (| head -1),
    every file is still uploaded, and the exit status is 141 to say that ids were not printed.

    \b
    Examples:
      s3filesfs upload data.jsonl --purpose batch
      s3filesfs upload *.pdf -p assistants --expires-after 86400
      gunzip -c log.gz | s3filesfs upload - -p user_data --filename log.txt
    """
    if filename and len(paths) > 1:
        raise click.UsageError("--filename works with a single file")
    if "-" in paths and not filename:
        raise click.UsageError("uploading standard input needs --filename")
    service = state.caller()
    on_terminal = sys.stdout.isatty()
    failures = []
    # A stopped upload aborts its multipart upload (whose parts S3 keeps, and bills, until then).
    with stopped_by(signal.SIGTERM, signal.SIGHUP):
        for path in paths:
            try:
                created = _upload_one(service, path, purpose, expires_after, filename, state.verbosity)
            except S3FilesError as exc:
                click.echo(f"error: {path}: {logs.redact(exc.message)}", err=True)
                failures.append(exc)
                continue
            except Stopped as stop:
                stop.message += f" while uploading {path}"
                raise
            log.info("uploaded %s as %s (%d bytes)", path, created.id, created.bytes)
            if as_json:
                _print_json(created.to_openai())
            elif on_terminal:
                click.echo(f"{created.id}  {_human_size(created.bytes)}  {created.purpose}  {created.filename}")
            else:
                click.echo(created.id)
    if failures:
        sys.exit(failures[0].exit_code)


def _upload_one(service, path, purpose, expires_after, filename, verbosity=logs.NORMAL):
    if path == "-":
        return service.create(sys.stdin.buffer, filename, purpose, expires_after)
    try:
        body = open(path, "rb")
    except OSError as exc:
        raise config.ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with body:
        size = os.fstat(body.fileno()).st_size
        name = filename or Path(path).name
        bar = _progress_bar(size, name, verbosity)
        if bar is None:
            return service.create(body, name, purpose, expires_after)
        with bar:
            return service.create(body, name, purpose, expires_after, progress=bar.update)


@main.command(name="ls")
@click.option("--purpose", "-p", type=click.Choice(PURPOSES), help="Only files of this purpose.")
@click.option("--limit", type=click.IntRange(1, LIST_LIMIT_MAX), default=LIST_LIMIT_MAX, show_default=True)
@click.option("--order", type=click.Choice(["asc", "desc"]), default="desc", show_default=True)
@click.option("--after", metavar="ID", help="Continue after this file id (from a previous page).")
@click.option("--json", "as_json", is_flag=True, help="Print the OpenAI list response.")
@ALL_OPTION
@pass_state
def ls(state, purpose, limit, order, after, as_json, show_all):
    """List files, newest first (through the daemon's socket when one runs on this database).

    \b
    Examples:
      s3filesfs ls --purpose batch --limit 20
      s3filesfs ls --json | jq -r '.data[].id'
    """
    client, info = (None, None) if show_all else _running_daemon(state)
    if info is not None and info.get("database") != state.settings.database:
        client = None  # that daemon serves another store (other config or --db-path): read ours
    if info is not None and info.get("identity") != state.identity().to_dict():
        client = None  # its socket acts as another identity: read as ours
    if client is not None:
        page = client.list(after=after, limit=limit, order=order, purpose=purpose)
    else:
        page = state.caller(show_all).list(after=after, limit=limit, order=order, purpose=purpose)
    if as_json:
        _print_json(page.to_openai())
        return
    _print_table(page.data)
    if page.has_more and state.verbosity > logs.QUIET:
        click.echo(f"(more: s3filesfs ls --after {page.data[-1].id})", err=True)


@main.command()
@click.argument("file_id")
@click.option("--json", "as_json", is_flag=True, help="Print the OpenAI file object.")
@ALL_OPTION
@pass_state
def info(state, file_id, as_json, show_all):
    """Show one file."""
    file = state.caller(show_all).retrieve(_checked_id(file_id))
    if as_json:
        _print_json(file.to_openai())
        return
    for key, value in file.to_openai().items():
        if key in ("created_at", "expires_at"):
            value = f"{value}  ({_when(value)})" if value is not None else "null  (never)"
        click.echo(f"{key + ':':12} {value}")


@main.command()
@click.argument("file_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this path instead of standard output.")
@click.option("--force", is_flag=True, help="Write binary content to a terminal anyway.")
@ALL_OPTION
@pass_state
def cat(state, file_id, output, force, show_all):
    """Write a file's content to standard output (or -o PATH).

    Binary content is not written to a terminal unless --force is given (as curl does). If the
    reader goes away (| head), the rest is not read. A large file shows a progress bar on standard
    error when that is a terminal and the content goes elsewhere (-o PATH, a pipe, a file).
    """
    file, chunks = state.caller(show_all).content(_checked_id(file_id))
    to_terminal = output is None and sys.stdout.isatty()
    if to_terminal and not force:
        chunks = iter(chunks)
        first = next(chunks, b"")
        if _looks_binary(first):
            raise UserError(f"{file_id} holds binary data, which can upset a terminal: "
                            "use -o PATH, redirect the output, or add --force")
        chunks = itertools.chain([first], chunks)
    # A bar only where it cannot mix with the content: not when the content goes to the terminal.
    bar = None if to_terminal else _progress_bar(file.bytes, file.filename, state.verbosity)
    with bar or contextlib.nullcontext():
        if output is None:
            out = sys.stdout.buffer
            for chunk in chunks:
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if stdio.stdout_lost():
                    break  # the reader has what it wanted
            out.flush()
            return
        partial = Path(f"{output}.part")
        try:
            with open(partial, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            os.replace(partial, output)
        except OSError as exc:  # the output path, not the store: the user can fix it
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
        finally:
            partial.unlink(missing_ok=True)


def _progress_bar(size: int, label: str, verbosity: int):
    """A progress bar on standard error for a transfer of ``size`` bytes, as ``upload`` shows one:
    when that is a terminal and the transfer is large; else None."""
    if size < PROGRESS_THRESHOLD or verbosity <= logs.QUIET or not sys.stderr.isatty():
        return None
    return click.progressbar(length=size, label=label, file=sys.stderr, show_pos=False,
                             show_percent=True, show_eta=True)


@main.command()
@click.argument("file_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the OpenAI delete responses.")
@ALL_OPTION
@pass_state
def rm(state, file_ids, as_json, show_all):
    """Delete files by id.

    Every id is tried; the exit status is that of the first failure. If the reader goes away
    early (| head), every file is still deleted, and the exit status is 141.
    """
    service = state.caller(show_all)
    failures = []
    for file_id in file_ids:
        try:
            result = service.delete(_checked_id(file_id))
        except S3FilesError as exc:
            click.echo(f"error: {logs.redact(exc.message)}", err=True)
            failures.append(exc)
            continue
        _print_json(result) if as_json else click.echo(f"deleted {file_id}")
    if failures:
        sys.exit(failures[0].exit_code)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_state
def gc(state, as_json):
    """Remove expired files from the bucket and the table."""
    removed = state.store.gc()
    if as_json:
        _print_json({"removed": removed})
    else:
        click.echo(f"removed {len(removed)} expired file(s)")
        for file_id in removed:
            click.echo(f"  {file_id}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report (and what --repair did) as JSON.")
@click.option("--repair", is_flag=True,
              help="Then put right what is found: rows whose object is gone are removed, objects without a row "
                   "registered from their metadata, open multipart uploads aborted.")
@click.option("--delete-orphans", is_flag=True,
              help="With --repair: delete objects without a row (those without metadata too) instead.")
@click.option("--grace", type=click.IntRange(min=ORPHAN_GRACE), default=ORPHAN_GRACE, show_default=True,
              metavar="SECONDS", help="With --repair: leave rows and objects younger than this alone.")
@click.option("--upload-grace", type=click.IntRange(min=ORPHAN_GRACE), default=UPLOAD_GRACE, show_default=True,
              metavar="SECONDS", help="With --repair: leave multipart uploads open for less than this alone.")
@pass_state
def check(state, as_json, repair, delete_orphans, grace, upload_grace):
    """Compare the table with the bucket; exit 1 if they disagree.

    With --repair, then put right what was found, printing each action: exit 0 if everything
    was, 1 if something was left as it is (younger than its grace, being uploaded, an object
    without metadata and no --delete-orphans, a size that differs); if a repair failed, the rest
    are still done and the exit status is the failure's (3: the store failed).

    Also warns (on standard error, and under "warnings" with --json) about rows whose purpose the
    `purposes` setting leaves out; a warning alone does not change the exit status.
    """
    ctx = click.get_current_context()
    if not repair:
        for name in ("delete_orphans", "grace", "upload_grace"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--{name.replace('_', '-')} works with --repair")
    service = state.store
    report = service.check()
    if state.verbosity > logs.QUIET:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
    if not as_json:
        click.echo("bucket and table agree" if report.clean else "bucket and table disagree:")
        for label, ids in (("row without object", report.rows_without_objects),
                           ("object without row", report.objects_without_rows),
                           ("size differs", report.size_mismatches)):
            for file_id in ids:
                click.echo(f"  {label}: {file_id}")
    if not repair:
        if as_json:
            _print_json(report.to_dict())
        if not report.clean:
            sys.exit(1)
        return
    ctx.meta["changes_store"] = True
    actions: list[dict] = []
    failures: list[S3FilesError] = []

    def show(action: Action) -> None:
        if action.error is not None:
            failures.append(action.error)
        if as_json:
            actions.append(action.to_dict())
        else:
            click.echo(f"{action.action}: {action.id}" + (f" ({action.detail})" if action.detail else ""))

    counts = repair_store(service, report, show, grace=grace, upload_grace=upload_grace,
                          delete_orphans=delete_orphans)
    if as_json:
        _print_json({**report.to_dict(), "repair": {"actions": actions, "counts": dict(sorted(counts.items()))}})
    else:
        done = [f"{counts[name]} {name}" for name in ("abandoned", "removed row", "registered", "deleted object",
                                                      "aborted upload") if counts[name]]
        click.echo("repair: " + (", ".join(done) or "nothing to do") +
                   (f"; {counts['left']} left as they are" if counts["left"] else "") +
                   (f"; {counts['failed']} failed" if counts["failed"] else ""))
    if failures:
        sys.exit(failures[0].exit_code)
    if counts["left"]:
        sys.exit(1)


class _ReaderGone(Exception):
    """A dry run's reader went away: nothing more to say, so nothing more to do."""


@main.command()
@click.option("--apply", is_flag=True, help="Register the files (without it: only say what would be done).")
@click.option("--unlabelled-purpose", type=click.Choice(PURPOSES),
              help="Register objects that carry no metadata (written by the seed) under this purpose: named "
                   "by their id, created when the store says they were written.")
@click.option("--workers", type=click.IntRange(1, 64), default=HEAD_WORKERS, show_default=True,
              help="Objects whose metadata is read at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the actions and counts as one JSON document.")
@pass_state
def rebuild(state, apply, unlabelled_purpose, workers, as_json):
    """Rebuild the table from the bucket: every object written here gets its row back.

    Objects carry their name, purpose, creation and expiry times as metadata, so a lost or new
    database gets every row back as it was. Objects written by the seed carry none: they are
    listed, and registered only with --unlabelled-purpose. Rows already there are left as they
    are, so running it again changes nothing. A dry run unless --apply is given.
    """
    ctx = click.get_current_context()
    if apply:
        ctx.meta["changes_store"] = True
    service = state.store
    progress = _Progress(enabled=state.verbosity > logs.QUIET and sys.stderr.isatty())
    out = _JsonStream(apply) if as_json else None
    failures: list[S3FilesError] = []

    def show(action: Action) -> None:
        if action.error is not None:
            failures.append(action.error)
        progress.clear()
        if out is not None:
            out.item(action.to_dict())
        else:
            click.echo(_rebuild_line(action))
        if not apply and stdio.stdout_lost():
            raise _ReaderGone

    counts = None
    try:
        counts = rebuild_from_bucket(service, show, apply=apply, unlabelled_purpose=unlabelled_purpose,
                                     workers=workers, progress=progress.update)
    except _ReaderGone:
        return
    finally:
        progress.clear()
        if out is not None:
            out.end(counts)
    if out is None:
        click.echo(_rebuild_summary(counts, apply, unlabelled_purpose))
    if failures:
        sys.exit(failures[0].exit_code)


def _rebuild_line(action: Action) -> str:
    file = action.file
    if file is not None:
        verb = "registered" if action.action == "register" else "would register"
        return f"{verb} {file.id}  {file.purpose}  {_human_size(file.bytes)}  {file.filename}"
    return f"{action.action} {action.id}: {action.detail}"


def _rebuild_summary(counts, apply: bool, unlabelled_purpose) -> str:
    registered = counts["register"] if apply else counts["would register"]
    parts = [f"{counts['objects']} object(s)", f"{registered} {'registered' if apply else 'to register'}",
             f"{counts['present']} already in the table"]
    for name in ("unlabelled", "unreadable", "under way", "vanished", "failed"):
        if counts[name]:
            parts.append(f"{counts[name]} {name}")
    summary = "rebuild: " + ", ".join(parts)
    if counts["unlabelled"]:
        summary += "; --unlabelled-purpose PURPOSE registers the objects without metadata"
    if not apply and registered:
        summary += "; run again with --apply to register"
    return summary


class _Progress:
    """A one-line count on a terminal's standard error, redrawn at most five times a second."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._shown = False
        self._last = 0.0

    def update(self, counts) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        ahead = counts["register"] + counts["would register"]
        click.echo(f"\rrebuild: {counts['objects']} listed, {counts['checked']} looked at, {ahead} to register"
                   f", {counts['present']} present", err=True, nl=False)
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            click.echo("\r\033[K", err=True, nl=False)
            self._shown = False


class _JsonStream:
    """One JSON document written as it grows: ``{"apply", "actions": [...], "counts"}``, so a
    bucket of millions is reported without holding the report in memory."""

    def __init__(self, apply: bool):
        self._first = True
        click.echo(f'{{\n  "apply": {json.dumps(apply)},\n  "actions": [', nl=False)

    def item(self, data: dict) -> None:
        click.echo(("\n    " if self._first else ",\n    ") + json.dumps(data, ensure_ascii=False), nl=False)
        self._first = False

    def end(self, counts) -> None:
        """Close the document; counts None means the run failed (the error goes to stderr)."""
        tail = json.dumps(dict(sorted(counts.items())) if counts is not None else None)
        click.echo(("\n  " if not self._first else "") + f'],\n  "counts": {tail},\n  "complete": '
                   f"{json.dumps(counts is not None)}\n}}")


@main.group(name="config")
def config_group():
    """Inspect the configuration."""


@config_group.command()
@click.option("--json", "as_json", is_flag=True,
              help='Print {"backend", "source", "config"} as JSON, "config" as the YAML shows it.')
@pass_state
def show(state, as_json):
    """Print the configuration in effect, secrets masked.

    Every key in the config file's own names and sections, defaults and paths in use spelled out:
    the output loads as a config file, once the masked secrets are put back (or written as
    ${env.NAME}).
    """
    settings = state.settings
    shown = settings.masked()
    if as_json:
        _print_json({"backend": settings.backend, "source": settings.source, "config": shown})
        return
    click.echo(f"# s3filesfs configuration in effect ({settings.backend} backend), from {settings.source}")
    if any(getattr(settings, key) for key in config.SECRET_KEYS):
        click.echo("# Secrets are masked: put them back, or use ${env.NAME}, before loading this as a config.")
    click.echo(config.dump_yaml(shown), nl=False)


# --- the daemon ------------------------------------------------------------------------------


def _running_daemon(state):
    """``(client, status)`` for the daemon on our socket, or ``(None, None)`` when none answers
    (or the socket's folder is not private, so that the socket may not be our daemon's)."""
    if not is_private(state.settings.api_socket_path.parent):
        return None, None
    client = DaemonClient(state.settings.api_socket_path)
    info = client.status()
    return (client, info) if info is not None else (None, None)


@main.command()
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False),
              help="Folder holding one sub-folder per purpose (default ~/S3Files).")
@click.option("--delete", is_flag=True, default=None, help="Delete a file's id when its local file is removed.")
@click.option("--listen", metavar="HOST:PORT", help="Also serve the API over TCP (needs --api-key-env).")
@click.option("--api-key-env", metavar="NAME", help="Environment variable holding the TCP listener's bearer key.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Unix socket of the API.")
@pass_state
def daemon(state, watch_dir, delete, listen, api_key_env, socket_path):
    """Watch the drop folders and upload what lands there; runs in the foreground."""
    state.flags.update(sync_watch_dir=watch_dir, sync_delete=delete, api_listen=listen,
                       api_api_key_env=api_key_env, api_socket=socket_path)
    logs.at_least_info(state.verbosity)  # a service's log is its journal
    from .daemon.service import DaemonService

    sys.exit(DaemonService(state.settings).run())


def _staging_folders(state, given: str | None) -> list[Path]:
    """The folder given, or every staging folder a mount of this data folder has used."""
    if given:
        return [Path(given).expanduser()]
    return staged_records.known_folders(state.settings.data_dir, state.settings.staging_dir)


def _waiting(state, folders: list[Path]) -> list:
    return [r for folder in folders
            for r in staged_records.waiting(folder, state.service.location, state.service.host)]


STAGING_DIR_OPTION = click.option("--staging-dir", type=click.Path(file_okay=False),
                                  help="Look only in this staging folder (default: every one a mount used).")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@STAGING_DIR_OPTION
@pass_state
def status(state, as_json, staging_dir):
    """Show what the daemon is doing; without a daemon, the journal's counts. Exit 1 if none runs."""
    _, info = _running_daemon(state)
    folders = _staging_folders(state, staging_dir)
    staged = [r.to_dict() for r in _waiting(state, folders)]
    uploading = [{**r.to_dict(), "state": "uploading", "error": None}
                 for folder in folders for r in staged_records.in_progress(folder, state.service.host)]
    mounts = _running_mounts(state)
    if info is None:
        # This host's daemon's journal (host_id): the database only, S3 is not touched.
        counts = state.service.metadata.journal_counts(state.service.host)
        if as_json:
            _print_json({"running": False, "socket": str(state.settings.api_socket_path),
                         "counts": {"journal": counts}, "staged": staged, "uploading": uploading, "mounts": mounts})
        else:
            click.echo(f"no daemon is running (no answer on {state.settings.api_socket_path})")
            click.echo("journal: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "empty"))
            _print_staged(staged, uploading)
            _print_mounts(mounts)
        sys.exit(1)
    if as_json:
        _print_json({"running": True, **info, "staged": staged, "uploading": uploading, "mounts": mounts})
    else:
        click.echo("\n".join(status_lines(info)))
        _print_staged(staged, uploading)
        _print_mounts(mounts)


def _running_mounts(state) -> list[dict]:
    """The ``/status`` of every mount of this data folder that answers on its control socket (best
    effort: a mount that does not answer in a second is left out)."""
    folder = state.settings.api_socket_path.parent / "mounts"
    if not is_private(folder):
        return []
    found = []
    for path in sorted(folder.glob("*.sock")):
        try:
            info = DaemonClient(path, timeout=1.0).get("/status")
        except (OSError, ValueError, S3FilesError):
            continue
        if info.get("data_dir") == str(state.settings.data_dir):
            found.append(info)
    return found


def _print_mounts(mounts: list[dict]) -> None:
    for info in mounts:
        writing = [path for path in info["files_being_written"] if path not in info["write_back"]]
        click.echo(f"mount {info['mountpoint']} (pid {info['pid']}): {len(writing)} being written, "
                   f"{len(info['write_back'])} waiting to upload, {info['staging_bytes']} bytes staged")
        for path in writing:
            click.echo(f"  writing   {path}")
        for path in info["write_back"]:
            click.echo(f"  waiting   {path}")


def _drop_staged(service, folders: list[Path], names: tuple[str, ...], as_json: bool) -> None:
    dropped, missing = [], []
    for name in names:
        purpose, _, filename = name.partition("/")
        found = [r for folder in folders for r in staged_records.drop(service, folder, purpose, filename)
                 ] if filename else []
        dropped.extend(found)
        if not found:
            missing.append(name)
    if as_json:
        _print_json({"dropped": [r.to_dict() for r in dropped]})
    else:
        for record in dropped:
            click.echo(f"dropped {record.purpose}/{record.filename} ({_human_size(record.bytes)})")
    if missing:
        raise NotStaged(missing)


def _print_staged(staged: list[dict], uploading: list[dict]) -> None:
    if uploading:
        click.echo(f"uploading:  {len(uploading)} file(s) closed in the mount, being uploaded "
                   f"({_human_size(sum(item['bytes'] for item in uploading))})")
    if not staged:
        return
    complete = sum(1 for item in staged if item["state"] != "interrupted")
    click.echo(f"staged:     {len(staged)} upload(s) from the mount waiting in staging: {complete} complete "
               f"(`s3filesfs retry` registers them), {len(staged) - complete} interrupted (registered "
               "only if named: `retry PURPOSE/FILENAME`); `retry --drop PURPOSE/FILENAME` discards one")
    for item in staged:
        click.echo(f"  {item['purpose']}/{item['filename']} ({_human_size(item['bytes'])}, {item['state']}): "
                   f"{item['error']}")


# --- the mount -------------------------------------------------------------------------------


@main.command()
# Not `readable`: a dead mount (ENOTCONN) is not, and prepare() is what cleans it up.
@click.argument("mountpoint", type=click.Path(file_okay=False, readable=False))
@click.option("--foreground", "-f", is_flag=True, help="Stay attached (for systemd); log to stderr.")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount (needs user_allow_other).")
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS).")
@click.option("--write-back", is_flag=True, default=None,
              help="close() returns once the data is safe in staging; uploads follow in the background.")
@click.option("--staging-dir", type=click.Path(file_okay=False), help="Where written files wait for upload.")
@click.option("--staging-max-mb", type=click.IntRange(1), help="Cap of the staging folder (default 10240).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log of the background mount.")
@pass_state
def mount(state, mountpoint, foreground, allow_other, read_only, write_back, staging_dir, staging_max_mb, log_file):
    """Mount the Files store at MOUNTPOINT: one folder per purpose, by-id/ and index.jsonl.

    \b
    Examples:
      s3filesfs mount ~/S3Mount && cp report.pdf ~/S3Mount/assistants/
      s3filesfs mount ~/S3Mount --write-back      # many small files: uploads follow close()
      s3filesfs umount ~/S3Mount
    """
    state.flags.update(mount_staging_dir=staging_dir, mount_staging_max_mb=staging_max_mb, mount_log_file=log_file,
                       mount_write_back=write_back)
    from .fs import mount as mounting

    settings = state.settings  # bad config fails here, in the foreground, before any child starts
    if not foreground:
        mounting.prepare(Path(mountpoint))  # "already mounted" and dead mounts, answered here
        mounting.start_background(mounting.argv_for_foreground(), Path(mountpoint), settings.mount_log_path)
        click.echo(f"mounted at {os.path.abspath(mountpoint)} (log: {settings.mount_log_path}); "
                   f"unmount with: s3filesfs umount {mountpoint}")
        return
    logs.at_least_info(state.verbosity, "s3filesfs")  # a mount's log says what it refused
    ensure_private(settings.api_socket_path.parent)  # its pid files live beside the daemon's socket
    log.info("acting as %s", settings.identity.describe())
    mounting.run(state.service.acting_as(settings.identity), settings, Path(mountpoint), allow_other=allow_other,
                 read_only=read_only)


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, readable=False))
@pass_state
def umount(state, mountpoint):
    """Unmount MOUNTPOINT once its open files are closed and their uploads are done."""
    from .fs import mount as mounting

    mounting.unmount(Path(mountpoint), state.settings.api_socket_path.parent)


@main.command()
@click.argument("names", nargs=-1, metavar="[PURPOSE/FILENAME]...")
@click.option("--json", "as_json", is_flag=True, help="Print the registered (or dropped) files as JSON.")
@click.option("--include-interrupted", is_flag=True,
              help="Also register interrupted files (their writer or the mount stopped before close()).")
@click.option("--drop", "drops", multiple=True, metavar="PURPOSE/FILENAME",
              help="Discard this staged upload instead of uploading it (repeatable); uploads nothing else.")
@STAGING_DIR_OPTION
@pass_state
def retry(state, names, as_json, include_interrupted, drops, staging_dir):
    """Register what the mount could not (kept in staging). Exit 3 if some still fail.

    Without names, registers the complete files (whose close() was reached but whose upload
    failed); interrupted ones, which may be incomplete, only with --include-interrupted or when
    named. With --drop, discard the named uploads instead: the bytes are deleted from staging and
    the store is left as it is. Exit 1 if a name is not waiting.
    """
    folders = _staging_folders(state, staging_dir)
    # Registered as this identity (the mount's, with the same config), seeing every row: the ids a
    # staged upload replaces are ones the mount could see.
    service = state.service.acting_as(state.identity(show_all=True))
    if drops:
        _drop_staged(service, folders, drops, as_json)
        return
    wanted = [_staged_name(name) for name in names] or None
    done, failing = [], []
    for folder in folders:
        registered, still_failing = staged_records.retry(service, folder, wanted, include_interrupted)
        done += registered
        failing += still_failing
    tried = {(f.purpose, f.filename) for f in done} | {(r.purpose, r.filename) for r, _ in failing}
    missing = [f"{p}/{n}" for p, n in wanted or () if (p, n) not in tried]
    if as_json:
        _print_json({"uploaded": [f.to_openai() for f in done],
                     "failed": [{**r.to_dict(), "error": e.message} for r, e in failing]})
    else:
        for file in done:
            click.echo(f"{file.id}  {file.purpose}/{file.filename}")
        for record, exc in failing:
            click.echo(f"still failing: {record.purpose}/{record.filename}: {exc.message}", err=True)
        if not done and not failing:
            click.echo("nothing to retry")
        interrupted = [r for r in _waiting(state, folders) if r.interrupted]
        if interrupted and not wanted:
            click.echo(f"{len(interrupted)} interrupted file(s) left in staging (`s3filesfs status` lists them; "
                       "name one, or --include-interrupted, to register it)", err=True)
    if missing:
        raise NotStaged(missing)
    if failing:
        sys.exit(3)


# --- systemd ---------------------------------------------------------------------------------


@main.group(name="service")
def service_group():
    """Run the mount or the daemon as a systemd user service."""


@service_group.command(name="install")
@click.option("--mount", "mountpoint", type=click.Path(file_okay=False, readable=False),
              help="Install a unit that mounts the store at MOUNTPOINT (s3filesfs-mount).")
@click.option("--daemon", "with_daemon", is_flag=True, help="Install the sync daemon's unit (s3filesfs-daemon).")
@click.option("--name", help="Name the unit (another name installs a second mount).")
@click.option("--enable", is_flag=True, help="Then reload systemd, enable the unit(s) and start them now.")
@click.option("--force", is_flag=True,
              help="Replace a unit file this command did not write, or move a mount unit to a new mountpoint.")
@click.argument("options", nargs=-1, type=click.UNPROCESSED, metavar="[-- OPTIONS...]")
@click.pass_context
def service_install(ctx, mountpoint, with_daemon, name, enable, force, options):
    """Write systemd user units for the mount and/or the daemon (in ~/.config/systemd/user/).

    A unit runs this installation by its absolute path (a virtualenv needs no activating), with the
    global options given before `service` (s3filesfs --config FILE service install --daemon).
    Options after `--` are the mount's or the daemon's (service install --mount ~/S3Mount --
    --write-back). Running it again updates the units.
    """
    state = ctx.find_object(State)
    if not mountpoint and not with_daemon:
        raise click.UsageError("say what to install: --mount MOUNTPOINT, --daemon, or both")
    if mountpoint and with_daemon and (name or options):
        raise click.UsageError("--name and options after -- are for one unit: install the mount and the daemon "
                               "one at a time")
    _ = state.settings  # a configuration that does not load fails now, not when the service starts
    command = [*user_units.program(), *_given_options(ctx.find_root())]
    docs = user_units.source_tree()
    units = []
    if mountpoint:
        params, words = _spelled_out(ctx, mount, [mountpoint, *options])
        target = Path(_absolute(params["mountpoint"]))
        units.append(user_units.mount_unit(command, target, words, user_units.unit_name(name or user_units.MOUNT_UNIT),
                                           docs))
    if with_daemon:
        _, words = _spelled_out(ctx, daemon, list(options))
        units.append(user_units.daemon_unit(command, words, user_units.unit_name(name or user_units.DAEMON_UNIT),
                                            docs))
    for unit in units:
        what = user_units.install(unit, force)
        click.echo(f"{what} {user_units.unit_dir() / unit.filename}, which runs: {shlex.join(unit.runs)}")
    from .fs import mount as mounting

    busy = [u.mountpoint for u in units if u.mountpoint is not None and mounting.mounted_here(u.mountpoint)]
    names = " ".join(unit.name for unit in units)
    start = f"systemctl --user daemon-reload && systemctl --user enable --now {names}"
    if not enable:
        for target in busy:
            click.echo(f"note: {target} is mounted now; unmount it (s3filesfs umount {target}) before starting the "
                       "service, which would find it in use", err=True)
        click.echo(f"to start {'it' if len(units) == 1 else 'them'} now and at every login:\n  {start}")
        return
    problem = user_units.user_manager()
    if problem:
        raise user_units.UnitError(f"{problem}, so nothing was enabled or started; in a session that has one, run: "
                                   f"{start}")
    if busy:
        raise user_units.UnitError(f"{busy[0]} is mounted now (the quick start leaves it mounted): unmount it "
                                   f"(s3filesfs umount {busy[0]}), then run: {start}")
    user_units.systemctl("daemon-reload")
    user_units.systemctl("enable", "--now", *(unit.filename for unit in units))
    click.echo(f"enabled and started {names}: systemctl --user status {names}")


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _given_options(root: click.Context) -> list[str]:
    """The global options given on the command line or by environment variable, spelled out for a
    unit (the service sees neither this shell's environment nor its folder: paths made absolute)."""
    words: list[str] = []
    for param in root.command.params:
        if not isinstance(param, click.Option) or param.name not in root.params:
            continue
        if root.get_parameter_source(param.name) not in (click.core.ParameterSource.COMMANDLINE,
                                                          click.core.ParameterSource.ENVIRONMENT):
            continue
        words += _option_words(param, root.params[param.name])
    return words


def _spelled_out(ctx: click.Context, command: click.Command, args: list[str]) -> tuple[dict, list[str]]:
    """``args`` parsed as ``command`` parses them (a mistake is a usage error now, not a failing
    service later), and its options spelled out again for a unit, paths made absolute."""
    sub = command.make_context(command.name, args, parent=ctx.find_root())  # errors name `s3filesfs mount`
    words: list[str] = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "foreground":
            continue
        if sub.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
            words += _option_words(param, sub.params[param.name])
    return sub.params, words


def _option_words(param: click.Option, value) -> list[str]:
    if param.is_flag:
        return [param.opts[0]] if value else []
    return [param.opts[0], _absolute(value) if isinstance(param.type, click.Path) else str(value)]


@service_group.command(name="show")
def service_show():
    """Print the units `service install` wrote, each with its state."""
    units = user_units.installed()
    if not units:
        click.echo(f"no s3filesfs units in {user_units.unit_dir()} (`s3filesfs service install --mount ~/S3Mount` "
                   "or `--daemon` writes one)")
        return
    problem = user_units.user_manager()
    for index, (name, path) in enumerate(units):
        if index:
            click.echo()
        click.echo(f"# {path}")
        click.echo(f"# state: {user_units.state(name) if problem is None else 'unknown: ' + problem}")
        click.echo(path.read_text(), nl=False)


@service_group.command(name="uninstall")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--force", is_flag=True, help="Also remove a unit file this command did not write.")
def service_uninstall(names, force):
    """Stop, disable and remove units `service install` wrote (all of them unless named)."""
    targets = [user_units.unit_name(name) for name in names] or [name for name, _ in user_units.installed()]
    if not targets:
        click.echo(f"no s3filesfs units in {user_units.unit_dir()}")
        return
    paths = [user_units.removable(name, force) for name in targets]  # all checked before any is touched
    problem = user_units.user_manager()
    if problem is None:
        user_units.systemctl("disable", "--now", *(path.name for path in paths))
    for path in paths:
        user_units.remove(path)
        click.echo(f"removed {path}")
    if problem is None:
        user_units.systemctl("daemon-reload")
    else:
        click.echo(f"{problem}, so nothing was stopped; where one runs them, stop them with: systemctl --user stop "
                   + " ".join(targets), err=True)


def _staged_name(name: str) -> tuple[str, str]:
    purpose, _, filename = name.partition("/")
    if not filename:
        raise click.UsageError(f"{name!r}: name a staged upload as PURPOSE/FILENAME")
    return purpose, filename
