"""The deployment engine: the study's Flower App run as real processes, one SuperLink and one SuperNode per farmer.

:func:`run_deployment` writes the job files (:mod:`.job`), makes the farmers' shaped links (:mod:`.links`: one
network namespace per farmer, its veth capped with ``tbf`` at the farmer's rate), starts ``flower-superlink`` on the
bridge's address, one ``flower-supernode`` inside each farmer's namespace, and submits ``flower_app/`` with
``flwr run``. It returns the in-process loop's result type plus, per message, the bytes the ledger counts (the
safetensors message), the bytes Flower carried (its arrays) and, per round and farmer, the bytes the link's kernel
counters saw (everything on the wire: HTTP, TCP/IP, Flower's polling).

Where namespaces cannot be made (not root, no ``ip``/``tc``), every process runs on loopback, unshaped, and the
result says so (``shaped`` is False, ``unshaped_reason`` says why). Every process is started in its own process
group and is stopped, with the namespaces removed, when the run ends, fails, or is interrupted (Ctrl-C, SIGTERM).

Locked down: every run makes its own CA, a SuperLink certificate naming the one address it listens on and one key pair
per SuperNode (:mod:`.credentials`); the SuperLink serves TLS only and runs with ``--enable-supernode-auth``; each
SuperNode's public key is registered (``flwr supernode register``) before it starts, and it trusts only the run's CA.
A SuperNode whose key is not registered, or that trusts another CA, is refused (``tests/test_deployment.py``). The
result lists every listening socket of the run's processes (``listening``): the SuperLink's on its one address, each
SuperNode's runtime API on its namespace's loopback.

ClientApps (``clientapps``): Flower starts one ClientApp process per message. ``per-message`` runs :mod:`.apps`'
ClientApp in it (torch imported and the job loaded every time); ``resident`` starts one :mod:`.resident_worker` per
farmer in its namespace before the run and submits the app with :mod:`.resident_app`'s ClientApp, which imports
Flower only and forwards each message to the farmer's resident client over a Unix socket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import psutil
from torch import nn

from fedpeft.federated.deployment import cleanup, job
from fedpeft.federated.deployment.credentials import Credentials, write_credentials
from fedpeft.federated.deployment.links import ShapedLinks, shaping_unavailable
from fedpeft.federated.flower_bridge import FLOWER_ENV, RoundLog
from fedpeft.federated.flower_engine import round_log_result
from fedpeft.federated.ledger import CommunicationLedger
from fedpeft.federated.loop import Client, FederatedResult, RoundConfig
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg
from fedpeft.training.contract import Trainer

#: The Flower App's folder (its pyproject.toml names the ServerApp and ClientApp in :mod:`.apps`).
APP_DIR = Path(__file__).resolve().parents[4] / "flower_app"
CONNECTION = "fedpeft-deployment"
#: Seconds between the SuperExecs' asks for a task to launch (Flower's ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, default
#: 1 s, 0.01 to 60 allowed): the one poll interval Flower lets a deployment set. Kept at Flower's default: at 0.1 s the
#: ten SuperExecs and their SuperNodes, polling over gRPC ten times a second each, took CPU from the farmers'
#: ClientApps on a 2-core machine, and a local run took 26 min instead of 20 (one seed each, measured 2026-12-04).
#: The SuperNodes' pull of messages and the ServerApp's pull of replies wait a fixed 3 s when they find nothing
#: (``flwr.supernode.start_client_internal``, ``flwr.superlink.grid.http_grid``); what those waits cost is measured
#: per round (``round_parts`` in the weeds report).
SUPEREXEC_POLL_S = 1.0
SUPERNODE_PORT = 9094  # each SuperNode's own runtime API (inside its namespace; on loopback, one port per node)
#: How each SuperNode runs its ClientApp. ``per-message``: Flower's way, a fresh process per message running
#: :mod:`.apps`' ClientApp (imports torch, peft and bitsandbytes and loads the job each time). ``resident``: the same
#: fresh process runs :mod:`.resident_app`'s ClientApp, which imports Flower only and hands the message to the farmer's
#: resident client (:mod:`.resident_worker`), started once per farmer in its namespace with everything loaded.
CLIENTAPPS = ("per-message", "resident")
RESIDENT_READY_S = 900.0  # seconds the resident clients may take to load (ten farmers' imports queue on two cores)


@dataclass
class DeploymentResult:
    result: FederatedResult
    shaped: bool
    unshaped_reason: str | None
    rates_mbps: list[float]  # per farmer (empty when unshaped)
    messages: pd.DataFrame  # round, client, direction, ledger_bytes, flower_bytes
    link_bytes: pd.DataFrame  # round, farmer, down, up: bytes each link carried in that round (empty when unshaped)
    startup_s: float  # from the first process started until the run was submitted
    log_dir: Path | None  # kept only when the run failed
    listening: pd.DataFrame = None  # process, address, port: every listening socket of the run's processes near its end
    tls: bool = False  # the SuperLink served TLS only and admitted only SuperNodes with registered keys
    superexec_poll_s: float = 1.0  # seconds between the SuperExecs' asks for tasks (Flower's default: 1 s)
    cpu_seconds: pd.DataFrame = None  # process, program, cpu_s: CPU seconds per program of each process tree at the end
    clientapps: str = "per-message"  # how the SuperNodes ran their ClientApps (CLIENTAPPS)


class _Processes:
    """Processes started in their own process groups, stopped together."""

    def __init__(self, log_dir: Path, owner: cleanup.Owner | None = None) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen] = []
        self.names: dict[int, str] = {}  # pid -> the name given to start()
        self.owner = owner or cleanup.Owner(log_dir.parent)

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.log_file = log  # type: ignore[attr-defined]
        self.started.append(proc)
        self.names[proc.pid] = name
        self.owner.add_process(proc.pid)  # recorded at once: a SIGKILL of this process leaves nothing unnamed
        return proc

    def stop_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every started process, its process group and every descendant (the SuperLink's SuperExec starts a
        session of its own), SIGKILL to whatever is left after ``grace_s`` seconds."""
        tree: list[psutil.Process] = []
        for proc in self.started:
            with suppress(psutil.NoSuchProcess):
                tree += psutil.Process(proc.pid).children(recursive=True)
        for proc in self.started:
            _signal_group(proc, signal.SIGTERM)
        for p in tree:
            with suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for proc in self.started:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1 if not alive else 1.0)
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            proc.log_file.close()  # type: ignore[attr-defined]
        for p in alive:
            with suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        self.started = []

    def _trees(self) -> Iterator[tuple[str, psutil.Process]]:
        """(name given to start(), process) for each started process that still runs and each of its descendants."""
        for proc in self.started:
            with suppress(psutil.NoSuchProcess):
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    yield self.names[proc.pid], p

    def listening(self) -> pd.DataFrame:
        """Every listening TCP socket of the started processes and their descendants, each read in the process's own
        network namespace (``/proc/<pid>/net/tcp``, which psutil does not read for other namespaces): process name,
        address, port."""
        rows = [{"process": name, "address": a, "port": port} for name, p in self._trees() for a, port in listening_sockets(p.pid)]
        return pd.DataFrame(rows, columns=["process", "address", "port"]).drop_duplicates(ignore_index=True)

    def cpu_seconds(self) -> pd.DataFrame:
        """CPU seconds (user + system) spent so far by each started process's tree, per program: one row per (process
        name, program), the program being the command's script (``flower-supernode``, ``flower-superexec``, ...).
        A process's exited and reaped children (Flower's ClientApp and ServerApp processes, one per message) count
        under ``"<program> (exited children)"``: the kernel adds a child's time to its parent when it reaps it."""
        rows = []
        for name, p in self._trees():
            with suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                program = program_name(p.cmdline())
                t = p.cpu_times()
                rows.append({"process": name, "program": program, "cpu_s": t.user + t.system})
                rows.append({"process": name, "program": f"{program} (exited children)", "cpu_s": t.children_user + t.children_system})
        table = pd.DataFrame(rows, columns=["process", "program", "cpu_s"])
        return table.groupby(["process", "program"], as_index=False, sort=False)["cpu_s"].sum()

    def failed(self) -> list[str]:
        return [f"{self.names[p.pid]} exited with {p.returncode}" for p in self.started
                if p.poll() is not None and p.returncode != 0]


