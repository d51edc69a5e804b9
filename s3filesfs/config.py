"""Settings: one YAML file, environment variables and CLI flags, checked once at start.

Precedence, lowest first:

1. built-in defaults (with no bucket configured, files live in the embedded local store);
2. the seed's environment names (``S3_BUCKET_NAME``, ``AWS_REGION``, ``S3_ENDPOINT_URL``,
   ``S3_AUTO_CREATE_BUCKET``) fill in keys the file leaves out, exactly as the seed's sample
   ``${env.X:=default}`` config does;
3. the YAML file (default ``~/.config/s3filesfs/config.yaml``); either our own file or a Llama Stack
   ``run.yaml``, whose ``remote::s3`` files provider block is used;
4. ``S3FILESFS_<KEY>`` environment variables (``S3FILESFS_BUCKET_NAME``, ``S3FILESFS_DB_PATH``, ...);
5. CLI flags.

Values may use ``${env.NAME}``, ``${env.NAME:=default}`` and ``${env.NAME:+value}``. Any mistake is
a ``ConfigError`` whose one-line message names the key. Secrets are masked in ``masked()`` (the
settings in effect, in the file's own layout: what ``config show`` prints) and in messages.
"""

import difflib
import os
import re
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from .access import Attributes, Identity, normalized, parse_attribute_words
from .errors import ConfigError
from .metadata import PostgresLocation
from .model import PURPOSES
from .processes import default_host, host_id_problem

SECRET_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "metadata_store_password")
SSE_MODES = ("AES256", "aws:kms")
SEED_ENV = {
    "bucket_name": "S3_BUCKET_NAME",
    "region": "AWS_REGION",
    "endpoint_url": "S3_ENDPOINT_URL",
    "auto_create_bucket": "S3_AUTO_CREATE_BUCKET",
}
_ENV_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?::([=+])([^}]*))?\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _xdg(name: str, fallback: str) -> Path:
    return Path(os.environ.get(name) or Path.home() / fallback)


def default_config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "s3filesfs" / "config.yaml"


def default_data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "s3filesfs"


@dataclass(frozen=True)
class ApiKey:
    """One key of the API (``api.keys``): the environment variable that holds it, and the identity a
    request bearing it acts as. The key itself is never part of the settings."""

    env: str
    principal: str
    attributes: Attributes = ()

    @property
    def identity(self) -> Identity:
        return Identity(self.principal, self.attributes)

    def shown(self) -> dict:
        return {"env": self.env, "principal": self.principal, "attributes": self.identity.attribute_map()}


