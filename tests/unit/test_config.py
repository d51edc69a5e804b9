"""Settings from a YAML file (ours or a Llama Stack run.yaml), environment variables and flags."""

import os
import textwrap
from pathlib import Path

import pytest

from s3filesfs import config
from s3filesfs.errors import ConfigError
from s3filesfs.metadata import PostgresLocation
from s3filesfs.model import PURPOSES

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
TOKEN = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def config_file(tmp_path):
    """Writes the user's config at its default place (XDG_CONFIG_HOME is a temp dir)."""
    return lambda text: write(tmp_path / "config" / "s3filesfs" / "config.yaml", text)


# --- defaults and the embedded store ----------------------------------------------------------


def test_no_config_means_the_embedded_local_store(tmp_path):
    settings = config.load()
    assert settings.backend == "local"
    assert settings.bucket_name is None
    assert settings.data_dir == tmp_path / "data" / "s3filesfs"
    assert settings.local_store_dir == tmp_path / "data" / "s3filesfs" / "local"
    assert settings.metadata_path == settings.local_store_dir / "metadata.db"
    assert settings.purposes == PURPOSES
    assert (settings.region, settings.prefix, settings.auto_create_bucket) == ("us-east-1", "", False)
    assert settings.source == "defaults, environment and flags"


def test_empty_bucket_in_our_own_file_means_the_local_store(config_file):
    path = config_file("""
        bucket_name: ${env.S3_BUCKET_NAME:=}
        region: eu-west-1
    """)
    settings = config.load()
    assert settings.backend == "local"
    assert settings.region == "eu-west-1"
    assert settings.source == str(path)


# --- our own YAML file ------------------------------------------------------------------------


def test_yaml_file_at_the_default_place(config_file, tmp_path):
    path = config_file(f"""
        bucket_name: team-files
        region: eu-central-1
        endpoint_url: http://127.0.0.1:9000
        aws_access_key_id: AKIAEXAMPLEKEY123456
        aws_secret_access_key: {SECRET}
        aws_session_token: {TOKEN}
        auto_create_bucket: true
        prefix: openai/files
        server_side_encryption: aws:kms
        sse_kms_key_id: alias/files
        purposes: [batch, assistants]
        data_dir: {tmp_path / "elsewhere"}
        metadata_store:
          type: sqlite
          db_path: {tmp_path / "meta.db"}
        upload:
          part_size_mb: 16
          concurrency: 8
    """)
    settings = config.load()
    assert settings.backend == "s3"
    assert settings.bucket_name == "team-files"
    assert settings.region == "eu-central-1"
    assert settings.endpoint_url == "http://127.0.0.1:9000"
    assert settings.aws_access_key_id == "AKIAEXAMPLEKEY123456"
    assert settings.aws_secret_access_key == SECRET
    assert settings.aws_session_token == TOKEN
    assert settings.auto_create_bucket is True
    assert settings.prefix == "openai/files/"
    assert (settings.server_side_encryption, settings.sse_kms_key_id) == ("aws:kms", "alias/files")
    assert settings.purposes == ("batch", "assistants")
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.metadata_path == tmp_path / "meta.db"
    assert (settings.upload_part_size_mb, settings.upload_concurrency) == (16, 8)
    assert settings.source == str(path)


def test_s3_database_defaults_to_one_per_bucket(config_file, tmp_path):
    config_file("bucket_name: team-files\n")
    settings = config.load()
    assert settings.metadata_path == tmp_path / "data" / "s3filesfs" / "s3-team-files.db"


def test_explicit_path_and_s3filesfs_config_variable(tmp_path, monkeypatch, config_file):
    config_file("bucket_name: from-default-place\n")
    chosen = write(tmp_path / "chosen.yaml", "bucket_name: from-chosen-file\n")
    assert config.load(chosen).bucket_name == "from-chosen-file"
    assert config.load(str(chosen)).bucket_name == "from-chosen-file"
    monkeypatch.setenv("S3FILESFS_CONFIG", str(chosen))
    assert config.load().bucket_name == "from-chosen-file"


def test_an_explicit_path_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*missing\.yaml does not exist"):
        config.load(tmp_path / "missing.yaml")


