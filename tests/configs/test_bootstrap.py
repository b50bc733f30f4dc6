"""The bootstrap (the seed's "Meta Configuration"): the seed's own text loads and is obeyed,
version labels such as 1.0 work in every command, and a bootstrap can pin one."""

import io
import textwrap
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from pymongo.uri_parser import parse_uri

from configs import bootstrap, keys, live, protocol, store
from configs.protocol import ConfigError
from infra import stores
from tests.configs.test_configs import config, upload, write

ROOT = Path(__file__).resolve().parents[2]
# The seed's block as it is written there (its web page lost the indentation, restored here;
# nothing else changed): `!ENV${VAR}` glued, `!ENV ${VAR}` spaced, versions pinned as 1.0.
SEED = Path(__file__).resolve().parent / "fixtures" / "seed_bootstrap.yaml"
API_V1 = "intake_rate: 600/min\n"
API_V2 = "intake_rate: 60/min\nmax_body_bytes: 2048\n"


def seed_env(**overrides) -> dict:
    return {
        "CFG_COLLECTION": "svc_config_versions",
        "MONGO_URI": "mongodb://127.0.0.1/?directConnection=true",
        "MONGO_PORT": "27017",
        "MONGO_DB": "svc_configs",
        "decrypt_key": Fernet.generate_key().decode(),
        **overrides,
    }


def test_the_seed_s_bootstrap_text_loads_and_resolves_its_env_values():
    env = seed_env()
    loaded = bootstrap.parse_bootstrap(SEED.read_text(), path=SEED, env=env)

    assert loaded.ids == {"api": "1.0", "service_map": "1.0"}  # labels, not the float 1.0
    assert loaded.collection == "svc_config_versions"
    assert loaded.mongo == bootstrap.MongoTarget(
        uri="mongodb://127.0.0.1:27017/?directConnection=true", db="svc_configs"
    )
    assert loaded.fernet_key == env["decrypt_key"] and loaded.key_variable == "decrypt_key"
    assert env["decrypt_key"] not in repr(loaded)


def test_the_seed_s_bootstrap_names_each_variable_it_lacks():
    env = seed_env()
    del env["MONGO_PORT"], env["decrypt_key"]
    with pytest.raises(ConfigError) as caught:
        bootstrap.parse_bootstrap(SEED.read_text(), path=SEED, env=env)
    assert sorted(p.split(": ", 1)[1] for p in caught.value.problems) == [
        "line 12: environment variable MONGO_PORT is not set",
        "line 16: environment variable decrypt_key is not set",
    ]


@pytest.fixture
def seed_stack(settings, monkeypatch):
    """The seed's bootstrap in effect: its collection, in its own database of the session's
    MongoDB (given as uri + port + db, as the seed does), its key from `decrypt_key`."""
    host, port = parse_uri(settings.MONGO_URI)["nodelist"][0]
    env = seed_env(
        CFG_COLLECTION="seed_configs",
        MONGO_URI=f"mongodb://{host}/?directConnection=true",
        MONGO_PORT=str(port),
        MONGO_DB="svc_seed_configs",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(keys.KEY_ENV, raising=False)  # the seed's key is decrypt_key
    settings.SVC_CONFIG_BOOTSTRAP = str(SEED)
    live.forget()
    database = stores.mongo_db_at(f"mongodb://{host}:{port}/?directConnection=true")
    seed_db = database.client[env["MONGO_DB"]]
    yield seed_db
    database.client.drop_database(env["MONGO_DB"])
    live.forget()


def test_configs_follow_the_seed_s_bootstrap(seed_stack, tmp_path):
    upload(tmp_path, "api", API_V1, "--version", "1.0")
    upload(tmp_path, "api", API_V2, "--version", "1.1")
    secret = "service_map-secret-0f1e"
    upload(
        tmp_path,
        "service_map",
        "resource_map: {resources: {}}\n"
        f"credentials:\n  main: {{kind: api_key, ~api_key: {secret}}}\n",
        "--version",
        "1.0",
    )

    # Stored where the seed says: its collection (and the two beside it), in its database.
    assert sorted(seed_stack.list_collection_names()) == [
        "seed_configs",
        "seed_configs_active",
        "seed_configs_events",
    ]
    assert {d["label"] for d in seed_stack["seed_configs"].find()} == {"1.0", "1.1"}
    assert secret not in str(list(seed_stack["seed_configs"].find()))  # sealed with decrypt_key
    # The bootstrap pins api 1.0 although 1.1 is the active version.
    assert store.active("api").label == "1.1"
    assert live.config("api") == {"intake_rate": "600/min"}
    assert live.section("service_map", "credentials", "main")["api_key"] == secret


def test_upload_version_1_0_then_roll_back_to_1_0(fernet_key, tmp_path):
    assert "uploaded api version 1 (1.0)" in upload(tmp_path, "api", API_V1, "--version", "1.0")
    assert "uploaded api version 2 (1.1)" in upload(tmp_path, "api", API_V2, "--version", "1.1")
    upload(tmp_path, "api", API_V1.replace("600", "300"))  # version 3, no label

    out, _ = config("rollback", "api", "--to", "1.0")
    assert out.strip() == "api: version 1 (1.0) is active (was 3)"
    assert store.active("api").version == 1
    header, *rows = config("list", "api")[0].splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "LABEL", "ACTIVE"]
    assert [row.split()[:4] for row in rows[:1]] == [["api", "1", "1.0", "*"]]
    assert rows[1].split()[:3] == ["api", "2", "1.1"] and "*" not in rows[1]
    assert rows[2].split()[:2] == ["api", "3"] and "*" not in rows[2]
    shown, _ = config("show", "api", "--version", "1.1")
    assert shown.startswith("# api version 2 (1.1), sha256")
    diff, _ = config("diff", "api", "1.0", "1.1")
    assert "--- api version 1 (1.0)" in diff and "+intake_rate: 60/min" in diff


