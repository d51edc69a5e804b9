"""``s3filesfs service install/show/uninstall``: the systemd user units it writes, read back as
systemd reads them and checked by ``systemd-analyze verify``; what it refuses to overwrite; what it
says when no user manager answers. (The units run for real, with a notify socket standing in for the
manager: tests/fs/test_service.py.)

Run as a script, this module rewrites the examples in packaging/ from ``example_units()``.
"""

import os
import subprocess
import sys
from pathlib import Path

import s3filesfs
from s3filesfs import user_units
from tests.systemd import analyze_verify, command, settings

SCRIPT = Path(sys.executable).with_name("s3filesfs")
PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
EXAMPLE_CHECKOUT = Path("/home/you/s3filesfs")
EXAMPLE_PREFACE = ("# An example: what `s3filesfs service install {what}` writes for a checkout in\n"
                   "# /home/you/s3filesfs. Run that command rather than copying this file: it writes the paths of\n"
                   "# your installation.\n")
# What a user manager's environment has: none of this shell's variables, no virtualenv on PATH.
MANAGER_PATH = "/usr/local/bin:/usr/bin:/bin"


def run(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **(env or {})})


def unit_dir() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user"


def unit_text(name: str) -> str:
    return (unit_dir() / f"{name}.service").read_text()


def the(text: str, key: str) -> str:
    values = settings(text, key)
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


def program_words(words: list[str], subcommand: str) -> list[str]:
    """The program part of an ExecStart (up to the global options), which runs on its own."""
    first_option = next(i for i, word in enumerate(words) if word.startswith("-") or word == subcommand)
    return words[:first_option]


def example_units() -> dict[str, str]:
    """The packaging/ examples: the units written for a checkout in /home/you/s3filesfs."""
    program = [str(EXAMPLE_CHECKOUT / ".venv/bin/s3filesfs")]
    mount = user_units.mount_unit(program, Path("/home/you/S3Mount"), docs_root=EXAMPLE_CHECKOUT)
    daemon = user_units.daemon_unit(program, docs_root=EXAMPLE_CHECKOUT)
    return {mount.filename: EXAMPLE_PREFACE.format(what="--mount ~/S3Mount") + mount.text,
            daemon.filename: EXAMPLE_PREFACE.format(what="--daemon") + daemon.text}


# --- what the units say ----------------------------------------------------------------------------


def test_install_writes_units_that_run_this_installation_and_systemd_accepts(tmp_path):
    config = tmp_path / "my config.yaml"
    config.write_text("region: us-east-1\n")
    mountpoint = tmp_path / "S3 Mount"
    mounted = run("--config", config.name, "service", "install", "--mount", mountpoint, cwd=tmp_path)
    assert mounted.returncode == 0, mounted.stderr
    daemon = run("--config", config.name, "service", "install", "--daemon", cwd=tmp_path)
    assert daemon.returncode == 0, daemon.stderr
    assert "systemctl --user daemon-reload && systemctl --user enable --now s3filesfs-mount" in mounted.stdout
    assert "systemctl --user daemon-reload && systemctl --user enable --now s3filesfs-daemon" in daemon.stdout

    mount_unit, daemon_unit = unit_text("s3filesfs-mount"), unit_text("s3filesfs-daemon")
    start = command(the(mount_unit, "ExecStart"))
    program = program_words(start, "mount")
    # The config given relative to this folder, spelled out: the service does not run here.
    assert start[len(program):] == ["--config", str(config), "mount", "--foreground", str(mountpoint)]
    assert command(the(mount_unit, "ExecStop")) == [*program, "--config", str(config), "umount", str(mountpoint)]
    assert the(mount_unit, "ExecStop").startswith("-")  # a busy mountpoint falls back to SIGTERM
    assert command(the(daemon_unit, "ExecStart")) == [*program, "--config", str(config), "daemon"]

    # The program is this installation's, by absolute path, and runs with a user manager's PATH.
    assert os.path.isabs(program[0]) and os.access(program[0], os.X_OK)
    version = subprocess.run([*program, "--version"], capture_output=True, text=True, timeout=60,
                             env={"PATH": MANAGER_PATH, "HOME": str(tmp_path)})
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"s3filesfs, version {s3filesfs.__version__}"

    for text in (mount_unit, daemon_unit):
        assert the(text, "Type") == "notify"
        assert int(the(text, "WatchdogSec")) > 0
        assert the(text, "Restart") == "on-failure"
        assert "1" in the(text, "RestartPreventExitStatus").split()
        assert the(text, "WantedBy") == "default.target"
        pages = the(text, "Documentation").split()
        assert pages, "no Documentation="
        for page in pages:
            assert page.startswith("file:///")
            assert Path(page.removeprefix("file://")).is_file(), f"{page} does not exist"

    verified = analyze_verify(unit_dir() / "s3filesfs-mount.service", unit_dir() / "s3filesfs-daemon.service")
    complaints = [line for line in (verified.stdout + verified.stderr).splitlines() if "s3filesfs-" in line]
    assert verified.returncode == 0 and not complaints, verified.stdout + verified.stderr