def test_db_path_expands_the_home_folder(config_file, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config_file("metadata_store:\n  db_path: ~/files/meta.db\n")
    assert config.load().metadata_path == tmp_path / "home" / "files" / "meta.db"


# --- ${env.X} substitution --------------------------------------------------------------------


def test_env_substitution_forms(config_file, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_BUCKET", "bucket-from-env")
    monkeypatch.setenv("MY_REGION", "ap-south-1")
    monkeypatch.setenv("EMPTY_VALUE", "")
    monkeypatch.setenv("USE_SSE", "yes")
    monkeypatch.setenv("STORE_DIR", str(tmp_path / "store"))
    config_file("""
        bucket_name: ${env.MY_BUCKET}
        region: ${env.MY_REGION:=us-west-2}
        endpoint_url: ${env.UNSET_ENDPOINT:=http://localhost:9000}
        prefix: ${env.EMPTY_VALUE:=fallback}/${env.MY_BUCKET}
        server_side_encryption: ${env.USE_SSE:+AES256}
        sse_kms_key_id: ${env.UNSET_KMS:+alias/never}
        metadata_store:
          db_path: ${env.STORE_DIR}/meta.db
    """)
    settings = config.load()
    assert settings.bucket_name == "bucket-from-env"
    assert settings.region == "ap-south-1"                        # := with the variable set
    assert settings.endpoint_url == "http://localhost:9000"       # := with the variable unset
    assert settings.prefix == "fallback/bucket-from-env/"         # := treats "" as unset
    assert settings.server_side_encryption == "AES256"            # :+ with the variable set
    assert settings.sse_kms_key_id is None                        # :+ with the variable unset
    assert settings.metadata_path == tmp_path / "store" / "meta.db"


def test_unset_variable_without_default_names_the_key(config_file):
    path = config_file("""
        bucket_name: files
        metadata_store:
          db_path: ${env.NOT_SET_ANYWHERE}/meta.db
    """)
    with pytest.raises(ConfigError) as raised:
        config.load()
    message = str(raised.value)
    assert message == (f"config error in {path}: metadata_store.db_path uses ${{env.NOT_SET_ANYWHERE}}, "
                       "but NOT_SET_ANYWHERE is not set")


# --- a Llama Stack run.yaml -------------------------------------------------------------------

RUN_YAML = """
    version: 2
    image_name: starter
    apis:
    - files
    - inference
    providers:
      inference:
      - provider_id: vllm
        provider_type: remote::vllm
        config:
          url: ${env.VLLM_URL}
      files:
      - provider_id: meta-reference-files
        provider_type: inline::localfs
        config:
          storage_dir: /tmp/files
      - provider_id: s3-files
        provider_type: remote::s3
        config:
          bucket_name: ${env.S3_BUCKET_NAME}
          region: ${env.AWS_REGION:=us-east-1}
          aws_access_key_id: ${env.AWS_ACCESS_KEY_ID:=}
          aws_secret_access_key: ${env.AWS_SECRET_ACCESS_KEY:=}
          endpoint_url: ${env.S3_ENDPOINT_URL:=}
          auto_create_bucket: ${env.S3_AUTO_CREATE_BUCKET:=false}
          metadata_store:
            type: sqlite
            db_path: ${env.SQLITE_STORE_DIR:=~/.llama/distributions/starter}/s3_files_metadata.db
    server:
      port: 8321
"""

NEW_RUN_YAML = """
    version: 2
    image_name: starter
    apis: [files]
    providers:
      files:
      - provider_id: s3
        provider_type: remote::s3
        config:
          bucket_name: ${env.S3_BUCKET_NAME}
          region: ${env.AWS_REGION:=us-east-1}
          endpoint_url: ${env.S3_ENDPOINT_URL:=}
          auto_create_bucket: ${env.S3_AUTO_CREATE_BUCKET:=true}
          metadata_store:
            table_name: s3_files_metadata
            backend: sql_default
    storage:
      backends:
        kv_default:
          type: kv_sqlite
          db_path: ${env.SQLITE_STORE_DIR}/kvstore.db
        sql_default:
          type: sql_sqlite
          db_path: ${env.SQLITE_STORE_DIR}/sql_store.db
"""


def test_llama_stack_run_yaml_uses_its_remote_s3_files_provider(tmp_path, monkeypatch):
    run_yaml = write(tmp_path / "run.yaml", RUN_YAML)
    monkeypatch.setenv("S3_BUCKET_NAME", "llama-files")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("SQLITE_STORE_DIR", str(tmp_path / "llama"))
    settings = config.load(run_yaml)  # VLLM_URL is unset: other providers are not our business
    assert settings.backend == "s3"
    assert settings.bucket_name == "llama-files"
    assert settings.region == "us-east-1"
    assert settings.endpoint_url == "http://127.0.0.1:9000"
    assert settings.aws_secret_access_key == SECRET
    assert settings.auto_create_bucket is False
    assert settings.metadata_path == tmp_path / "llama" / "s3_files_metadata.db"
    assert settings.source == str(run_yaml)


def test_run_yaml_with_empty_optional_values_uses_the_default_chain(tmp_path, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "llama-files")
    settings = config.load(write(tmp_path / "run.yaml", RUN_YAML))
    assert (settings.aws_access_key_id, settings.aws_secret_access_key, settings.endpoint_url) == (None, None, None)
    assert settings.metadata_path == Path("~/.llama/distributions/starter/s3_files_metadata.db").expanduser()


def test_newer_run_yaml_resolves_the_metadata_store_from_storage_backends(tmp_path, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "llama-files")
    monkeypatch.setenv("SQLITE_STORE_DIR", str(tmp_path / "llama"))
    settings = config.load(write(tmp_path / "run.yaml", NEW_RUN_YAML))
    assert settings.bucket_name == "llama-files"
    assert settings.auto_create_bucket is True
    assert settings.metadata_path == tmp_path / "llama" / "sql_store.db"


def test_run_yaml_naming_an_undefined_backend_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "llama-files")
    path = write(tmp_path / "run.yaml", NEW_RUN_YAML.replace("backend: sql_default", "backend: sql_other"))
    with pytest.raises(ConfigError, match="metadata_store.backend 'sql_other' is not defined under storage.backends"):
        config.load(path)


def test_run_yaml_without_a_remote_s3_files_provider_is_an_error(tmp_path):
    path = write(tmp_path / "run.yaml", RUN_YAML.replace("provider_type: remote::s3", "provider_type: remote::other"))
    with pytest.raises(ConfigError, match="no files provider of type remote::s3"):
        config.load(path)


def test_run_yaml_whose_bucket_comes_out_empty_still_means_s3(tmp_path, monkeypatch):
    path = write(tmp_path / "run.yaml", RUN_YAML.replace("${env.S3_BUCKET_NAME}", "${env.S3_BUCKET_NAME:=}"))
    with pytest.raises(ConfigError, match="bucket_name is required to use S3"):
        config.load(path)


# --- precedence -------------------------------------------------------------------------------


def test_seed_environment_names_fill_in_without_a_file(monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "seed-bucket")
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    monkeypatch.setenv("S3_ENDPOINT_URL", "https://s3.example.com")
    monkeypatch.setenv("S3_AUTO_CREATE_BUCKET", "true")
    settings = config.load()
    assert (settings.bucket_name, settings.region, settings.endpoint_url, settings.auto_create_bucket) == (
        "seed-bucket", "eu-north-1", "https://s3.example.com", True)


def test_precedence_defaults_seed_env_file_our_env_flags(config_file, monkeypatch):
    config_file("""
        bucket_name: file-bucket
        prefix: file-prefix
    """)
    monkeypatch.setenv("S3_BUCKET_NAME", "seed-env-bucket")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    # The file beats the seed's names; keys it leaves out still come from them.
    settings = config.load()
    assert (settings.bucket_name, settings.region, settings.prefix) == ("file-bucket", "eu-west-3", "file-prefix/")
    # S3FILESFS_<KEY> beats the file.
    monkeypatch.setenv("S3FILESFS_BUCKET_NAME", "our-env-bucket")
    monkeypatch.setenv("S3FILESFS_PURPOSES", "batch, vision")
    monkeypatch.setenv("S3FILESFS_AUTO_CREATE_BUCKET", "yes")
    settings = config.load()
    assert (settings.bucket_name, settings.purposes, settings.auto_create_bucket) == (
        "our-env-bucket", ("batch", "vision"), True)
    # Flags beat everything; a flag left at None does not count.
    settings = config.load(flags={"bucket_name": "flag-bucket", "prefix": None, "region": "sa-east-1"})
    assert (settings.bucket_name, settings.prefix, settings.region) == ("flag-bucket", "file-prefix/", "sa-east-1")


def test_flags_alone_select_s3(tmp_path):
    settings = config.load(flags={"bucket_name": "flagged", "endpoint_url": "http://127.0.0.1:1",
                                  "db_path": str(tmp_path / "f.db"), "data_dir": None})
    assert settings.backend == "s3"
    assert settings.metadata_path == tmp_path / "f.db"


# --- bad configurations: one line that names the key ------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("bucket: files\n", "unknown key 'bucket' (did you mean 'bucket_name'?)"),
    ("bucket_name: files\nendpoint: http://x\n", "unknown key 'endpoint' (did you mean 'endpoint_url'?)"),
    ("bucket_name: files\ncolour: blue\n", "unknown key 'colour'"),
    ("metadata_store:\n  dbpath: /tmp/x.db\n",
     "unknown key 'metadata_store.dbpath' (did you mean 'metadata_store.db_path'?)"),
    ("metadata_store:\n  type: mysql\n", "metadata_store.type 'mysql' is not supported (use sqlite or postgres"),
    ("metadata_store:\n  type: postgres\n", "metadata_store.user is required for type postgres"),
    ("metadata_store:\n  type: postgres\n  user: u\n  port: 99999\n",
     "metadata_store.port must be between 1 and 65535"),
    ("metadata_store:\n  type: postgres\n  user: u\n  pool_size: many\n",
     "metadata_store.pool_size must be a whole number"),
    ("metadata_store:\n  type: postgres\n  user: u\n  db_path: /tmp/x.db\n",
     "metadata_store.db_path is for type sqlite, not postgres"),
    ("metadata_store:\n  db_path: /tmp/x.db\n  host: db.internal\n",
     "metadata_store.host is for type postgres, not sqlite"),
    ("metadata_store:\n  type: postgres\n  user: u\n  hots: db\n",
     "unknown key 'metadata_store.hots' (did you mean 'metadata_store.host'?)"),
    ("metadata_store: /tmp/x.db\n", "metadata_store must be a mapping"),
    ("endpoint_url: http://127.0.0.1:9000\n", "bucket_name is required to use S3"),
    ("aws_access_key_id: AKIAEXAMPLE\n", "bucket_name is required to use S3"),
    ("prefix: team\n", "bucket_name is required to use S3"),
    ("bucket_name: files\nendpoint_url: 127.0.0.1:9000\n", "endpoint_url must be an http:// or https:// URL"),
    ("bucket_name: files\nendpoint_url: ftp://host\n", "endpoint_url must be an http:// or https:// URL"),
    ("bucket_name: files\nendpoint_url: http://host:99999\n", "endpoint_url has a bad port"),
    ("purposes: [batch, training]\n", "purposes: unknown purpose 'training'"),
    ("purposes: []\n", "purposes must be a non-empty list"),
    ("bucket_name: files\nserver_side_encryption: AES128\n", "server_side_encryption must be one of AES256, aws:kms"),
    ("bucket_name: files\nsse_kms_key_id: alias/k\n", "sse_kms_key_id needs server_side_encryption: aws:kms"),
    ("bucket_name: files\nauto_create_bucket: maybe\n", "auto_create_bucket must be true or false"),
    ("upload:\n  part_size_mb: 2\n", "upload.part_size_mb must be between 5 and 512"),
    ("upload:\n  concurrency: lots\n", "upload.concurrency must be a whole number"),
    ("mount:\n  read_ahead_mb: 0\n", "mount.read_ahead_mb must be between 1 and"),
    ("mount:\n  readahead_mb: 64\n", "unknown key 'mount.readahead_mb' (did you mean 'mount.read_ahead_mb'?)"),
    ("- bucket_name\n", "the file must hold a mapping of keys"),
    ("bucket_name: [files\n", "not readable YAML"),
])
def test_bad_config_fails_with_one_line_naming_the_key(config_file, text, expected):
    path = config_file(text)
    with pytest.raises(ConfigError) as raised:
        config.load()
    message = str(raised.value)
    assert message.startswith(f"config error in {path}: ")
    assert expected in message
    assert "\n" not in message
    assert raised.value.exit_code == 1