@dataclass(frozen=True)
class Settings:
    # The seed's keys, verbatim.
    bucket_name: str | None = None
    region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    endpoint_url: str | None = None
    auto_create_bucket: bool = False
    db_path: Path | None = None  # metadata_store.db_path; None: a default under data_dir
    # metadata_store of type postgres: the Llama Stack sql_postgres backend's keys.
    metadata_store_type: str = "sqlite"  # or "postgres"
    metadata_store_host: str = "localhost"
    metadata_store_port: int = 5432
    metadata_store_db: str = "llamastack"
    metadata_store_user: str | None = None
    metadata_store_password: str | None = field(default=None, repr=False)
    metadata_store_pool_size: int = 5
    metadata_store_max_overflow: int = 10
    metadata_store_pool_recycle: int = -1
    # Extensions.
    # How this process names its host in the shared store (uploads under way, journal, staging records).
    host_id: str = field(default_factory=default_host)
    aws_session_token: str | None = None
    prefix: str = ""
    server_side_encryption: str | None = None
    sse_kms_key_id: str | None = None
    purposes: tuple[str, ...] = PURPOSES
    data_dir: Path = field(default_factory=default_data_dir)
    upload_part_size_mb: int = 8
    upload_concurrency: int = 4
    # No request to the store waits longer than this on a connection that says nothing.
    stall_timeout_seconds: float = 30.0
    # The sync daemon (section "sync:") and its API (section "api:").
    sync_watch_dir: Path = field(default_factory=lambda: Path.home() / "S3Files")
    sync_settle_seconds: float = 2.0
    sync_workers: int = 4
    sync_delete: bool = False
    sync_max_retries: int = 8
    api_socket: Path | None = None  # None: $XDG_RUNTIME_DIR/s3filesfs/api.sock or /tmp/s3filesfs-<uid>/
    api_listen: str | None = None  # HOST:PORT of the optional TCP listener
    api_api_key_env: str | None = None  # the environment variable holding its bearer key
    api_keys: tuple[ApiKey, ...] = ()  # keys that act as identities of their own
    # Who the mount, the daemon and the CLI act as (section "identity:"); none: anonymous.
    identity_principal: str = ""
    identity_attributes: Attributes = ()
    # The mount (section "mount:").
    mount_staging_dir: Path | None = None  # None: <data_dir>/staging
    mount_staging_max_mb: int = 10240
    mount_log_file: Path | None = None  # None: <data_dir>/mount.log
    mount_refresh_seconds: float = 1.0
    mount_write_back: bool = False  # close() returns once the data is durable in staging
    mount_read_ahead_mb: int = 96  # memory that all files being read share for parts fetched ahead
    # Expired files removed by the mount and the daemon every this many seconds; 0 turns it off.
    expiry_interval_seconds: float = 3600.0
    # Where the settings came from, for messages.
    source: str = "defaults"

    @property
    def backend(self) -> str:
        return "s3" if self.bucket_name else "local"

    @property
    def identity(self) -> Identity:
        """The identity the mount, the daemon (and its socket without a key) and the CLI act as."""
        return Identity(self.identity_principal, self.identity_attributes)

    @property
    def local_store_dir(self) -> Path:
        return self.data_dir / "local"

    @property
    def api_socket_path(self) -> Path:
        if self.api_socket is not None:
            return self.api_socket
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime) / "s3filesfs" if runtime else Path(f"/tmp/s3filesfs-{os.getuid()}")
        return base / "api.sock"

    @property
    def staging_dir(self) -> Path:
        return self.mount_staging_dir or self.data_dir / "staging"

    @property
    def mount_log_path(self) -> Path:
        return self.mount_log_file or self.data_dir / "mount.log"

    @property
    def metadata_location(self) -> Path | PostgresLocation:
        """What ``MetadataStore`` opens: the SQLite file or the PostgreSQL database."""
        if self.metadata_store_type != "postgres":
            return self.metadata_path
        return PostgresLocation(
            host=self.metadata_store_host, port=self.metadata_store_port, db=self.metadata_store_db,
            user=self.metadata_store_user or "", password=self.metadata_store_password,
            pool_size=self.metadata_store_pool_size, max_overflow=self.metadata_store_max_overflow,
            pool_recycle=self.metadata_store_pool_recycle,
        )

    @property
    def database(self) -> str:
        """The metadata database for messages and status: a path or ``postgresql://user@host:port/db``."""
        return str(self.metadata_location)

    @property
    def metadata_path(self) -> Path:
        """The SQLite file of the metadata (when ``metadata_store.type`` is sqlite)."""
        if self.db_path is not None:
            return self.db_path
        if self.backend == "local":
            return self.local_store_dir / "metadata.db"
        # One database per bucket, so switching buckets never mixes their rows.
        return self.data_dir / f"s3-{self.bucket_name}.db"

    def masked(self) -> dict:
        """The settings in effect, in the config file's own keys and sections, secrets masked.

        What ``config show`` prints, and loadable as a config file: defaults are spelled out and
        the paths in use are given rather than left empty. Masked secrets load as the masks, so
        they must be put back (or replaced by ``${env.NAME}``) before the result is used.
        """
        effective = {"db_path": self.metadata_path, "api_socket": self.api_socket_path,
                     "mount_staging_dir": self.staging_dir, "mount_log_file": self.mount_log_path}
        shown: dict = {}
        for f in fields(self):
            if f.name == "source":
                continue
            value = effective.get(f.name, getattr(self, f.name))
            if f.name in SECRET_KEYS and value:
                value = "****" + value[-4:] if f.name == "aws_access_key_id" else "********"
            elif f.name == "endpoint_url" and value:
                value = masked_url(value)
            elif isinstance(value, Path):
                value = str(value)
            elif f.name == "identity_attributes":
                value = Identity(attributes=value).attribute_map()
            elif f.name == "api_keys":
                value = [key.shown() for key in value]  # the variables' names, never their values
            elif isinstance(value, tuple):
                value = list(value)
            if f.name == "db_path":
                shown["metadata_store"] = self._shown_metadata_store()
                continue
            if f.name.startswith("metadata_store_"):
                continue
            section, key = _file_key(f.name)
            if section:
                shown.setdefault(section, {})[key] = value
            else:
                shown[key] = value
        return shown

    def _shown_metadata_store(self) -> dict:
        if self.metadata_store_type != "postgres":
            return {"type": "sqlite", "db_path": str(self.metadata_path)}
        shown: dict = {"type": "postgres"}
        for key in POSTGRES_KEY_ORDER:
            value = getattr(self, f"metadata_store_{key}")
            shown[key] = "********" if key == "password" and value else value
        return shown


