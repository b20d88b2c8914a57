"""Services are declared, not coded: the services.toml loader, its one-line errors, and a toy target
(tests/toy_target) that the harness starts, restarts, breaks and stops with no edit in harness/."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.declaration import DeclarationError, load_declaration, render, template_refs
from harness.process import ServiceStartError
from harness.stack import (
    ALL,
    APPS,
    ENV_NAMES,
    EXTERNALS,
    INFRA,
    PLATFORM_DEFAULTS,
    ServiceNotControllable,
    ServiceNotRestartable,
    Stack,
    declaration_of,
    parse_only,
    pid_alive,
)
from harness.target import TargetError, load_target

ROOT = Path(__file__).resolve().parent.parent
TOY = Path(__file__).resolve().parent / "toy_target"
SERVER = TOY / "server.py"


def get(url: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET; (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)  # bounded poll of an OS condition
    return bool(predicate())


# -- the reference declaration ---------------------------------------------------------------


def test_the_reference_declaration_names_todays_services_and_start_order() -> None:
    decl = load_declaration(ROOT / "targets" / "reference" / "services.toml")
    assert ALL == ("postgres", "redis", "clickhouse", "llm", "oidc", "smtp", "auth", "backend", "frontend")
    assert (INFRA, EXTERNALS, APPS) == (ALL[:3], ALL[3:6], ALL[6:])
    assert decl.levels(ALL) == [INFRA, EXTERNALS + APPS], "the stores first, then everything else at once"
    assert decl.component_kinds() == {
        **dict.fromkeys(INFRA + APPS, "real"),
        "llm": "stand-in: LLM provider (OpenAI-compatible)",
        "oidc": "stand-in: OAuth/OIDC provider",
        "smtp": "stand-in: email (SMTP)",
    }
    assert (
        PLATFORM_DEFAULTS["TL_RATE_WS_LIMIT"] == "8" and PLATFORM_DEFAULTS["TL_ARGON2_MEMORY_KIB"] == "19456"
    )
    assert ENV_NAMES["smtp_sink_url"] == "THROUGHLINE_SMTP_SINK_URL"


def test_the_reference_declaration_wires_todays_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TL_* value the journeys rely on, from the declaration, with nothing started."""
    monkeypatch.delenv("THROUGHLINE_CLICKHOUSE_SERVER_URL", raising=False)
    monkeypatch.setenv("THROUGHLINE_STACK_RATE_WS_LIMIT", "20")
    world = Stack().prepare()
    try:
        p, smtp_http, run_dir = world.ports, world._extra_ports["smtp"]["http"], world.run_dir
        knobs = {**PLATFORM_DEFAULTS, "TL_RATE_WS_LIMIT": "20"}
        dynamic = {"TL_OIDC_CLIENT_SECRET", "TL_INTERNAL_SECRET"}
        assert {k: v for k, v in world.platform_env.items() if k not in dynamic} == {
            **knobs,
            "TL_AUTH_DSN": f"postgresql://tl@127.0.0.1:{p['postgres']}/auth",
            "TL_BACKEND_DSN": f"postgresql://tl@127.0.0.1:{p['postgres']}/backend",
            "TL_REDIS_URL": f"redis://127.0.0.1:{p['redis']}/0",
            "TL_CLICKHOUSE_URL": f"http://127.0.0.1:{p['clickhouse']}",
            "TL_AUTH_URL": f"http://127.0.0.1:{p['auth']}",
            "TL_BACKEND_URL": f"http://127.0.0.1:{p['backend']}",
            "TL_FRONTEND_URL": f"http://127.0.0.1:{p['frontend']}",
            "TL_LLM_BASE_URL": f"http://127.0.0.1:{p['llm']}/v1",
            "TL_OIDC_ISSUER": f"http://127.0.0.1:{p['oidc']}",
            "TL_SMTP_HOST": "127.0.0.1",
            "TL_SMTP_PORT": str(p["smtp"]),
            "TL_SMTP_SINK_URL": f"http://127.0.0.1:{smtp_http}",
            "TL_JWT_PRIVATE_KEY_FILE": f"{run_dir}/jwt.pem",
            "PYTHONUNBUFFERED": "1",
            "TL_OIDC_REDIRECT_URIS": f"http://127.0.0.1:{p['auth']}/auth/oauth/acme/callback",
        }
        # secrets.token_urlsafe(n) gives ceil(4n/3) characters: 24 and 32 random bytes as before.
        assert len(world.platform_env["TL_OIDC_CLIENT_SECRET"]) == 32
        assert len(world.platform_env["TL_INTERNAL_SECRET"]) == 43
        assert world.urls == {
            "frontend_url": f"http://127.0.0.1:{p['frontend']}",
            "auth_url": f"http://127.0.0.1:{p['auth']}",
            "backend_url": f"http://127.0.0.1:{p['backend']}",
            "ws_url": f"ws://127.0.0.1:{p['backend']}/ws",
            "smtp_sink_url": f"http://127.0.0.1:{smtp_http}",
            "oidc_url": f"http://127.0.0.1:{p['oidc']}",
            "llm_url": f"http://127.0.0.1:{p['llm']}/v1",
            "clickhouse_url": f"http://127.0.0.1:{p['clickhouse']}",
            "redis_url": f"redis://127.0.0.1:{p['redis']}/0",
            "auth_dsn": f"postgresql://tl@127.0.0.1:{p['postgres']}/auth",
            "backend_dsn": f"postgresql://tl@127.0.0.1:{p['postgres']}/backend",
            "smtp": f"127.0.0.1:{p['smtp']}",
        }
    finally:
        world.stop()