def test_a_label_is_taken_once_and_must_look_like_one(fernet_key, tmp_path):
    upload(tmp_path, "api", API_V1, "--version", "1.0")
    before = store.versions("api")
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was stored"):
        path = write(tmp_path, API_V2, "again.yaml")
        call_command("config", "upload", path, "--name", "api", "--version", "1.0", stderr=err)
    assert "api: label 1.0 exists already (versions are immutable)" in err.getvalue()
    for bad in ("1 0", "-1", "0", "1.0/2", "x" * 40):
        with pytest.raises(CommandError, match="--version"):
            upload(tmp_path, "api", API_V2, "--version", bad)
    assert store.versions("api") == before
    with pytest.raises(CommandError, match="no version 9.9"):
        config("rollback", "api", "--to", "9.9")


def test_a_bootstrap_pins_a_label_as_written(fernet_key, tmp_path, settings):
    upload(tmp_path, "api", API_V1, "--version", "1.10")
    upload(tmp_path, "api", API_V2, "--version", "1.1")
    shipped = (ROOT / "configs" / "config.yaml").read_text()
    settings.SVC_CONFIG_BOOTSTRAP = write(
        tmp_path, shipped.replace("api: active", "api: 1.10"), "pinned.yaml"
    )
    live.forget()
    assert bootstrap.pinned_version("api") == "1.10"  # not the float 1.1
    assert live.config("api") == {"intake_rate": "600/min"}


def test_the_shipped_bootstrap_follows_the_active_versions(settings, monkeypatch):
    settings.SVC_CONFIG_BOOTSTRAP = ""
    monkeypatch.delenv(keys.KEY_ENV, raising=False)  # not needed to read the bootstrap

    loaded = bootstrap.load_bootstrap()

    assert loaded.ids == {"api": None, "service_map": None}
    assert loaded.mongo.uri == settings.MONGO_URI and loaded.fernet_key == ""
    assert loaded.collection == store.VERSIONS
    assert store.collection_names(loaded) == store.COLLECTIONS
    assert bootstrap.pinned_version("service_map") is None


def test_a_bootstrap_can_pin_versions_and_is_checked(tmp_path, settings):
    shipped = (ROOT / "configs" / "config.yaml").read_text()
    settings.SVC_CONFIG_BOOTSTRAP = write(
        tmp_path, shipped.replace("api: active", "api: 3"), "pinned.yaml"
    )
    broken = textwrap.dedent(
        """\
        version: 2
        meta: {source: files, collection: "$bad", ids: {api: "latest version"}}
        mongo: {uri: "http://x", port: 99999, colour: red}
        """
    )

    assert bootstrap.pinned_version("api") == 3
    assert bootstrap.pinned_version("service_map") is None
    with pytest.raises(ConfigError) as caught:
        bootstrap.load_bootstrap(write(tmp_path, broken, "broken.yaml"))
    assert [p.split(": ", 1)[1] for p in caught.value.problems] == [
        "version: must be 1 or 1.0",
        "meta.source: must be mongo",
        "meta.collection: must be a MongoDB collection name (letters, digits, _ . -)",
        "mongo.colour: unknown key (known: uri, port, db)",
        "mongo.uri: must be a mongodb:// URI",
        "mongo.port: must be a port number",
        "meta.ids.api: must be `active`, a positive version number or a label such as 1.0",
    ]


def test_the_protocol_takes_the_seed_s_glued_env_tag_everywhere(fernet_key, tmp_path):
    content = protocol.load_text(
        "a: !ENV${HOST}\nb: !ENV ${HOST}\nc: !ENV\"https://${HOST}\"\nd: '!ENV${HOST}'\n",
        env={"HOST": "h"},
    )
    assert content == {"a": "h", "b": "h", "c": "https://h", "d": "!ENV${HOST}"}