def masked_url(url: str) -> str:
    """``url`` fit for a message: a password, a query string and a fragment masked."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "****"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "****@" + netloc.rpartition("@")[2]
    elif not netloc and "@" in parts.path:  # "user:secret@host", with no "//" to find it by
        return "****@" + url.rpartition("@")[2]
    pairs = (item.partition("=") for item in parts.query.split("&")) if parts.query else ()
    query = "&".join(f"{name}=****" if sep else "****" for name, sep, _ in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, "****" if parts.fragment else ""))


# --- reading ---------------------------------------------------------------------------------

_SCALAR_KEYS = {f.name for f in fields(Settings)} - {"db_path", "source", "upload_part_size_mb", "upload_concurrency"}
# metadata_store keys by engine type, besides "type" itself; "backend" and "table_name" (a newer
# run.yaml's reference to storage.backends) are resolved or ignored before these are read.
POSTGRES_KEY_ORDER = ("host", "port", "db", "user", "password", "pool_size", "max_overflow", "pool_recycle")
METADATA_STORE_KEYS = {"sqlite": {"db_path"}, "postgres": set(POSTGRES_KEY_ORDER)}
METADATA_STORE_TYPES = {"sqlite": "sqlite", "sql_sqlite": "sqlite", "postgres": "postgres", "sql_postgres": "postgres"}
_SECTIONS = {"metadata_store": {"type", "backend", "table_name", *METADATA_STORE_KEYS["sqlite"],
                                *METADATA_STORE_KEYS["postgres"]},
             "upload": {"part_size_mb", "concurrency"}}
_SECTIONS["sync"] = {"watch_dir", "settle_seconds", "workers", "delete", "max_retries"}
_SECTIONS["api"] = {"socket", "listen", "api_key_env", "keys"}
_SECTIONS["identity"] = {"principal", "attributes"}
_SECTIONS["mount"] = {"staging_dir", "staging_max_mb", "log_file", "refresh_seconds", "write_back", "read_ahead_mb"}
_SECTIONS["expiry"] = {"interval_seconds"}
_SCALAR_KEYS -= {f"{section}_{key}" for section in ("sync", "api", "mount", "expiry", "identity")
                 for key in _SECTIONS[section]}
_SCALAR_KEYS -= {f"metadata_store_{key}" for key in ("type", *METADATA_STORE_KEYS["postgres"])}


def _file_key(name: str) -> tuple[str | None, str]:
    """A Settings field's place in the file: ``("upload", "part_size_mb")`` or ``(None, "region")``."""
    for section in ("upload", "sync", "api", "mount", "expiry", "identity"):
        if name.startswith(f"{section}_") and name[len(section) + 1:] in _SECTIONS[section]:
            return section, name[len(section) + 1:]
    return None, name


def _fail(where: str | None, message: str) -> ConfigError:
    return ConfigError(f"config error in {where}: {message}" if where else f"config error: {message}")


def _unknown(where: str | None, key: str, known: set[str]) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return _fail(where, f"unknown key '{key}'{hint}")


