"""Shared fixtures: one behavioural suite, run against every store.

``store_url`` is parametrised over the stores; ``app`` is an open App on it, ``other_app`` a
second App on the same store with its own connections and watcher (another "process" as far as
the store can tell). Cross-process tests start real subprocesses on top of these.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import aioabort

from ._brokers import REQUIRE as REQUIRE_BROKER, Broker, broker

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUIRE_POSTGRES = os.environ.get("AIOABORT_REQUIRE_POSTGRES") == "1"

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _postgres_admin_url() -> str:
    return os.environ.get("AIOABORT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own on the test server, created for this run and dropped after it.

    Without a server: skipped, or a failure when ``AIOABORT_REQUIRE_POSTGRES=1`` (CI).
    """
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - the dev extra installs it
        if REQUIRE_POSTGRES:
            pytest.fail("asyncpg is not installed and AIOABORT_REQUIRE_POSTGRES=1")
        pytest.skip("asyncpg is not installed")
    admin = _postgres_admin_url()
    name = f"aioabort_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        message = f"no PostgreSQL server at {aioabort.App(admin).url}: {exc}"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{message} (AIOABORT_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    try:
        yield _with_database(admin, name)
    finally:
        asyncio.run(drop())


#: The reference in-memory store joins the suite wherever nothing crosses a process.
ALL_STORES = ["memory", *STORES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``store_url`` runs every test on every store; modules marked ``real_stores`` (they
    start other processes) run on the stores other processes can reach."""
    if "store_url" in metafunc.fixturenames:
        real_only = metafunc.definition.get_closest_marker("real_stores") is not None
        metafunc.parametrize("store_url", STORES if real_only else ALL_STORES, indirect=True)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'aioabort.db'}"
    database: str = request.getfixturevalue("postgres_database")
    return f"{database}?aioabort_schema=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A fresh schema in the test database (each test gets its own tables)."""
    return f"{postgres_database}?aioabort_schema=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pgbouncer(postgres_database: str) -> Iterator[str]:
    """A real PgBouncer in **transaction** pooling mode on a loopback port, in front of the
    test database, with fewer server connections than aioabort's pool (so consecutive
    transactions of one client do run on different server connections). Yields the URL of
    the test database through it. Without the program: skipped (a failure in CI)."""
    program = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if program is None:
        message = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{message} (AIOABORT_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    target = urlsplit(postgres_database)
    user = target.username or "postgres"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tempfile.mkdtemp(prefix="aioabort-pgbouncer-")
    os.chmod(home, 0o755)  # PgBouncer may run as another user (it refuses to run as root)
    config = Path(home, "pgbouncer.ini")
    Path(home, "users.txt").write_text(f'"{user}" ""\n')
    config.write_text(
        "[databases]\n"
        f"* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home}/users.txt\n"
        "pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for name in ("pgbouncer.ini", "users.txt"):
        os.chmod(Path(home, name), 0o644)
    command = [program, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(config)]
    log = Path(home, "log.txt")
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield urlunsplit(target._replace(netloc=f"{user}@127.0.0.1:{port}"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pgbouncer_url(pgbouncer: str) -> str:
    """A fresh schema, reached through the transaction-pooling PgBouncer (poll-only)."""
    return f"{pgbouncer}?aioabort_schema=t_{uuid.uuid4().hex[:12]}&aioabort_pooler=transaction"


@pytest.fixture
def redis_server() -> Iterator[Broker]:
    """A real ``redis-server`` of this test's own on a free loopback port."""
    yield from broker("redis")


@pytest.fixture
def nats_server() -> Iterator[Broker]:
    """A real ``nats-server`` of this test's own on a free loopback port."""
    yield from broker("nats")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With AIOABORT_REQUIRE_POSTGRES=1 a skipped PostgreSQL test fails the run (and the same
    for Redis and NATS tests with AIOABORT_REQUIRE_REDIS=1 / AIOABORT_REQUIRE_NATS=1)."""
    report = yield
    for kind, required in REQUIRE_BROKER.items():
        if required and report.skipped and item.get_closest_marker(kind) is not None:
            report.outcome = "failed"
            report.longrepr = f"{kind} test skipped but it is required: {report.longrepr}"
    if REQUIRE_POSTGRES and report.skipped and item.get_closest_marker("postgres") is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"PostgreSQL test skipped but AIOABORT_REQUIRE_POSTGRES=1: {report.longrepr}"
        )
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"postgres_url", "cluster", "pgbouncer_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
        for kind in REQUIRE_BROKER:
            if f"{kind}_server" in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aioabort.db'}"


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[aioabort.App]:
    async with aioabort.App(store_url) as opened:
        yield opened


@pytest.fixture
async def other_app(store_url: str, app: aioabort.App) -> AsyncIterator[aioabort.App]:
    second = aioabort.App(store_url)
    await second.open()
    try:
        yield second
    finally:
        await second.aclose()


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


async def state_of(app: aioabort.App, task_id: str) -> aioabort.TaskState:
    return await app.handle(task_id).state()


async def has_state(app: aioabort.App, task_id: str, *states: aioabort.TaskState) -> bool:
    """Whether the record is in one of ``states`` (for ``wait_until``); False while there
    is no record yet."""
    try:
        return await app.handle(task_id).state() in states
    except aioabort.TaskNotFound:
        return False


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (needs root and mount(2); skipped where neither is there)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full (to the last 512 bytes)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class Cluster:
    bindir: Path
    data: Path
    port: int
    user_cmd: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [
                *self.user_cmd,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.data / "log"),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self.ctl(
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip("initdb/pg_ctl are not installed")
    user_cmd: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user_cmd = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: the postgres user must be able to reach the directory.
    base = Path(tempfile.mkdtemp(prefix="aioabort-pgcluster-"))
    data = base / "data"
    data.mkdir()
    if user_cmd:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
        base.chmod(0o755)
    made = subprocess.run(
        [
            *user_cmd,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=False,
        capture_output=True,
        timeout=120,
        text=True,
    )
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed: {made.stderr}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    own = Cluster(bindir, data, port, user_cmd)
    own.start()
    try:
        yield own
    finally:
        subprocess.run(
            [*user_cmd, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


async def raw_http(
    base: str, target: str, headers: dict[str, str], *, until: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A GET on a raw socket (a client library would hide the framing): sends it, reads until
    ``until`` has arrived, and returns the connection and what was read."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = b""
    while until not in data or b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(reader.read(65536), 20)
        if not chunk:
            break
        data += chunk
    return reader, writer, data


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 20) -> bytes:
    """The rest of a response, until the server closes the connection."""
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), timeout):
        data += chunk
    return data