def test_paths_with_spaces_quotes_percent_and_dollar_reach_systemd_intact(tmp_path):
    odd = tmp_path / "it's \"odd\" 50%h $HOME"
    odd.mkdir()
    (odd / "s3filesfs").symlink_to(SCRIPT)
    mountpoint = odd / "mnt"
    program = [str(odd / "s3filesfs"), "--data-dir", str(odd)]
    unit = user_units.mount_unit(program, mountpoint)
    path = tmp_path / unit.filename
    path.write_text(unit.text)
    # systemd refuses such a program path, so env runs it: the words after env are ours, intact.
    start = command(the(unit.text, "ExecStart"))
    assert start == [user_units.ENV, *unit.runs]
    assert command(the(unit.text, "ExecStop")) == [user_units.ENV, *program, "umount", str(mountpoint)]
    version = subprocess.run([*start[:2], "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and s3filesfs.__version__ in version.stdout, version.stderr
    verified = analyze_verify(path)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    plain = tmp_path / "50%h $HOME"  # systemd takes it as the program itself, once unquoted (%h: a specifier)
    plain.mkdir()
    (plain / "s3filesfs").symlink_to(SCRIPT)
    unit = user_units.daemon_unit([str(plain / "s3filesfs")], ["--watch", str(plain)])
    path.with_name(unit.filename).write_text(unit.text)
    assert command(the(unit.text, "ExecStart")) == list(unit.runs)
    verified = analyze_verify(path.with_name(unit.filename))  # it checks that the program exists
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_options_for_the_service_are_checked_now_and_spelled_out(tmp_path):
    wrong = run("service", "install", "--daemon", "--", "--bogus")
    assert wrong.returncode == 2
    assert "No such option '--bogus'" in wrong.stderr and "s3filesfs daemon" in wrong.stderr
    assert not (unit_dir() / "s3filesfs-daemon.service").exists()

    mountpoint = tmp_path / "m"
    done = run("service", "install", "--mount", mountpoint, "--", "--staging-dir", "staged", "--write-back",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    start = command(the(unit_text("s3filesfs-mount"), "ExecStart"))
    assert start[start.index("mount"):] == ["mount", "--foreground", str(mountpoint), "--write-back",
                                            "--staging-dir", str(tmp_path / "staged")]

    both = run("service", "install", "--mount", mountpoint, "--daemon", "--", "--read-only")
    assert both.returncode == 2 and "one at a time" in both.stderr
    neither = run("service", "install")
    assert neither.returncode == 2 and "--mount MOUNTPOINT, --daemon, or both" in neither.stderr


def test_a_configuration_that_does_not_load_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("upload: [not, a, mapping]\n")
    result = run("--config", bad, "service", "install", "--daemon")
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert not unit_dir().exists()


# --- what it will not overwrite, and updates -------------------------------------------------------


def test_a_unit_file_it_did_not_write_is_replaced_only_with_force():
    unit_dir().mkdir(parents=True)
    theirs = unit_dir() / "s3filesfs-daemon.service"
    theirs.write_text("[Service]\nExecStart=/usr/bin/env s3filesfs daemon\n")
    refused = run("service", "install", "--daemon")
    assert refused.returncode == 1
    assert "was not written by `s3filesfs service install`" in refused.stderr and "--force" in refused.stderr
    assert theirs.read_text() == "[Service]\nExecStart=/usr/bin/env s3filesfs daemon\n"
    forced = run("service", "install", "--daemon", "--force")
    assert forced.returncode == 0, forced.stderr
    assert theirs.read_text().startswith(user_units.MARKER)


def test_a_mount_unit_moves_to_another_mountpoint_only_when_asked(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    assert run("service", "install", "--mount", first).returncode == 0
    again = run("service", "install", "--mount", first)
    assert again.returncode == 0 and again.stdout.startswith("unchanged ")

    moved = run("service", "install", "--mount", second)
    assert moved.returncode == 1 and f"already mounts {first}" in moved.stderr and "--name" in moved.stderr
    assert f"--foreground {first}" in unit_text("s3filesfs-mount")

    other = run("service", "install", "--mount", second, "--name", "s3filesfs-mount-two.service")
    assert other.returncode == 0, other.stderr
    assert f"--foreground {second}" in unit_text("s3filesfs-mount-two")
    assert f"--foreground {first}" in unit_text("s3filesfs-mount")
    assert run("service", "install", "--mount", second, "--name", "../evil").returncode == 1


# --- systemctl -------------------------------------------------------------------------------------


def test_enable_without_a_user_manager_says_so_and_starts_nothing(tmp_path):
    runtime = tmp_path / "run"  # no user manager's socket in it, and no session bus
    runtime.mkdir(mode=0o700)
    result = run("service", "install", "--daemon", "--enable",
                 env={"XDG_RUNTIME_DIR": str(runtime), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus"})
    assert result.returncode == 1
    assert ("no systemd user manager answers here" in result.stderr
            or "systemctl is not installed" in result.stderr), result.stderr
    assert "nothing was enabled or started" in result.stderr
    assert "systemctl --user daemon-reload && systemctl --user enable --now s3filesfs-daemon" in result.stderr
    assert (unit_dir() / "s3filesfs-daemon.service").is_file()  # written, and said so
    assert f"wrote {unit_dir() / 's3filesfs-daemon.service'}" in result.stdout
    assert not list(unit_dir().glob("*.wants"))


def test_show_lists_and_uninstall_removes_only_its_own_units(tmp_path):
    empty = run("service", "show")
    assert empty.returncode == 0 and "no s3filesfs units in" in empty.stdout
    assert run("service", "install", "--mount", tmp_path / "m").returncode == 0
    assert run("service", "install", "--daemon").returncode == 0
    theirs = unit_dir() / "someone-else.service"
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    wants = unit_dir() / "default.target.wants"  # what `systemctl --user enable` makes
    wants.mkdir()
    (wants / "s3filesfs-daemon.service").symlink_to(unit_dir() / "s3filesfs-daemon.service")

    shown = run("service", "show")
    assert shown.returncode == 0
    assert f"# {unit_dir() / 's3filesfs-mount.service'}" in shown.stdout
    assert f"# {unit_dir() / 's3filesfs-daemon.service'}" in shown.stdout
    assert unit_text("s3filesfs-daemon") in shown.stdout
    assert "someone-else" not in shown.stdout

    assert run("service", "uninstall", "someone-else").returncode == 1
    missing = run("service", "uninstall", "s3filesfs-nope")
    assert missing.returncode == 1 and "no unit s3filesfs-nope" in missing.stderr
    removed = run("service", "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in unit_dir().iterdir()) == ["default.target.wants", "someone-else.service"]
    assert not list(wants.iterdir())


# --- the examples in packaging/ --------------------------------------------------------------------


def test_the_packaging_examples_are_what_install_writes():
    for filename, text in example_units().items():
        assert (PACKAGING / filename).read_text() == text, (
            f"packaging/{filename} differs from what `service install` writes; rewrite the examples with: "
            f".venv/bin/python -m tests.unit.test_service_units")


def test_the_packaging_examples_pass_systemd_analyze(tmp_path):
    # Their program does not exist here: verify them with this installation's in its place.
    for filename, text in example_units().items():
        (tmp_path / filename).write_text(text.replace(str(EXAMPLE_CHECKOUT / ".venv/bin/s3filesfs"), str(SCRIPT)))
    verified = analyze_verify(*sorted(tmp_path.iterdir()))
    assert verified.returncode == 0, verified.stdout + verified.stderr


if __name__ == "__main__":
    for name, content in example_units().items():
        (PACKAGING / name).write_text(content)
        print(f"wrote packaging/{name}")