def program_name(cmd: Sequence[str]) -> str:
    """The program a command line runs: the script of ``python script ...``, the module of ``python -m module ...``,
    else the executable (``flower-supernode``)."""
    if len(cmd) > 1 and Path(cmd[0]).name.startswith("python"):
        return cmd[2] if cmd[1] == "-m" and len(cmd) > 2 else Path(cmd[1]).name
    return Path(cmd[0]).name


def resident_app_dir(app_dir: Path, dest: Path) -> Path:
    """A copy of the Flower App in ``app_dir`` whose ClientApp is :mod:`.resident_app`'s (written into ``dest``)."""
    text = (app_dir / "pyproject.toml").read_text()
    line = 'clientapp = "fedpeft.federated.deployment.apps:client_app"'
    if line not in text:
        raise ValueError(f"{app_dir / 'pyproject.toml'} does not name {line!r}: cannot swap in the resident ClientApp")
    dest.mkdir(parents=True)
    (dest / "pyproject.toml").write_text(text.replace(line, 'clientapp = "fedpeft.federated.deployment.resident_app:client_app"'))
    return dest


def _wait_until(ready: Callable[[], bool], timeout_s: float, processes: _Processes, what: str) -> None:
    """Poll ``ready`` every 0.2 s; an error when a started process stops first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if processes.failed():
            raise RuntimeError(f"a process stopped while starting: {processes.failed()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


def _wait_for_port(host: str, port: int, timeout_s: float, processes: _Processes) -> None:
    def listens() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    _wait_until(listens, timeout_s, processes, f"the SuperLink on {host}:{port}")


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` holds in the LISTEN state, read from its own network
    namespace's tables; empty when the process is gone or not readable."""
    import ipaddress

    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        found = []
        for table in ("tcp", "tcp6"):
            with suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] != "0A" or fields[9] not in inodes:  # 0A: TCP_LISTEN
                        continue
                    hex_addr, hex_port = fields[1].split(":")
                    raw = bytes.fromhex(hex_addr)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found.append((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
        return found
    except (OSError, PermissionError):
        return []


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Interrupted(KeyboardInterrupt):
    pass


def run_deployment(
    model: nn.Module,
    clients: Sequence[Client],
    strategy: FedAvg,
    trainer: Trainer,
    config: RoundConfig,
    server_test: Any | None = None,
    network: NetworkModel | None = None,
    shape: bool = True,
    torch_threads: int = 1,
    timeout_s: float = 3600.0,
    app_dir: Path = APP_DIR,
    clientapps: str = "per-message",
) -> DeploymentResult:
    """Run ``config.num_rounds`` rounds of ``strategy`` on Flower's Deployment Engine, one SuperNode per client.

    ``network``: the farmers' rates (Mbit/s, cycled) shape their links when ``shape`` is set and namespaces can be
    made, and its drop-out draws decide which farmers skip a round (as in the in-process loop); its latency cannot be
    shaped (see :mod:`.links`). ``torch_threads``: torch threads of each ServerApp and ClientApp process (0: torch's
    default). ``timeout_s``: wall-clock seconds before the run is stopped and an error raised. ``clientapps``: one of
    :data:`CLIENTAPPS` (``resident``: one long-lived client per farmer, started before the run and counted in
    ``startup_s``, serves the per-message ClientApps). Fp32 transport only.
    """
    if clientapps not in CLIENTAPPS:
        raise ValueError(f"clientapps = {clientapps!r} is not allowed; it must be one of {list(CLIENTAPPS)}")
    if config.transport != "fp32":
        raise ValueError(f"transport = {config.transport!r} is not supported on the deployment engine; use 'fp32'")
    if config.time_limit_s is not None:
        raise ValueError("time_limit_s is not supported on the deployment engine; use timeout_s (an error, not a stop)")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s = {timeout_s!r} is not allowed; it must be > 0 seconds")
    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"the Flower App is missing: {app_dir / 'pyproject.toml'} (the repository's flower_app/)")
    # the ServerApp and ClientApp every Flower process will load: an import error shows here, not in a SuperNode's log
    from fedpeft.federated.deployment import apps  # noqa: F401

    clients = list(clients)
    why_not = shaping_unavailable() if shape else "shaping was switched off (shape=False)"
    rates = [float(network.bandwidth_mbps[i % len(network.bandwidth_mbps)]) for i in range(len(clients))] \
        if network is not None else [1000.0] * len(clients)

    for removed in cleanup.clean_orphans():  # what a killed run left: processes, namespaces and links, job folders
        warnings.warn(f"removed what a killed deployment run left: {removed}", RuntimeWarning, stacklevel=2)
    work = Path(tempfile.mkdtemp(prefix=cleanup.WORK_PREFIX))
    os.chmod(work, 0o700)
    job_dir, log_dir = work / "job", work / "logs"
    log_dir.mkdir()
    key = secrets.token_hex(32)  # signs this run's job files (see .job); only its own processes get it
    env = os.environ | FLOWER_ENV | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                                     "PYTHONUNBUFFERED": "1", job.KEY_ENV: key,
                                     "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(SUPEREXEC_POLL_S)}
    bin_dir = Path(sys.executable).parent
    processes = _Processes(log_dir, owner=cleanup.Owner(work))
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def interrupted(signum, frame):  # noqa: ARG001 - signal handler signature
            raise _Interrupted(f"signal {signum}")
        previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    ok = False
    try:
        with ExitStack() as stack:
            links = stack.enter_context(ShapedLinks(rates, on_token=processes.owner.set_links_token)) if why_not is None else None
            host = links.server_address if links else "127.0.0.1"
            interfaces = [link.host_if for link in links.links] if links else []
            job.write_job(job_dir, model, clients, strategy, trainer, config, server_test, network, interfaces, torch_threads,
                          key=bytes.fromhex(key))
            port = _free_port(host)
            credentials = write_credentials(work / "credentials", [host], len(clients))
            t0 = time.perf_counter()
            sockets = []
            if clientapps == "resident":  # started first: their imports and loading overlap the SuperLink's start
                from fedpeft.federated.deployment import resident_worker  # imported here too: an import error shows here
                from fedpeft.federated.deployment.resident_app import socket_path

                app_dir = resident_app_dir(app_dir, work / "app")
                longest = socket_path(job_dir, len(clients) - 1)
                if len(os.fsencode(longest)) > 107:  # AF_UNIX's sun_path holds 108 bytes with the terminating NUL
                    raise ValueError(f"the resident clients' socket path {longest} is {len(os.fsencode(longest))} bytes, "
                                     "more than a Unix socket allows (107); set TMPDIR to a shorter folder")
                for i in range(len(clients)):
                    cmd = [sys.executable, "-m", resident_worker.__name__, str(job_dir), str(i)]
                    processes.start(f"resident-{i}", links.command_in(i, cmd) if links else cmd, env)
                    sockets.append(socket_path(job_dir, i))
            processes.start("superlink", [str(bin_dir / "flower-superlink"), *superlink_tls_args(credentials), "--host", host,
                                          "--port", str(port), "--disable-runtime-dependency-installation"],
                            env | {"FLWR_HOME": str(work / "superlink")})
            _wait_for_port(host, port, 60, processes)
            cli_home = work / "cli"
            cli_home.mkdir()
            write_cli_config(cli_home, f"{host}:{port}", credentials.ca_certificate)
            register_supernodes(bin_dir, cli_home, credentials.supernode_public_keys, env)
            for i in range(len(clients)):
                node_port = SUPERNODE_PORT if links else _free_port("127.0.0.1")
                cmd = [str(bin_dir / "flower-supernode"), *supernode_tls_args(credentials, i), "--superlink", f"{host}:{port}",
                       "--port", str(node_port), "--node-config", f"partition-id={i} num-partitions={len(clients)}"]
                processes.start(f"supernode-{i}", links.command_in(i, cmd) if links else cmd, env | {"FLWR_HOME": str(work / f"node-{i}")})
            _wait_until(lambda: all(p.exists() for p in sockets), RESIDENT_READY_S, processes,
                        "the farmers' resident clients (a socket each in the job folder)")
            startup_s = time.perf_counter() - t0
            runner = processes.start("flwr-run", [str(bin_dir / "flwr"), "run", str(app_dir), CONNECTION, "--stream",
                                                  "--run-config", f'job-dir="{job_dir}"'], env | {"FLWR_HOME": str(cli_home)})
            deadline = time.monotonic() + timeout_s
            result_file = job_dir / job.RESULT_FILE
            while not result_file.is_file():
                if runner.poll() is not None and not result_file.is_file():
                    time.sleep(1.0)  # the result may land just after `flwr run` returns
                    if result_file.is_file():
                        break
                    raise RuntimeError(f"`flwr run` ended (exit {runner.returncode}) without a result (all logs: {log_dir}); its log:\n"
                                       f"{_tail(log_dir / 'flwr-run.log')}\n\nSuperLink log:\n{_tail(log_dir / 'superlink.log')}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the deployment run took longer than timeout_s = {timeout_s:.0f} s (all logs: {log_dir}); its log:\n"
                                       f"{_tail(log_dir / 'flwr-run.log')}")
                time.sleep(0.2)
            out = job.read(result_file, key=bytes.fromhex(key))
            listening = processes.listening()
            cpu = processes.cpu_seconds()
            ok = True
    finally:
        processes.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # the job files (pickled data) always go; a failed run keeps its logs for the error message's reader
        shutil.rmtree(work if ok else job_dir, ignore_errors=True)
    result = _collect(out, why_not, rates if why_not is None else [], startup_s)
    result.listening = listening
    result.cpu_seconds = cpu
    result.tls = True  # the SuperLink above was started with superlink_tls_args and --enable-supernode-auth only
    result.superexec_poll_s = SUPEREXEC_POLL_S
    result.clientapps = clientapps
    return result


def superlink_tls_args(credentials: Credentials) -> list[str]:
    """The SuperLink's flags: TLS with the run's certificate, and only registered SuperNodes admitted."""
    return ["--ssl-ca-certfile", str(credentials.ca_certificate), "--ssl-certfile", str(credentials.server_certificate),
            "--ssl-keyfile", str(credentials.server_key), "--enable-supernode-auth"]


def supernode_tls_args(credentials: Credentials, node: int, ca_certificate: Path | None = None) -> list[str]:
    """SuperNode ``node``'s flags: trust the run's CA (or ``ca_certificate``), sign with its own registered key."""
    return ["--root-certificates", str(ca_certificate or credentials.ca_certificate),
            "--auth-supernode-private-key", str(credentials.supernode_private_keys[node])]


def write_cli_config(cli_home: Path, address: str, ca_certificate: Path) -> None:
    """The ``flwr`` CLI's connection to the SuperLink (``FLWR_HOME``/config.toml), over TLS trusting the run's CA."""
    (cli_home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                          f'address = "{address}"\nroot-certificates = "{ca_certificate}"\n')


def register_supernodes(bin_dir: Path, cli_home: Path, public_keys: Sequence[Path], env: dict[str, str],
                        timeout_s: float = 120.0) -> None:
    """Register every SuperNode's public key with the SuperLink (``flwr supernode register``), several at a time."""
    pending = list(public_keys)
    while pending:
        batch, pending = pending[:8], pending[8:]
        calls = [subprocess.Popen([str(bin_dir / "flwr"), "supernode", "register", str(k), CONNECTION], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env | {"FLWR_HOME": str(cli_home)}) for k in batch]
        for key, call in zip(batch, calls, strict=True):
            out, _ = call.communicate(timeout=timeout_s)
            if call.returncode != 0:
                raise RuntimeError(f"registering the SuperNode key {key.name} failed (exit {call.returncode}):\n"
                                   f"{out.decode(errors='replace')[-2000:]}")


def _collect(out: dict, why_not: str | None, rates: list[float], startup_s: float) -> DeploymentResult:
    log = RoundLog()
    log.rows, log.client_rows = out["rows"], out["client_rows"]
    log.ledger = CommunicationLedger.from_state_dict(out["ledger"])
    result = round_log_result(log, out["final_state"], out["wall_s"])
    ledger = result.ledger.frame().rename(columns={"bytes": "ledger_bytes"})
    flower = pd.DataFrame(out["flower_bytes"])
    messages = ledger.merge(flower, on=["round", "client", "direction"], how="left") if len(flower) else ledger
    link = pd.DataFrame(out["link_bytes"])
    if len(link):  # cumulative counters, read at each round's end -> bytes per round
        link = link.sort_values(["farmer", "round"])
        for d in ("down", "up"):
            link[d] = link.groupby("farmer")[d].diff().fillna(link[d])
        link = link[link["round"] > 0].astype({"down": int, "up": int})
    return DeploymentResult(result, why_not is None, why_not, rates, messages, link.reset_index(drop=True), startup_s, None)
