"""Versioned configs: the YAML protocol, Fernet keys, schemas, the MongoDB store and `config …`."""

import getpass
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bson
import pytest
import yaml
from cryptography.fernet import Fernet, MultiFernet
from django.core.management import call_command
from django.core.management.base import CommandError
from mongoengine.connection import get_db

from configs import keys, protocol, schemas, store
from configs.protocol import ConfigError
from executor.handlers import all_handlers
from executor.resources import DEFAULT_RESOURCE_MAP, load_resource_map, parse_resource_map
from tests.configs.conftest import CANARY

ROOT = Path(__file__).resolve().parents[2]
CANARY_BYTES = "cert-canary-0c44e2"

SERVICE_MAP = """\
resource_map:
  resources:
    openai: {max_concurrency: 4, budget: 1000, period: minute}
    local: {max_concurrency: null}
handlers:
  openai.chat:
    ~api_key: !ENV ${TEST_API_KEY}
    base_url: https://llm.example/v1
    model: MODEL
"""


def service_map(model: str = "small") -> str:
    """The service map above; its api key is TEST_API_KEY (CANARY unless a test changes it)."""
    return SERVICE_MAP.replace("MODEL", model)


def config(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("config", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def upload(tmp_path: Path, name: str, text: str, *extra: str) -> str:
    out, _ = config("upload", write(tmp_path, text, f"{name}.yaml"), "--name", name, *extra)
    return out


def stored_state() -> dict:
    db = get_db()
    return {name: list(db[name].find()) for name in store.COLLECTIONS}


def materialized(name: str, version: int | None = None) -> dict:
    return protocol.materialize(store.get(name, version).content, keys.fernet())


# --- the protocol -----------------------------------------------------------------------------

PROTOCOL_TEXT = """\
plain: !ENV ${HOST}
url: !ENV "https://${HOST}:${PORT:-8443}/v1"
when: 2024-01-01
~token: !ENV ${TOKEN}
^salt: abc
outer:
  inner:
    ~deep: [1, {two: 2}, null]
    ~^cert: pem-text
  items:
    - {~key: one, ^raw: two, n: 3}
    - [true, 1.5]
~whole: {~nested: x, ^b: y}
"""


def test_it_round_trips_secrets_bytes_env_and_nesting():
    content = protocol.load_text(PROTOCOL_TEXT, env={"HOST": "h.example", "TOKEN": "t0k"})
    fernet = MultiFernet([Fernet(Fernet.generate_key())])

    sealed = protocol.seal(content, fernet)

    assert protocol.materialize(sealed, fernet) == {
        "plain": "h.example",
        "url": "https://h.example:8443/v1",
        "when": "2024-01-01",
        "token": "t0k",
        "salt": b"abc",
        "outer": {
            "inner": {"deep": [1, {"two": 2}, None], "cert": b"pem-text"},
            "items": [{"key": "one", "raw": b"two", "n": 3}, [True, 1.5]],
        },
        "whole": {"nested": "x", "b": b"y"},
    }
    assert protocol.unseal(sealed, fernet) == content
    sealed_text = protocol.canonical(sealed)
    for plaintext in ("t0k", "pem-text", '"one"', '"nested"'):
        assert plaintext not in sealed_text
    assert sealed["outer"]["items"][0]["~key"].keys() == {protocol.SEALED_KEY}


def test_mask_hides_every_secret_and_sha256_ignores_the_encryption():
    content = protocol.load_text(PROTOCOL_TEXT, env={"HOST": "h", "TOKEN": "t0k"})
    fernet = MultiFernet([Fernet(Fernet.generate_key())])
    first, second = protocol.seal(content, fernet), protocol.seal(content, fernet)

    masked = protocol.mask(first)

    assert first != second  # Fernet tokens are randomized...
    assert protocol.sha256(first) == protocol.sha256(second)  # ...the digest is not
    assert masked["~token"] == masked["~whole"] == masked["outer"]["inner"]["~deep"] == "********"
    assert masked["outer"]["items"][0] == {"~key": "********", "^raw": "two", "n": 3}
    assert protocol.sha256(protocol.seal({**content, "plain": "x"}, fernet)) != protocol.sha256(
        first
    )


def test_a_missing_variable_is_named_with_its_line():
    text = "a: 1\nb: !ENV ${SVC_NOT_SET_ONE}\nc: !ENV x-${SVC_NOT_SET_TWO}-y\n"

    with pytest.raises(ConfigError) as caught:
        protocol.load_text(text, env={})

    assert caught.value.problems == [
        "line 2: environment variable SVC_NOT_SET_ONE is not set",
        "line 3: environment variable SVC_NOT_SET_TWO is not set",
    ]


@pytest.mark.parametrize(
    "text, problems",
    [
        ("- a\n- b\n", ["the config must be a YAML mapping (key: value lines) at the top level"]),
        ("", ["the config must be a YAML mapping (key: value lines) at the top level"]),
        (
            "a: [1,\n",
            [
                "line 2, column 1: not valid YAML: expected the node content, but found "
                "'<stream end>'"
            ],
        ),
        ("a: 1\nb: 2\na: 3\n", ["line 3: duplicate key 'a'"]),
        ("key: 1\n~key: 2\n", ["~key: 'key' is given twice (also as 'key')"]),
        ("x:\n  ^b: 5\n", ["x.^b: a ^ (bytes) value must be a string"]),
        ("~: 1\n", ["(top level): a null key (a bare ~ is null in YAML: write ~name)"]),
        ("~k: '********'\n", ["~k: is the mask ********; give the real value"]),
        ("b: !!binary aGk=\n", ["b: !!binary is not supported; use a ^key with text"]),
        ("e: !ENV plain\n", ["line 1: !ENV 'plain' names no ${VAR}"]),
    ],
)
def test_it_rejects_what_the_protocol_does_not_allow(text, problems):
    with pytest.raises(ConfigError) as caught:
        protocol.load_text(text, env={})

    assert caught.value.problems == problems


def test_the_wrong_key_is_a_clear_error():
    sealed = protocol.seal({"a": {"~b": "secret"}}, Fernet(Fernet.generate_key()))

    with pytest.raises(ConfigError, match=r"^cannot decrypt a\.~b: wrong CONFIG_FERNET_KEY\?$"):
        protocol.materialize(sealed, MultiFernet([Fernet(Fernet.generate_key())]))


def test_reseal_makes_every_secret_readable_with_the_newest_key_alone():
    old, new = Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())
    sealed = protocol.seal({"~a": 1, "b": [{"~c": "x"}]}, old)

    resealed = protocol.reseal(sealed, MultiFernet([new, old]))

    assert protocol.materialize(resealed, new) == {"a": 1, "b": [{"c": "x"}]}
    with pytest.raises(ConfigError):
        protocol.materialize(resealed, old)


# --- keys -------------------------------------------------------------------------------------


def test_a_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv(keys.KEY_ENV, raising=False)

    with pytest.raises(ConfigError, match=r"^CONFIG_FERNET_KEY is not set; generate a key"):
        keys.fernet()


def test_an_invalid_key_is_named_but_never_echoed(monkeypatch):
    good = Fernet.generate_key().decode()
    monkeypatch.setenv(keys.KEY_ENV, f"{good}, hunter2-not-a-key")

    with pytest.raises(ConfigError) as caught:
        keys.fernet()

    assert str(caught.value).startswith("CONFIG_FERNET_KEY: key 2 of 2 is not a Fernet key")
    assert "hunter2" not in str(caught.value) and good not in str(caught.value)


def test_several_keys_encrypt_with_the_first_and_decrypt_with_any(monkeypatch):
    new, old = Fernet.generate_key(), Fernet.generate_key()
    token = Fernet(old).encrypt(b"x")
    monkeypatch.setenv(keys.KEY_ENV, f"{new.decode()},{old.decode()}")

    assert keys.fernet().decrypt(token) == b"x"
    assert Fernet(new).decrypt(keys.fernet().encrypt(b"y")) == b"y"


# --- schemas ----------------------------------------------------------------------------------


def test_api_settings_are_checked():
    content = protocol.load_text("intake_rate: fast\nmax_body_bytes: -1\ncolour: red\n")

    assert schemas.validate("api", content) == [
        'intake_rate: must be a rate such as "600/min" (per s, min, hour or day)',
        "max_body_bytes: must be a positive integer",
        "colour: unknown key (known: intake_rate, max_body_bytes)",
    ]
    assert schemas.validate("api", {"intake_rate": "600/min", "max_body_bytes": 1024}) == []


BAD_SERVICE_MAP = """\
resource_map:
  resources:
    openai: {max_concurrency: 0, colour: red}
    http: {policy: sometimes}
    local: {}
handlers:
  nope.none: {}
  local.echo: {x: 1}
  openai.chat: {api_key: plain, base_url: "ftp://x", model: "", extra: 1}
"""


def test_service_map_reuses_the_executors_resource_map_checks_and_knows_the_handlers():
    content = protocol.load_text(BAD_SERVICE_MAP)

    problems = schemas.validate("service_map", content)

    assert problems == [
        "resource_map: resource 'openai': max_concurrency must be a positive integer or null, "
        "got 0",
        "resource_map: resource 'http': policy must be one of wait, fail, got 'sometimes'",
        f"handlers.nope.none: no handler 'nope.none' is registered ({', '.join(all_handlers())})",
        "handlers.local.echo.x: unknown key (known: credentials, timeouts)",
        "handlers.openai.chat.api_key: a secret: write it as ~api_key so it is stored encrypted",
        "handlers.openai.chat.base_url: must be an http(s) URL",
        "handlers.openai.chat.model: must be a non-empty string",
        "handlers.openai.chat.extra: unknown key"
        " (known: credentials, timeouts, api_key, base_url, model)",
    ]


def test_service_map_needs_a_resource_map_of_the_executors_shape():
    assert schemas.validate("service_map", {"handlers": {}}) == ["resource_map: required"]
    assert schemas.validate("service_map", {"resource_map": {"limits": {}}}) == [
        "resource_map: expected a mapping with the one key `resources`"
    ]
    assert schemas.validate("service_map", {"~resource_map": {"resources": {}}}) == [
        "~resource_map: takes no ~ or ^ prefix (write resource_map)"
    ]


def test_an_unknown_name_is_free_form():
    assert schemas.validate("my_tool", {"anything": {"goes": [1]}}) == []


# --- the store and `config …` -----------------------------------------------------------------


def test_upload_stores_a_sealed_active_version(fernet_key, tmp_path):
    out = upload(tmp_path, "service_map", service_map(), "--comment", "first")

    version = store.active("service_map")
    assert out.startswith("uploaded service_map version 1 (active, sha256 ")
    by = getpass.getuser()
    assert (version.version, version.comment, version.created_by) == (1, "first", by)
    assert version.content["handlers"]["openai.chat"]["~api_key"].keys() == {"$fernet"}
    assert materialized("service_map")["handlers"]["openai.chat"] == {
        "api_key": CANARY,
        "base_url": "https://llm.example/v1",
        "model": "small",
    }
    assert [(e["action"], e["version"], e["previous"]) for e in store.events("service_map")] == [
        ("activate", 1, None),
        ("upload", 1, None),
    ]


def test_no_secret_reaches_mongodb_in_plaintext(fernet_key, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_CERT", CANARY_BYTES)
    text = service_map() + "extra_marker: visible-marker-31\n"
    free_form = "~^cert: !ENV ${TEST_CERT}\nlist: [{~inner: {deep: !ENV '${TEST_API_KEY}'}}]\n"
    upload(tmp_path, "my_tool", free_form)
    upload(tmp_path, "service_map", service_map(model="one"))
    with pytest.raises(CommandError):  # a rejected upload stores nothing either
        upload(tmp_path, "service_map", text)
    upload(tmp_path, "service_map", service_map(model="two"))
    config("show", "service_map")
    config("show", "service_map", "--reveal")
    config("diff", "service_map", "1", "2")
    config("rollback", "service_map")
    config("list")
    monkeypatch.setenv(keys.KEY_ENV, f"{Fernet.generate_key().decode()},{fernet_key}")
    config("rotate-keys")

    dump = b"".join(
        bson.encode(doc)
        for collection in get_db().list_collection_names()
        for doc in get_db()[collection].find()
    )

    assert b"https://llm.example/v1" in dump  # the scan sees what is stored...
    for secret in (CANARY, CANARY_BYTES):  # ...and no secret is there
        assert secret.encode() not in dump
        assert json.dumps(secret)[1:-1].encode() not in dump  # nor JSON-escaped
    assert materialized("my_tool") == {
        "cert": CANARY_BYTES.encode(),
        "list": [{"inner": {"deep": CANARY}}],
    }


def test_a_version_is_unreadable_without_the_right_key(fernet_key, tmp_path, monkeypatch):
    upload(tmp_path, "service_map", service_map())
    monkeypatch.setenv(keys.KEY_ENV, Fernet.generate_key().decode())

    with pytest.raises(CommandError) as wrong:
        config("show", "service_map", "--reveal")
    monkeypatch.delenv(keys.KEY_ENV)
    with pytest.raises(CommandError) as missing:
        config("show", "service_map", "--reveal")
    masked, _ = config("show", "service_map")  # masking needs no key

    assert str(wrong.value) == (
        "cannot decrypt handlers.openai.chat.~api_key: wrong CONFIG_FERNET_KEY?"
    )
    assert str(missing.value).startswith("CONFIG_FERNET_KEY is not set")
    assert "~api_key: '********'" in masked


def test_an_upload_with_secrets_needs_the_key(fernet_key, tmp_path, monkeypatch):
    monkeypatch.delenv(keys.KEY_ENV)
    err = io.StringIO()

    with pytest.raises(CommandError, match="1 problem; nothing was stored"):
        call_command(
            "config",
            "upload",
            write(tmp_path, service_map()),
            "--name",
            "service_map",
            stderr=err,
        )

    assert "CONFIG_FERNET_KEY is not set" in err.getvalue()
    assert store.versions() == []


INVALID_UPLOADS = {
    "schema": (
        "api",
        "intake_rate: fast\nmax_body_bytes: 0\n",
        [
            'intake_rate: must be a rate such as "600/min" (per s, min, hour or day)',
            "max_body_bytes: must be a positive integer",
        ],
    ),
    "yaml": (
        "api",
        "intake_rate: 600/min\n  max_body_bytes: 5\n",
        ["line 2, column 17: not valid YAML: mapping values are not allowed here"],
    ),
    "env": (
        "service_map",
        SERVICE_MAP.replace("TEST_API_KEY", "SVC_TEST_NEVER_SET"),
        ["line 7: environment variable SVC_TEST_NEVER_SET is not set"],
    ),
    "resource_map": (
        "service_map",
        SERVICE_MAP.replace("budget: 1000", "budget: -5").replace("openai.chat", "openai.nope"),
        [
            "resource_map: resource 'openai': budget must be a positive integer or null, got -5",
            "handlers.openai.nope: no handler 'openai.nope' is registered ({registered})",
        ],
    ),
}


@pytest.mark.parametrize("case", INVALID_UPLOADS)
def test_an_invalid_upload_changes_nothing(case, fernet_key, tmp_path):
    name, text, problems = INVALID_UPLOADS[case]
    good = "intake_rate: 600/min\n" if name == "api" else service_map()
    upload(tmp_path, name, good)
    before = stored_state()
    path = write(tmp_path, text, "bad.yaml")
    err = io.StringIO()

    with pytest.raises(CommandError) as caught:
        call_command("config", "upload", path, "--name", name, stderr=err)

    registered = ", ".join(all_handlers())  # other test modules may register handlers
    problems = [problem.replace("{registered}", registered) for problem in problems]
    assert err.getvalue().splitlines() == [f"{path}: {problem}" for problem in problems]
    count = len(problems)
    assert str(caught.value) == (
        f"{path}: {count} problem{'s' if count > 1 else ''}; nothing was stored"
    )
    assert stored_state() == before
    assert store.active(name).version == 1


def test_an_explicit_version_is_taken_once(fernet_key, tmp_path):
    upload(tmp_path, "api", "max_body_bytes: 10\n", "--version", "5")
    upload(tmp_path, "api", "max_body_bytes: 11\n")

    path, err = write(tmp_path, "max_body_bytes: 12\n"), io.StringIO()
    with pytest.raises(CommandError, match="1 problem; nothing was stored"):
        call_command("config", "upload", path, "--name", "api", "--version", "5", stderr=err)

    assert err.getvalue() == f"{path}: api: version 5 exists already (versions are immutable)\n"

    assert [v.version for v in store.versions("api")] == [5, 6]
    assert store.active("api").version == 6


def test_concurrent_uploads_get_distinct_versions(fernet_key):
    count = 8
    barrier = threading.Barrier(count)

    def upload_one(i: int) -> int:
        barrier.wait()
        return store.upload("api", f"max_body_bytes: {100 + i}\n", by=f"ops{i}").version

    with ThreadPoolExecutor(count) as pool:
        numbers = list(pool.map(upload_one, range(count)))

    assert sorted(numbers) == list(range(1, count + 1))
    stored = {v.version: v.content["max_body_bytes"] for v in store.versions("api")}
    assert stored == {number: 100 + i for i, number in enumerate(numbers)}


def test_rollback_restores_the_exact_previous_content(fernet_key, tmp_path, monkeypatch):
    upload(tmp_path, "service_map", service_map(model="one"))
    first, first_plain = store.get("service_map", 1), materialized("service_map", 1)
    monkeypatch.setenv("TEST_API_KEY", "sk-second")
    upload(tmp_path, "service_map", service_map(model="two"))

    out, _ = config("rollback", "service_map")

    now = store.active("service_map")
    assert out.strip() == "service_map: version 1 is active (was 2)"
    assert (now.version, now.sha256, now.content) == (1, first.sha256, first.content)
    assert materialized("service_map") == first_plain
    assert first_plain["handlers"]["openai.chat"]["api_key"] == CANARY
    event = store.events("service_map")[0]
    assert (event["action"], event["version"], event["previous"]) == ("rollback", 1, 2)


def test_rollback_walks_back_and_can_go_to_any_version(fernet_key, tmp_path):
    for size in (1, 2, 3):
        upload(tmp_path, "api", f"max_body_bytes: {size}\n")

    config("rollback", "api")
    config("rollback", "api")
    with pytest.raises(CommandError, match="^api: no version before 1 to roll back to$"):
        config("rollback", "api")
    config("rollback", "api", "--to", "3")
    with pytest.raises(CommandError, match="^api: version 3 is already active$"):
        config("rollback", "api", "--to", "3")
    with pytest.raises(CommandError, match="^api: no version 9$"):
        config("rollback", "api", "--to", "9")
    with pytest.raises(CommandError, match="^no config named 'nope'"):
        config("rollback", "nope")

    assert store.active("api").version == 3
    history = [(e["action"], e["version"]) for e in store.events("api")][:3]
    assert history == [("rollback", 3), ("rollback", 1), ("rollback", 2)]


def test_rotate_keys_keeps_every_version_readable_with_the_new_key_alone(
    fernet_key, tmp_path, monkeypatch
):
    upload(tmp_path, "service_map", service_map(model="one"))
    upload(tmp_path, "service_map", service_map(model="two"))
    upload(tmp_path, "my_tool", "~password: !ENV ${TEST_API_KEY}\n")
    upload(tmp_path, "api", "max_body_bytes: 10\n")
    before = {
        (v.name, v.version): (v.sha256, materialized(v.name, v.version)) for v in store.versions()
    }
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv(keys.KEY_ENV, f"{new_key},{fernet_key}")

    out, _ = config("rotate-keys")
    monkeypatch.setenv(keys.KEY_ENV, new_key)

    assert out.startswith("re-encrypted 3 version(s) with the newest key")
    after = {
        (v.name, v.version): (v.sha256, materialized(v.name, v.version)) for v in store.versions()
    }
    assert after == before
    monkeypatch.setenv(keys.KEY_ENV, fernet_key)
    with pytest.raises(ConfigError, match="wrong CONFIG_FERNET_KEY"):
        materialized("service_map", 1)
    assert {e["name"] for e in store.events() if e["action"] == "rotate"} == {
        "service_map",
        "my_tool",
    }


def test_rotate_keys_changes_nothing_when_a_version_cannot_be_decrypted(
    fernet_key, tmp_path, monkeypatch
):
    upload(tmp_path, "service_map", service_map())
    before = stored_state()
    monkeypatch.setenv(keys.KEY_ENV, Fernet.generate_key().decode())

    with pytest.raises(CommandError, match="^service_map version 1: cannot decrypt"):
        config("rotate-keys")

    assert stored_state() == before


def test_show_masks_secrets_unless_revealed(fernet_key, tmp_path):
    upload(tmp_path, "service_map", service_map())

    masked, _ = config("show", "service_map")
    revealed, _ = config("show", "service_map", "--version", "1", "--reveal")

    assert masked.startswith("# service_map version 1 (active), sha256 ")
    assert "    ~api_key: '********'" in masked.splitlines()
    assert CANARY not in masked
    assert yaml.safe_load(revealed)["handlers"]["openai.chat"]["~api_key"] == CANARY
    # What --reveal prints uploads back to the same content.
    upload(tmp_path, "service_map", revealed)
    assert store.get("service_map", 2).sha256 == store.get("service_map", 1).sha256
    assert materialized("service_map", 2) == materialized("service_map", 1)


def test_diff_shows_masked_changes(fernet_key, tmp_path, monkeypatch):
    upload(tmp_path, "service_map", service_map(model="one"))
    monkeypatch.setenv("TEST_API_KEY", "sk-other")
    upload(tmp_path, "service_map", service_map(model="two"))

    out, _ = config("diff", "service_map", "1", "2")
    _, same = config("diff", "service_map", "2", "2")

    assert out.splitlines() == [
        "--- service_map version 1",
        "+++ service_map version 2",
        "@@ -8,6 +8,6 @@",
        "       max_concurrency: null",
        " handlers:",
        "   openai.chat:",
        "-    ~api_key: '********'",
        "+    ~api_key: '******** (changed)'",
        "     base_url: https://llm.example/v1",
        "-    model: one",
        "+    model: two",
    ]
    assert same.strip() == "service_map: versions 2 and 2 have the same content"


def test_list_shows_versions_with_the_active_one_marked(fernet_key, tmp_path):
    upload(tmp_path, "api", "max_body_bytes: 1\n", "--comment", "first try")
    upload(tmp_path, "api", "max_body_bytes: 2\n")
    upload(tmp_path, "service_map", service_map())
    config("rollback", "api")

    everything, _ = config("list")
    only_api, _ = config("list", "api")

    header, *rows = everything.splitlines()
    column = header.index("ACTIVE")
    assert header.split() == [
        "NAME",
        "VERSION",
        "LABEL",
        "ACTIVE",
        "SHA256",
        "BY",
        "WHEN",
        "COMMENT",
    ]
    assert [(row.split()[0], row.split()[1], row[column]) for row in rows] == [
        ("api", "1", "*"),
        ("api", "2", " "),
        ("service_map", "1", "*"),
    ]
    assert rows[0].endswith("first try")
    assert store.get("api", 1).sha256[:12] in rows[0]
    assert [row.split()[:3] for row in only_api.splitlines()] == [
        ["NAME", "VERSION", "LABEL"],
        ["api", "1", "*"],
        ["api", "2", store.get("api", 2).sha256[:12]],
    ]
    with pytest.raises(CommandError, match="^no config named 'nope'$"):
        config("list", "nope")


def test_the_examples_upload_and_carry_the_shipped_resource_map(fernet_key, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    for name in ("api", "service_map"):
        config("upload", str(ROOT / "configs" / "examples" / f"{name}.yaml"), "--name", name)

    resource_map = materialized("service_map")["resource_map"]

    assert parse_resource_map(resource_map, source="resource_map") == load_resource_map(
        DEFAULT_RESOURCE_MAP
    )
    assert materialized("service_map")["handlers"]["openai.chat"]["api_key"] == "sk-example"
    assert materialized("api") == {"intake_rate": "600/min", "max_body_bytes": 1048576}


def test_show_and_diff_mask_a_password_written_in_a_uri(fernet_key, tmp_path):
    """A store URI with its password as a plain value (it belonged in a `~` key) is masked
    like the secrets; --reveal shows it."""
    upload(tmp_path, "exporter", "target: mongodb://svc:hunter2-pw@db:27017/svc\n")
    upload(tmp_path, "exporter", "target: redis://:hunter3-pw@cache:6379/0\n")
    shown, _ = config("show", "exporter", "--version", "1")
    assert "target: mongodb://svc:[redacted]@db:27017/svc" in shown
    diff, _ = config("diff", "exporter", "1", "2")
    assert "+target: redis://:[redacted]@cache:6379/0" in diff
    assert "hunter2-pw" not in shown + diff and "hunter3-pw" not in diff
    revealed, _ = config("show", "exporter", "--reveal")
    assert "redis://:hunter3-pw@cache:6379/0" in revealed


def test_a_silent_mongodb_is_named_without_its_password(fernet_key, monkeypatch):
    # The shipped bootstrap's mongo.uri is !ENV${MONGO_URI}: the configs' MongoDB is this one.
    monkeypatch.setenv("MONGO_URI", "mongodb://svc:hunter4-pw@127.0.0.1:1/svc")
    with pytest.raises(CommandError) as raised:
        config("list")
    message = str(raised.value)
    assert message.startswith("MongoDB at mongodb://svc:[redacted]@127.0.0.1:1/svc did not"), (
        message
    )
    assert "hunter4-pw" not in message
