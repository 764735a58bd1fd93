"""Takos-style manifests get hints naming the Turnout equivalent, listed before anything else."""

from __future__ import annotations

import pytest

from admin.manifest import Issue, ManifestError, parse_manifest

# The flat .takos/app.yml of Takos' own quick start (shape, not copied text).
FLAT = """\
name: my-first-app
compute:
  web:
    build:
      fromWorkflow:
        path: .takos/workflows/deploy.yml
        job: bundle
        artifact: web
routes:
  - target: web
    path: /
    timeoutMs: 30000
"""

# The App envelope with Takos' spec.workers and route forms.
WORKERS = """\
apiVersion: takos.dev/v1alpha1
kind: App
metadata: {name: notes}
spec:
  version: 0.3.0
  description: notes
  category: app
  tags: [notes]
  capabilities: [mcp]
  workers:
    web:
      build: {fromWorkflow: {path: .takos/workflows/deploy.yml, job: bundle}}
  routes:
    - name: app
      target: web
      path: /
      timeoutMs: 30000
"""

# The current Takos example: a type: worker service among many unsupported fields.
CURRENT = """\
apiVersion: takos.dev/v1alpha1
kind: App
metadata: {name: notes-assistant}
spec:
  version: 0.3.0
  description: example
  category: app
  tags: [notes, ai]
  capabilities: [mcp, file-handler]
  env: {required: [TAKOS_ACCESS_TOKEN]}
  oauth: {clientName: Notes}
  resources: {db: {type: d1, binding: DB}}
  services:
    web:
      type: worker
      build: {fromWorkflow: {path: .takos/workflows/deploy.yml, job: bundle}}
      env: {PUBLIC_APP_NAME: Notes}
  routes:
    - name: app
      service: web
      path: /
      timeoutMs: 30000
  mcpServers: [{name: notes, route: /mcp}]
"""


ENVELOPE = "apiVersion: turnout/v1\nkind: App\nmetadata: {name: a}\nspec:\n  services:\n"


def problems(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    return info.value


def shown(err: ManifestError) -> list[str]:
    """The paths the error message lists (the first five)."""
    head = str(err).removeprefix("invalid manifest: ").split(" (and ")[0]
    return [part.split(": ", 1)[0] for part in head.split("; ")]


def test_flat_takos_manifest() -> None:
    err = problems(FLAT)
    by_path = {i.path: i.message for i in err.issues}
    assert list(by_path)[:5] == [
        "compute",
        "name",
        "routes",
        "routes[0].target",
        "routes[0].timeoutMs",
    ]
    assert "spec.services.web: {type: http, upstreams: [http://host:port]}" in by_path["compute"]
    assert "metadata.name" in by_path["name"]
    assert "spec.routes" in by_path["routes"]
    assert "write service: web instead" in by_path["routes[0].target"]
    assert "spec.services.web.limits.timeout_ms: 30000" in by_path["routes[0].timeoutMs"]
    # What the hints explain is not repeated as "is required"; the envelope still is.
    assert "spec" not in by_path and "metadata" not in by_path
    assert by_path["apiVersion"] == "is required" and by_path["kind"] == "is required"


def test_spec_workers_and_route_forms() -> None:
    err = problems(WORKERS)
    first = err.issues[0]
    assert first.path == "spec.workers"
    assert "spec.services.web: {type: http, upstreams: [http://host:port]}" in first.message
    assert shown(err)[:4] == [
        "spec.workers",
        "spec.routes[0].target",
        "spec.routes[0].timeoutMs",
        "spec.routes[0].name",
    ]
    paths = [i.path for i in err.issues]
    assert "spec.services" not in paths  # explained by the workers hint
    assert "spec.routes[0].service" not in paths  # explained by the target hint
    assert "spec.version" in paths  # still listed, after the hints


def test_worker_hint_comes_first_even_with_many_problems() -> None:
    err = problems(CURRENT)
    assert len(err.issues) > 5
    assert shown(err)[0] == "spec.services.web.type"
    assert "type: http with upstreams" in err.issues[0].message
    assert "spec.routes[0].timeoutMs" in shown(err)
    assert "spec.services.web.limits.timeout_ms: 30000" in str(err)
    # Its message is not cut: the hint is in the text the API answers.
    assert ".takos/workflows/" in str(err)


def test_image_and_port_hints() -> None:
    text = ENVELOPE + "    api: {image: ghcr.io/org/api@sha256:0123, port: 8080}\n"
    err = problems(text)
    assert [i.path for i in err.issues[:2]] == ["spec.services.api.image", "spec.services.api.port"]
    assert all("upstreams" in i.message for i in err.issues[:2])
    assert Issue("spec.services.api.upstreams", "is required") not in err.issues
    assert Issue("spec.services.api.type", "is required") in err.issues


def test_hints_never_quote_env_or_secrets() -> None:
    text = FLAT.replace("    build:", "    env: {TOKEN: s3cr3t-v4lue}\n    build:")
    assert "s3cr3t" not in str(problems(text))


def test_a_valid_manifest_has_no_hints() -> None:
    text = (
        ENVELOPE
        + '    web: {type: http, upstreams: ["http://h:1"], limits: {timeout_ms: 30000}}\n'
        + "  routes: [{service: web, path: /}]\n"
    )
    assert parse_manifest(text).services["web"].limits.timeout_ms == 30000