def substitute_env(value, where: str, key: str):
    """Resolve ``${env.NAME}``, ``${env.NAME:=default}`` and ``${env.NAME:+value}`` in strings."""
    if isinstance(value, dict):
        return {k: substitute_env(v, where, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, where, key) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match) -> str:
        name, op, arg = match.groups()
        current = os.environ.get(name)
        if op == "=":
            return current if current else arg
        if op == "+":
            return arg if current else ""
        if current is None:
            raise _fail(where, f"{key} uses ${{env.{name}}}, but {name} is not set")
        return current

    return _ENV_REF.sub(resolve, value)


def _from_run_yaml(document: dict, where: str) -> dict:
    """The ``remote::s3`` files provider's config from a Llama Stack run.yaml."""
    providers = (document.get("providers") or {}).get("files") or []
    for provider in providers:
        if isinstance(provider, dict) and provider.get("provider_type") == "remote::s3":
            config = dict(provider.get("config") or {})
            store = config.get("metadata_store")
            if isinstance(store, dict) and "backend" in store:
                # Newer run.yaml files name a storage backend defined once under storage.backends.
                backends = (document.get("storage") or {}).get("backends") or {}
                backend = backends.get(store["backend"])
                if not isinstance(backend, dict):
                    raise _fail(where, f"metadata_store.backend '{store['backend']}' is not defined "
                                       "under storage.backends")
                config["metadata_store"] = backend
            return config
    raise _fail(where, "this Llama Stack run.yaml has no files provider of type remote::s3")