def test_a_subset_brings_its_dependencies_and_exports_only_what_runs() -> None:
    world = Stack(only=("auth",)).prepare()
    try:
        assert world._selected == ("postgres", "redis", "clickhouse", "auth")
        assert set(world.urls) == {"auth_url", "clickhouse_url", "redis_url", "auth_dsn", "backend_dsn"}
        assert "TL_BACKEND_URL" not in world.platform_env, "a variable naming a service that is not run"
        assert world.platform_env["TL_AUTH_URL"] == world.urls["auth_url"]
    finally:
        world.stop()
    assert parse_only("externals") == EXTERNALS and parse_only("infra,auth") == (*INFRA, "auth")


def test_templates_keep_doubled_braces_literal() -> None:
    assert template_refs("{{x}} {a.port} {{") == ["a.port"]
    assert render("{{x}}-{a.port}", lambda ref: "42") == "{x}-42"
    with pytest.raises(ValueError, match="stray"):
        template_refs("{a.port")


# -- bad declarations: one line, the file and the field ----------------------------------------

GOOD_A = '[services.a]\ncommand = ["{python}", "-c", "pass", "{port}"]\n'

BAD = {
    "unknown depends_on": (
        GOOD_A + '[services.b]\ncommand = ["x"]\ndepends_on = ["c"]\n',
        "services.b.depends_on: unknown service 'c' (declared: a, b)",
    ),
    "cycle": (
        '[services.a]\ncommand = ["x"]\ndepends_on = ["c"]\n'
        '[services.b]\ncommand = ["x"]\ndepends_on = ["a"]\n'
        '[services.c]\ncommand = ["x"]\ndepends_on = ["b"]\n',
        "services.b.depends_on: dependency cycle a -> c -> b -> a",
    ),
    "self dependency": ('[services.a]\ncommand = ["x"]\ndepends_on = ["a"]\n', "dependency cycle a -> a"),
    "neither use nor command": ("[services.a]\nready = { tcp = true }\n", "services.a: needs 'use'"),
    "both use and command": ('[services.a]\nuse = "redis"\ncommand = ["x"]\n', "services.a: has both"),
    "unknown block": (
        '[services.a]\nuse = "mysql"\n',
        "services.a.use: unknown building block 'mysql' (known:",
    ),
    "env reference to nothing": (
        GOOD_A + '[env]\nX = "{nope.port}"\n',
        "env.X: {nope.port} refers to nothing: no service 'nope' (declared: a",
    ),
    "command reference to nothing": (
        '[services.a]\ncommand = ["x", "{nope.port}"]\n',
        "services.a.command[1]: {nope.port} refers to nothing",
    ),
    "export reference to nothing": (
        GOOD_A + '[exports]\nx = "http://{a.ports.http}"\n',
        "exports.x: {a.ports.http} refers to nothing: service 'a' has no such extra port",
    ),
    "own port outside a service": (GOOD_A + '[env]\nX = "{port}"\n', "env.X: {port} refers to nothing"),
    "unknown knob": (GOOD_A + '[env]\nX = "{knob.NOPE}"\n', "env.X: {knob.NOPE} refers to nothing: no knob"),
    "unknown database": (
        '[services.pg]\nuse = "postgres"\ndatabases = ["app"]\n[env]\nX = "{pg.db.other}"\n',
        "env.X: {pg.db.other} refers to nothing: service 'pg' has no db 'other' (has: app)",
    ),
    "unknown service field": (
        '[services.a]\ncommand = ["x"]\ncomand = ["x"]\n',
        "services.a.comand: unknown field",
    ),
    "unknown top-level field": (GOOD_A + 'servics = "x"\n', "servics: unknown field (expected one of:"),
    "unknown block option": (
        '[services.r]\nuse = "redis"\ndatabases = ["x"]\n',
        "services.r.databases: unknown field",
    ),
    "bad block option": (
        '[services.r]\nuse = "redis"\nappendonly = "yes"\n',
        "services.r.appendonly: must be true",
    ),
    "postgres without databases": (
        '[services.pg]\nuse = "postgres"\n',
        "services.pg.databases: a postgres block needs",
    ),
    "unknown ready kind": (
        '[services.a]\ncommand = ["x"]\nready = { htp = "x" }\n',
        "services.a.ready: must be one of",
    ),
    "ready tcp not true": (
        '[services.a]\ncommand = ["x"]\nready = { tcp = false }\n',
        "services.a.ready: write { tcp = true }",
    ),
    "ready log not a regex": (
        '[services.a]\ncommand = ["x"]\nready = { log = "(" }\n',
        "services.a.ready.log: not a regular",
    ),
    "ready http not a url": (
        '[services.a]\ncommand = ["x"]\nready = { http = "x" }\n',
        "services.a.ready.http: must be",
    ),
    "ready query on a command": (
        '[services.a]\ncommand = ["x"]\nready = { query = "SELECT 1" }\n',
        "services.a.ready: 'query' is not a readiness check for a command service",
    ),
    "ready http on postgres": (
        '[services.pg]\nuse = "postgres"\ndatabases = ["x"]\nready = { http = "http://x" }\n',
        "services.pg.ready: 'http' is not a readiness check for a postgres block (use: query)",
    ),
    "bad timeout": (
        '[services.a]\ncommand = ["x"]\ntimeout = 0\n',
        "services.a.timeout: must be a positive number",
    ),
    "bad service name": ('[services.Port]\ncommand = ["x"]\n', "services.Port: a service name is"),
    "no services": ('knob_prefix = "X_"\n', "services: declares no service"),
    "knob clash": (
        'knob_prefix = "X_"\n' + GOOD_A + '[knobs]\nA = "1"\n[env]\nX_A = "2"\n',
        "env.X_A: is already the variable of knob A",
    ),
    "not toml": ("[services.a\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_declaration_fails_in_one_line_naming_file_and_field(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "services.toml"
    path.write_text(text)
    with pytest.raises(DeclarationError) as info:
        load_declaration(path)
    message = str(info.value)
    assert "\n" not in message, f"more than one line: {message!r}"
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert isinstance(info.value, ValueError)


def test_a_targets_knobs_must_be_declared(tmp_path: Path) -> None:
    folder = make_target(tmp_path, GOOD_A + '[knobs]\nGREETING = "hi"\n', 'knobs = { GRETING = "x" }\n')
    with pytest.raises(
        DeclarationError, match=r"target.toml: knobs.GRETING: unknown knob \(declared in .*: GREETING\)"
    ):
        declaration_of(load_target(str(folder)))


def test_a_knob_is_the_declared_default_then_the_targets_then_the_environments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = 'knob_prefix = "X_"\n' + GOOD_A + '[knobs]\nGREETING = "hi"\nMOOD = "calm"\n'
    target = load_target(str(make_target(tmp_path, services, 'knobs = { GREETING = "hello" }\n')))
    monkeypatch.setenv("THROUGHLINE_STACK_MOOD", "cheerful")
    world = Stack.for_target(target).prepare()
    world.stop()
    assert world.platform_env == {"X_GREETING": "hello", "X_MOOD": "cheerful"}


def test_a_secret_is_made_on_first_mention_and_is_the_same_everywhere(tmp_path: Path) -> None:
    services = GOOD_A + '[env]\nX = "{secret.fresh}"\n[exports]\nx = "{secret.fresh}"\n'
    world = Stack.for_target(load_target(str(make_target(tmp_path, services)))).prepare()
    world.stop()
    assert len(world.platform_env["X"]) == 43, "32 random bytes unless [secrets] says otherwise"
    assert world.urls["x"] == world.platform_env["X"]


def test_an_unknown_target_names_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROUGHLINE_TARGETS_PATH", str(TOY.parent))
    with pytest.raises(TargetError, match=r"unknown target 'nope'; known targets: .*reference.*toy_target"):
        load_target("nope")


# -- the toy target, run by the harness --------------------------------------------------------


def make_target(tmp_path: Path, services: str, extra: str = "") -> Path:
    folder = tmp_path / "target"
    folder.mkdir(exist_ok=True)
    (folder / "target.toml").write_text(
        f'app = "harness.app:App"\nservices = "services.toml"\ncapabilities = []\n{extra}'
    )
    (folder / "services.toml").write_text(services)
    return folder


@pytest.fixture(scope="module")
def toy() -> Iterator[Stack]:
    """The toy target found by name on THROUGHLINE_TARGETS_PATH, started for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("THROUGHLINE_TARGETS_PATH", str(TOY.parent))
    try:
        with Stack.for_target(load_target("toy_target")) as world:
            yield world
    finally:
        mp.undo()


def test_the_toy_target_starts_from_its_declaration(toy: Stack) -> None:
    assert list(toy.services) == ["a", "b"], "a first: b depends on it"
    assert get(f"{toy.urls['b_url']}/health")[0] == 200
    status, a_info = get(f"{toy.urls['a_url']}/info")
    _, b_info = get(f"{toy.urls['b_url']}/info")
    assert status == 200 and a_info["name"] == "a"
    assert b_info["env"]["TOY_UPSTREAM"] == toy.urls["a_url"], "b gets a's URL through its env reference"
    assert "TOY_UPSTREAM" not in a_info["env"], "a service's own env goes to that service only"
    assert a_info["env"]["TOY_GREETING"] == b_info["env"]["TOY_GREETING"] == "hello"
    assert a_info["env"]["TOY_TOKEN"] == b_info["env"]["TOY_TOKEN"] == toy.platform_env["TOY_TOKEN"]
    assert a_info["env"]["TOY_RUN_DIR"] == str(toy.run_dir)
    assert toy.component_kinds() == {"a": "real", "b": "real"}
    assert toy.env() == {"THROUGHLINE_A_URL": toy.urls["a_url"], "THROUGHLINE_B_URL": toy.urls["b_url"]}


async def test_arestart_restarts_on_the_same_port_without_blocking_the_loop(toy: Stack) -> None:
    before = get(f"{toy.urls['b_url']}/info")[1]["pid"]
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        handle[0] = asyncio.get_running_loop().call_later(0.005, tick)

    handle = [asyncio.get_running_loop().call_later(0.005, tick)]
    try:
        seconds = await toy.arestart("b")
    finally:
        handle[0].cancel()
    assert seconds > 0
    assert ticks >= 2, "the event loop stood still while the service restarted"
    status, info = get(f"{toy.urls['b_url']}/info")
    assert status == 200 and info["pid"] != before and not pid_alive(before)


async def test_an_outage_stops_the_service_and_always_brings_it_back(toy: Stack) -> None:
    a_pid = toy.service("a").process.pid
    async with toy.outage("a"):
        assert not toy.service("a").is_running
        assert get(f"{toy.urls['a_url']}/health")[0] == 0
        assert get(f"{toy.urls['b_url']}/health")[0] == 503, "b must notice that a is gone"
    assert toy.service("a").is_running and toy.service("a").process.pid != a_pid
    assert get(f"{toy.urls['b_url']}/health")[0] == 200
    with pytest.raises(RuntimeError, match="boom"):
        async with toy.outage("a", kill=True):
            assert toy.service("a").process.returncode() == -9, "kill=True is a SIGKILL, as a crash"
            raise RuntimeError("boom")
    assert get(f"{toy.urls['b_url']}/health")[0] == 200, "a failing block still brings the service back"


def test_the_harness_stops_the_toy_target_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROUGHLINE_STACK_GREETING", "bonjour")
    world = Stack.for_target(load_target(str(TOY)), only=("b",)).start()
    pids = [svc.process.pid for svc in world.services.values()]
    run_dir = world.run_dir
    assert list(world.services) == ["a", "b"], "only=b brings what b depends on"
    assert get(f"{world.urls['a_url']}/info")[1]["env"]["TOY_GREETING"] == "bonjour"
    world.stop()
    assert not any(pid_alive(p) for p in pids if p), "a toy service outlived stop()"
    assert run_dir is not None and not run_dir.exists()


async def test_tcp_and_log_readiness_and_a_service_that_refuses_outages(tmp_path: Path) -> None:
    services = textwrap.dedent(
        f"""
        [services.a]
        command = ["{{python}}", "{SERVER}", "--port", "{{port}}", "--name", "a"]
        ready = {{ tcp = true }}
        restartable = false

        [services.t]
        command = ["{{python}}", "{SERVER}", "--port", "{{port}}", "--name", "t"]
        ready = {{ log = "listening on" }}
        """
    )
    folder = make_target(tmp_path, services)
    with Stack.for_target(load_target(str(folder))) as world:
        assert get(f"http://127.0.0.1:{world.ports['a']}/health")[0] == 200, "tcp readiness"
        assert get(f"http://127.0.0.1:{world.ports['t']}/health")[0] == 200, "log readiness"
        with pytest.raises(
            ServiceNotRestartable, match=r"service 'a' cannot be stopped .*services.toml declares"
        ):
            await world.arestart("a")
        with pytest.raises(ServiceNotControllable, match="restartable = false"):
            async with world.outage("a"):
                pass
        assert world.service("a").is_running
        assert await world.arestart("t") > 0
        # The first start's line is still in the log: ready means the new process said it.
        assert get(f"http://127.0.0.1:{world.ports['t']}/health")[0] == 200


async def test_a_postgres_block_makes_the_declared_databases_and_users(tmp_path: Path) -> None:
    import asyncpg

    services = textwrap.dedent(
        """
        [services.pg]
        use = "postgres"
        databases = ["app", { name = "billing", owner = "biller" }]
        users = [{ name = "biller", password = "it's-s3cret" }]
        ready = { query = "SELECT count(*) FROM pg_database" }

        [exports]
        app = "{pg.db.app}"
        billing = "{pg.db.billing}"
        """
    )
    with Stack.for_target(load_target(str(make_target(tmp_path, services)))) as world:
        assert world.urls["billing"].startswith("postgresql://biller:it%27s-s3cret@127.0.0.1:")
        conn = await asyncpg.connect(world.urls["billing"])
        try:
            owner = await conn.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            )
            assert (await conn.fetchval("SELECT current_user"), owner) == ("biller", "biller")
        finally:
            await conn.close()
        conn = await asyncpg.connect(world.urls["app"])
        try:
            assert await conn.fetchval("SELECT current_database()") == "app"
        finally:
            await conn.close()


# -- the CLI with --target ------------------------------------------------------------------------


def throughline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "THROUGHLINE_STATE_DIR": str(cwd / ".throughline"),
        "THROUGHLINE_TARGETS_PATH": str(TOY.parent),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_runs_the_toy_target_by_name(tmp_path: Path) -> None:
    up = throughline("stack", "up", "--detach", "--target", "toy_target", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "a_url" in up.stdout and "b_url" in up.stdout, "stack up prints the target's exports"
    state = json.loads((tmp_path / ".throughline" / "stack.json").read_text())
    pids = [info["pid"] for info in state["services"].values()]
    try:
        assert state["target"] == "toy_target"
        status = throughline("stack", "status", "--target", "toy_target", cwd=tmp_path)
        assert status.returncode == 0 and status.stdout.count(" up ") == 2, status.stdout
        env = throughline("stack", "env", cwd=tmp_path)
        assert sorted(line.split("=")[0] for line in env.stdout.splitlines()) == [
            "export THROUGHLINE_A_URL",
            "export THROUGHLINE_B_URL",
        ]
        other = throughline("stack", "status", "--target", "reference", cwd=tmp_path)
        assert other.returncode == 1 and "runs target 'toy_target'" in other.stderr
    finally:
        down = throughline("stack", "down", cwd=tmp_path)
    assert down.returncode == 0
    assert wait_until(lambda: not any(pid_alive(p) for p in pids)), "a toy service outlived `stack down`"


def test_the_cli_refuses_an_unknown_target_with_the_known_ones(tmp_path: Path) -> None:
    for command in (["stack", "up"], ["stack", "status"], ["doctor"], ["run"]):
        result = throughline(*command, "--target", "nope", cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "unknown target 'nope'; known targets:" in result.stderr and "toy_target" in result.stderr


def test_doctor_checks_what_the_targets_blocks_need(tmp_path: Path) -> None:
    toy = throughline("doctor", "--target", "toy_target", cwd=tmp_path)
    assert "PostgreSQL server" not in toy.stdout and "redis-server" not in toy.stdout, toy.stdout
    reference = throughline("doctor", cwd=tmp_path)
    assert "PostgreSQL server" in reference.stdout and "python: aiosmtpd" in reference.stdout


def test_the_seed_hook_runs_once_the_whole_target_is_ready(toy: Stack) -> None:
    """target.toml `seed`: called with the started stack (Open WebUI makes its admin there)."""
    assert toy.seed_data == {"a_name": "a"}
    assert "seed" in toy.timings


def test_a_failing_seed_fails_the_start_naming_the_hook_and_leaves_nothing(tmp_path: Path) -> None:
    services = textwrap.dedent(
        f"""
        [services.a]
        command = ["{{python}}", "{TOY / "server.py"}", "--port", "{{port}}", "--name", "a"]
        ready = {{ http = "http://127.0.0.1:{{port}}/health" }}
        """
    )
    folder = make_target(tmp_path, services, 'seed = "tests.toy_target.seed:broken"\n')
    world = Stack.for_target(load_target(str(folder)))
    with pytest.raises(
        ServiceStartError, match=r"seed hook tests.toy_target.seed:broken failed: .*admin account"
    ):
        world.start()
    assert not any(svc.is_running for svc in world.services.values()), "a failed seed left a service running"