@pytest.mark.parametrize("variable, value, expected", [
    ("S3FILESFS_AUTO_CREATE_BUCKET", "sometimes", "auto_create_bucket must be true or false"),
    ("S3FILESFS_PURPOSES", "batch,bogus", "purposes: unknown purpose 'bogus'"),
    ("S3_ENDPOINT_URL", "not a url", "endpoint_url must be an http:// or https:// URL"),
    ("S3FILESFS_SERVER_SIDE_ENCRYPTION", "rot13", "server_side_encryption must be one of"),
])
def test_bad_environment_values_fail_the_same_way(monkeypatch, variable, value, expected):
    monkeypatch.setenv("S3FILESFS_BUCKET_NAME", "files")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        config.load()
    assert str(raised.value).startswith("config error: ")
    assert expected in str(raised.value)


def test_read_ahead_budget_from_the_file_and_the_environment(config_file, monkeypatch):
    assert config.load().mount_read_ahead_mb == 96
    config_file("mount:\n  read_ahead_mb: 64\n")
    assert config.load().mount_read_ahead_mb == 64
    monkeypatch.setenv("S3FILESFS_MOUNT_READ_AHEAD_MB", "32")
    assert config.load().mount_read_ahead_mb == 32


def test_bad_flag_fails_the_same_way():
    with pytest.raises(ConfigError, match="endpoint_url must be an http:// or https:// URL"):
        config.load(flags={"bucket_name": "files", "endpoint_url": "s3.example.com"})