def read_file(path: Path) -> tuple[dict, bool]:
    """The file's settings, and whether they came from a Llama Stack run.yaml (which means S3)."""
    where = str(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(where, f"not readable YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise _fail(where, "the file must hold a mapping of keys")
    run_yaml = is_run_yaml(document)
    if run_yaml:
        document = _from_run_yaml(document, where)
    return substitute_env(document, where, ""), run_yaml


def is_run_yaml(document: dict) -> bool:
    return "providers" in document and any(k in document for k in ("apis", "version", "image_name"))


def _flatten(raw: dict, where: str | None) -> dict:
    """File layout (with sections) to flat Settings fields."""
    flat: dict = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise _fail(where, f"{key} must be a mapping")
            for sub in value:
                if sub not in _SECTIONS[key]:
                    raise _unknown(where, f"{key}.{sub}", {f"{key}.{s}" for s in _SECTIONS[key]})
            if key == "metadata_store":
                flat.update(_flatten_metadata_store(value, where))
            else:
                for sub, sub_value in value.items():
                    flat[f"{key}_{sub}"] = sub_value
        elif key in _SCALAR_KEYS:
            flat[key] = value
        else:
            raise _unknown(where, key, _SCALAR_KEYS | set(_SECTIONS))
    return flat


def _flatten_metadata_store(section: dict, where: str | None) -> dict:
    """``metadata_store`` (or the storage.backends entry it names) to Settings fields."""
    engine = METADATA_STORE_TYPES.get(str(section.get("type", "sqlite")))
    if engine is None:
        raise _fail(where, f"metadata_store.type '{section['type']}' is not supported "
                           "(use sqlite or postgres; sql_sqlite and sql_postgres in storage.backends)")
    other = "postgres" if engine == "sqlite" else "sqlite"
    for key in section:
        if key in METADATA_STORE_KEYS[other] - METADATA_STORE_KEYS[engine]:
            raise _fail(where, f"metadata_store.{key} is for type {other}, not {engine}")
    flat: dict = {"metadata_store_type": engine}
    if engine == "sqlite":
        if section.get("db_path"):
            flat["db_path"] = section["db_path"]
    else:
        flat.update({f"metadata_store_{key}": section[key] for key in METADATA_STORE_KEYS["postgres"]
                     if key in section})
    return flat


def _env_overrides() -> dict:
    overrides = {}
    for f in fields(Settings):
        value = os.environ.get(f"S3FILESFS_{f.name.upper()}")
        if value and f.name != "source":
            overrides[f.name] = value
    return overrides


# --- checking --------------------------------------------------------------------------------


def _as_bool(value, key: str, where: str | None) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", ""):
        return False
    raise _fail(where, f"{key} must be true or false (got {value!r})")


def _as_number(value, key: str, where, low, high, kind=int):
    """``value`` as an ``int`` (or ``float``) within ``low..high``, or a ConfigError naming ``key``."""
    try:
        number = kind(str(value).strip())
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise _fail(where, f"{key} must be {noun} (got {value!r})") from None
    if not low <= number <= high:
        shown = str if kind is int else "{:g}".format
        raise _fail(where, f"{key} must be between {shown(low)} and {shown(high)} (got {shown(number)})")
    return number


def _as_int(value, key: str, where: str | None, low: int, high: int) -> int:
    return _as_number(value, key, where, low, high)


def _as_seconds(value, key: str, where, low: float, high: float) -> float:
    return _as_number(value, key, where, low, high, kind=float)


def _optional(value) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None  # the seed's "${env.X:=}" gives "", which means "not set"


def _check(values: dict, where: str | None, s3_selected: bool) -> Settings:
    v = {key: value for key, value in values.items()}
    for key in ("bucket_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                "endpoint_url", "server_side_encryption", "sse_kms_key_id"):
        if key in v:
            v[key] = _optional(v[key])
    if v.get("endpoint_url"):
        _check_endpoint(v["endpoint_url"], where)
    if "host_id" in v:
        v["host_id"] = "" if v["host_id"] is None else str(v["host_id"])
        problem = host_id_problem(v["host_id"])
        if problem:
            raise _fail(where, f"host_id {problem} (got {v['host_id']!r})")
    s3_selected = s3_selected or any(v.get(k) for k in ("endpoint_url", "aws_access_key_id", "prefix"))
    if s3_selected and not v.get("bucket_name"):
        raise _fail(where, "bucket_name is required to use S3 (remove the S3 settings to use the local store)")
    if "region" in v:
        v["region"] = _optional(v["region"]) or "us-east-1"
    if "auto_create_bucket" in v:
        v["auto_create_bucket"] = _as_bool(v["auto_create_bucket"], "auto_create_bucket", where)
    if v.get("server_side_encryption") and v["server_side_encryption"] not in SSE_MODES:
        raise _fail(where, f"server_side_encryption must be one of {', '.join(SSE_MODES)} "
                           f"(got {v['server_side_encryption']!r})")
    if v.get("sse_kms_key_id") and v.get("server_side_encryption") != "aws:kms":
        raise _fail(where, "sse_kms_key_id needs server_side_encryption: aws:kms")
    if "prefix" in v:
        prefix = str(v["prefix"] or "").strip("/")
        v["prefix"] = f"{prefix}/" if prefix else ""
    if "purposes" in v:
        purposes = v["purposes"]
        if isinstance(purposes, str):
            purposes = [p.strip() for p in purposes.split(",") if p.strip()]
        if not isinstance(purposes, list) or not purposes:
            raise _fail(where, "purposes must be a non-empty list")
        for purpose in purposes:
            if purpose not in PURPOSES:
                raise _fail(where, f"purposes: unknown purpose {purpose!r}; must be one of {', '.join(PURPOSES)}")
        v["purposes"] = tuple(dict.fromkeys(purposes))
    for key in ("db_path", "data_dir", "sync_watch_dir", "api_socket", "mount_staging_dir", "mount_log_file"):
        if v.get(key):
            v[key] = Path(str(v[key])).expanduser()
        elif key in v:
            del v[key]
    if "upload_part_size_mb" in v:
        v["upload_part_size_mb"] = _as_int(v["upload_part_size_mb"], "upload.part_size_mb", where, 5, 512)
    if "upload_concurrency" in v:
        v["upload_concurrency"] = _as_int(v["upload_concurrency"], "upload.concurrency", where, 1, 64)
    if "stall_timeout_seconds" in v:
        v["stall_timeout_seconds"] = _as_seconds(v["stall_timeout_seconds"], "stall_timeout_seconds", where, 1.0, 3600)
    _check_daemon(v, where)
    _check_identity(v, where)
    _check_metadata_store(v, where)
    if "mount_staging_max_mb" in v:
        v["mount_staging_max_mb"] = _as_int(v["mount_staging_max_mb"], "mount.staging_max_mb", where, 1, 1 << 30)
    if "mount_write_back" in v:
        v["mount_write_back"] = _as_bool(v["mount_write_back"], "mount.write_back", where)
    if "mount_refresh_seconds" in v:
        v["mount_refresh_seconds"] = _as_seconds(v["mount_refresh_seconds"], "mount.refresh_seconds", where, 0.0, 3600)
    if "mount_read_ahead_mb" in v:
        v["mount_read_ahead_mb"] = _as_int(v["mount_read_ahead_mb"], "mount.read_ahead_mb", where, 1, 1 << 20)
    if "expiry_interval_seconds" in v:
        v["expiry_interval_seconds"] = _as_seconds(v["expiry_interval_seconds"], "expiry.interval_seconds", where,
                                                   0.0, 7 * 24 * 3600)
    return Settings(**v)


def _check_metadata_store(v: dict, where) -> None:
    """The ``metadata_store`` keys, checked in place: a SQLite file, or a PostgreSQL server and user."""
    engine = METADATA_STORE_TYPES.get(str(v.get("metadata_store_type") or "sqlite").strip())
    if engine is None:
        raise _fail(where, f"metadata_store.type '{v['metadata_store_type']}' is not supported "
                           "(use sqlite or postgres)")
    v["metadata_store_type"] = engine
    for key in ("host", "db", "user", "password"):
        name = f"metadata_store_{key}"
        if name in v:
            v[name] = _optional(v[name])
            if v[name] is None and key in ("host", "db"):
                del v[name]  # empty: the default
    numbers = {"port": (1, 65535), "pool_size": (1, 1000), "max_overflow": (0, 10000), "pool_recycle": (-1, 1 << 31)}
    for key, (low, high) in numbers.items():
        name = f"metadata_store_{key}"
        if name in v:
            v[name] = _as_int(v[name], f"metadata_store.{key}", where, low, high)
    if engine == "postgres":
        if not v.get("metadata_store_user"):
            raise _fail(where, "metadata_store.user is required for type postgres")
        if v.get("db_path"):
            # A --db-path flag or S3FILESFS_DB_PATH beside a PostgreSQL store: which one was meant?
            raise _fail(where, "db_path names a SQLite file, but metadata_store.type is postgres")


def _check_endpoint(url: str, where) -> None:
    """An http(s) URL of a host, with no secret in it; messages show it masked (``masked_url``)."""
    shown = masked_url(url)
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        raise _fail(where, f"endpoint_url is not a valid URL (got {shown!r})") from None
    try:
        _ = parsed.port  # urllib checks the port only when asked for it
    except ValueError:
        raise _fail(where, f"endpoint_url has a bad port (got {shown!r})") from None
    if parsed.username or parsed.password or (not parsed.netloc and "@" in url):
        # Refused: a secret in the URL would go into every request, message and log.
        raise _fail(where, f"endpoint_url must not hold credentials (got {shown!r}); use aws_access_key_id and "
                           "aws_secret_access_key")
    if parsed.query or parsed.fragment:
        raise _fail(where, f"endpoint_url must not have a query string or fragment (got {shown!r}); "
                           "credentials go in aws_access_key_id, aws_secret_access_key and aws_session_token")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise _fail(where, f"endpoint_url must be an http:// or https:// URL (got {shown!r})")


def _check_daemon(v: dict, where) -> None:
    """The ``sync:`` and ``api:`` sections, checked in place."""
    if "sync_settle_seconds" in v:
        v["sync_settle_seconds"] = _as_seconds(v["sync_settle_seconds"], "sync.settle_seconds", where, 0.05, 3600)
    if "sync_workers" in v:
        v["sync_workers"] = _as_int(v["sync_workers"], "sync.workers", where, 1, 64)
    if "sync_max_retries" in v:
        v["sync_max_retries"] = _as_int(v["sync_max_retries"], "sync.max_retries", where, 0, 1000)
    if "sync_delete" in v:
        v["sync_delete"] = _as_bool(v["sync_delete"], "sync.delete", where)
    for key in ("api_listen", "api_api_key_env"):
        if key in v:
            v[key] = _optional(v[key])
    if v.get("api_listen"):
        host, sep, port = v["api_listen"].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(where, f"api.listen must be HOST:PORT (got {v['api_listen']!r})")
        if not v.get("api_api_key_env") and not v.get("api_keys"):
            raise _fail(where, "api.listen needs api.api_key_env (or api.keys): the TCP listener always requires "
                               "a bearer key")


def _attributes(value, key: str, where) -> Attributes:
    """``identity.attributes`` (or a key's): a mapping of category to values; from a flag or the
    environment, ``CATEGORY=VALUE[,VALUE]`` words (a list, or one string split on spaces)."""
    try:
        if isinstance(value, str):
            value = value.split()
        if isinstance(value, list | tuple) and all(isinstance(word, str) for word in value):
            value = parse_attribute_words(value)
        if value is None:
            return ()
        return normalized(value)
    except ValueError as exc:
        raise _fail(where, f"{key}: {exc}") from None


def _principal(value, key: str, where) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise _fail(where, f"{key} must be a string (got {value!r})")
    return str(value).strip()


def _check_identity(v: dict, where) -> None:
    """The ``identity:`` section and ``api.keys``, checked in place."""
    if "identity_principal" in v:
        v["identity_principal"] = _principal(v["identity_principal"], "identity.principal", where)
    if "identity_attributes" in v:
        v["identity_attributes"] = _attributes(v["identity_attributes"], "identity.attributes", where)
        if v["identity_attributes"] and not v.get("identity_principal"):
            raise _fail(where, "identity.attributes need identity.principal: a file written with attributes "
                               "has an owner (set a principal, e.g. --principal NAME)")
    if "api_keys" not in v:
        return
    keys = v["api_keys"] or []
    if not isinstance(keys, list):
        raise _fail(where, "api.keys must be a list of {env, principal, attributes}")
    checked: list[ApiKey] = []
    for index, entry in enumerate(keys):
        name = f"api.keys[{index}]"
        if not isinstance(entry, dict):
            raise _fail(where, f"{name} must be a mapping with env, principal and attributes")
        for key in entry:
            if key not in ("env", "principal", "attributes"):
                raise _unknown(where, f"{name}.{key}", {f"{name}.env", f"{name}.principal", f"{name}.attributes"})
        env = str(entry.get("env") or "").strip()
        if not _ENV_NAME.match(env):
            # Only the name: the key itself never goes in a file.
            raise _fail(where, f"{name}.env must name the environment variable that holds the key (got {env!r})")
        if any(other.env == env for other in checked):
            raise _fail(where, f"{name}.env: {env} is used by another key")
        principal = _principal(entry.get("principal"), f"{name}.principal", where)
        if not principal:
            raise _fail(where, f"{name}.principal is required: the identity a request with this key acts as")
        checked.append(ApiKey(env, principal, _attributes(entry.get("attributes"), f"{name}.attributes", where)))
    v["api_keys"] = tuple(checked)


def load(config_path: str | Path | None = None, flags: dict | None = None) -> Settings:
    """Build the effective settings. ``flags`` are CLI values (None means not given)."""
    explicit = config_path or os.environ.get("S3FILESFS_CONFIG")
    path = Path(explicit).expanduser() if explicit else default_config_path()
    values: dict = {}
    for key, env_name in SEED_ENV.items():
        if os.environ.get(env_name):
            values[key] = os.environ[env_name]
    where, s3_selected = None, False
    if explicit or path.exists():
        # A Llama Stack remote::s3 provider means S3, even if its bucket name came out empty.
        raw, s3_selected = read_file(path)
        where = str(path)
        values.update(_flatten(raw, where))
    values.update(_env_overrides())
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    settings = _check(values, where, s3_selected)
    return replace(settings, source=where or "defaults, environment and flags")


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
