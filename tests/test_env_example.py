"""The configuration templates stay complete and true to ``bridge/settings.py``.

``.env.example`` names every setting exactly once, with its default, secrets empty and marked;
the Kubernetes ConfigMap and Secret templates name only real settings (together: all of them)
and validate; the drain timing in the deployment files matches the drain timeout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from bridge.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
K8S = ROOT / "infra" / "k8s"
SYSTEMD_UNIT = ROOT / "infra" / "systemd" / "hamsa-bridge.service"

SETTINGS = {name.upper() for name in Settings.model_fields}
SECRETS = {
    name.upper() for name, field in Settings.model_fields.items() if field.annotation is SecretStr
} | {"BRIDGE_DATABASE_URL"}  # may hold a password
# What the ConfigMap sets on purpose to something other than the default.
CONFIGMAP_OVERRIDES = {
    "BRIDGE_PUBLIC_URL",
    "BRIDGE_METRICS_PORT",
    "BRIDGE_LOG_FORMAT",
    "BRIDGE_WORKERS",  # one process per pod
}
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> list[tuple[str, str, str]]:
    """(name, value, the comment line above it) for every assignment in .env.example."""
    entries = []
    previous = ""
    for number, raw in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            match = ASSIGNMENT.match(line)
            assert match, f".env.example:{number}: not NAME=value: {raw!r}"
            entries.append((match[1], match[2], previous))
        previous = line
    return entries


def manifest(name: str) -> dict[str, Any]:
    document = yaml.safe_load((K8S / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def configmap() -> dict[str, str]:
    data = manifest("configmap.yaml")["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    return dict(data)


def secret() -> dict[str, str]:
    data = manifest("secret.yaml")["stringData"]
    assert all(isinstance(v, str) for v in data.values()), "Secret values must be strings"
    return dict(data)


def differing_fields(a: Settings, b: Settings) -> set[str]:
    return {name.upper() for name in Settings.model_fields if getattr(a, name) != getattr(b, name)}


def test_env_example_names_every_setting_once_and_nothing_else() -> None:
    names = [name for name, _, _ in env_example()]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    assert not duplicated, f".env.example sets these more than once: {duplicated}"
    missing = sorted(SETTINGS - set(names))
    assert not missing, f"settings missing from .env.example: {missing}"
    unknown = sorted(set(names) - SETTINGS)
    assert not unknown, f".env.example names what is not a setting: {unknown}"


def test_env_example_values_are_the_defaults() -> None:
    values = {name: value for name, value, _ in env_example()}
    differing = differing_fields(Settings.from_env(values), Settings())
    assert not differing, f".env.example values differ from bridge/settings.py: {differing}"


def test_env_example_comments_every_setting_and_marks_secrets() -> None:
    for name, value, comment in env_example():
        assert re.match(r"# \S", comment), f"{name}: no comment line above"
        if name in SECRETS:
            assert "🔒" in comment, f"{name}: secret, but its comment has no 🔒"
        else:
            assert "🔒" not in comment, f"{name}: marked 🔒 but not a secret"
        if name in SECRETS - {"BRIDGE_DATABASE_URL"}:
            assert value == "", f"{name}: a secret must be empty in .env.example"


def test_k8s_templates_name_only_real_settings_and_all_of_them() -> None:
    config, secrets = configmap(), secret()
    unknown = sorted((set(config) | set(secrets)) - SETTINGS)
    assert not unknown, f"ConfigMap/Secret name what is not a setting: {unknown}"
    both = sorted(set(config) & set(secrets))
    assert not both, f"in both the ConfigMap and the Secret: {both}"
    missing = sorted(SETTINGS - set(config) - set(secrets))
    assert not missing, f"in neither the ConfigMap nor the Secret: {missing}"
    misplaced = sorted(SECRETS & set(config))
    assert not misplaced, f"secrets belong in secret.yaml, not the ConfigMap: {misplaced}"


def test_k8s_templates_hold_valid_settings() -> None:
    config, secrets = configmap(), secret()
    settings = Settings.from_env(config | secrets)
    changed = differing_fields(settings, Settings()) - set(secrets)
    assert changed == CONFIGMAP_OVERRIDES, f"ConfigMap values drifted from the defaults: {changed}"
    assert settings.bridge_public_url.startswith("https://")
    for name in ("HAMSA_API_KEY", "TWILIO_AUTH_TOKEN"):
        assert secrets[name].startswith("REPLACE_ME"), f"{name}: must stay a placeholder"


def test_drain_timing_matches_the_drain_timeout() -> None:
    drain = float(configmap()["BRIDGE_DRAIN_TIMEOUT"])
    pod = manifest("deployment.yaml")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "metrics": int(configmap()["BRIDGE_METRICS_PORT"])}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])

    unit = SYSTEMD_UNIT.read_text(encoding="utf-8")
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert stop, "the systemd unit sets no TimeoutStopSec"
    assert int(stop[1]) > Settings().bridge_drain_timeout