# --- masking ----------------------------------------------------------------------------------


def test_masked_hides_the_secrets(config_file, tmp_path):
    config_file(f"""
        bucket_name: team-files
        aws_access_key_id: AKIAEXAMPLEKEY123456
        aws_secret_access_key: {SECRET}
        aws_session_token: {TOKEN}
        metadata_store:
          db_path: {tmp_path / "meta.db"}
    """)
    shown = config.load().masked()
    assert shown["aws_secret_access_key"] == "********"
    assert shown["aws_session_token"] == "********"
    assert shown["aws_access_key_id"] == "****3456"
    assert shown["bucket_name"] == "team-files"
    assert shown["metadata_store"] == {"type": "sqlite", "db_path": str(tmp_path / "meta.db")}
    dumped = config.dump_yaml(shown)
    for secret in (SECRET, TOKEN, "AKIAEXAMPLEKEY123456"):
        assert secret not in dumped
    assert config.dump_yaml(config.load().masked()) == dumped  # plain data, stable


def test_masked_leaves_unset_secrets_empty():
    shown = config.load().masked()
    assert shown["aws_secret_access_key"] is None
    assert shown["bucket_name"] is None
    assert os.fspath(config.load().local_store_dir) in config.dump_yaml(shown)


def test_masked_is_in_the_files_own_layout_and_loads_back(config_file, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    config_file(f"""
        bucket_name: team-files
        endpoint_url: http://127.0.0.1:9000
        aws_access_key_id: AKIAEXAMPLEKEY123456
        aws_secret_access_key: {SECRET}
        prefix: team
        data_dir: {tmp_path / "data"}
        upload:
          part_size_mb: 16
        sync:
          workers: 2
        mount:
          refresh_seconds: 0.5
    """)
    settings = config.load()
    shown = settings.masked()
    # Sections as the file has them, with the values and paths in effect rather than nulls.
    assert shown["upload"] == {"part_size_mb": 16, "concurrency": 4}
    assert shown["sync"]["workers"] == 2 and shown["sync"]["watch_dir"] == str(Path.home() / "S3Files")
    assert shown["api"] == {"socket": str(tmp_path / "run" / "s3filesfs" / "api.sock"), "listen": None,
                            "api_key_env": None, "keys": []}
    assert shown["identity"] == {"principal": "", "attributes": {}}
    assert shown["mount"] == {"staging_dir": str(tmp_path / "data" / "staging"), "staging_max_mb": 10240,
                              "log_file": str(tmp_path / "data" / "mount.log"), "refresh_seconds": 0.5,
                              "write_back": False, "read_ahead_mb": 96}
    assert shown["metadata_store"] == {"type": "sqlite", "db_path": str(tmp_path / "data" / "s3-team-files.db")}
    assert not [key for key in shown if "_" in key and key.split("_")[0] in ("upload", "sync", "api", "mount")]
    # Written back as a config file, it loads to the same settings (the masked secret aside).
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(config.dump_yaml(shown))
    again = config.load(pasted)
    assert again.masked() == shown
    assert again.aws_secret_access_key == "********"
    for name in ("bucket_name", "endpoint_url", "prefix", "upload_part_size_mb", "sync_workers",
                 "mount_refresh_seconds", "api_socket_path", "staging_dir", "metadata_path"):
        assert getattr(again, name) == getattr(settings, name), name


@pytest.mark.parametrize("url, secret", [
    ("http://admin:hunter2@127.0.0.1:9000", "hunter2"),
    ("admin:hunter2@127.0.0.1:9000", "hunter2"),
    ("https:/admin:hunter2@host", "hunter2"),
    ("http://127.0.0.1:9000/?X-Amz-Security-Token=hunter2", "hunter2"),
    ("http://127.0.0.1:99999/?token=hunter2", "hunter2"),
    ("http://127.0.0.1:9000/#hunter2", "hunter2"),
])
def test_a_secret_in_endpoint_url_is_refused_and_never_echoed(url, secret):
    with pytest.raises(ConfigError) as raised:
        config.load(flags={"bucket_name": "b", "endpoint_url": url})
    assert "endpoint_url" in str(raised.value)
    assert secret not in str(raised.value)


def test_masked_url_hides_passwords_queries_and_fragments():
    assert config.masked_url("http://u:p@h:9/x?a=1&b#f") == "http://****@h:9/x?a=****&****#****"
    assert config.masked_url("http://h:9000") == "http://h:9000"
    assert config.masked_url("u:p@h") == "****@h"


def test_endpoint_url_with_embedded_credentials_is_refused_without_echoing_them():
    from s3filesfs import config as config_module
    from s3filesfs.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        config_module.load(flags={"bucket_name": "b", "endpoint_url": "http://admin:hunter2@127.0.0.1:9000"})
    assert "endpoint_url must not hold credentials" in str(raised.value)
    assert "hunter2" not in str(raised.value)


# --- PostgreSQL as the metadata store -----------------------------------------------------------

PG_PASSWORD = "pg-Secret-5f1c9e"


def test_postgres_metadata_store_with_the_seeds_keys(config_file, monkeypatch):
    config_file("""
        bucket_name: team-files
        metadata_store:
          type: postgres
          host: ${env.POSTGRES_HOST:=localhost}
          port: ${env.POSTGRES_PORT:=5432}
          db: ${env.POSTGRES_DB:=llamastack}
          user: ${env.POSTGRES_USER:=llamastack}
          password: ${env.POSTGRES_PASSWORD:=llamastack}
    """)
    monkeypatch.setenv("POSTGRES_HOST", "db.internal")
    monkeypatch.setenv("POSTGRES_PORT", "5433")
    monkeypatch.setenv("POSTGRES_PASSWORD", PG_PASSWORD)
    settings = config.load()
    location = settings.metadata_location
    assert isinstance(location, PostgresLocation)
    assert (location.host, location.port, location.db, location.user, location.password) == (
        "db.internal", 5433, "llamastack", "llamastack", PG_PASSWORD)
    assert (location.pool_size, location.max_overflow, location.pool_recycle) == (5, 10, -1)
    assert settings.database == "postgresql://llamastack@db.internal:5433/llamastack"
    assert PG_PASSWORD not in repr(location) + repr(settings) + str(location)


def test_postgres_password_is_masked_and_the_rest_shown(config_file, tmp_path):
    config_file(f"""
        bucket_name: team-files
        metadata_store:
          type: postgres
          host: db.internal
          user: files
          password: {PG_PASSWORD}
          pool_size: 3
    """)
    settings = config.load()
    shown = settings.masked()
    assert shown["metadata_store"] == {"type": "postgres", "host": "db.internal", "port": 5432, "db": "llamastack",
                                       "user": "files", "password": "********", "pool_size": 3,
                                       "max_overflow": 10, "pool_recycle": -1}
    assert not [key for key in shown if key.startswith("metadata_store_") or key == "db_path"]
    dumped = config.dump_yaml(shown)
    assert PG_PASSWORD not in dumped
    # Shown, it loads back to the same store (the masked password aside).
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(dumped)
    again = config.load(pasted)
    assert again.masked() == shown
    assert again.metadata_location == PostgresLocation(host="db.internal", user="files", password="********",
                                                       pool_size=3)


def test_postgres_from_the_environment_alone(monkeypatch):
    monkeypatch.setenv("S3FILESFS_METADATA_STORE_TYPE", "postgres")
    monkeypatch.setenv("S3FILESFS_METADATA_STORE_USER", "files")
    monkeypatch.setenv("S3FILESFS_METADATA_STORE_PASSWORD", PG_PASSWORD)
    monkeypatch.setenv("S3FILESFS_METADATA_STORE_PORT", "6432")
    location = config.load().metadata_location
    assert location == PostgresLocation(port=6432, user="files", password=PG_PASSWORD)
    monkeypatch.setenv("S3FILESFS_DB_PATH", "/tmp/files.db")
    with pytest.raises(ConfigError, match="db_path names a SQLite file, but metadata_store.type is postgres"):
        config.load()


RUN_YAML_POSTGRES = """
    version: 2
    image_name: starter
    apis: [files]
    providers:
      files:
      - provider_id: s3
        provider_type: remote::s3
        config:
          bucket_name: ${env.S3_BUCKET_NAME}
          metadata_store:
            table_name: s3_files_metadata
            backend: sql_default
    storage:
      backends:
        kv_default:
          type: kv_postgres
          host: ${env.POSTGRES_HOST:=localhost}
          user: ${env.POSTGRES_USER:=llamastack}
          table_name: ${env.POSTGRES_TABLE_NAME:=llamastack_kvstore}
        sql_default:
          type: sql_postgres
          host: ${env.POSTGRES_HOST:=localhost}
          port: ${env.POSTGRES_PORT:=5432}
          db: ${env.POSTGRES_DB:=llamastack}
          user: ${env.POSTGRES_USER:=llamastack}
          password: ${env.POSTGRES_PASSWORD:=llamastack}
          pool_size: 10
          max_overflow: 20
"""


def test_run_yaml_with_a_sql_postgres_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "llama-files")
    monkeypatch.setenv("POSTGRES_HOST", "pg.internal")
    monkeypatch.setenv("POSTGRES_PASSWORD", PG_PASSWORD)
    settings = config.load(write(tmp_path / "run.yaml", RUN_YAML_POSTGRES))
    assert settings.bucket_name == "llama-files"
    assert settings.metadata_location == PostgresLocation(host="pg.internal", port=5432, db="llamastack",
                                                          user="llamastack", password=PG_PASSWORD,
                                                          pool_size=10, max_overflow=20)
    assert settings.masked()["metadata_store"]["password"] == "********"


