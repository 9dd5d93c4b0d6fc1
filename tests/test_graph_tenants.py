"""SPEC §10's tenants file: each ROOMS tenant's Graph settings over the environment's, and bad files refused with
one line saying where."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph-tenants.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_tenant_of_the_file_overrides_the_environment_key_by_key(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_env.setenv("SYNCNOTIFY_GRAPH_CLIENT_STATE", "env-state")
    settings_env.setenv("SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID", "env-directory")
    settings_env.setenv("SYNCNOTIFY_GRAPH_CLIENT_ID", "env-app")
    settings_env.setenv("SYNCNOTIFY_GRAPH_CLIENT_SECRET", "env-secret")
    settings_env.setenv("SYNCNOTIFY_PUBLIC_URL", "https://rooms.example.com/")
    tenants = write(
        tmp_path,
        '[Contoso]\ndirectory_tenant_id = "contoso-directory"\nclient_certificate = "/etc/contoso.pem"\n'
        'client_state = ["new", "old"]\nsubscription_minutes = 4230\n',
    )
    settings_env.setenv("SYNCNOTIFY_GRAPH_TENANTS_FILE", str(tenants))
    settings = load_settings()

    contoso = settings.graph_tenant("contoso")  # ROOMS tenants are matched without regard to case
    assert contoso.tenant == "Contoso"
    assert (contoso.directory_tenant_id, contoso.client_id) == ("contoso-directory", "env-app")
    assert contoso.client_certificate == Path("/etc/contoso.pem") and contoso.client_secret is None
    assert contoso.client_states == (b"new", b"old") and contoso.subscription_minutes == 4230
    assert contoso.notification_url == "https://rooms.example.com/api/webhooks/graph?tenant=Contoso"
    assert contoso.lifecycle_url == "https://rooms.example.com/api/webhooks/graph/lifecycle?tenant=Contoso"
    assert settings.graph_client_states("Contoso") == (b"new", b"old")

    other = settings.graph_tenant("Fabrikam")  # a tenant the file does not name: the environment's
    assert (other.tenant, other.directory_tenant_id, other.client_states) == (
        "Fabrikam",
        "env-directory",
        (b"env-state",),
    )
    assert other.client_secret is not None and other.client_secret.get_secret_value() == "env-secret"
    assert other.missing == []
    assert "env-secret" not in repr(other) and "env-state" not in repr(other)


def test_what_subscriptions_still_need_is_named_by_variable(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.setenv("SYNCNOTIFY_GRAPH_CLIENT_STATE", "s")
    assert load_settings().graph_tenant("Default").missing == [
        "SYNCNOTIFY_GRAPH_DIRECTORY_TENANT_ID",
        "SYNCNOTIFY_GRAPH_CLIENT_ID",
        "SYNCNOTIFY_GRAPH_CLIENT_SECRET or SYNCNOTIFY_GRAPH_CLIENT_CERTIFICATE",
        "SYNCNOTIFY_PUBLIC_URL",
    ]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[Contoso\n", "not TOML"),
        ('Contoso = "x"\n', "must be a table ([Contoso])"),
        ('[Contoso]\nclient_secrt = "x"\n', "unknown key(s) client_secrt"),
        ("[Contoso]\nsubscription_minutes = 20000\n", "[Contoso] subscription_minutes must be a whole number"),
        ("[Contoso]\nclient_state = []\n", "[Contoso] client_state must be a non-empty string"),
        ("[Contoso]\nclient_id = 7\n", "[Contoso] client_id must be a non-empty string"),
    ],
    ids=["not toml", "not a table", "unknown key", "minutes", "empty client_state", "wrong type"],
)
def test_a_bad_tenants_file_stops_the_start_saying_where(
    settings_env: pytest.MonkeyPatch, tmp_path: Path, text: str, said: str
) -> None:
    settings_env.setenv("SYNCNOTIFY_GRAPH_TENANTS_FILE", str(write(tmp_path, text)))
    with pytest.raises(ConfigError, match="graph-tenants.toml") as raised:
        load_settings()
    assert said in str(raised.value)


def test_a_missing_tenants_file_is_named(settings_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings_env.setenv("SYNCNOTIFY_GRAPH_TENANTS_FILE", str(tmp_path / "nowhere.toml"))
    with pytest.raises(ConfigError, match="SYNCNOTIFY_GRAPH_TENANTS_FILE=.*nowhere.toml.* cannot be read"):
        load_settings()