def test_run_yaml_pointing_at_a_kv_backend_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "llama-files")
    path = write(tmp_path / "run.yaml", RUN_YAML_POSTGRES.replace("backend: sql_default", "backend: kv_default"))
    with pytest.raises(ConfigError, match="metadata_store.type 'kv_postgres' is not supported"):
        config.load(path)


def test_expiry_interval_from_the_file_the_environment_and_config_show(config_file, monkeypatch):
    assert config.load().expiry_interval_seconds == 3600
    config_file("""
        expiry:
          interval_seconds: 0  # off
    """)
    settings = config.load()
    assert settings.expiry_interval_seconds == 0
    assert settings.masked()["expiry"] == {"interval_seconds": 0}
    monkeypatch.setenv("S3FILESFS_EXPIRY_INTERVAL_SECONDS", "90")
    assert config.load().expiry_interval_seconds == 90
    for bad, complaint in (("-1", "expiry.interval_seconds must be between 0 and 604800 (got -1)"),
                           ("soon", "expiry.interval_seconds must be a number (got 'soon')")):
        monkeypatch.setenv("S3FILESFS_EXPIRY_INTERVAL_SECONDS", bad)
        with pytest.raises(ConfigError) as raised:
            config.load()
        assert complaint in str(raised.value)
    monkeypatch.delenv("S3FILESFS_EXPIRY_INTERVAL_SECONDS")
    config_file("""
        expiry:
          interval: 60
    """)
    with pytest.raises(ConfigError) as raised:
        config.load()
    assert "unknown key 'expiry.interval' (did you mean 'expiry.interval_seconds'?)" in str(raised.value)
